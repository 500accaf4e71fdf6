//! Accepting connections: bounded in number and in the time a client may take to start
//! talking, and with TLS when the replica serves it.
//!
//! One task accepts. Each accepted connection first takes a slot of the connection
//! limit (`--max-connections`); at the limit the connection is closed at once, so the
//! client fails fast and its balancer tries another replica, instead of waiting in the
//! kernel's backlog. Then, on a task of its own, the connection must show it is a real
//! client within `--handshake-timeout`: with TLS, complete the handshake (with the
//! configuration current when it arrived, so a certificate reload applies to new
//! connections only); without, send its first bytes (the HTTP/2 preface). A connection
//! that does not is closed. Only connections that passed reach tonic, and each keeps its
//! slot until it closes.
//!
//! So connections that say nothing cannot hold descriptors for long, the replica never
//! reaches its descriptor limit through connections alone (the default limit leaves
//! headroom for the store and the process), and a silent, plaintext or uncertified
//! client never delays anyone else's handshake. Every limit hit is logged as a warning
//! (at most once per [`WARN_EVERY`] per kind, with a count).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use rustls::ServerConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    time::Instant,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long the accept loop pauses after an accept error (such as running out of file
/// descriptors), so that it does not spin on a condition that needs time to clear.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How many established connections the kernel queues for the accept loop (capped by
/// `net.core.somaxconn`). Clients reconnecting all at once, after a failover, must not
/// find the queue full: their connection attempts would then wait for a SYN
/// retransmission (a second or more).
const LISTEN_BACKLOG: u32 = 4096;

/// The shortest interval between two warnings of the same kind.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether connections are plaintext or TLS.
#[derive(Debug, Clone)]
pub enum Security {
    /// Plaintext HTTP/2.
    Plaintext,
    /// HTTP/2 over TLS, with the configuration in the channel at accept time.
    Tls(watch::Receiver<Arc<ServerConfig>>),
}

/// The limits on accepted connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once (handshaking or serving).
    pub max_connections: usize,
    /// How long a new connection may take to complete its TLS handshake, or to send
    /// its first bytes without TLS.
    pub handshake_timeout: Duration,
}

/// A listening socket on `address` (with `SO_REUSEADDR`, so that a restarted replica
/// can take its port again at once, and a deep accept queue).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Connections accepted on `listener` that passed their handshake, ready for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// The accept loop stops, closing the listener, once the returned stream is dropped
/// (tonic drops it when it stops accepting, at shutdown).
pub fn incoming(
    listener: TcpListener,
    security: Security,
    limits: ConnectionLimits,
) -> ReceiverStream<Result<Connection, io::Error>> {
    let (ready, stream) = mpsc::channel(64);
    let acceptor = Acceptor {
        security,
        limits,
        slots: Arc::new(Semaphore::new(limits.max_connections)),
        ready,
        refused: RateLimitedWarning::default(),
        timed_out: Arc::new(RateLimitedWarning::default()),
    };
    tokio::spawn(acceptor.run(listener));
    ReceiverStream::new(stream)
}

struct Acceptor {
    security: Security,
    limits: ConnectionLimits,
    slots: Arc<Semaphore>,
    ready: mpsc::Sender<Result<Connection, io::Error>>,
    refused: RateLimitedWarning,
    timed_out: Arc<RateLimitedWarning>,
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                () = self.ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                // Dropping the stream closes it: the client sees the connection end
                // at once and can go elsewhere.
                self.refused.warn(|refused| {
                    tracing::warn!(
                        max_connections = self.limits.max_connections,
                        refused,
                        "connection limit reached; refusing new connections (--max-connections)"
                    );
                });
                continue;
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
            }
            tokio::spawn(handshake(
                tcp,
                peer,
                slot,
                self.security.clone(),
                self.limits.handshake_timeout,
                self.ready.clone(),
                self.timed_out.clone(),
            ));
        }
    }
}

/// Completes the handshake of one connection within the timeout and hands it over.
async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    security: Security,
    timeout: Duration,
    ready: mpsc::Sender<Result<Connection, io::Error>>,
    timed_out: Arc<RateLimitedWarning>,
) {
    let local = tcp.local_addr().ok();
    let opened = async {
        match security {
            Security::Plaintext => {
                // The client speaks first in HTTP/2: wait for its first bytes (a
                // real read: readiness alone can be reported before any byte came).
                let mut first = [0u8; 1];
                if tcp.peek(&mut first).await? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(Io::Plain(tcp))
            }
            Security::Tls(config) => {
                let acceptor = TlsAcceptor::from(config.borrow().clone());
                Ok(Io::Tls(Box::new(acceptor.accept(tcp).await?)))
            }
        }
    };
    let io: io::Result<Io> = match tokio::time::timeout(timeout, opened).await {
        Ok(result) => result,
        Err(_) => {
            timed_out.warn(|closed| {
                tracing::warn!(
                    %peer,
                    ?timeout,
                    closed,
                    "connections closed for not completing their handshake in time (--handshake-timeout)"
                );
            });
            return;
        }
    };
    match io {
        Ok(io) => {
            let connection = Connection {
                io,
                info: TcpConnectInfo {
                    local_addr: local,
                    remote_addr: Some(peer),
                },
                _slot: slot,
            };
            // Fails only when the server stopped accepting: the connection is then
            // simply closed.
            let _ = ready.send(Ok(connection)).await;
        }
        // A connection closed before saying anything is a TCP check (a load
        // balancer's, an orchestrator's probe), not worth a line at `info`.
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            tracing::debug!(%peer, "connection closed before its handshake");
        }
        Err(error) => tracing::info!(%peer, %error, "connection handshake failed"),
    }
}

/// An accepted connection, holding its slot of the connection limit until it closes.
pub struct Connection {
    io: Io,
    info: TcpConnectInfo,
    _slot: OwnedSemaphorePermit,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Io::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A warning logged at most once per [`WARN_EVERY`], with how many times its cause
/// happened since the previous one.
#[derive(Debug, Default)]
struct RateLimitedWarning {
    count: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl RateLimitedWarning {
    fn warn(&self, log: impl FnOnce(u64)) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut last = match self.last.lock() {
            Ok(last) => last,
            Err(poisoned) => poisoned.into_inner(),
        };
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return;
        }
        *last = Some(now);
        log(self.count.swap(0, Ordering::Relaxed));
    }
}

/// The default connection limit: what the process's descriptor limit allows after
/// headroom for the store, logs and the runtime (a tenth of the limit, at least 64),
/// and never below 16.
pub fn default_max_connections() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other memory is touched.
    let descriptors = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    let headroom = (descriptors / 10).max(64);
    descriptors.saturating_sub(headroom).clamp(16, 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_connection_limit_leaves_headroom() {
        let limit = default_max_connections();
        assert!(limit >= 16);
        let mut rlimit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rlimit) },
            0
        );
        let descriptors = usize::try_from(rlimit.rlim_cur).unwrap_or(usize::MAX);
        if descriptors > 100 {
            assert!(limit <= descriptors - 64, "{limit} of {descriptors}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_is_logged_at_most_once_per_period_with_a_count() {
        let warning = RateLimitedWarning::default();
        let mut logged = Vec::new();
        warning.warn(|n| logged.push(n));
        warning.warn(|n| logged.push(n));
        warning.warn(|n| logged.push(n));
        tokio::time::advance(WARN_EVERY).await;
        warning.warn(|n| logged.push(n));
        assert_eq!(logged, vec![1, 3]);
    }
}
