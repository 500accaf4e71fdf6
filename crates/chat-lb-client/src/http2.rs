//! An endpoint's own HTTP/2 connection, plaintext or TLS: what endpoints send
//! their calls over, instead of a tonic `Channel`.
//!
//! **Why.** A tonic `Channel` is a `tower::Buffer`: each request goes through a
//! queue to a worker task of the channel's, which hands it to hyper's
//! connection task. So every call pays a queue, a oneshot for its response,
//! a semaphore permit, a boxed future and one more task switch, on top of
//! hyper's own queue to its connection task. A balancer already chooses the
//! connection for each call, so it needs none of that: here each request goes
//! straight into hyper's connection (`SendRequest::send_request`), from the
//! caller's own task. On the socket path that saves about 7,000 instructions
//! and 7 allocations per call (see the README's own-cost table).
//!
//! **What it does.** It connects on the first request (TCP with the connect
//! timeout and `TCP_NODELAY`; with TLS, a rustls handshake within the same
//! timeout that must agree on HTTP/2 through ALPN, see `tls/client.rs`; then
//! hyper's HTTP/2 handshake with keepalive pings, also while idle), drives the
//! connection on a task on the balancer's runtime, and sends every request
//! over it. Once the connection has closed
//! (the server went away, a keepalive ping went unanswered, `GOAWAY`), the next
//! request connects again. Requests that arrive while it connects wait for the
//! same attempt; when it fails, they all fail with a connection error, which
//! proves they were never sent (see `classify::never_sent`), and the next
//! request tries again. The connect attempt runs on a task of its own, so a
//! caller that gives up does not stop it halfway.
//!
//! Endpoints with a [`Builder::configure_endpoint`] hook keep tonic's
//! `Channel` (see `connect`): the hook configures a tonic `Endpoint`.
//!
//! [`Builder::configure_endpoint`]: crate::Builder::configure_endpoint

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use futures::future::{BoxFuture, Either, FutureExt, Shared};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    runtime::Handle,
};
use tokio_rustls::{TlsConnector, rustls::ClientConfig};
use tonic::body::Body;

use crate::{
    config::ConnectConfig,
    error::BoxError,
    tls::{ALPN_H2, ClientTls},
    transport::SendError,
};

type Response = http::Response<Body>;

/// A connection attempt that every request waiting for it shares.
type Connecting = Shared<BoxFuture<'static, Result<SendRequest<Body>, ConnectError>>>;

/// Where the connection stands.
enum State {
    /// Not connected: the next request connects.
    Idle,
    /// Connecting; requests wait for this attempt.
    Connecting(Connecting),
    /// Connected (until `is_closed` says otherwise).
    Ready(SendRequest<Body>),
}

/// The connection settings it uses (those of [`ConnectConfig`]).
#[derive(Debug, Clone)]
struct Settings {
    connect_timeout: Duration,
    tcp_nodelay: bool,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Duration,
    tls: Option<Tls>,
}

/// The TLS handshake of one endpoint's connections.
#[derive(Clone)]
struct Tls {
    config: Arc<ClientConfig>,
    /// The name its certificate is verified against.
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// One endpoint's HTTP/2 connection (see the [module docs](self)).
pub(crate) struct Http2Connection {
    addr: SocketAddr,
    /// `addr` as the authority of each request's URI.
    authority: Authority,
    settings: Settings,
    /// Where the connection and its connect attempts run.
    runtime: Handle,
    state: Mutex<State>,
}

impl fmt::Debug for Http2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http2Connection")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Http2Connection {
    /// A connection to `addr`, not connected yet, with `cfg`'s timeouts,
    /// `TCP_NODELAY`, keepalive and TLS (verifying the certificate against
    /// `host_name`, the name `addr` was resolved from, if any: see
    /// [`ClientTls::server_name`]); it connects and runs on `runtime`.
    pub fn new(
        addr: SocketAddr,
        host_name: Option<&str>,
        cfg: &ConnectConfig,
        runtime: Handle,
    ) -> Result<Self, BoxError> {
        let tls = cfg.tls.as_deref().map(|tls: &ClientTls| Tls {
            config: tls.rustls().clone(),
            server_name: tls.server_name(host_name, addr.ip()),
            handshake_timeout: tls.handshake_timeout(),
        });
        Ok(Self {
            addr,
            authority: Authority::try_from(addr.to_string())?,
            settings: Settings {
                connect_timeout: cfg.connect_timeout,
                tcp_nodelay: cfg.tcp_nodelay,
                keepalive_interval: cfg.keepalive_interval,
                keepalive_timeout: cfg.keepalive_timeout,
                tls,
            },
            runtime,
            state: Mutex::new(State::Idle),
        })
    }

    /// Sends `request` (its URI gets this endpoint's scheme and authority);
    /// resolves at its response headers. A connection that cannot be made
    /// fails it with [`SendError::NotReady`].
    ///
    /// Over an open connection the request is sent at once, under the lock
    /// (hyper queues it without waiting, so the lock is held only that long),
    /// and the future is little more than hyper's: it is part of every call's
    /// future. A request that must wait for a connection is boxed instead.
    pub fn send(
        &self,
        mut request: http::Request<Body>,
    ) -> impl Future<Output = Result<Response, SendError>> + Send + '_ {
        self.set_origin(&mut request);
        let mut state = self.lock();
        let connecting = match &mut *state {
            State::Ready(sender) if !sender.is_closed() => {
                let response = sender.send_request(request);
                return Either::Left(async move { answered(response.await) });
            }
            State::Connecting(connecting) => connecting.clone(),
            _ => {
                let connecting = self.connect();
                *state = State::Connecting(connecting.clone());
                connecting
            }
        };
        drop(state);
        Either::Right(self.send_once_connected(connecting, request).boxed())
    }

    /// Sends `request` once `connecting` is done, or fails it with the
    /// connection's error. The first request to see the outcome records it
    /// (a later attempt may have replaced this one already: then it is left
    /// alone).
    async fn send_once_connected(
        &self,
        connecting: Connecting,
        request: http::Request<Body>,
    ) -> Result<Response, SendError> {
        let result = connecting.clone().await;
        let sent = {
            let mut state = self.lock();
            let current = matches!(&*state, State::Connecting(c) if c.ptr_eq(&connecting));
            match result {
                Ok(mut sender) => {
                    let response = sender.send_request(request);
                    if current {
                        *state = State::Ready(sender);
                    }
                    Ok(response)
                }
                Err(error) => {
                    if current {
                        *state = State::Idle;
                    }
                    Err(SendError::NotReady(Box::new(error)))
                }
            }
        };
        answered(sent?.await)
    }

    /// Starts a connection attempt on the runtime; returns its shared outcome.
    fn connect(&self) -> Connecting {
        let (addr, settings) = (self.addr, self.settings.clone());
        let task = self
            .runtime
            .spawn(connect(addr, settings, self.runtime.clone()));
        async move {
            task.await
                .unwrap_or_else(|stopped| Err(ConnectError::new(addr, stopped)))
        }
        .boxed()
        .shared()
    }

    /// Gives `request` this endpoint's scheme and authority (as a tonic
    /// channel's origin does): a tonic client sends only the path.
    fn set_origin(&self, request: &mut http::Request<Body>) {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(match self.settings.tls {
            Some(_) => Scheme::HTTPS,
            None => Scheme::HTTP,
        });
        parts.authority = Some(self.authority.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        // Scheme, authority and path together always make a valid URI.
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A response, or the failure of a request the connection took.
fn answered(
    result: hyper::Result<http::Response<hyper::body::Incoming>>,
) -> Result<Response, SendError> {
    result
        .map(|response| response.map(Body::new))
        .map_err(|error| SendError::Failed(Box::new(error)))
}

/// Connects to `addr` and starts driving the connection on `runtime`.
async fn connect(
    addr: SocketAddr,
    settings: Settings,
    runtime: Handle,
) -> Result<SendRequest<Body>, ConnectError> {
    let fail = |error: io::Error| ConnectError::new(addr, error);
    let tcp = tokio::time::timeout(settings.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| fail(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")))?
        .map_err(fail)?;
    tcp.set_nodelay(settings.tcp_nodelay).map_err(fail)?;
    let Some(tls) = &settings.tls else {
        return handshake(addr, tcp, &settings, runtime).await;
    };
    let connector = TlsConnector::from(tls.config.clone());
    let stream = tokio::time::timeout(
        tls.handshake_timeout,
        connector.connect(tls.server_name.clone(), tcp),
    )
    .await
    .map_err(|_| ConnectError::new(addr, TlsError::HandshakeTimeout))?
    .map_err(fail)?;
    if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(ConnectError::new(addr, TlsError::NoHttp2));
    }
    handshake(addr, stream, &settings, runtime).await
}

/// hyper's HTTP/2 handshake over `io`; the connection then runs on `runtime`.
async fn handshake<T>(
    addr: SocketAddr,
    io: T,
    settings: &Settings,
    runtime: Handle,
) -> Result<SendRequest<Body>, ConnectError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(interval) = settings.keepalive_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(settings.keepalive_timeout)
            .keep_alive_while_idle(true);
    }
    let (sender, connection) = builder
        .handshake(TokioIo::new(io))
        .await
        .map_err(|error| ConnectError::new(addr, error))?;
    runtime.spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(endpoint = %addr, %error, "connection ended");
        }
    });
    Ok(sender)
}

/// A TLS handshake that did not give a connection gRPC can use (rustls's own
/// errors, e.g. a certificate it refused, come as they are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TlsError {
    /// No answer within the handshake timeout.
    #[error("the TLS handshake timed out")]
    HandshakeTimeout,
    /// The server did not agree to HTTP/2 (ALPN `h2`).
    #[error("the server did not agree to HTTP/2 in the TLS handshake")]
    NoHttp2,
}

/// A connection to an endpoint could not be made: no request was sent.
#[derive(Debug, Clone)]
pub(crate) struct ConnectError {
    addr: SocketAddr,
    /// Shared: every request that waited for the attempt gets the error.
    source: Arc<dyn StdError + Send + Sync>,
}

impl ConnectError {
    fn new(addr: SocketAddr, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            addr,
            source: Arc::new(source),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot connect to {}", self.addr)
    }
}

impl StdError for ConnectError {
    /// The cause itself (not a wrapper of it), so that its type can be
    /// recognised (see `classify::never_sent`).
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::StreamExt;
    use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;
    use crate::{classify::never_sent, transport::EndpointChannel};

    /// A gRPC health server on 127.0.0.1 that counts the connections it
    /// accepts; `stop` closes them and returns once they are closed.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        stop: oneshot::Sender<()>,
        task: JoinHandle<()>,
    }

    impl Server {
        async fn start(listener: TcpListener) -> Self {
            let addr = listener.local_addr().unwrap();
            let (_reporter, health) = tonic_health::server::health_reporter();
            let accepted = Arc::new(AtomicUsize::new(0));
            let counter = accepted.clone();
            let incoming =
                tokio_stream::wrappers::TcpListenerStream::new(listener).inspect(move |_| {
                    counter.fetch_add(1, Ordering::SeqCst);
                });
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(health)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopped.await;
                    })
                    .await;
            });
            Self {
                addr,
                accepted,
                stop,
                task,
            }
        }

        fn accepted(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }

        async fn stop(self) {
            let _ = self.stop.send(());
            self.task.await.unwrap();
        }
    }

    async fn listener(addr: SocketAddr) -> TcpListener {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        socket.listen(64).unwrap()
    }

    fn connection(addr: SocketAddr) -> Arc<Http2Connection> {
        Arc::new(
            Http2Connection::new(addr, None, &ConnectConfig::default(), Handle::current()).unwrap(),
        )
    }

    /// A health check over `connection`, as a probe makes it.
    async fn check(connection: &Arc<Http2Connection>) -> Result<(), tonic::Status> {
        let channel = EndpointChannel::http2(connection.clone());
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(drop)
    }

    #[tokio::test]
    async fn requests_share_one_connection_made_by_the_first() {
        let server = Server::start(listener(([127, 0, 0, 1], 0).into()).await).await;
        let addr = server.addr;
        let connection = connection(addr);
        let first: Vec<_> = (0..8).map(|_| check(&connection)).collect();
        for result in futures::future::join_all(first).await {
            result.unwrap();
        }
        for _ in 0..8 {
            check(&connection).await.unwrap();
        }
        assert_eq!(server.accepted(), 1, "one connection for every request");
        server.stop().await;
    }

    #[tokio::test]
    async fn a_refused_connection_is_never_sent_and_the_next_request_connects_again() {
        let addr = {
            let unused = listener(([127, 0, 0, 1], 0).into()).await;
            unused.local_addr().unwrap()
        };
        let connection = connection(addr);
        let request = http::Request::new(Body::empty());
        let Err(SendError::NotReady(error)) = connection.send(request).await else {
            panic!("a request to a closed port must fail before it is sent");
        };
        assert!(never_sent(&*error), "{error}");
        assert_eq!(error.to_string(), format!("cannot connect to {addr}"));
        let cause = error.source().and_then(|e| e.downcast_ref::<io::Error>());
        assert_eq!(
            cause.map(io::Error::kind),
            Some(io::ErrorKind::ConnectionRefused)
        );

        let server = Server::start(listener(addr).await).await;
        check(&connection).await.unwrap();
        assert_eq!(server.accepted(), 1);
        server.stop().await;
    }

    #[tokio::test]
    async fn a_closed_connection_is_replaced_by_the_next_request() {
        let first = Server::start(listener(([127, 0, 0, 1], 0).into()).await).await;
        let addr = first.addr;
        let connection = connection(addr);
        check(&connection).await.unwrap();
        first.stop().await;

        let second = Server::start(listener(addr).await).await;
        // Until the connection's task has seen the close, a request may still
        // go to the old connection: it fails unsent, as the balancer's
        // transparent retry expects. One request on a new connection succeeds.
        let mut answered = false;
        for _ in 0..100 {
            let request = http::Request::new(Body::empty());
            match connection.send(request).await {
                Ok(_) => {
                    answered = true;
                    break;
                }
                Err(SendError::Failed(error) | SendError::NotReady(error)) => {
                    assert!(never_sent(&*error), "{error}");
                    tokio::task::yield_now().await;
                }
            }
        }
        assert!(answered, "no request answered after the server came back");
        assert_eq!(second.accepted(), 1);
        second.stop().await;
    }

    #[tokio::test]
    async fn a_tls_server_that_does_not_agree_to_http2_is_refused_before_any_request() {
        use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use tokio_rustls::rustls::{RootCertStore, ServerConfig};

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // A TLS server with no ALPN protocols: it agrees to none.
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = listener(([127, 0, 0, 1], 0).into()).await;
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let _stream = acceptor.accept(tcp).await;
            std::future::pending::<()>().await
        });

        let mut roots = RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        let settings = Settings {
            connect_timeout: Duration::from_secs(5),
            tcp_nodelay: true,
            keepalive_interval: None,
            keepalive_timeout: Duration::from_secs(5),
            tls: Some(Tls {
                config: Arc::new(client),
                server_name: ServerName::IpAddress(addr.ip().into()),
                handshake_timeout: Duration::from_secs(5),
            }),
        };
        let Err(error) = connect(addr, settings, Handle::current()).await else {
            panic!("a server without HTTP/2 must be refused");
        };
        let cause = error.source().and_then(|e| e.downcast_ref::<TlsError>());
        assert_eq!(cause, Some(&TlsError::NoHttp2));
        let error: BoxError = Box::new(error);
        assert!(never_sent(&*error));
        let words = crate::tls::describe_tls_error(&*error).unwrap_or_default();
        assert!(words.contains("did not agree to HTTP/2"), "{words}");
    }

    #[test]
    fn a_request_gets_the_endpoints_scheme_and_authority() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], 8500).into();
        let connection = Http2Connection::new(
            addr,
            None,
            &ConnectConfig::default(),
            runtime.handle().clone(),
        )
        .unwrap();
        let mut request = http::Request::new(Body::empty());
        *request.uri_mut() = Uri::from_static("/chat.v1.ChatService/Login");
        connection.set_origin(&mut request);
        assert_eq!(
            request.uri().to_string(),
            "http://127.0.0.1:8500/chat.v1.ChatService/Login"
        );
    }
}
