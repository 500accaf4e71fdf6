//! A non-chat gRPC client on the `chat-lb-client` balancer.
//!
//! The service is a tiny key-value store, `kv.v1.Kv` with `Get` and `Put`,
//! written by hand — no `.proto` file: the messages derive `prost::Message`, the
//! server is a `tower::Service` using `tonic::server::Grpc`, and the client uses
//! `tonic::client::Grpc`, exactly what tonic's code generator would emit.
//!
//! The example starts three replicas on 127.0.0.1 (sharing one in-memory
//! store, as replicas share a database), each with the standard gRPC health
//! service; balances calls over them with `GrpcHealthProbe` and custom settings;
//! takes one replica out with `NOT_SERVING` and kills another; and prints the
//! balancer's snapshot along the way. It ends by itself in a few seconds.
//!
//! Run it with `cargo run --example kv_balanced` (add `RUST_LOG=chat_lb_client=debug`
//! for the balancer's own logs).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use chat_lb_client::{Balancer, EndpointState, GrpcHealthProbe, Policy, RetrySafe};
use tonic::{
    Request, Response, Status,
    body::Body,
    codegen::{BoxFuture, Service, http},
    server::{NamedService, UnaryService},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tonic_prost::ProstCodec;

// ---- the contract ------------------------------------------------------------

const SERVICE: &str = "kv.v1.Kv";
const GET: &str = "/kv.v1.Kv/Get";
const PUT: &str = "/kv.v1.Kv/Put";

#[derive(Clone, PartialEq, prost::Message)]
struct GetRequest {
    #[prost(string, tag = "1")]
    key: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PutRequest {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Reply {
    #[prost(string, optional, tag = "1")]
    value: Option<String>,
    /// Which replica answered (for the demonstration).
    #[prost(string, tag = "2")]
    replica: String,
}

// ---- the server --------------------------------------------------------------

type Store = Arc<Mutex<HashMap<String, String>>>;

#[derive(Clone)]
struct KvServer {
    replica: String,
    store: Store,
}

impl KvServer {
    fn reply(&self, value: Option<String>) -> Result<Response<Reply>, Status> {
        Ok(Response::new(Reply {
            value,
            replica: self.replica.clone(),
        }))
    }
}

/// One unary method: `apply` runs the request against the store, and the reply
/// carries the value it returns.
struct Method<R>(
    KvServer,
    fn(&mut HashMap<String, String>, R) -> Option<String>,
);

impl<R: Send + 'static> UnaryService<R> for Method<R> {
    type Response = Reply;
    type Future = BoxFuture<Response<Reply>, Status>;

    fn call(&mut self, request: Request<R>) -> Self::Future {
        let (server, apply) = (self.0.clone(), self.1);
        Box::pin(async move {
            let value = {
                let mut store =
                    (server.store.lock()).map_err(|_| Status::internal("store poisoned"))?;
                apply(&mut store, request.into_inner())
            };
            server.reply(value)
        })
    }
}

impl Service<http::Request<Body>> for KvServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let server = self.clone();
        Box::pin(async move {
            Ok(match request.uri().path() {
                GET => {
                    let get = Method(server, |store, r: GetRequest| store.get(&r.key).cloned());
                    let codec = ProstCodec::<Reply, GetRequest>::default();
                    tonic::server::Grpc::new(codec).unary(get, request).await
                }
                PUT => {
                    let put = Method(server, |store, r: PutRequest| store.insert(r.key, r.value));
                    let codec = ProstCodec::<Reply, PutRequest>::default();
                    tonic::server::Grpc::new(codec).unary(put, request).await
                }
                other => Status::unimplemented(format!("no method {other}")).into_http(),
            })
        })
    }
}

impl NamedService for KvServer {
    const NAME: &'static str = SERVICE;
}

/// A running replica: its address, its health reporter, and a way to stop it.
struct Replica {
    name: String,
    addr: SocketAddr,
    health: HealthReporter,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

async fn start_replica(name: &str, store: Store) -> std::io::Result<Replica> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kv = KvServer {
        replica: name.to_owned(),
        store,
    };
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let result = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(kv)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            })
            .await;
        if let Err(error) = result {
            eprintln!("replica stopped with an error: {error}");
        }
    });
    Ok(Replica {
        name: name.to_owned(),
        addr,
        health,
        stop: Some(stop),
    })
}

// ---- the client ----------------------------------------------------------------

/// What `tonic-build` would generate for `kv.v1.Kv`, over any transport.
#[derive(Clone)]
struct KvClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> KvClient<T>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    fn new(transport: T) -> Self {
        Self {
            inner: tonic::client::Grpc::new(transport),
        }
    }

    async fn unary<M: prost::Message + Send + Sync + 'static>(
        &mut self,
        message: M,
        path: &'static str,
    ) -> Result<Reply, Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("transport not ready: {}", e.into())))?;
        let codec = ProstCodec::<M, Reply>::default();
        let path = http::uri::PathAndQuery::from_static(path);
        let mut request = Request::new(message);
        request.set_timeout(Duration::from_secs(1));
        Ok(self.inner.unary(request, path, codec).await?.into_inner())
    }

    async fn get(&mut self, key: &str) -> Result<Reply, Status> {
        self.unary(GetRequest { key: key.into() }, GET).await
    }

    async fn put(&mut self, key: &str, value: &str) -> Result<Reply, Status> {
        self.unary(
            PutRequest {
                key: key.into(),
                value: value.into(),
            },
            PUT,
        )
        .await
    }
}

// ---- the demonstration -----------------------------------------------------------

fn print_snapshot(title: &str, lb: &Balancer, replicas: &[Replica]) {
    println!("\n{title}");
    println!(
        "  {:<8} {:<21} {:<12} {:>9} {:>6} {:>6} {:>9}  last error",
        "replica", "address", "state", "latency", "calls", "errors", "ejections"
    );
    for ep in lb.snapshot() {
        let name = replicas
            .iter()
            .find(|r| r.addr == ep.address)
            .map_or("?", |r| r.name.as_str());
        println!(
            "  {:<8} {:<21} {:<12} {:>7.2}ms {:>6} {:>6} {:>9}  {}",
            name,
            ep.address,
            ep.state.to_string(),
            ep.latency_estimate.as_secs_f64() * 1e3,
            ep.calls,
            ep.errors,
            ep.ejections,
            ep.last_error.as_deref().unwrap_or("-"),
        );
    }
}

async fn served_by(
    client: &mut KvClient<Balancer>,
    calls: usize,
) -> Result<HashMap<String, usize>, Status> {
    let mut served = HashMap::new();
    for i in 0..calls {
        let reply = client.get(&format!("key-{}", i % 5)).await?;
        *served.entry(reply.replica).or_insert(0) += 1;
    }
    Ok(served)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "chat_lb_client=warn".into()),
        )
        .init();

    let store = Store::default();
    let mut replicas = Vec::new();
    for name in ["kv-1", "kv-2", "kv-3"] {
        replicas.push(start_replica(name, store.clone()).await?);
    }
    let addresses: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();

    let lb = Balancer::builder()
        .addresses(&addresses.join(","))
        .probe(GrpcHealthProbe::new().service(SERVICE))
        .policy(Policy::PowerOfTwoChoices)
        .probe_interval(Duration::from_millis(200))
        .probe_timeout(Duration::from_millis(100))
        .unhealthy_threshold(2)
        .base_ejection_time(Duration::from_millis(500))
        // Get and Put (set a key to a value) are both idempotent.
        .retry_safe(RetrySafe::prefix("/kv.v1.Kv/"))
        .per_try_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(2))
        .build()?;
    let mut client = KvClient::new(lb.clone());

    lb.wait_for_probe_round().await;
    print_snapshot("after the first probe round:", &lb, &replicas);

    for i in 0..5 {
        client
            .put(&format!("key-{i}"), &format!("value-{i}"))
            .await?;
    }
    let value = client.get("key-3").await?;
    println!("\nkey-3 = {:?} (served by {})", value.value, value.replica);
    println!(
        "100 gets served by: {:?}",
        served_by(&mut client, 100).await?
    );

    // kv-2 reports NOT_SERVING: its Watch stream tells the balancer at once.
    replicas[1]
        .health
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    let mut waited = 0;
    while lb
        .snapshot()
        .iter()
        .any(|e| e.address == replicas[1].addr && e.state != EndpointState::NotServing)
        && waited < 50
    {
        tokio::time::timeout(Duration::from_millis(100), lb.changed())
            .await
            .ok();
        waited += 1;
    }
    println!(
        "\nkv-2 set NOT_SERVING; 100 gets served by: {:?}",
        served_by(&mut client, 100).await?
    );

    // kv-3 stops. Calls keep succeeding: refused connections are retried
    // elsewhere and the replica is ejected at once, then marked unhealthy.
    if let Some(stop) = replicas[2].stop.take() {
        let _ = stop.send(());
    }
    println!(
        "kv-3 stopped;          100 gets served by: {:?}",
        served_by(&mut client, 100).await?
    );
    lb.wait_for_probe_round().await;
    print_snapshot("at the end:", &lb, &replicas);

    for replica in &mut replicas {
        if let Some(stop) = replica.stop.take() {
            let _ = stop.send(());
        }
    }
    Ok(())
}
