//! Error types.
//!
//! Errors of the *configuration* (a bad address, an impossible setting, TLS
//! settings that cannot work) are typed enums. Errors of a *call* follow
//! tonic's conventions: the balancer answers with a gRPC status (see
//! [`crate::Balancer`]) or passes the transport error of the last attempt
//! through as a [`BoxError`].

use std::{fmt, path::PathBuf};

/// A type-erased error, as tower and tonic use (`tonic::codegen::StdError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An entry of an address list that cannot be used as an endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The list held no address at all.
    #[error("the endpoint address list is empty")]
    Empty,
    /// One entry is malformed; `entry` is the entry as written.
    #[error("invalid endpoint address {entry:?}: {reason}")]
    Invalid {
        /// The offending entry, as written (trimmed).
        entry: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// A setting that is out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value is outside its allowed range.
    #[error("balancer setting {setting} {problem}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// A method given to [`crate::Builder::hedge_methods`] cannot be hedged.
    #[error("cannot hedge method {method:?}: {problem}")]
    Hedge {
        /// The method path as given.
        method: String,
        /// Why not.
        problem: &'static str,
    },
}

/// Why [`crate::Builder::build`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An address given to the builder is invalid.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS settings cannot work: a file that cannot be read or holds no
    /// PEM, a bad server name, schemes that contradict each other or the
    /// settings.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// `build` was called outside a tokio runtime; the balancer needs one for its
    /// connections, probers and resolver.
    #[error("Balancer::build must be called from within a tokio runtime")]
    NoRuntime,
}

/// What a PEM input of the TLS settings is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PemRole {
    /// Certificates to trust (`tls_ca_pem`, `tls_ca_file`).
    Ca,
    /// The client certificate chain for mutual TLS (`tls_identity_*`).
    ClientCert,
    /// The client's private key for mutual TLS (`tls_identity_*`).
    ClientKey,
}

impl PemRole {
    /// What its PEM must hold: `certificate` or `private key`.
    pub fn expected(self) -> &'static str {
        match self {
            PemRole::Ca | PemRole::ClientCert => "certificate",
            PemRole::ClientKey => "private key",
        }
    }
}

impl fmt::Display for PemRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PemRole::Ca => "CA",
            PemRole::ClientCert => "client certificate",
            PemRole::ClientKey => "client key",
        })
    }
}

/// Where a PEM input of the TLS settings came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PemOrigin {
    /// A file, read by [`crate::Builder::build`].
    File(PathBuf),
    /// Text given to the named builder method (e.g. `tls_ca_pem`).
    Text(&'static str),
}

impl fmt::Display for PemOrigin {
    /// `file "/etc/chat/ca.pem"`, or `given to tls_ca_pem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PemOrigin::File(path) => write!(f, "file {path:?}"),
            PemOrigin::Text(method) => write!(f, "given to {method}"),
        }
    }
}

/// TLS settings that cannot work, found by [`crate::Builder::build`]. Each
/// message is one line that names the file (or setting) and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read, e.g. `cannot read TLS CA file "/x/ca.pem": No
    /// such file or directory`.
    #[error("cannot read TLS {role} file {path:?}: {reason}")]
    Unreadable {
        /// What the file is for.
        role: PemRole,
        /// The file as given.
        path: PathBuf,
        /// The operating system's reason.
        reason: String,
    },
    /// The input holds no PEM block of the kind it needs, e.g. `TLS CA file
    /// "/x/ca.pem" holds no PEM certificate`.
    #[error("TLS {role} {origin} holds no PEM {}", .role.expected())]
    NoPem {
        /// What the input is for.
        role: PemRole,
        /// Where it came from.
        origin: PemOrigin,
    },
    /// The input holds a malformed PEM block, or a certificate or key that
    /// cannot be used.
    #[error("TLS {role} {origin} holds an unusable {}: {reason}", .role.expected())]
    Invalid {
        /// What the input is for.
        role: PemRole,
        /// Where it came from.
        origin: PemOrigin,
        /// What is wrong with it.
        reason: String,
    },
    /// The client key is not the key of the client certificate.
    #[error("TLS client key {key} does not match the client certificate {cert}")]
    KeyMismatch {
        /// Where the certificate came from.
        cert: PemOrigin,
        /// Where the key came from.
        key: PemOrigin,
    },
    /// A name that cannot be verified in a certificate (the one given to
    /// `tls_server_name`, or an address's host name).
    #[error("invalid TLS server name {name:?}: {reason}")]
    ServerName {
        /// The name as given.
        name: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// An `https://` address, but nothing to trust.
    #[error("https:// needs trusted roots: set tls_ca_pem/tls_ca_file or tls_system_roots")]
    HttpsWithoutRoots,
    /// TLS settings (a client identity, a server name), but nothing to trust.
    #[error("TLS settings need trusted roots: set tls_ca_pem/tls_ca_file or tls_system_roots")]
    NoRoots,
    /// Both `https://` and `http://` addresses.
    #[error(
        "the address list mixes https:// ({https}) and http:// ({http}) addresses: use one scheme"
    )]
    MixedSchemes {
        /// The first `https://` address.
        https: String,
        /// The first `http://` address.
        http: String,
    },
    /// An `http://` address while TLS settings are made.
    #[error(
        "{address} asks for plaintext, but TLS settings are made: drop http:// or the TLS settings"
    )]
    PlaintextWithTls {
        /// The first `http://` address.
        address: String,
    },
    /// `tls_system_roots`, but the system's trusted roots cannot be loaded.
    #[error("cannot use the system's trusted roots: {reason}")]
    SystemRoots {
        /// Why (e.g. none found).
        reason: String,
    },
    /// tonic refused the TLS configuration for another reason.
    #[error("invalid TLS configuration: {reason}")]
    Rejected {
        /// tonic's reason.
        reason: String,
    },
}
