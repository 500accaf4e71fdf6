//! Transport security: the TLS settings of the [`Builder`], how they are
//! checked and applied to each endpoint's connection, and how TLS failures are
//! put into words.
//!
//! **Settings.** TLS is on for every endpoint as soon as any `tls_*` setting
//! is made or any address is written `https://`. What the client trusts is a
//! set of CA certificates ([`Builder::tls_ca_pem`], [`Builder::tls_ca_file`])
//! and/or the system's roots ([`Builder::tls_system_roots`]); with mutual TLS
//! it also presents a certificate ([`Builder::tls_identity_pem`],
//! [`Builder::tls_identity_files`]). [`Builder::build`] reads and checks all of
//! it once, so a missing file or a key that does not belong to its certificate
//! is a [`TlsConfigError`] at start-up, not a failing call later.
//!
//! **Which name is verified.** A server's certificate must be valid for the
//! name the client verifies, which is also the name sent in the handshake
//! (SNI): [`Builder::tls_server_name`] if set; otherwise the host as written in
//! the address — a host name for every endpoint it resolves to, an IP address
//! for itself (the certificate then needs that IP address among its names).
//! Endpoints from [`Builder::discover`] have only an IP address.
//!
//! **Applied per endpoint.** Each endpoint's tonic `Endpoint` gets
//! `https://ip:port` and a `tonic::transport::ClientTlsConfig` with those
//! roots, identity and name, and a handshake timeout equal to the connect
//! timeout. The health probes use the endpoint's channel, so they go over TLS
//! too, and a TLS failure makes the endpoint unhealthy like any connection
//! failure.
//!
//! **Failures.** A handshake that fails is a connection failure: the call never
//! reached the server, so it is retried on another endpoint and the endpoint is
//! ejected. That includes a server that rejects the client's certificate,
//! which with TLS 1.3 only shows on the first request (the client finishes its
//! half of the handshake before the server checks the certificate).
//! [`describe_tls_error`] turns the error into words (`TLS: certificate signed
//! by an unknown authority`); endpoints show it as their last error, and
//! `UNAVAILABLE` answers name each endpoint with it:
//! `127.0.0.1:8500 (TLS: certificate signed by an unknown authority)`.

use std::{
    error::Error as StdError,
    fmt, io,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{AlertDescription, CertificateError, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use tonic::transport::{ClientTlsConfig, Identity};

use crate::{
    Builder,
    address::{Host, Scheme, Target},
    error::{PemOrigin, PemRole, TlsConfigError},
};

/// The prefix of every text [`describe_tls_error`] makes.
pub(crate) const PREFIX: &str = "TLS: ";

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
const CLOSED_AFTER_HANDSHAKE: [&str; 2] = [
    "TLS: the server closed the connection after the handshake (does it require a client \
     certificate?)",
    "TLS: the server closed the connection after the handshake (did it reject our client \
     certificate?)",
];

// ---- settings ---------------------------------------------------------------

/// One PEM input: text given to a builder method, or a file read at `build`.
#[derive(Clone)]
enum PemInput {
    Text(&'static str, Vec<u8>),
    File(PathBuf),
}

impl PemInput {
    fn origin(&self) -> PemOrigin {
        match self {
            PemInput::Text(method, _) => PemOrigin::Text(method),
            PemInput::File(path) => PemOrigin::File(path.clone()),
        }
    }

    /// The PEM bytes, reading the file if it is one.
    fn load(&self, role: PemRole) -> Result<Vec<u8>, TlsConfigError> {
        match self {
            PemInput::Text(_, pem) => Ok(pem.clone()),
            PemInput::File(path) => {
                std::fs::read(path).map_err(|error| TlsConfigError::Unreadable {
                    role,
                    path: path.clone(),
                    reason: io_reason(&error),
                })
            }
        }
    }
}

impl fmt::Debug for PemInput {
    /// Never the text itself: it may be a private key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemInput::Text(method, pem) => write!(f, "{method}({} bytes)", pem.len()),
            PemInput::File(path) => write!(f, "{path:?}"),
        }
    }
}

/// The TLS settings as the builder collects them, before `build` checks them.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    ca: Vec<PemInput>,
    system_roots: bool,
    identity: Option<(PemInput, PemInput)>,
    server_name: Option<String>,
}

impl TlsSettings {
    /// Whether any setting was made (which turns TLS on).
    fn is_set(&self) -> bool {
        !self.ca.is_empty()
            || self.system_roots
            || self.identity.is_some()
            || self.server_name.is_some()
    }
}

/// TLS settings.
impl Builder {
    /// Trusts the CA certificate(s) in `pem` (one or more `BEGIN CERTIFICATE`
    /// blocks) to sign the servers' certificates, and turns TLS on. May be given
    /// more than once, and combined with [`Builder::tls_ca_file`] and
    /// [`Builder::tls_system_roots`]. Default: no CA (and TLS off).
    pub fn tls_ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.tls
            .ca
            .push(PemInput::Text("tls_ca_pem", pem.as_ref().to_vec()));
        self
    }

    /// Like [`Builder::tls_ca_pem`], with the PEM read from `path` by
    /// [`Builder::build`] (which fails if the file cannot be read or holds no
    /// certificate). Default: none.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca.push(PemInput::File(path.into()));
        self
    }

    /// Trusts the system's roots (the operating system's certificate store, as
    /// tonic's `ClientTlsConfig::with_native_roots` loads it; `SSL_CERT_FILE`
    /// and `SSL_CERT_DIR` are honoured), and turns TLS on. Default: off.
    pub fn tls_system_roots(mut self) -> Self {
        self.tls.system_roots = true;
        self
    }

    /// Presents this certificate chain (PEM, the client's own certificate
    /// first) and its private key (PEM: PKCS#8, PKCS#1 or SEC1) to servers that
    /// ask for one (mutual TLS), and turns TLS on. Trust still has to be set
    /// ([`Builder::tls_ca_pem`] and the like). Default: no client certificate.
    pub fn tls_identity_pem(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        self.tls.identity = Some((
            PemInput::Text("tls_identity_pem", cert_pem.as_ref().to_vec()),
            PemInput::Text("tls_identity_pem", key_pem.as_ref().to_vec()),
        ));
        self
    }

    /// Like [`Builder::tls_identity_pem`], with both read from files by
    /// [`Builder::build`] (which also checks that the key belongs to the
    /// certificate). Default: none.
    pub fn tls_identity_files(
        mut self,
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Self {
        self.tls.identity = Some((
            PemInput::File(cert_path.into()),
            PemInput::File(key_path.into()),
        ));
        self
    }

    /// The name every server's certificate is verified against, and sent as
    /// SNI, whatever the address: for endpoints addressed by IP (or found by
    /// discovery) whose certificates hold a host name, or addressed by a name
    /// their certificates do not hold. Turns TLS on. Default: the host as
    /// written in each address (a host name, or an IP address, which the
    /// certificate must then list).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }
}

// ---- checked, and applied per endpoint --------------------------------------

/// Checked TLS settings, ready to apply to each endpoint.
pub(crate) struct ClientTls {
    /// Roots, identity and handshake timeout; the name is added per endpoint.
    config: ClientTlsConfig,
    server_name: Option<String>,
    /// Whether a client certificate is presented.
    identity: bool,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// The tonic TLS configuration of one endpoint: `host_name` is the host
    /// name its address was resolved from, if any (else the IP address of its
    /// URI is verified), unless a server name was set.
    pub fn for_endpoint(&self, host_name: Option<&str>) -> ClientTlsConfig {
        match self.server_name.as_deref().or(host_name) {
            Some(name) => self.config.clone().domain_name(dns_form(name)),
            None => self.config.clone(),
        }
    }

    /// The words for a request whose new connection closed before the server
    /// ever answered (see `CLOSED_AFTER_HANDSHAKE`).
    pub fn closed_after_handshake(&self) -> &'static str {
        CLOSED_AFTER_HANDSHAKE[usize::from(self.identity)]
    }
}

/// A name as verified: without the root's trailing dot.
fn dns_form(name: &str) -> &str {
    name.strip_suffix('.').unwrap_or(name)
}

/// Checks the settings against the addresses and each other, reads and parses
/// every PEM input, and returns what each endpoint needs: `None` when TLS is
/// off (no setting, no `https://` address).
pub(crate) fn resolve(
    settings: &TlsSettings,
    targets: &[Target],
    handshake_timeout: Duration,
) -> Result<Option<Arc<ClientTls>>, TlsConfigError> {
    let written = |scheme: Scheme| {
        targets
            .iter()
            .find(|t| t.scheme() == Some(scheme))
            .map(|t| format!("{scheme}://{t}"))
    };
    let https = written(Scheme::Https);
    let http = written(Scheme::Http);
    if let (Some(https), Some(http)) = (&https, &http) {
        return Err(TlsConfigError::MixedSchemes {
            https: https.clone(),
            http: http.clone(),
        });
    }
    if let Some(address) = http
        && settings.is_set()
    {
        return Err(TlsConfigError::PlaintextWithTls { address });
    }
    if !settings.is_set() && https.is_none() {
        return Ok(None);
    }
    if settings.ca.is_empty() && !settings.system_roots {
        return Err(match https {
            Some(_) => TlsConfigError::HttpsWithoutRoots,
            None => TlsConfigError::NoRoots,
        });
    }

    let mut config = ClientTlsConfig::new().timeout(handshake_timeout);
    if !settings.ca.is_empty() {
        config = config.trust_anchors(trust_anchors(&settings.ca)?.roots);
    }
    if settings.system_roots {
        config = config.with_native_roots();
    }
    if let Some((cert, key)) = &settings.identity {
        config = config.identity(identity(cert, key)?);
    }

    match &settings.server_name {
        Some(name) => check_server_name(name)?,
        None => {
            for target in targets {
                if let Host::Name(name) = target.host() {
                    check_server_name(dns_form(name))?;
                }
            }
        }
    }

    // tonic builds its rustls configuration (and loads the system's roots)
    // when an endpoint gets it: try once here, so that whatever it refuses is
    // a build error rather than endpoints silently skipped later.
    tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
        .tls_config(config.clone())
        .map_err(|error| {
            let reason = chain_text(&error);
            if settings.system_roots && reason.contains("native certs") {
                TlsConfigError::SystemRoots {
                    reason: "no trusted roots found on this system".into(),
                }
            } else {
                TlsConfigError::Rejected { reason }
            }
        })?;

    Ok(Some(Arc::new(ClientTls {
        config,
        server_name: settings.server_name.clone(),
        identity: settings.identity.is_some(),
    })))
}

/// Every certificate of every CA input, as trust anchors.
fn trust_anchors(inputs: &[PemInput]) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for input in inputs {
        let pem = input.load(PemRole::Ca)?;
        for cert in certificates(input, PemRole::Ca, &pem)? {
            roots.add(cert).map_err(|error| TlsConfigError::Invalid {
                role: PemRole::Ca,
                origin: input.origin(),
                reason: error.to_string(),
            })?;
        }
    }
    Ok(roots)
}

/// The certificates of one PEM input: at least one, all well-formed.
fn certificates(
    input: &PemInput,
    role: PemRole,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsConfigError::Invalid {
            role,
            origin: input.origin(),
            reason: error.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoPem {
            role,
            origin: input.origin(),
        });
    }
    Ok(certs)
}

/// The client identity, checked: a certificate chain, a private key the
/// crypto provider can use, and the key is the certificate's.
fn identity(cert: &PemInput, key: &PemInput) -> Result<Identity, TlsConfigError> {
    let cert_pem = cert.load(PemRole::ClientCert)?;
    let key_pem = key.load(PemRole::ClientKey)?;
    let chain = certificates(cert, PemRole::ClientCert, &cert_pem)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| match error {
        rustls_pki_types::pem::Error::NoItemsFound => TlsConfigError::NoPem {
            role: PemRole::ClientKey,
            origin: key.origin(),
        },
        other => TlsConfigError::Invalid {
            role: PemRole::ClientKey,
            origin: key.origin(),
            reason: other.to_string(),
        },
    })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    match rustls::sign::CertifiedKey::from_der(chain, key_der, &provider) {
        Ok(_) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsConfigError::KeyMismatch {
                cert: cert.origin(),
                key: key.origin(),
            });
        }
        Err(rustls::Error::InvalidCertificate(error)) => {
            return Err(TlsConfigError::Invalid {
                role: PemRole::ClientCert,
                origin: cert.origin(),
                reason: error.to_string(),
            });
        }
        Err(error) => {
            return Err(TlsConfigError::Invalid {
                role: PemRole::ClientKey,
                origin: key.origin(),
                reason: error.to_string(),
            });
        }
    }
    Ok(Identity::from_pem(cert_pem, key_pem))
}

fn check_server_name(name: &str) -> Result<(), TlsConfigError> {
    ServerName::try_from(name)
        .map(drop)
        .map_err(|_| TlsConfigError::ServerName {
            name: name.to_owned(),
            reason: "not a DNS name or IP address",
        })
}

/// An I/O error's reason without the `(os error N)` suffix.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// An error and its causes on one line.
fn chain_text(error: &(dyn StdError + 'static)) -> String {
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

// ---- failures in words ------------------------------------------------------

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
        connecting |= cause.is::<tonic::ConnectError>();
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(explain(tls, connecting));
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
                text: "the handshake timed out (a frozen server, or one that does not speak TLS?)"
                    .into(),
                handshake: true,
            });
        }
        if text == "HTTP/2 was not negotiated." {
            return Some(Problem {
                text: "the server did not agree to HTTP/2 (ALPN h2): is it a gRPC server?".into(),
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

    #[test]
    fn io_reasons_drop_the_os_error_number() {
        let error = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&error), "No such file or directory");
    }
}
