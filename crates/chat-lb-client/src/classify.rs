//! Classifying what became of an attempt, and describing errors.
//!
//! Every failure the balancer acts on is told apart here, once:
//!
//! * **response headers** — the server answered. Whatever the gRPC status,
//!   that is a success for balancing purposes, except:
//! * **a failure status code** — a trailers-only answer whose code is one of
//!   the configured *failure codes* ([`FailureCodes`]; by default
//!   `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`), or an HTTP
//!   502/503/504, which gRPC maps to `UNAVAILABLE`: the server (or a proxy)
//!   failed, not the request. `UNAVAILABLE` ("cannot serve now") is kept apart
//!   from the others, since it ejects at once (see `outlier`). Application
//!   outcomes (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) are never failure codes;
//! * **overloaded** — a trailers-only `RESOURCE_EXHAUSTED` answer carrying
//!   gRPC's retry pushback trailer, `grpc-retry-pushback-ms` (gRPC A6): the
//!   server shed the call, and says when to come back ([`Pushback`]). Without
//!   that trailer `RESOURCE_EXHAUSTED` is the application's answer (a quota, a
//!   throttled login) and is passed on like any other;
//! * **never sent** — a transport error that proves the request never reached
//!   the server: the connection was refused or could not be made (a failed TLS
//!   handshake included, also one that only shows on the first request, as a
//!   server's rejection of the client certificate does with TLS 1.3: a fatal
//!   handshake alert from the server, or, over TLS, a connection closed under
//!   the request by a server that never answered a call or probe), the server
//!   refused the stream unprocessed (`REFUSED_STREAM`), or the connection
//!   closed before the request was sent;
//! * **transport failure** — any other transport error: the request may have
//!   reached the server;
//! * **expired** — the channel's own enforcement of the `grpc-timeout`
//!   deadline fired.
//!
//! (No response headers within the per-try timeout is the sixth kind; the call
//! state machine sees it by its timer, see `call`.) A response body that fails
//! after the headers is told apart by [`is_transport`], and a stream whose
//! trailers end it with a failure code by [`failure_in`] (see `observe`).

use std::{error::Error as StdError, io, time::Duration};

use tonic::{Code, Status, body::Body};

use crate::error::BoxError;

type Response = http::Response<Body>;

/// Why a call counted against an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallFailure {
    /// The request never reached the server (see [`never_sent`]).
    Refused,
    /// The connection failed under the call.
    Transport,
    /// The server answered `UNAVAILABLE`.
    Unavailable,
    /// No response headers within the per-try timeout.
    Timeout,
    /// The server answered with another failure status code (see
    /// [`FailureCodes`]).
    Status(Code),
}

impl CallFailure {
    /// How a last error of this kind is labelled (`Transport: ...`,
    /// `Internal: ...`); a refused call is a transport failure in words.
    pub fn label(self) -> &'static str {
        match self {
            CallFailure::Refused | CallFailure::Transport => "Transport",
            CallFailure::Unavailable => "Unavailable",
            CallFailure::Timeout => "Timeout",
            CallFailure::Status(code) => code_name(code),
        }
    }
}

/// The gRPC status codes whose answers count as the endpoint's failure: in
/// outlier detection, and for retrying retry-safe calls (see
/// [`crate::Builder::failure_codes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FailureCodes {
    /// One bit per code number.
    bits: u32,
}

impl FailureCodes {
    /// The default failure codes.
    pub const DEFAULT: [Code; 4] = [
        Code::Unavailable,
        Code::Internal,
        Code::Unknown,
        Code::DataLoss,
    ];

    /// The codes that may be failure codes: those that say the server failed,
    /// not the request. Every other code is an application outcome (`OK`,
    /// `NOT_FOUND`, `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED` for a caller's
    /// quota, ...), which never counts against a replica.
    pub const ALLOWED: [Code; 6] = [
        Code::Unknown,
        Code::DeadlineExceeded,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
    ];

    /// The set of `codes`.
    pub fn new(codes: impl IntoIterator<Item = Code>) -> Self {
        let bits = codes
            .into_iter()
            .fold(0, |bits, code| bits | 1 << (code as i32 as u32 & 31));
        Self { bits }
    }

    /// Whether `code` is a failure code.
    pub fn contains(self, code: Code) -> bool {
        self.bits & (1 << (code as i32 as u32 & 31)) != 0
    }

    /// A code in the set that may not be a failure code, if any.
    pub fn application_code(self) -> Option<Code> {
        (0..17)
            .map(Code::from_i32)
            .find(|code| self.contains(*code) && !Self::ALLOWED.contains(code))
    }
}

impl Default for FailureCodes {
    fn default() -> Self {
        Self::new(Self::DEFAULT)
    }
}

/// What an overloaded server's `grpc-retry-pushback-ms` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushback {
    /// Retry no sooner than this (a whole, non-negative number of milliseconds).
    After(Duration),
    /// Do not retry (a negative or malformed value, as gRPC A6 reads it).
    DoNotRetry,
}

impl Pushback {
    /// The name of the trailer.
    pub const HEADER: &'static str = "grpc-retry-pushback-ms";

    /// Reads the trailer's value.
    pub fn parse(value: &[u8]) -> Self {
        std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(Pushback::DoNotRetry, |ms| {
                Pushback::After(Duration::from_millis(ms))
            })
    }
}

/// What became of one attempt.
pub(crate) enum Outcome {
    /// Response headers arrived, without a failure code or an overload.
    Answered(Response, Duration),
    /// The server answered with a failure code (of this kind, with this
    /// message).
    Failing(Response, Duration, CallFailure, String),
    /// The server shed the call: `RESOURCE_EXHAUSTED` with a retry pushback.
    Overloaded(Response, Pushback),
    /// The request provably never reached the server.
    NotSent(BoxError),
    /// A transport error after the request may have reached the server.
    Failed(BoxError),
    /// The channel's own enforcement of the `grpc-timeout` deadline fired.
    Expired,
}

impl Outcome {
    /// An attempt's response headers, `rtt` after it was sent; `codes`: the
    /// failure codes.
    pub fn of_response(response: Response, rtt: Duration, codes: FailureCodes) -> Self {
        if let Some(pushback) = overloaded(&response) {
            return Outcome::Overloaded(response, pushback);
        }
        match failure_status(&response, codes) {
            None => Outcome::Answered(response, rtt),
            Some((kind, message)) => Outcome::Failing(response, rtt, kind, message),
        }
    }

    /// An attempt's transport error. `not_ready`: the endpoint's connection
    /// could not take the request at all. `closed_unanswered`: with TLS, a
    /// server that never answered and closes a new connection under the first
    /// requests is refusing the handshake (TLS 1.3 lets the client finish its
    /// half first): those requests were never served.
    pub fn of_error(error: BoxError, not_ready: bool, closed_unanswered: bool) -> Self {
        if not_ready {
            Outcome::NotSent(error)
        } else if is_timeout(&*error) {
            Outcome::Expired
        } else if never_sent(&*error) || closed_unanswered {
            Outcome::NotSent(error)
        } else {
            Outcome::Failed(error)
        }
    }
}

/// Whether a transport error proves the request never reached the server.
pub(crate) fn never_sent(err: &(dyn StdError + 'static)) -> bool {
    if crate::tls::handshake_failed(err) {
        return true;
    }
    let mut source = Some(err);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() || err.is::<crate::http2::ConnectError>() {
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

/// The failure an answer carries in its response headers, with its message:
/// a trailers-only answer with a failure code, or an HTTP 502/503/504 (which
/// gRPC maps to `UNAVAILABLE`) while `UNAVAILABLE` is a failure code.
pub(crate) fn failure_status<B>(
    response: &http::Response<B>,
    codes: FailureCodes,
) -> Option<(CallFailure, String)> {
    if response.headers().contains_key(&GRPC_STATUS) {
        return failure_in(response.headers(), codes);
    }
    match response.status() {
        http::StatusCode::BAD_GATEWAY
        | http::StatusCode::SERVICE_UNAVAILABLE
        | http::StatusCode::GATEWAY_TIMEOUT => codes.contains(Code::Unavailable).then(|| {
            (
                CallFailure::Unavailable,
                format!("HTTP {}", response.status()),
            )
        }),
        _ => None,
    }
}

/// The failure a `grpc-status` in `headers` (response headers, or the
/// trailers that end a stream) carries, with its message: one of the failure
/// `codes`, `UNAVAILABLE` kept apart.
pub(crate) fn failure_in(
    headers: &http::HeaderMap,
    codes: FailureCodes,
) -> Option<(CallFailure, String)> {
    let code = Code::from_i32(parse_code(headers.get(&GRPC_STATUS)?.as_bytes())?);
    if !codes.contains(code) {
        return None;
    }
    let message = Status::from_header_map(headers)
        .map(|s| s.message().to_owned())
        .unwrap_or_default();
    let kind = match code {
        Code::Unavailable => CallFailure::Unavailable,
        code => CallFailure::Status(code),
    };
    Some((kind, message))
}

/// A `grpc-status` value as a code number (`0` and up to two more digits).
fn parse_code(text: &[u8]) -> Option<i32> {
    if text.is_empty() || text.len() > 2 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0, |n, d| n * 10 + i32::from(d - b'0')))
}

/// The name of a gRPC code, as tonic's `Debug` writes it (`Internal`).
pub(crate) fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The pushback of a trailers-only `RESOURCE_EXHAUSTED` answer that carries
/// `grpc-retry-pushback-ms`; `None` for any other response.
pub(crate) fn overloaded<B>(response: &http::Response<B>) -> Option<Pushback> {
    let headers = response.headers();
    if headers.get(&GRPC_STATUS)?.as_bytes() != b"8" {
        return None;
    }
    Some(Pushback::parse(headers.get(Pushback::HEADER)?.as_bytes()))
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

/// Whether a body error comes from the connection rather than the server.
pub(crate) fn is_transport(status: &Status) -> bool {
    let mut source = status.source();
    while let Some(err) = source {
        if err.is::<hyper::Error>() || err.is::<h2::Error>() || err.is::<std::io::Error>() {
            return true;
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let codes = FailureCodes::default();
        let response = Status::unavailable("draining").into_http::<()>();
        assert_eq!(
            failure_status(&response, codes),
            Some((CallFailure::Unavailable, "draining".to_owned()))
        );
        let response = Status::internal("oops").into_http::<()>();
        assert_eq!(
            failure_status(&response, codes),
            Some((CallFailure::Status(Code::Internal), "oops".to_owned()))
        );
        assert_eq!(failure_status(&response, FailureCodes::new([])), None);
        let mut plain = http::Response::new(());
        assert_eq!(failure_status(&plain, codes), None);
        *plain.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        assert!(failure_status(&plain, codes).is_some());

        let boxed: Box<dyn StdError + Send + Sync> = Box::new(Status::unimplemented("no"));
        assert_eq!(status_code(&*boxed), Some(Code::Unimplemented));
        assert_eq!(describe(&*boxed), "Unimplemented: no");
        assert!(is_timeout(&tonic::TimeoutExpired(())));
        assert!(!is_timeout(&*boxed));
    }

    #[test]
    fn application_outcomes_are_never_failures() {
        let codes = FailureCodes::default();
        for code in FailureCodes::DEFAULT {
            assert!(codes.contains(code), "{code:?}");
        }
        for code in [
            Code::Ok,
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
            Code::FailedPrecondition,
        ] {
            assert!(!codes.contains(code), "{code:?}");
            let answer = Status::new(code, "the request's fault").into_http::<()>();
            assert_eq!(failure_status(&answer, codes), None, "{code:?}");
        }
        assert_eq!(codes.application_code(), None);
        assert_eq!(
            FailureCodes::new([Code::Internal, Code::NotFound]).application_code(),
            Some(Code::NotFound)
        );
        assert_eq!(
            FailureCodes::new(FailureCodes::ALLOWED).application_code(),
            None
        );
        assert_eq!(parse_code(b"13"), Some(13));
        assert_eq!(parse_code(b"x"), None);
        assert_eq!(parse_code(b""), None);
    }

    #[test]
    fn resource_exhausted_is_an_overload_only_with_a_pushback() {
        let with = |value: Option<&str>| {
            let mut response = Status::resource_exhausted("busy").into_http::<()>();
            if let Some(value) = value {
                let value = http::HeaderValue::from_str(value).unwrap();
                response.headers_mut().insert(Pushback::HEADER, value);
            }
            overloaded(&response)
        };
        assert_eq!(
            with(None),
            None,
            "a quota or a throttled login: the app's answer"
        );
        assert_eq!(
            with(Some("250")),
            Some(Pushback::After(Duration::from_millis(250)))
        );
        assert_eq!(with(Some("0")), Some(Pushback::After(Duration::ZERO)));
        assert_eq!(with(Some("-1")), Some(Pushback::DoNotRetry));
        assert_eq!(with(Some("soon")), Some(Pushback::DoNotRetry));
        let mut other = Status::unavailable("x").into_http::<()>();
        other
            .headers_mut()
            .insert(Pushback::HEADER, http::HeaderValue::from_static("5"));
        assert_eq!(overloaded(&other), None, "only RESOURCE_EXHAUSTED");
    }

    #[test]
    fn transport_errors_are_told_from_server_statuses() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let mut status = Status::unknown("error reading a body from connection");
        status.set_source(std::sync::Arc::new(io));
        assert!(is_transport(&status));
        assert!(!is_transport(&Status::new(Code::Unavailable, "draining")));
    }
}
