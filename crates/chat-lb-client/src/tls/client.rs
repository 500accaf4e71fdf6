//! The checked TLS settings, applied per endpoint.
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
//! [`Builder::tls_server_name`]: crate::Builder::tls_server_name
//! [`Builder::discover`]: crate::Builder::discover

use std::{fmt, sync::Arc, time::Duration};

use rustls_pki_types::ServerName;
use tonic::transport::ClientTlsConfig;

use super::{
    describe::{CLOSED_AFTER_HANDSHAKE, chain_text},
    pem::{identity, trust_anchors},
    settings::TlsSettings,
};
use crate::{
    address::{Host, Scheme, Target},
    error::TlsConfigError,
};

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

fn check_server_name(name: &str) -> Result<(), TlsConfigError> {
    ServerName::try_from(name)
        .map(drop)
        .map_err(|_| TlsConfigError::ServerName {
            name: name.to_owned(),
            reason: "not a DNS name or IP address",
        })
}
