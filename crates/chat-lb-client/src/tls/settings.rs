//! The TLS settings of the [`Builder`]: its `tls_*` methods and what they
//! collect, checked later by [`Builder::build`].
//!
//! TLS is on for every endpoint as soon as any `tls_*` setting is made or any
//! address is written `https://`. What the client trusts is a set of CA
//! certificates ([`Builder::tls_ca_pem`], [`Builder::tls_ca_file`]) and/or the
//! system's roots ([`Builder::tls_system_roots`]); with mutual TLS it also
//! presents a certificate ([`Builder::tls_identity_pem`],
//! [`Builder::tls_identity_files`]). [`Builder::build`] reads and checks all of
//! it once, so a missing file or a key that does not belong to its certificate
//! is a [`crate::TlsConfigError`] at start-up, not a failing call later.

use std::path::PathBuf;

use super::pem::PemInput;
use crate::Builder;

/// The TLS settings as the builder collects them, before `build` checks them.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsSettings {
    pub(super) ca: Vec<PemInput>,
    pub(super) system_roots: bool,
    pub(super) identity: Option<(PemInput, PemInput)>,
    pub(super) server_name: Option<String>,
}

impl TlsSettings {
    /// Whether any setting was made (which turns TLS on).
    pub(super) fn is_set(&self) -> bool {
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
