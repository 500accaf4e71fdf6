//! The PEM inputs of the TLS settings: read (files at `build`), parsed and
//! checked, each failure a [`TlsConfigError`] naming the input.

use std::{fmt, io, path::PathBuf, sync::Arc};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::Identity;

use crate::error::{PemOrigin, PemRole, TlsConfigError};

/// One PEM input: text given to a builder method, or a file read at `build`.
#[derive(Clone)]
pub(super) enum PemInput {
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

/// Every certificate of every CA input, as trust anchors.
pub(super) fn trust_anchors(inputs: &[PemInput]) -> Result<RootCertStore, TlsConfigError> {
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
pub(super) fn identity(cert: &PemInput, key: &PemInput) -> Result<ClientIdentity, TlsConfigError> {
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
    let provider = crypto_provider();
    let checked =
        rustls::sign::CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider);
    match checked {
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
    Ok(ClientIdentity {
        tonic: Identity::from_pem(cert_pem, key_pem),
        chain,
        key: key_der,
    })
}

/// A client certificate and its key, checked to match: for tonic's channels
/// and for the balancer's own connections (rustls).
pub(super) struct ClientIdentity {
    pub tonic: Identity,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// The process's default crypto provider, else ring's (as tonic's channels
/// choose it).
pub(super) fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// An I/O error's reason without the `(os error N)` suffix.
fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_drop_the_os_error_number() {
        let error = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&error), "No such file or directory");
    }
}
