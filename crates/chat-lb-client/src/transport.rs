//! What an endpoint sends its attempts over.
//!
//! An endpoint's [`Transport`] is, by default, its own lazily connected tonic
//! `Channel` (see `connect`). Anything that is a cloneable
//! `tower::Service<http::Request<tonic::body::Body>>` answering
//! `http::Response<tonic::body::Body>` can stand in for it: the balancer's tests
//! give every address an in-memory service ([`crate::Builder::transport`]), so
//! the balancing logic runs without sockets, on tokio's paused clock.
//!
//! Sending costs one boxed future per attempt, beside the clone of the service
//! that `tower` needs anyway to call a shared service.

use std::{net::SocketAddr, sync::Arc};

use futures::future::BoxFuture;
use tonic::body::Body;
use tower::{Service, ServiceExt};

use crate::error::BoxError;

type Response = http::Response<Body>;

/// Why an attempt got no response headers.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The transport could not take the request (e.g. no connection).
    NotReady(BoxError),
    /// The request failed after the transport took it.
    Failed(BoxError),
}

/// Sends one endpoint's attempts.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Sends a request; resolves at its response headers.
    fn send(&self, request: http::Request<Body>)
    -> BoxFuture<'static, Result<Response, SendError>>;
}

/// A `tower::Service` as a transport (a tonic `Channel`, or a test's service).
pub(crate) struct ServiceTransport<S>(pub S);

impl<S> Transport for ServiceTransport<S>
where
    S: Service<http::Request<Body>, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    fn send(
        &self,
        request: http::Request<Body>,
    ) -> BoxFuture<'static, Result<Response, SendError>> {
        let mut service = self.0.clone();
        Box::pin(async move {
            if let Err(error) = service.ready().await {
                return Err(SendError::NotReady(error.into()));
            }
            service
                .call(request)
                .await
                .map_err(|error| SendError::Failed(error.into()))
        })
    }
}

/// Makes the transport of each endpoint address, in place of its channel.
pub(crate) type MakeTransport = Arc<dyn Fn(SocketAddr) -> Arc<dyn Transport> + Send + Sync>;

/// A [`MakeTransport`] from a function giving each address its service.
pub(crate) fn from_services<F, S>(make: F) -> MakeTransport
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Service<http::Request<Body>, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    Arc::new(move |addr| Arc::new(ServiceTransport(make(addr))) as Arc<dyn Transport>)
}

impl std::fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}
