//! Reading the PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca` into a
//! rustls server configuration, refusing anything that could not serve.
//!
//! Every check that rustls would otherwise only fail at the first handshake (or never)
//! is made here, so a bad file is one clear error at start-up or at a reload: the file
//! must exist and hold PEM, the key must belong to the certificate, and the certificate
//! must be valid now. A certificate that expires while served is logged, not refused
//! (clients refuse it; a reload with new files fixes it).

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
    sign::CertifiedKey,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::TlsError;

/// The files a TLS replica serves from, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain (PEM), the replica's own certificate first.
    pub cert: PathBuf,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With mutual TLS: the CA (PEM) that must have signed every client's certificate.
    pub client_ca: Option<PathBuf>,
}

/// What a loaded certificate is, for the logs: which one is served and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The serial number, as colon-separated hex (`1f:a0:...`).
    pub serial: String,
    /// The subject's distinguished name.
    pub subject: String,
    /// The start of the validity period.
    pub not_before: SystemTime,
    /// The end of the validity period.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// `not_after` as an RFC 3339 time, for logs.
    pub fn expiry(&self) -> String {
        humantime::format_rfc3339_seconds(self.not_after).to_string()
    }
}

/// A rustls configuration ready to accept connections, and what it serves.
#[derive(Debug, Clone)]
pub struct LoadedTls {
    /// The configuration handshakes use (ALPN `h2` only).
    pub config: Arc<ServerConfig>,
    /// The certificate presented to clients.
    pub certificate: CertificateInfo,
    /// Whether clients must present a certificate signed by the client CA.
    pub mutual: bool,
}

/// The crypto provider every TLS configuration of this crate uses: ring, named
/// explicitly so that which provider the dependency graph enables cannot matter.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks the files, and builds the server configuration.
pub fn load(files: &TlsFiles) -> Result<LoadedTls, TlsError> {
    let chain = read_certificates(&files.cert, "--tls-cert")?;
    let key = read_key(&files.key)?;
    let certificate = inspect(&files.cert, &chain[0])?;
    check_validity_now(&files.cert, &certificate)?;

    let provider = provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|error| match error {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            key: files.key.clone(),
            cert: files.cert.clone(),
        },
        other => TlsError::Invalid {
            flag: "--tls-key",
            path: files.key.clone(),
            reason: other.to_string(),
        },
    })?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| TlsError::Invalid {
            flag: "--tls-cert",
            path: files.cert.clone(),
            reason: error.to_string(),
        })?;
    let builder = match &files.client_ca {
        Some(path) => builder.with_client_cert_verifier(client_verifier(path, provider)?),
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(LoadedTls {
        config: Arc::new(config),
        certificate,
        mutual: files.client_ca.is_some(),
    })
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(
    path: &Path,
    flag: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path, flag)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Invalid {
            flag,
            path: path.to_owned(),
            reason: format!("malformed PEM ({error})"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Invalid {
            flag,
            path: path.to_owned(),
            reason: "holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)"
                .to_owned(),
        });
    }
    Ok(certificates)
}

/// The first private key in a PEM file.
fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path, "--tls-key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|error| TlsError::Invalid {
        flag: "--tls-key",
        path: path.to_owned(),
        reason: match error {
            rustls_pki_types::pem::Error::NoItemsFound => {
                "holds no PEM private key (expected a -----BEGIN PRIVATE KEY----- block)".to_owned()
            }
            other => format!("malformed PEM ({other})"),
        },
    })
}

fn read(path: &Path, flag: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// The serial, subject and expiry of a certificate.
fn inspect(path: &Path, certificate: &CertificateDer<'_>) -> Result<CertificateInfo, TlsError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(certificate).map_err(|error| TlsError::Invalid {
            flag: "--tls-cert",
            path: path.to_owned(),
            reason: format!("not an X.509 certificate ({error})"),
        })?;
    Ok(CertificateInfo {
        serial: parsed.raw_serial_as_string(),
        subject: parsed.subject().to_string(),
        not_before: unix_time(parsed.validity().not_before.timestamp()),
        not_after: unix_time(parsed.validity().not_after.timestamp()),
    })
}

/// Refuses a certificate that is expired or not valid yet: clients would refuse every
/// handshake, so serving it is an outage that looks like a network problem.
fn check_validity_now(path: &Path, certificate: &CertificateInfo) -> Result<(), TlsError> {
    let now = SystemTime::now();
    let (not_before, not_after) = (certificate.not_before, certificate.not_after);
    let reason = if now > not_after {
        format!(
            "the certificate expired at {}",
            humantime::format_rfc3339_seconds(not_after)
        )
    } else if now < not_before {
        format!(
            "the certificate is not valid before {}",
            humantime::format_rfc3339_seconds(not_before)
        )
    } else {
        return Ok(());
    };
    Err(TlsError::Invalid {
        flag: "--tls-cert",
        path: path.to_owned(),
        reason,
    })
}

/// A verifier that requires every client to present a certificate signed by the CA in
/// `path` (mutual TLS).
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let invalid = |reason: String| TlsError::Invalid {
        flag: "--tls-client-ca",
        path: path.to_owned(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path, "--tls-client-ca")? {
        roots
            .add(certificate)
            .map_err(|error| invalid(format!("not a usable CA certificate ({error})")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| invalid(error.to_string()))
}

fn unix_time(seconds: i64) -> SystemTime {
    match u64::try_from(seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}
