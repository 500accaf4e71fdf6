//! Fault injection, for tests and benchmarks only: a tower layer around the gRPC router
//! that answers a share of chat calls with `INTERNAL` (`--inject-error-rate`) and stalls
//! a share of them before they are handled (`--inject-stall`, `--inject-stall-rate`).
//!
//! Only `chat.v1.ChatService` calls are touched, and not its `HealthCheck`: health
//! checks (both the chat `HealthCheck` and `grpc.health.v1`) and reflection always
//! answer truthfully, so a balancer sees a replica that is up but misbehaves. Each call
//! draws its own chances: a call may be both stalled and failed (the stall comes
//! first). Off unless a flag asks for it.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use futures::future::BoxFuture;
use tonic::body::Body;

/// What to inject into chat calls.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultInjection {
    /// The share of chat calls answered `INTERNAL` without being handled (0 to 1).
    pub error_rate: f64,
    /// How long a stalled call waits before it is handled.
    pub stall: Option<Duration>,
    /// The share of chat calls stalled by `stall` (0 to 1).
    pub stall_rate: f64,
}

impl FaultInjection {
    /// Whether anything is injected at all.
    pub fn is_active(&self) -> bool {
        self.error_rate > 0.0 || (self.stall.is_some() && self.stall_rate > 0.0)
    }

    /// The layer that injects these faults, or `None` when nothing is injected (so a
    /// normal replica pays nothing for it).
    pub fn layer(self) -> Option<FaultLayer> {
        self.is_active().then_some(FaultLayer { faults: self })
    }
}

/// Draws whether an event of probability `rate` happens.
fn chance(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

/// The layer of [`FaultInjection`].
#[derive(Debug, Clone, Copy)]
pub struct FaultLayer {
    faults: FaultInjection,
}

impl<S> tower::Layer<S> for FaultLayer {
    type Service = Faulty<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Faulty {
            inner,
            faults: self.faults,
        }
    }
}

/// The service of [`FaultLayer`].
#[derive(Debug, Clone)]
pub struct Faulty<S> {
    inner: S,
    faults: FaultInjection,
}

impl<S> tower::Service<http::Request<Body>> for Faulty<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let faultable = crate::paths::is_chat_work(request.uri().path());
        let stall = self
            .faults
            .stall
            .filter(|_| faultable && chance(self.faults.stall_rate));
        let fail = faultable && chance(self.faults.error_rate);
        if stall.is_none() && !fail {
            return Box::pin(self.inner.call(request));
        }
        // The inner service was made ready for this call: take it, leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            if let Some(stall) = stall {
                tokio::time::sleep(stall).await;
            }
            if fail {
                tracing::debug!(path = request.uri().path(), "injected INTERNAL");
                return Ok(
                    tonic::Status::internal("injected fault (--inject-error-rate)").into_http(),
                );
            }
            inner.call(request).await
        })
    }
}

/// A clap parser of a rate: a number from 0 to 1.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err("must be from 0 to 1".into());
    }
    Ok(rate)
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use tower::{Layer, ServiceExt};

    /// A router stand-in that answers OK and counts the calls it handled.
    fn ok_router(
        handled: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> impl tower::Service<
        http::Request<Body>,
        Response = http::Response<Body>,
        Error = Infallible,
        Future = std::future::Ready<Result<http::Response<Body>, Infallible>>,
    > + Clone
    + Send
    + 'static {
        tower::service_fn(move |_request: http::Request<Body>| {
            handled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(http::Response::new(Body::empty())))
        })
    }

    fn request(path: &str) -> http::Request<Body> {
        http::Request::builder()
            .uri(format!("http://replica{path}"))
            .body(Body::empty())
            .expect("request")
    }

    fn grpc_status(response: &http::Response<Body>) -> Option<&str> {
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
    }

    #[tokio::test]
    async fn chat_calls_fail_but_health_and_reflection_never_do() {
        let handled = std::sync::Arc::default();
        let faults = FaultInjection {
            error_rate: 1.0,
            ..FaultInjection::default()
        };
        let layer = faults.layer().expect("active");
        let service = layer.layer(ok_router(std::sync::Arc::clone(&handled)));
        let response = service
            .clone()
            .oneshot(request("/chat.v1.ChatService/SendMessage"))
            .await
            .expect("infallible");
        assert_eq!(grpc_status(&response), Some("13"));
        for path in [
            "/chat.v1.ChatService/HealthCheck",
            "/grpc.health.v1.Health/Check",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        ] {
            let response = service
                .clone()
                .oneshot(request(path))
                .await
                .expect("infallible");
            assert_eq!(grpc_status(&response), None, "{path} untouched");
        }
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_call_waits_then_is_handled() {
        let handled = std::sync::Arc::default();
        let faults = FaultInjection {
            stall: Some(Duration::from_millis(50)),
            stall_rate: 1.0,
            ..FaultInjection::default()
        };
        let service = faults
            .layer()
            .expect("active")
            .layer(ok_router(std::sync::Arc::clone(&handled)));
        let start = tokio::time::Instant::now();
        let response = service
            .oneshot(request("/chat.v1.ChatService/FetchMessages"))
            .await
            .expect("infallible");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!(grpc_status(&response), None);
        assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn nothing_injected_means_no_layer_and_rates_are_checked() {
        assert!(FaultInjection::default().layer().is_none());
        let stall_without_rate = FaultInjection {
            stall: Some(Duration::from_millis(5)),
            ..FaultInjection::default()
        };
        assert!(stall_without_rate.layer().is_none());
        assert_eq!(parse_rate("0.2"), Ok(0.2));
        assert!(parse_rate("1.5").is_err());
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").is_err());
    }
}
