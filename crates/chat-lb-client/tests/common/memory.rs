//! Replicas in memory: the test chat service called directly as a
//! `tower::Service` (no sockets, no HTTP/2), behind a [`Net`] that maps
//! addresses to replicas and can refuse connections or freeze. With a balancer
//! built by [`builder`], calls and probes never leave the process and every
//! delay is a tokio timer, so tests run on tokio's paused clock:
//! deterministic, and as fast as the CPU.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use chat_lb_client::{Balancer, BoxError, Builder, HealthProbe, ProbeStatus, ProbeTarget};
use chat_proto::v1::chat_service_server::ChatServiceServer;
use futures::{FutureExt, future::BoxFuture};
use tokio::time::Instant;
use tonic::body::Body;
use tower::Service;

use super::{Knobs, TestChat};

const UP: u8 = 0;
const DOWN: u8 = 1;
const FROZEN: u8 = 2;

/// A replica in memory.
pub struct MemReplica {
    pub name: String,
    pub addr: SocketAddr,
    pub knobs: Arc<Knobs>,
    mode: AtomicU8,
    service: ChatServiceServer<TestChat>,
}

impl MemReplica {
    /// `ListAccounts` calls served so far.
    pub fn calls(&self) -> usize {
        self.knobs.calls.load(Ordering::SeqCst)
    }

    /// Connections to it are refused from now on (calls in flight complete).
    pub fn kill(&self) {
        self.mode.store(DOWN, Ordering::SeqCst);
    }

    /// It answers again.
    pub fn restart(&self) {
        self.mode.store(UP, Ordering::SeqCst);
    }

    /// It takes calls and probes and never answers them — a frozen
    /// (SIGSTOP-ed) server as a client sees it.
    pub fn freeze(&self) {
        self.mode.store(FROZEN, Ordering::SeqCst);
    }

    /// Whether its chat `HealthCheck` says it serves.
    pub fn set_serving(&self, serving: bool) {
        self.knobs
            .chat_not_serving
            .store(!serving, Ordering::SeqCst);
    }
}

/// The addresses of the in-memory replicas.
#[derive(Default)]
pub struct Net {
    replicas: Mutex<HashMap<SocketAddr, Arc<MemReplica>>>,
}

impl Net {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Starts a replica at the next free address of 10.0.0.0/24.
    pub fn start(&self, name: &str) -> Arc<MemReplica> {
        let mut replicas = self.replicas.lock().unwrap();
        let addr = SocketAddr::from(([10, 0, 0, replicas.len() as u8 + 1], 8500));
        let knobs = Arc::new(Knobs::default());
        let chat = TestChat {
            name: name.to_owned(),
            knobs: knobs.clone(),
        };
        let replica = Arc::new(MemReplica {
            name: name.to_owned(),
            addr,
            knobs,
            mode: AtomicU8::new(UP),
            service: ChatServiceServer::new(chat),
        });
        replicas.insert(addr, replica.clone());
        replica
    }

    /// An address where nothing listens.
    pub fn dead_addr(&self) -> SocketAddr {
        SocketAddr::from(([10, 0, 1, 1], 8500))
    }

    /// The replica at `addr`, unless nothing listens there.
    fn at(&self, addr: SocketAddr) -> Option<Arc<MemReplica>> {
        let replica = self.replicas.lock().unwrap().get(&addr).cloned()?;
        (replica.mode.load(Ordering::SeqCst) != DOWN).then_some(replica)
    }
}

fn refused(addr: SocketAddr) -> BoxError {
    let io = std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        format!("connection to {addr} refused"),
    );
    Box::new(tonic::ConnectError(Box::new(io)))
}

/// The transport to one address of the [`Net`].
#[derive(Clone)]
pub struct Wire {
    net: Arc<Net>,
    addr: SocketAddr,
}

impl Wire {
    /// The transport to `addr` on `net`, as the balancer's endpoints get it.
    pub fn to(net: &Arc<Net>, addr: SocketAddr) -> Self {
        Self {
            net: net.clone(),
            addr,
        }
    }
}

impl Service<http::Request<Body>> for Wire {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<http::Response<Body>, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (net, addr) = (self.net.clone(), self.addr);
        async move {
            let Some(replica) = net.at(addr) else {
                return Err(refused(addr));
            };
            if replica.mode.load(Ordering::SeqCst) == FROZEN {
                futures::future::pending::<()>().await;
            }
            let mut service = replica.service.clone();
            Ok(service.call(request).await.unwrap_or_else(|e| match e {}))
        }
        .boxed()
    }
}

/// The chat `HealthCheck` of a replica in memory, as `ChatHealthProbe` sees
/// it: refused when down, no answer when frozen, else its status after its
/// health delay. Either takes 1ms at least, like any round trip, so a test
/// that asks for probe rounds until something changes sees the clock move.
pub struct MemProbe(Arc<Net>);

impl HealthProbe for MemProbe {
    fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
        let (net, addr) = (self.0.clone(), target.address);
        async move {
            let start = Instant::now();
            let Some(replica) = net.at(addr) else {
                // Even a refusal takes a round trip.
                tokio::time::sleep(Duration::from_millis(1)).await;
                return Err(refused(addr));
            };
            if replica.mode.load(Ordering::SeqCst) == FROZEN {
                futures::future::pending::<()>().await;
            }
            let delay = replica.knobs.health_delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay.max(1))).await;
            if replica.knobs.chat_not_serving.load(Ordering::SeqCst) {
                return Ok(ProbeStatus::NotServing {
                    detail: "draining".into(),
                });
            }
            Ok(ProbeStatus::Healthy {
                latency: start.elapsed(),
                detail: replica.name.clone(),
            })
        }
        .boxed()
    }
}

/// A balancer builder whose endpoints are the [`Net`]'s: calls go over
/// [`Wire`]s, probes are [`MemProbe`]s every 100ms with a 200ms timeout.
pub fn builder(net: &Arc<Net>) -> Builder {
    let wires = net.clone();
    Balancer::builder()
        .transport(move |addr| Wire {
            net: wires.clone(),
            addr,
        })
        .probe(MemProbe(net.clone()))
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(200))
}

/// A comma-separated list of the replicas' addresses.
pub fn addresses(replicas: &[&Arc<MemReplica>]) -> String {
    let addresses: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    addresses.join(",")
}
