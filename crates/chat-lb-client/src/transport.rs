//! What an endpoint sends its attempts over.
//!
//! An endpoint's [`Transport`] is, by default, its own HTTP/2 connection (see
//! `http2`), or a lazily connected tonic `Channel` under a
//! `configure_endpoint` hook (see `connect`). Anything that is a cloneable
//! `tower::Service<http::Request<tonic::body::Body>>` answering
//! `http::Response<tonic::body::Body>` can stand in for it: the balancer's tests
//! give every address an in-memory service ([`crate::Builder::transport`]), so
//! the balancing logic runs without sockets, on tokio's paused clock.
//!
//! Over an endpoint's own connection sending is part of the attempt's
//! future; a tonic channel (under a hook) or a replacement transport (a trait
//! object) costs one boxed future per attempt. Calling a shared `tower`
//! service takes a handle of one's own (services are called through `&mut`),
//! and a fresh clone of a tonic `Channel` is not free: its buffer handle
//! allocates the future that waits for room in the buffer's queue the first
//! time it is used, and cloning and dropping it touch counters every caller
//! shares. So [`ServiceTransport`] keeps the handles it made for reuse (see
//! [`ServiceTransport::send`]).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use futures::future::{BoxFuture, FutureExt, TryFutureExt};
use tonic::{body::Body, transport::Channel};
use tower::{Service, ServiceExt};

use crate::{error::BoxError, http2::Http2Connection};

type Response = http::Response<Body>;

/// Why an attempt got no response headers.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The transport could not take the request (e.g. no connection).
    NotReady(BoxError),
    /// The request failed after the transport took it.
    Failed(BoxError),
}

impl SendError {
    /// The error, whichever it is.
    fn into_inner(self) -> BoxError {
        match self {
            SendError::NotReady(error) | SendError::Failed(error) => error,
        }
    }
}

/// What one endpoint's attempts go over.
pub(crate) enum EndpointTransport {
    /// Its own HTTP/2 connection, the default.
    Http2(Arc<Http2Connection>),
    /// Its own tonic channel (under a `configure_endpoint` hook).
    Channel(ServiceTransport<Channel>),
    /// The transport the builder made for its address (see
    /// `Builder::transport`).
    Given(Arc<dyn Transport>),
}

impl EndpointTransport {
    /// The transport of an endpoint reached over `channel`, unless the
    /// builder `given` one for its address.
    pub fn new(channel: &EndpointChannel, given: Option<Arc<dyn Transport>>) -> Self {
        match (given, &channel.0) {
            (Some(given), _) => EndpointTransport::Given(given),
            (None, Kind::Http2(connection)) => EndpointTransport::Http2(connection.clone()),
            (None, Kind::Channel(channel)) => {
                EndpointTransport::Channel(ServiceTransport::new(channel.clone()))
            }
        }
    }

    /// Whether requests sent over it need the call's extensions. The
    /// endpoint's own connection or channel reads none: tonic's channel reads
    /// none, and hyper's HTTP/2 client only its extended-`CONNECT` protocol,
    /// which no gRPC call carries. A given transport (a test's service) gets
    /// them all.
    pub fn reads_extensions(&self) -> bool {
        matches!(self, EndpointTransport::Given(_))
    }

    /// Sends a request; resolves at its response headers. Only the own
    /// connection's future is part of this one (and so of every call's): a
    /// channel's, several times larger, is boxed, as it is used only under a
    /// hook.
    pub async fn send(&self, request: http::Request<Body>) -> Result<Response, SendError> {
        match self {
            EndpointTransport::Http2(connection) => connection.send(request).await,
            EndpointTransport::Channel(channel) => Box::pin(channel.call(request)).await,
            EndpointTransport::Given(given) => given.send(request).await,
        }
    }
}

impl std::fmt::Debug for EndpointTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointTransport::Http2(_) => "Http2",
            EndpointTransport::Channel(_) => "Channel",
            EndpointTransport::Given(_) => "Given",
        })
    }
}

/// A channel to one endpoint: the connection its calls use, for its health
/// probes ([`ProbeTarget::channel`](crate::ProbeTarget::channel)). Any tonic
/// client can be made over it (`HealthClient::new(target.channel.clone())`).
///
/// It is the endpoint's own HTTP/2 connection, or a tonic `Channel` under a
/// [`configure_endpoint`](crate::Builder::configure_endpoint) hook.
#[derive(Debug, Clone)]
pub struct EndpointChannel(Kind);

#[derive(Debug, Clone)]
enum Kind {
    Http2(Arc<Http2Connection>),
    Channel(Channel),
}

impl EndpointChannel {
    /// Over an endpoint's own HTTP/2 connection.
    pub(crate) fn http2(connection: Arc<Http2Connection>) -> Self {
        Self(Kind::Http2(connection))
    }
}

impl From<Channel> for EndpointChannel {
    /// Over a tonic channel.
    fn from(channel: Channel) -> Self {
        Self(Kind::Channel(channel))
    }
}

impl Service<http::Request<Body>> for EndpointChannel {
    type Response = Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response, BoxError>>;

    /// A tonic channel's readiness; the own connection is always ready (it
    /// connects, or fails, when a request comes).
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.0 {
            Kind::Http2(_) => Poll::Ready(Ok(())),
            Kind::Channel(channel) => channel.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match &mut self.0 {
            Kind::Http2(connection) => {
                let connection = connection.clone();
                async move {
                    connection
                        .send(request)
                        .await
                        .map_err(SendError::into_inner)
                }
                .boxed()
            }
            Kind::Channel(channel) => channel.call(request).map_err(Into::into).boxed(),
        }
    }
}

/// This client's part of the `user-agent` header (gRPC clients name
/// themselves there, as a tonic channel does with `tonic/<version>`, which
/// under a hook follows ours).
const USER_AGENT: &str = concat!("chat-lb-client/", env!("CARGO_PKG_VERSION"));

/// Names this client in the `user-agent` header: after the caller's own, if
/// the request has one. Done once per call, on the call's own request head
/// (`Call::new`), which has room for it: each attempt's copy of the head is
/// sized to fit, so adding it there would grow every copy.
pub(crate) fn set_user_agent(headers: &mut http::HeaderMap) {
    let ours = http::HeaderValue::from_static(USER_AGENT);
    if let Ok(Some(theirs)) = headers.try_insert(http::header::USER_AGENT, ours) {
        let mut both = theirs.as_bytes().to_vec();
        both.push(b' ');
        both.extend_from_slice(USER_AGENT.as_bytes());
        if let Ok(both) = http::HeaderValue::from_bytes(&both) {
            headers.insert(http::header::USER_AGENT, both);
        }
    }
}

/// Sends one endpoint's attempts.
pub(crate) trait Transport: Send + Sync + 'static {
    /// Sends a request; resolves at its response headers.
    fn send(&self, request: http::Request<Body>) -> BoxFuture<'_, Result<Response, SendError>>;
}

/// The most idle handles a [`ServiceTransport`] keeps: more than the calls an
/// endpoint usually starts at once, few enough to hold little memory.
const MAX_IDLE_HANDLES: usize = 64;

/// A `tower::Service` as a transport (a tonic `Channel`, or a test's service).
pub(crate) struct ServiceTransport<S> {
    service: S,
    /// Handles (clones of `service`) that are ready to be reused.
    idle: Mutex<Vec<S>>,
}

impl<S: Clone> ServiceTransport<S> {
    /// Sends over `service` (and clones of it).
    pub fn new(service: S) -> Self {
        Self {
            service,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle handle, or a new clone when none is idle.
    fn take(&self) -> S {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        idle.unwrap_or_else(|| self.service.clone())
    }

    /// Keeps `handle` for the next call (unless enough are kept).
    fn give_back(&self, handle: S) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_HANDLES {
            idle.push(handle);
        }
    }
}

impl<S> ServiceTransport<S>
where
    S: Service<http::Request<Body>, Response = Response> + Clone,
    S::Error: Into<BoxError>,
{
    /// Takes a handle, waits until the service can take the request, and gives
    /// the handle back as soon as the request is in: a handle is then as good
    /// as new (a tonic `Channel`'s has used up its slot in the queue). A
    /// handle whose service failed to get ready is dropped, not kept.
    pub async fn call(&self, request: http::Request<Body>) -> Result<Response, SendError> {
        let mut handle = self.take();
        if let Err(error) = handle.ready().await {
            return Err(SendError::NotReady(error.into()));
        }
        let response = handle.call(request);
        self.give_back(handle);
        response
            .await
            .map_err(|error| SendError::Failed(error.into()))
    }
}

impl<S> Transport for ServiceTransport<S>
where
    S: Service<http::Request<Body>, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    /// [`ServiceTransport::call`], boxed.
    fn send(&self, request: http::Request<Body>) -> BoxFuture<'_, Result<Response, SendError>> {
        Box::pin(self.call(request))
    }
}

/// Makes each endpoint's transport from its address, when set by the builder.
pub(crate) type MakeTransport = Arc<dyn Fn(SocketAddr) -> Arc<dyn Transport> + Send + Sync>;

/// A [`MakeTransport`] from a function giving each address its service.
pub(crate) fn from_services<F, S>(make: F) -> MakeTransport
where
    F: Fn(SocketAddr) -> S + Send + Sync + 'static,
    S: Service<http::Request<Body>, Response = Response> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
{
    Arc::new(move |addr| Arc::new(ServiceTransport::new(make(addr))) as Arc<dyn Transport>)
}

impl std::fmt::Debug for dyn Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Transport")
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        task::{Context, Poll},
    };

    use super::*;

    #[test]
    fn a_request_names_this_client_after_the_callers_own_user_agent() {
        let mut headers = http::HeaderMap::new();
        set_user_agent(&mut headers);
        assert_eq!(headers[http::header::USER_AGENT], USER_AGENT);
        assert!(USER_AGENT.starts_with("chat-lb-client/"));

        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::USER_AGENT, "chat-cli/1".parse().unwrap());
        set_user_agent(&mut headers);
        assert_eq!(
            headers[http::header::USER_AGENT],
            format!("chat-cli/1 {USER_AGENT}").as_str()
        );
        assert_eq!(headers.get_all(http::header::USER_AGENT).iter().count(), 1);
    }

    /// A service that counts its clones and fails to get ready on demand.
    struct Counted {
        clones: Arc<AtomicUsize>,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Clone for Counted {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Self {
                clones: self.clones.clone(),
                broken: self.broken.clone(),
            }
        }
    }

    impl Service<http::Request<Body>> for Counted {
        type Response = Response;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            if self.broken.load(Ordering::SeqCst) {
                return Poll::Ready(Err("closed".into()));
            }
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            std::future::ready(Ok(http::Response::new(Body::empty())))
        }
    }

    #[tokio::test]
    async fn handles_are_reused_and_broken_ones_dropped() {
        let clones = Arc::new(AtomicUsize::new(0));
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let transport = ServiceTransport::new(Counted {
            clones: clones.clone(),
            broken: broken.clone(),
        });
        let request = || http::Request::new(Body::empty());
        for _ in 0..100 {
            assert!(transport.send(request()).await.is_ok());
        }
        assert_eq!(clones.load(Ordering::SeqCst), 1, "one handle, reused");
        // Two calls at once need two handles; both are kept.
        let (a, b) = (transport.take(), transport.take());
        assert_eq!(clones.load(Ordering::SeqCst), 2);
        transport.give_back(a);
        transport.give_back(b);
        assert_eq!(transport.idle.lock().unwrap().len(), 2);
        // A handle whose service cannot get ready is not kept.
        broken.store(true, Ordering::SeqCst);
        assert!(matches!(
            transport.send(request()).await,
            Err(SendError::NotReady(_))
        ));
        assert_eq!(transport.idle.lock().unwrap().len(), 1);
    }
}
