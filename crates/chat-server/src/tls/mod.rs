//! Transport security: the replica serves HTTP/2 over TLS (ALPN `h2`) when
//! `--tls-cert` and `--tls-key` are given, and requires client certificates signed by
//! `--tls-client-ca` when that is given too (mutual TLS).
//!
//! - [`load`] reads and checks the PEM files (a bad file is one error naming it);
//! - [`ReloadableTls`] holds the configuration in use and swaps it on SIGHUP
//!   ([`reload_on_sighup`]): new handshakes use the new files, established connections
//!   and their streams keep the session they negotiated, and bad new files are logged
//!   and ignored, so the replica keeps serving the old certificate;
//! - the handshakes themselves run in [`crate::listener`], each on its own task and
//!   bounded in time, so a slow or silent client never holds up the others.
//!
//! Everything on the port is encrypted: the chat service, `grpc.health.v1` and
//! reflection alike. There is no plaintext fallback on a TLS port.

mod load;

use std::{path::PathBuf, sync::Arc};

use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use load::{CertificateInfo, LoadedTls, TlsFiles, load};

/// Why TLS files cannot be served. Each variant is one line naming the flag, the file
/// and the reason.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {flag} file {path:?}: {source}")]
    Read {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// A file was read but its content cannot be used.
    #[error("{flag} file {path:?}: {reason}")]
    Invalid {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The private key does not belong to the certificate.
    #[error("--tls-key file {key:?} does not match the certificate in --tls-cert file {cert:?}")]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
}

/// The TLS configuration a replica serves, replaceable while it runs.
///
/// Handshakes read the current configuration through a `watch` channel
/// ([`ReloadableTls::subscribe`]); [`ReloadableTls::reload`] publishes a new one only
/// if the files load cleanly.
#[derive(Debug)]
pub struct ReloadableTls {
    files: TlsFiles,
    current: watch::Sender<Arc<ServerConfig>>,
}

impl ReloadableTls {
    /// Loads the files, logging the certificate's serial and expiry.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let loaded = load(&files)?;
        log_loaded(&loaded, "TLS certificate loaded");
        let (current, _) = watch::channel(loaded.config);
        Ok(Self { files, current })
    }

    /// The configuration in use, updated at every successful reload.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.subscribe()
    }

    /// Reads the files again. On success new handshakes use them; on failure the
    /// configuration in use is kept and the error returned.
    pub fn reload(&self) -> Result<CertificateInfo, TlsError> {
        let loaded = load(&self.files)?;
        log_loaded(&loaded, "TLS certificate reloaded");
        let certificate = loaded.certificate.clone();
        self.current.send_replace(loaded.config);
        Ok(certificate)
    }
}

fn log_loaded(loaded: &LoadedTls, what: &str) {
    tracing::info!(
        serial = %loaded.certificate.serial,
        subject = %loaded.certificate.subject,
        not_after = %loaded.certificate.expiry(),
        mutual_tls = loaded.mutual,
        "{what}"
    );
}

/// Reloads the TLS files at every SIGHUP until `stop` is cancelled. A reload that
/// fails is logged (naming the file and the reason) and changes nothing.
pub async fn reload_on_sighup(tls: Arc<ReloadableTls>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS files will not be reloaded");
            return;
        }
    };
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            received = hangups.recv() => {
                if received.is_none() {
                    return;
                }
            }
        }
        if let Err(error) = tls.reload() {
            tracing::error!(%error, "TLS reload failed; still serving the previous certificate");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::{CertRequest, generate};

    #[test]
    fn a_reload_publishes_good_files_and_keeps_serving_after_bad_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let request = CertRequest {
            out: dir.path().to_owned(),
            hosts: vec!["localhost".into()],
            days: 1,
            client_name: "client".into(),
        };
        let made = generate(&request).expect("certificates");
        let tls = ReloadableTls::load(TlsFiles {
            cert: made.server_cert.clone(),
            key: made.server_key.clone(),
            client_ca: None,
        })
        .expect("load");
        let current = tls.subscribe();
        let first = current.borrow().clone();

        std::fs::write(&made.server_cert, "garbage").expect("overwrite");
        let error = tls.reload().expect_err("bad files are refused");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        assert!(
            Arc::ptr_eq(&first, &current.borrow()),
            "the old config stays"
        );

        let renewed = generate(&request).expect("renew");
        let info = tls.reload().expect("good files reload");
        assert!(
            !Arc::ptr_eq(&first, &current.borrow()),
            "the new config is used"
        );
        assert_eq!(
            info.serial,
            load(&TlsFiles {
                cert: renewed.server_cert,
                key: renewed.server_key,
                client_ca: None,
            })
            .expect("load")
            .certificate
            .serial
        );
    }
}
