//! Load shedding: a replica answers the chat calls it has no room for at once, with
//! `RESOURCE_EXHAUSTED` and a `grpc-retry-pushback-ms` trailer, instead of queueing
//! them without bound.
//!
//! At most `--max-concurrent-rpcs` chat calls run at once ([`ShedLayer`], a tower
//! layer around the router, holding a [`tokio::sync::Semaphore`] permit per call until
//! its handler has answered). A call beyond that is answered trailers-only, without
//! running its handler, so the caller (or its balancer) can send it elsewhere: the
//! answer names the limit, and its `grpc-retry-pushback-ms` (gRPC's standard retry
//! pushback, see gRPC proposal A6) tells how long to leave this replica alone:
//! twice the recent mean handling time of the calls it admitted (by then a slot is
//! likely free), at least [`MIN_PUSHBACK`] and at most [`MAX_PUSHBACK`].
//!
//! What counts: the unary `chat.v1.ChatService` calls. Never counted, never shed:
//! - health checks (the chat `HealthCheck` RPC and `grpc.health.v1`): a balancer must
//!   keep seeing a busy replica as alive, or it would eject it and pile its load onto
//!   the others;
//! - reflection, which operators use to look at a replica in trouble;
//! - `Subscribe` streams: they live for hours and are idle most of that time, so
//!   counting them would let a few hundred quiet subscribers shed every unary call.
//!   They are bounded by `--max-connections` and the per-connection stream limit
//!   ([`crate::config::limits::MAX_STREAMS_PER_CONNECTION`]) instead, and the store
//!   reads they make are paced by the hub's one poll per interval.
//!
//! Each shed call is counted in `chat_shed_calls_total` (see [`crate::metrics`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures::future::{BoxFuture, Either, Ready, ready};
use tokio::sync::Semaphore;
use tonic::{Status, body::Body};

/// The pushback's floor: below it a balancer would come back before anything changed.
pub const MIN_PUSHBACK: Duration = Duration::from_millis(10);
/// The pushback's ceiling: a replica that is slow for long is a case for health
/// checks and outlier detection, not for pushback.
pub const MAX_PUSHBACK: Duration = Duration::from_secs(1);
/// The trailer (gRPC A6) that tells a client when it may retry.
pub const PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";

/// The default `--max-concurrent-rpcs`: 64 per CPU. A chat call is one short store
/// operation (an argon2 hash at most, which has its own pool): with 64 calls per core
/// in flight a replica is saturated, and a call beyond them only waits in line, adding
/// its wait to every caller's latency. The multiple of the CPU count keeps the limit
/// out of the way of any load the replica can serve at its normal latency.
pub fn default_max_concurrent_rpcs() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from) * 64
}

/// Whether calls to `path` count against the limit.
fn counted(path: &str) -> bool {
    crate::paths::is_chat_work(path) && path != crate::paths::SUBSCRIBE
}

/// What every clone of the layer shares.
#[derive(Debug)]
struct Shared {
    limit: usize,
    slots: Arc<Semaphore>,
    /// Exponentially weighted mean handling time of admitted calls, in nanoseconds.
    mean_handling_ns: AtomicU64,
}

impl Shared {
    /// Folds one admitted call's handling time into the mean (weight 1/8; updates that
    /// race may lose one sample, which a mean can afford).
    fn record(&self, elapsed: Duration) {
        let sample = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let mean = self.mean_handling_ns.load(Ordering::Relaxed);
        let next = if mean == 0 {
            sample
        } else {
            mean - mean / 8 + sample / 8
        };
        self.mean_handling_ns.store(next, Ordering::Relaxed);
    }

    /// The pushback to give now (see the module docs).
    fn pushback(&self) -> Duration {
        let mean = Duration::from_nanos(self.mean_handling_ns.load(Ordering::Relaxed));
        (mean * 2).clamp(MIN_PUSHBACK, MAX_PUSHBACK)
    }

    /// The answer to a call there is no room for.
    fn shed(&self) -> http::Response<Body> {
        let pushback = self.pushback();
        crate::metrics::record_shed();
        tracing::debug!(
            limit = self.limit,
            ?pushback,
            "call shed: replica at its limit"
        );
        let status = Status::resource_exhausted(format!(
            "replica overloaded: {} chat calls in flight (--max-concurrent-rpcs); retry elsewhere or after the pushback",
            self.limit
        ));
        let mut response = status.into_http();
        let millis = pushback.as_millis().max(1).to_string();
        if let Ok(value) = http::HeaderValue::from_str(&millis) {
            response.headers_mut().insert(PUSHBACK_HEADER, value);
        }
        response
    }
}

/// The layer that sheds chat calls beyond the limit (see the module docs).
#[derive(Debug, Clone)]
pub struct ShedLayer {
    shared: Arc<Shared>,
}

impl ShedLayer {
    /// At most `limit` (at least 1) chat calls in flight.
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Self {
            shared: Arc::new(Shared {
                limit,
                slots: Arc::new(Semaphore::new(limit)),
                mean_handling_ns: AtomicU64::new(0),
            }),
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service of [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct Shed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> tower::Service<http::Request<Body>> for Shed<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    /// An uncounted call's own future, unboxed (most calls are health checks); a shed
    /// call's ready answer; or an admitted call's future, which holds its slot.
    type Future = Either<
        S::Future,
        Either<
            Ready<Result<Self::Response, S::Error>>,
            BoxFuture<'static, Result<Self::Response, S::Error>>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if !counted(request.uri().path()) {
            return Either::Left(self.inner.call(request));
        }
        let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else {
            return Either::Right(Either::Left(ready(Ok(self.shared.shed()))));
        };
        let shared = self.shared.clone();
        let response = self.inner.call(request);
        Either::Right(Either::Right(Box::pin(async move {
            let start = Instant::now();
            let response = response.await;
            shared.record(start.elapsed());
            drop(permit);
            response
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn only_unary_chat_calls_count() {
        assert!(counted("/chat.v1.ChatService/SendMessage"));
        assert!(counted("/chat.v1.ChatService/Login"));
        assert!(!counted("/chat.v1.ChatService/HealthCheck"));
        assert!(!counted("/chat.v1.ChatService/Subscribe"));
        assert!(!counted("/grpc.health.v1.Health/Check"));
        assert!(!counted(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }

    #[test]
    fn the_pushback_follows_the_handling_time_within_its_bounds() {
        let layer = ShedLayer::new(1);
        let shared = &layer.shared;
        assert_eq!(shared.pushback(), MIN_PUSHBACK, "nothing measured yet");
        shared.record(Duration::from_millis(30));
        assert_eq!(shared.pushback(), Duration::from_millis(60));
        for _ in 0..100 {
            shared.record(Duration::from_secs(5));
        }
        assert_eq!(shared.pushback(), MAX_PUSHBACK);
    }

    type Answer = BoxFuture<'static, Result<http::Response<Body>, std::convert::Infallible>>;

    /// A handler that answers when told to (`notify_waiters` on the gate).
    fn gated() -> (
        impl tower::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = std::convert::Infallible,
            Future = Answer,
        > + Clone,
        Arc<tokio::sync::Notify>,
    ) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let open = gate.clone();
        let service = tower::service_fn(move |_: http::Request<Body>| -> Answer {
            let open = open.clone();
            Box::pin(async move {
                open.notified().await;
                Ok(http::Response::new(Body::empty()))
            })
        });
        (service, gate)
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://replica{path}"))
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn calls_beyond_the_limit_are_answered_at_once_with_pushback_health_never() {
        let (handler, gate) = gated();
        let mut service = ShedLayer::new(1).layer(handler);
        let send = "/chat.v1.ChatService/SendMessage";
        let first = service.ready().await.unwrap().call(request(send));
        let first = tokio::spawn(first);
        tokio::task::yield_now().await;

        let shed = service
            .ready()
            .await
            .unwrap()
            .call(request(send))
            .await
            .unwrap();
        let status = Status::from_header_map(shed.headers()).expect("trailers-only");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("1 chat calls in flight"),
            "{status:?}"
        );
        assert_eq!(shed.headers()[PUSHBACK_HEADER], "10");

        // A health check goes through while the slot is taken.
        let health = service
            .ready()
            .await
            .unwrap()
            .call(request("/chat.v1.ChatService/HealthCheck"));
        let health = tokio::spawn(health);
        tokio::task::yield_now().await;
        gate.notify_waiters();
        assert!(first.await.unwrap().is_ok());
        assert!(health.await.unwrap().is_ok());

        // The slot is free again.
        let next = tokio::spawn(service.ready().await.unwrap().call(request(send)));
        tokio::task::yield_now().await;
        gate.notify_waiters();
        let answer = next.await.unwrap().unwrap();
        assert!(Status::from_header_map(answer.headers()).is_none());
    }
}
