//! TLS failures in words.
//!
//! A handshake that fails is a connection failure: the call never reached the
//! server, so it is retried on another endpoint and the endpoint is ejected.
//! That includes a server that rejects the client's certificate, which with
//! TLS 1.3 only shows on the first request (the client finishes its half of
//! the handshake before the server checks the certificate).
//! [`describe_tls_error`] turns the error into words (`TLS: certificate signed
//! by an unknown authority`); endpoints show it as their last error, and
//! `UNAVAILABLE` answers name each endpoint with it:
//! `127.0.0.1:8500 (TLS: certificate signed by an unknown authority)`.

use std::{
    error::Error as StdError,
    io,
    time::{Duration, SystemTime},
};

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::UnixTime;

/// The prefix of every text [`describe_tls_error`] makes.
const PREFIX: &str = "TLS: ";

/// What a client using plaintext is told when a server closes the connection
/// before it ever answered: a TLS server does exactly that.
pub(crate) const PLAINTEXT_HINT: &str = "the server closed the connection before answering: if it expects TLS, \
     use https:// addresses and trust its CA";

/// Said of a peer that answers a TLS handshake with something else.
const NOT_TLS: &str = "the server does not speak TLS (plaintext server?)";

/// What a request that found its new TLS connection closed is told, when the
/// server never answered: with TLS 1.3 the client finishes its half of the
/// handshake before the server checks its certificate, so a server that
/// refuses it closes a connection the client already took as open. The request
/// that meets the server's alert says exactly why; the others only see the
/// connection close, and get this guess (which never replaces an exact TLS
/// error as an endpoint's last error).
pub(super) const CLOSED_AFTER_HANDSHAKE: [&str; 2] = [
    "TLS: the server closed the connection after the handshake (does it require a client \
     certificate?)",
    "TLS: the server closed the connection after the handshake (did it reject our client \
     certificate?)",
];

/// An error and its causes on one line.
pub(super) fn chain_text(error: &(dyn StdError + 'static)) -> String {
    let mut text = String::new();
    for cause in causes(error) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// The causes of an error, the error first. Unlike `source()` alone, it also
/// looks inside `std::io::Error`s (whose `source()` skips the error they wrap,
/// where TLS errors hide) and `h2::Error`s (which keep their I/O error apart).
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&error| {
        if let Some(inner) = error
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
        {
            return Some(inner as &(dyn StdError + 'static));
        }
        if let Some(io) = error
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::get_io)
        {
            return Some(io as &(dyn StdError + 'static));
        }
        error.source()
    })
    .take(32)
}

/// A handshake that got no answer in time, in words.
const HANDSHAKE_TIMED_OUT: &str =
    "the handshake timed out (a frozen server, or one that does not speak TLS?)";
/// A server that would not speak HTTP/2 over TLS, in words.
const NO_HTTP2: &str = "the server did not agree to HTTP/2 (ALPN h2): is it a gRPC server?";

/// A TLS failure found in an error's causes.
struct Problem {
    /// What went wrong, in words (without the prefix).
    text: String,
    /// Whether it ended the handshake, so no request reached the server.
    handshake: bool,
}

/// Looks through the causes for a TLS failure.
fn find(error: &(dyn StdError + 'static)) -> Option<Problem> {
    let mut connecting = false;
    for cause in causes(error) {
        connecting |= cause.is::<tonic::ConnectError>() || cause.is::<crate::http2::ConnectError>();
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(explain(tls, connecting));
        }
        if let Some(own) = cause.downcast_ref::<crate::http2::TlsError>() {
            return Some(own_handshake(*own));
        }
        // Errors that went through h2 (for each request on a connection) are
        // reduced to their text, so a received alert is recognised by it.
        let text = cause.to_string();
        if let Some(alert) = alert_in(&text) {
            return Some(explain_alert(alert));
        }
        if !connecting {
            continue;
        }
        // tonic's own TLS errors are private: recognised by their text.
        if text == "TLS handshake timeout." {
            return Some(Problem {
                text: HANDSHAKE_TIMED_OUT.into(),
                handshake: true,
            });
        }
        if text == "HTTP/2 was not negotiated." {
            return Some(Problem {
                text: NO_HTTP2.into(),
                handshake: true,
            });
        }
        if let Some(io) = cause.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::UnexpectedEof
        {
            return Some(Problem {
                text: "the server closed the connection during the handshake (plaintext server?)"
                    .into(),
                handshake: true,
            });
        }
    }
    None
}

/// Describes a TLS failure found among an error's causes in words a person
/// understands, prefixed `TLS: `; `None` if the error is not a TLS failure.
///
/// It recognises what rustls reports (`rustls::Error`: an invalid server
/// certificate, an alert the server sent, data that is not TLS), also where
/// h2 reduced it to text, and tonic's handshake timeout and missing HTTP/2.
/// For example:
///
/// | failure | text |
/// |---|---|
/// | certificate from a CA not trusted | `TLS: certificate signed by an unknown authority` |
/// | certificate without the name | `TLS: certificate is not valid for name "x" (it is valid for localhost, 127.0.0.1)` |
/// | expired certificate | `TLS: certificate has expired (not valid after 2001-01-01T00:00:00Z)` |
/// | mutual TLS, no client certificate | `TLS: the server requires a client certificate` |
/// | mutual TLS, certificate refused | `TLS: the server rejected our client certificate (signed by a CA it does not trust)` |
/// | a plaintext server | `TLS: the server does not speak TLS (plaintext server?)` |
///
/// The balancer uses it for endpoints' last errors and `UNAVAILABLE`
/// messages; it works on any error from a tonic channel too:
///
/// ```
/// use chat_lb_client::describe_tls_error;
/// let unknown = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
/// let error = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
/// assert_eq!(
///     describe_tls_error(&error).as_deref(),
///     Some("TLS: certificate signed by an unknown authority")
/// );
/// assert_eq!(describe_tls_error(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused)), None);
/// ```
pub fn describe_tls_error(error: &(dyn StdError + 'static)) -> Option<String> {
    find(error).map(|problem| format!("{PREFIX}{}", problem.text))
}

/// Whether the error is a failed TLS handshake: the request it ended never
/// reached the server (also when it surfaced on the first request).
pub(crate) fn handshake_failed(error: &(dyn StdError + 'static)) -> bool {
    find(error).is_some_and(|problem| problem.handshake)
}

/// Whether a text was made by [`describe_tls_error`] (or is a guess at a TLS
/// failure, see `CLOSED_AFTER_HANDSHAKE`).
pub(crate) fn is_tls_text(text: &str) -> bool {
    text.starts_with(PREFIX)
}

/// Whether a text is a guess at a TLS failure rather than what the server said.
pub(crate) fn is_guess(text: &str) -> bool {
    CLOSED_AFTER_HANDSHAKE.contains(&text)
}

/// Whether a connection failed the way a server that refuses the client makes
/// it fail: closed or reset under the request (or before it could be sent),
/// or bytes that are not HTTP/2 frames. A TLS server does that to a plaintext
/// client as soon as it sees the HTTP/2 preface; with TLS 1.3, a server that
/// refuses the client's certificate does it to the first requests, which the
/// client sent once its half of the handshake was done.
pub(crate) fn closed_at_once(error: &(dyn StdError + 'static)) -> bool {
    causes(error).any(|cause| {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            );
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            return hyper.is_incomplete_message() || hyper.is_canceled();
        }
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::FRAME_SIZE_ERROR) && !h2.is_remote();
        }
        false
    })
}

/// The words for a failed handshake of the balancer's own connection (the
/// same as for tonic's, below).
fn own_handshake(error: crate::http2::TlsError) -> Problem {
    let text = match error {
        crate::http2::TlsError::HandshakeTimeout => HANDSHAKE_TIMED_OUT,
        crate::http2::TlsError::NoHttp2 => NO_HTTP2,
    };
    Problem {
        text: text.into(),
        handshake: true,
    }
}

/// The alert named in a `received fatal alert: Name` text.
fn alert_in(text: &str) -> Option<AlertDescription> {
    let (_, rest) = text.split_once("received fatal alert: ")?;
    let name: String = rest
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    (0..=u8::MAX)
        .map(AlertDescription::from)
        .find(|alert| format!("{alert:?}") == name)
}

fn explain(error: &rustls::Error, connecting: bool) -> Problem {
    let text = match error {
        rustls::Error::InvalidCertificate(error) => certificate(error),
        rustls::Error::AlertReceived(alert) => return explain_alert(*alert),
        rustls::Error::InvalidMessage(_) => NOT_TLS.into(),
        rustls::Error::NoCertificatesPresented => "the server presented no certificate".into(),
        rustls::Error::NoApplicationProtocol => {
            "the server did not agree to HTTP/2 (ALPN h2): is it a gRPC server?".into()
        }
        rustls::Error::PeerIncompatible(why) => {
            format!("the server's TLS is incompatible with ours ({why:?})")
        }
        other => other.to_string(),
    };
    Problem {
        text,
        handshake: connecting,
    }
}

fn certificate(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "certificate signed by an unknown authority".into(),
        CertificateError::BadSignature => {
            "certificate signed by an unknown authority (its signature does not \
             verify: a CA of the same name, but another key?)"
                .into()
        }
        CertificateError::NotValidForName => {
            "certificate is not valid for the name asked for".into()
        }
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => {
            let names: Vec<String> = presented.iter().map(|name| bare_name(name)).collect();
            let valid = if names.is_empty() {
                "it holds no name".to_owned()
            } else {
                format!("it is valid for {}", names.join(", "))
            };
            format!(
                "certificate is not valid for name {:?} ({valid})",
                expected.to_str()
            )
        }
        CertificateError::Expired => "certificate has expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => {
            format!(
                "certificate has expired (not valid after {})",
                date(*not_after)
            )
        }
        CertificateError::NotValidYet => {
            "certificate is not valid yet (is the clock right?)".into()
        }
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "certificate is not valid yet (not before {}: is the clock right?)",
            date(*not_before)
        ),
        CertificateError::Revoked => "certificate has been revoked".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "certificate is not meant for a TLS server (extended key usage)".into()
        }
        CertificateError::BadEncoding => "the server's certificate is malformed".into(),
        other => format!("invalid server certificate: {other}"),
    }
}

/// `localhost` from `DnsName("localhost")`, `127.0.0.1` from
/// `IpAddress(127.0.0.1)` (how rustls lists a certificate's names).
fn bare_name(name: &str) -> String {
    let inner = name
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(name);
    inner.trim_matches('"').to_owned()
}

fn date(time: UnixTime) -> String {
    let at = SystemTime::UNIX_EPOCH + Duration::from_secs(time.as_secs());
    humantime::format_rfc3339_seconds(at).to_string()
}

fn explain_alert(alert: AlertDescription) -> Problem {
    let rejected = |why: &str| format!("the server rejected our client certificate ({why})");
    let text = match alert {
        AlertDescription::CertificateRequired => "the server requires a client certificate".into(),
        AlertDescription::UnknownCA => rejected("signed by a CA it does not trust"),
        AlertDescription::DecryptError => {
            rejected("its signature does not verify: signed by a CA it does not trust?")
        }
        AlertDescription::BadCertificate => rejected("bad certificate"),
        AlertDescription::CertificateExpired => rejected("expired or not valid yet"),
        AlertDescription::CertificateRevoked => rejected("revoked"),
        AlertDescription::CertificateUnknown => rejected("certificate unknown"),
        AlertDescription::UnsupportedCertificate => rejected("not meant for a TLS client?"),
        AlertDescription::AccessDenied => rejected("access denied"),
        AlertDescription::HandshakeFailure => {
            "the handshake failed: the server accepts none of our TLS versions or cipher suites, \
             or requires a client certificate"
                .into()
        }
        AlertDescription::ProtocolVersion | AlertDescription::InsufficientSecurity => {
            "the server accepts none of our TLS versions (1.2, 1.3) or cipher suites".into()
        }
        AlertDescription::NoApplicationProtocol => {
            "the server did not agree to HTTP/2 (ALPN h2): is it a gRPC server?".into()
        }
        AlertDescription::UnrecognisedName => {
            "the server does not know the name asked for (SNI): set the TLS server name?".into()
        }
        other => {
            return Problem {
                text: format!("the server sent the fatal alert {other:?}"),
                handshake: false,
            };
        }
    };
    Problem {
        text,
        handshake: true,
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use rustls_pki_types::ServerName;

    use super::*;

    fn wrapped(error: rustls::Error) -> tonic::ConnectError {
        tonic::ConnectError(Box::new(io::Error::new(io::ErrorKind::InvalidData, error)))
    }

    #[test]
    fn certificate_failures_in_words() {
        let unknown = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            describe_tls_error(&unknown).as_deref(),
            Some("TLS: certificate signed by an unknown authority")
        );
        assert!(handshake_failed(&unknown));

        let name = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("chat.example").unwrap(),
                presented: vec![
                    "DnsName(\"localhost\")".into(),
                    "IpAddress(127.0.0.1)".into(),
                ],
            },
        ));
        assert_eq!(
            describe_tls_error(&name).unwrap(),
            "TLS: certificate is not valid for name \"chat.example\" (it is valid for localhost, \
             127.0.0.1)"
        );

        let expired = wrapped(rustls::Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: UnixTime::since_unix_epoch(Duration::from_secs(2_000_000_000)),
                not_after: UnixTime::since_unix_epoch(Duration::from_secs(978_307_200)),
            },
        ));
        assert_eq!(
            describe_tls_error(&expired).unwrap(),
            "TLS: certificate has expired (not valid after 2001-01-01T00:00:00Z)"
        );
        let plaintext = wrapped(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType,
        ));
        assert_eq!(
            describe_tls_error(&plaintext).unwrap(),
            "TLS: the server does not speak TLS (plaintext server?)"
        );
    }

    #[test]
    fn alerts_reduced_to_text_by_h2_are_recognised() {
        // What a request on a connection the server refused looks like.
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        assert_eq!(
            describe_tls_error(&io).as_deref(),
            Some("TLS: the server requires a client certificate")
        );
        assert!(handshake_failed(&io));
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: UnknownCA",
        );
        assert_eq!(
            describe_tls_error(&io).unwrap(),
            "TLS: the server rejected our client certificate (signed by a CA it does not trust)"
        );
        let mid_stream = io::Error::new(
            io::ErrorKind::InvalidData,
            "received fatal alert: BadRecordMac",
        );
        assert!(describe_tls_error(&mid_stream).is_some());
        assert!(!handshake_failed(&mid_stream), "not a handshake alert");
    }

    #[test]
    fn tonic_handshake_errors_by_their_text() {
        #[derive(Debug)]
        struct Private(&'static str);
        impl fmt::Display for Private {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for Private {}
        let timeout = tonic::ConnectError(Box::new(Private("TLS handshake timeout.")));
        assert!(
            describe_tls_error(&timeout)
                .unwrap()
                .starts_with("TLS: the handshake timed out")
        );
        let eof = tonic::ConnectError(Box::new(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "tls handshake eof",
        )));
        assert!(
            describe_tls_error(&eof)
                .unwrap()
                .contains("plaintext server?")
        );
        // The same text outside a connection attempt is not taken for it.
        assert_eq!(describe_tls_error(&Private("TLS handshake timeout.")), None);
        let refused =
            tonic::ConnectError(Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(describe_tls_error(&refused), None);
        assert!(!handshake_failed(&refused));
    }
}
