//! In-process test replicas: a tonic server on 127.0.0.1 serving the standard
//! gRPC health service and a minimal `chat.v1.ChatService` whose
//! `ListAccounts` is "the app call" (it answers with the replica's name). The
//! same chat service also runs without sockets, in memory (see [`memory`]).
//!
//! Each replica runs on its own tokio runtime, so `kill` can drop it and every
//! connection it holds at once, like a crashed process.

#![allow(dead_code)]

pub mod memory;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, EndpointSnapshot};
use chat_proto::v1::{
    self as pb, chat_service_client::ChatServiceClient, chat_service_server::ChatServiceServer,
    health_check_response::ServingStatus,
};
use futures::Stream;
use tokio::{net::TcpSocket, runtime::Runtime, time::Instant};
use tonic::{Request, Response, Status};
use tonic_health::{ServingStatus as GrpcStatus, server::HealthReporter};

/// Knobs and counters shared between a test and its replica.
#[derive(Default)]
pub struct Knobs {
    /// `ListAccounts` calls served.
    pub calls: AtomicUsize,
    /// Delay before answering `ListAccounts`, in milliseconds.
    pub delay_ms: AtomicU64,
    /// Delay before answering the chat `HealthCheck` (the default probe), in
    /// milliseconds.
    pub health_delay_ms: AtomicU64,
    /// The `grpc-timeout` header of the last `ListAccounts` call received.
    pub last_grpc_timeout: std::sync::Mutex<Option<String>>,
    /// The `user-agent` header of the last `ListAccounts` call received.
    pub last_user_agent: std::sync::Mutex<Option<String>>,
    /// Answer `ListAccounts` with `UNAVAILABLE`.
    pub unavailable: AtomicBool,
    /// The chat `HealthCheck` answers `NOT_SERVING`.
    pub chat_not_serving: AtomicBool,
    /// Shed `ListAccounts`: answer `RESOURCE_EXHAUSTED` with this
    /// `grpc-retry-pushback-ms` value.
    pub shed_with_pushback: std::sync::Mutex<Option<&'static str>>,
}

/// The test replica's chat service.
pub struct TestChat {
    pub name: String,
    pub knobs: Arc<Knobs>,
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for TestChat {
    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let delay = self.knobs.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let not_serving = self.knobs.chat_not_serving.load(Ordering::SeqCst);
        let status = if not_serving {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        Ok(Response::new(pb::HealthCheckResponse {
            status: status as i32,
            replica_id: self.name.clone(),
            store_reachable: !not_serving,
            detail: if not_serving {
                "draining".into()
            } else {
                String::new()
            },
        }))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        let timeout = request.metadata().get("grpc-timeout");
        *self.knobs.last_grpc_timeout.lock().unwrap() =
            timeout.and_then(|t| t.to_str().ok()).map(str::to_owned);
        let agent = request.metadata().get("user-agent");
        *self.knobs.last_user_agent.lock().unwrap() =
            agent.and_then(|a| a.to_str().ok()).map(str::to_owned);
        let delay = self.knobs.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if self.knobs.unavailable.load(Ordering::SeqCst) {
            return Err(Status::unavailable(format!("{} is draining", self.name)));
        }
        let shed = *self.knobs.shed_with_pushback.lock().unwrap();
        if let Some(pushback) = shed {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("grpc-retry-pushback-ms", pushback.parse().unwrap());
            return Err(Status::with_metadata(
                tonic::Code::ResourceExhausted,
                format!("{} is overloaded", self.name),
                metadata,
            ));
        }
        self.knobs.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::ListAccountsResponse {
            usernames: vec![self.name.clone()],
            next_page_token: String::new(),
        }))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        let name = self.name.clone();
        let after = request.into_inner().after_sequence;
        let stream = futures::stream::unfold(after, move |seq| {
            let name = name.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let next = seq + 1;
                Some((
                    Ok(pb::Message {
                        id: next,
                        sequence: next,
                        sender: name,
                        ..Default::default()
                    }),
                    next,
                ))
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_account(
        &self,
        _: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn login(
        &self,
        _: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn logout(
        &self,
        _: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn send_message(
        &self,
        _: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn fetch_messages(
        &self,
        _: Request<pb::FetchMessagesRequest>,
    ) -> Result<Response<pb::FetchMessagesResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn ack_messages(
        &self,
        _: Request<pb::AckMessagesRequest>,
    ) -> Result<Response<pb::AckMessagesResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
    async fn delete_account(
        &self,
        _: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        Err(Status::unimplemented("test replica"))
    }
}

/// A running test replica.
pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    reporter: HealthReporter,
    runtime: Option<Runtime>,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl Replica {
    /// Starts a replica on a free port of 127.0.0.1.
    pub fn start(name: &str) -> Self {
        Self::start_on(name, "127.0.0.1:0".parse().unwrap(), Arc::default())
    }

    /// Starts a replica on a free port of 127.0.0.1 that serves over TLS only.
    pub fn start_tls(name: &str, tls: tonic::transport::ServerTlsConfig) -> Self {
        Self::start_with(
            name,
            "127.0.0.1:0".parse().unwrap(),
            Arc::default(),
            Some(tls),
        )
    }

    /// Starts a replica on `addr` (e.g. to restart one on its old port).
    pub fn start_on(name: &str, addr: SocketAddr, knobs: Arc<Knobs>) -> Self {
        Self::start_with(name, addr, knobs, None)
    }

    /// Starts a replica on `addr`, over TLS when `tls` is given.
    fn start_with(
        name: &str,
        addr: SocketAddr,
        knobs: Arc<Knobs>,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (reporter, health) = tonic_health::server::health_reporter();
        let chat = TestChat {
            name: name.to_owned(),
            knobs: knobs.clone(),
        };
        let listener = {
            let _entered = runtime.enter();
            bind(addr).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls).expect("server TLS configuration");
        }
        runtime.spawn(async move {
            let _ = server
                .add_service(health)
                .add_service(ChatServiceServer::new(chat))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Self {
            name: name.to_owned(),
            addr,
            knobs,
            reporter,
            runtime: Some(runtime),
        }
    }

    /// Sets the standard health status of the whole server (service `""`).
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            GrpcStatus::Serving
        } else {
            GrpcStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }

    /// `ListAccounts` calls served so far.
    pub fn calls(&self) -> usize {
        self.knobs.calls.load(Ordering::SeqCst)
    }

    /// Kills the replica: its runtime, listener and connections go at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Starts a new replica on the same address with the same knobs.
    pub fn restart(&self) -> Self {
        Self::start_on(&self.name, self.addr, self.knobs.clone())
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP listener that accepts connections and never answers — a frozen
/// (SIGSTOP-ed) server as a client sees it.
pub struct Frozen {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Frozen {
    pub async fn start() -> Self {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        Self { addr, task }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on 127.0.0.1 where nothing listens.
pub fn dead_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Makes the app call; returns the name of the replica that answered.
pub async fn app_call(client: &mut ChatServiceClient<Balancer>) -> Result<String, Status> {
    let reply = client
        .list_accounts(pb::ListAccountsRequest::default())
        .await?
        .into_inner();
    Ok(reply.usernames.into_iter().next().unwrap_or_default())
}

/// Probe rounds until `done` holds for the snapshot, at most `limit`.
pub async fn wait_until(
    lb: &Balancer,
    limit: Duration,
    what: &str,
    done: impl Fn(&[EndpointSnapshot]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        if done(&lb.snapshot()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting until {what}: {:#?}",
            lb.snapshot()
        );
        lb.wait_for_probe_round().await;
    }
}

/// Probe rounds until every endpoint is healthy, at most `limit`.
pub async fn wait_all_healthy(lb: &Balancer, limit: Duration) {
    wait_until(lb, limit, "every endpoint healthy", |s| {
        s.iter()
            .all(|e| e.state == chat_lb_client::EndpointState::Healthy)
    })
    .await;
}

/// Waits, without triggering probes, until the endpoint at `addr` is in `state`.
pub async fn wait_for_state(
    lb: &Balancer,
    addr: SocketAddr,
    state: chat_lb_client::EndpointState,
    limit: Duration,
) {
    let what = format!("{addr} is {state}");
    wait_for_change(lb, limit, &what, |snapshot| {
        snapshot
            .iter()
            .any(|e| e.address == addr && e.state == state)
    })
    .await;
}

/// Waits, without triggering probes, until `done` holds for the snapshot.
pub async fn wait_for_change(
    lb: &Balancer,
    limit: Duration,
    what: &str,
    done: impl Fn(&[EndpointSnapshot]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let changed = lb.changed();
        if done(&lb.snapshot()) {
            return;
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            panic!("timed out waiting until {what}: {:#?}", lb.snapshot());
        }
    }
}

/// The snapshot of the endpoint at `addr`.
pub fn endpoint(lb: &Balancer, addr: SocketAddr) -> EndpointSnapshot {
    lb.snapshot()
        .into_iter()
        .find(|e| e.address == addr)
        .unwrap_or_else(|| panic!("no endpoint {addr}"))
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
