//! Which calls may be retried, and how a failed attempt is classified.
//!
//! Two kinds of retry exist:
//!
//! * **Transparent** — the attempt never reached a server: the connection was
//!   refused or could not be made (a failed TLS handshake included, also one
//!   that only shows on the first request, as a server's rejection of the
//!   client certificate does with TLS 1.3: a fatal handshake alert from the
//!   server, or, over TLS, a connection closed under the request by a server
//!   that never answered a call or probe), the server refused the stream
//!   unprocessed (`REFUSED_STREAM`), or the connection closed before the
//!   request was sent.
//!   Every call is retried on another endpoint, each endpoint at most once per
//!   call (again only if it recovered meanwhile). These retries do not draw on
//!   the budget: they put no load on any server.
//! * **Retry-safe** — the attempt may have reached a server: it failed with a
//!   transport error, answered `UNAVAILABLE` (trailers-only, or HTTP 502/503/504),
//!   or sent no response headers within `per_try_timeout`. Only calls marked safe
//!   (by [`RetrySafe`] or a [`SafeToRetry`] request extension) are retried, on
//!   another endpoint, at most `max_attempts` attempts in all, each retry drawing
//!   on the retry budget. An attempt retried for its per-try timeout is not
//!   cancelled: it goes on, and the first attempt to get response headers
//!   answers the call. A call with no retry left keeps waiting on its attempts
//!   still running, up to its deadline.

pub(crate) mod budget;

use std::{error::Error as StdError, fmt, io, sync::Arc};

use tonic::{Code, Status};

/// Which calls are safe to retry after they may have reached a server.
///
/// ```
/// use chat_lb_client::RetrySafe;
/// let chat = RetrySafe::prefix("/chat.v1.ChatService/");
/// let reads = RetrySafe::predicate(|path| path.ends_with("/Get") || path.ends_with("/List"));
/// # let _ = (chat, reads);
/// ```
#[derive(Clone, Default)]
pub enum RetrySafe {
    /// No call (the default): only attempts that never reached a server are
    /// retried.
    #[default]
    None,
    /// Every call.
    All,
    /// Calls whose gRPC method path (`/package.Service/Method`) starts with
    /// this prefix.
    Prefix(Arc<str>),
    /// Calls whose method path satisfies the predicate.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl RetrySafe {
    /// Calls whose method path starts with `prefix`, e.g.
    /// `"/chat.v1.ChatService/"` for a whole service.
    pub fn prefix(prefix: impl Into<Arc<str>>) -> Self {
        Self::Prefix(prefix.into())
    }

    /// Calls whose method path satisfies `f`.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Predicate(Arc::new(f))
    }

    /// Whether a call to `path` is safe to retry.
    pub fn is_safe(&self, path: &str) -> bool {
        match self {
            RetrySafe::None => false,
            RetrySafe::All => true,
            RetrySafe::Prefix(prefix) => path.starts_with(&**prefix),
            RetrySafe::Predicate(f) => f(path),
        }
    }
}

impl fmt::Debug for RetrySafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetrySafe::None => f.write_str("None"),
            RetrySafe::All => f.write_str("All"),
            RetrySafe::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            RetrySafe::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// A request extension overriding [`RetrySafe`] for one call.
///
/// ```
/// use chat_lb_client::SafeToRetry;
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(SafeToRetry(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafeToRetry(pub bool);

/// Whether a transport error proves the request never reached the server.
pub(crate) fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    if crate::tls::handshake_failed(err) {
        return true;
    }
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM) && h2.is_remote();
        }
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && matches!(
                io.kind(),
                io::ErrorKind::ConnectionRefused | io::ErrorKind::AddrNotAvailable
            )
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// A ready-made name: looking it up skips parsing and validating a string.
pub(crate) static GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// The message of an `UNAVAILABLE` answer carried in the response headers
/// (trailers-only), or of an HTTP 502/503/504 that gRPC maps to it.
pub(crate) fn unavailable<B>(response: &http::Response<B>) -> Option<String> {
    if let Some(status) = response.headers().get(&GRPC_STATUS) {
        if status.as_bytes() != b"14" {
            return None;
        }
        return Some(
            Status::from_header_map(response.headers())
                .map(|s| s.message().to_owned())
                .unwrap_or_default(),
        );
    }
    match response.status() {
        http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => Some(format!("HTTP {}", response.status())),
        _ => None,
    }
}

/// The gRPC code of an error, if it is (or wraps) a `tonic::Status`.
pub(crate) fn status_code(err: &(dyn StdError + 'static)) -> Option<Code> {
    let mut source = Some(err);
    while let Some(err) = source {
        if let Some(status) = err.downcast_ref::<Status>() {
            return Some(status.code());
        }
        source = err.source();
    }
    None
}

/// Whether the error is tonic's client-side enforcement of `grpc-timeout`.
pub(crate) fn is_timeout(err: &(dyn StdError + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A one-line description of an error and its causes; for a TLS failure,
/// what [`crate::describe_tls_error`] says of it.
pub(crate) fn describe(err: &(dyn StdError + 'static)) -> String {
    if let Some(tls) = crate::tls::describe_tls_error(err) {
        return tls;
    }
    let mut text = String::new();
    let mut source = Some(err);
    while let Some(cause) = source {
        let cause_text = match cause.downcast_ref::<Status>() {
            Some(status) => format!("{:?}: {}", status.code(), status.message()),
            None => cause.to_string(),
        };
        if !text.contains(&cause_text) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_rules() {
        assert!(!RetrySafe::None.is_safe("/a.B/C"));
        assert!(RetrySafe::All.is_safe("/a.B/C"));
        let p = RetrySafe::prefix("/chat.v1.ChatService/");
        assert!(p.is_safe("/chat.v1.ChatService/SendMessage"));
        assert!(!p.is_safe("/grpc.health.v1.Health/Check"));
        let f = RetrySafe::predicate(|m| m.ends_with("/Get"));
        assert!(f.is_safe("/kv.Kv/Get") && !f.is_safe("/kv.Kv/Put"));
    }

    #[test]
    fn classification() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert!(never_sent(&tonic::ConnectError(Box::new(refused))));
        assert!(!never_sent(&io::Error::from(
            io::ErrorKind::ConnectionReset
        )));
        let h2 = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert!(!never_sent(&h2), "only a stream the server refused counts");
        // A server's rejection of the client certificate, as the first request
        // on the connection reports it (TLS 1.3): the request was never served.
        let rejected = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert!(never_sent(&rejected));
        assert_eq!(
            describe(&rejected),
            "TLS: the server requires a client certificate"
        );

        let response = Status::unavailable("draining").into_http::<()>();
        assert_eq!(unavailable(&response).as_deref(), Some("draining"));
        assert_eq!(unavailable(&Status::not_found("x").into_http::<()>()), None);
        let mut plain = http::Response::new(());
        assert_eq!(unavailable(&plain), None);
        *plain.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert!(unavailable(&plain).is_some());

        let boxed: Box<dyn StdError + Send + Sync> = Box::new(Status::unimplemented("no"));
        assert_eq!(status_code(&*boxed), Some(Code::Unimplemented));
        assert_eq!(describe(&*boxed), "Unimplemented: no");
        assert!(is_timeout(&tonic::TimeoutExpired(())));
        assert!(!is_timeout(&*boxed));
    }
}
