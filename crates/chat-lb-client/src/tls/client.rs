//! The checked TLS settings, applied per endpoint.
//!
//! **Which name is verified.** A server's certificate must be valid for the
//! name the client verifies, which is also the name sent in the handshake
//! (SNI): [`Builder::tls_server_name`] if set; otherwise the host as written in
//! the address — a host name for every endpoint it resolves to, an IP address
//! for itself (the certificate then needs that IP address among its names).
//! Endpoints from [`Builder::discover`] have only an IP address.
//!
//! **Applied per endpoint.** Each endpoint's own connection (see `http2`)
//! makes its TLS handshake with one rustls configuration for all endpoints
//! (those roots and identity, ALPN `h2`) and the endpoint's name, within a
//! handshake timeout equal to the connect timeout, and refuses a server that
//! does not agree to HTTP/2. With a `configure_endpoint` hook, each
//! endpoint's tonic `Endpoint` gets `https://ip:port` and a
//! `tonic::transport::ClientTlsConfig` with the same roots, identity, name
//! and timeout instead. The health probes use the endpoint's connection, so
//! they go over TLS too, and a TLS failure makes the endpoint unhealthy like
//! any connection failure.
//!
//! [`Builder::tls_server_name`]: crate::Builder::tls_server_name
//! [`Builder::discover`]: crate::Builder::discover

use std::{fmt, net::IpAddr, sync::Arc, time::Duration};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tonic::transport::ClientTlsConfig;

use super::{
    describe::{CLOSED_AFTER_HANDSHAKE, chain_text},
    pem::{ClientIdentity, crypto_provider, identity, trust_anchors},
    settings::TlsSettings,
};
use crate::{
    address::{Host, Scheme, Target},
    error::TlsConfigError,
};

/// Checked TLS settings, ready to apply to each endpoint.
pub(crate) struct ClientTls {
    /// Roots, identity and handshake timeout for tonic channels; the name is
    /// added per endpoint.
    config: ClientTlsConfig,
    /// Roots, identity and ALPN for the balancer's own connections.
    rustls: Arc<ClientConfig>,
    handshake_timeout: Duration,
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

    /// The rustls configuration of every endpoint's own connection.
    pub fn rustls(&self) -> &Arc<ClientConfig> {
        &self.rustls
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The name an endpoint's certificate is verified against (and sent as
    /// SNI): the server name if set, else `host_name` (the host name its
    /// address was resolved from), else its IP address `ip`.
    pub fn server_name(&self, host_name: Option<&str>, ip: IpAddr) -> ServerName<'static> {
        self.server_name
            .as_deref()
            .or(host_name)
            .and_then(|name| ServerName::try_from(dns_form(name).to_owned()).ok())
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
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
    let mut roots = RootCertStore::empty();
    if !settings.ca.is_empty() {
        let anchors = trust_anchors(&settings.ca)?.roots;
        config = config.trust_anchors(anchors.clone());
        roots.extend(anchors);
    }
    if settings.system_roots {
        config = config.with_native_roots();
        roots.add_parsable_certificates(system_roots()?);
    }
    let identity = match &settings.identity {
        Some((cert, key)) => Some(identity(cert, key)?),
        None => None,
    };
    if let Some(identity) = &identity {
        config = config.identity(identity.tonic.clone());
    }
    let rustls = rustls_config(roots, identity)?;

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
        rustls: Arc::new(rustls),
        handshake_timeout,
        server_name: settings.server_name.clone(),
        identity: settings.identity.is_some(),
    })))
}

/// The system's trusted roots (an error when it has none).
fn system_roots() -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, TlsConfigError> {
    let found = rustls_native_certs::load_native_certs();
    if !found.errors.is_empty() {
        tracing::debug!(errors = ?found.errors, "some of the system's roots could not be read");
    }
    if found.certs.is_empty() {
        return Err(TlsConfigError::SystemRoots {
            reason: "no trusted roots found on this system".into(),
        });
    }
    Ok(found.certs)
}

/// The rustls configuration of the balancer's own connections: `roots`, the
/// client `identity` if any, and ALPN `h2` (gRPC needs HTTP/2).
fn rustls_config(
    roots: RootCertStore,
    identity: Option<ClientIdentity>,
) -> Result<ClientConfig, TlsConfigError> {
    let rejected = |error: rustls::Error| TlsConfigError::Rejected {
        reason: error.to_string(),
    };
    let builder = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.chain, identity.key)
            .map_err(rejected)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The ALPN protocol id of HTTP/2.
pub(crate) const ALPN_H2: &[u8] = b"h2";

fn check_server_name(name: &str) -> Result<(), TlsConfigError> {
    ServerName::try_from(name)
        .map(drop)
        .map_err(|_| TlsConfigError::ServerName {
            name: name.to_owned(),
            reason: "not a DNS name or IP address",
        })
}
