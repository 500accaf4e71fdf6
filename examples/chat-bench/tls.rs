//! `--tls`: certificates made at start, so that every contender runs over TLS.

use std::{path::Path, sync::Arc};

/// Certificates of a `--tls` run: made at start in a temporary folder.
#[derive(Debug, Clone)]
pub struct BenchTls {
    /// The CA every client trusts, as PEM.
    pub ca_pem: Vec<u8>,
    /// `--tls-cert FILE --tls-key FILE` for the replicas.
    pub server_args: Vec<String>,
    /// Kept for its `Drop` (removes the files).
    _dir: Arc<tempfile::TempDir>,
}

impl BenchTls {
    /// Makes a CA and a server certificate for `127.0.0.1` and `localhost`, as
    /// `chat-server gen-certs` makes them.
    pub fn make() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("chat-bench-certs-")
            .tempdir()?;
        let made = chat_server::certs::generate(&chat_server::certs::CertRequest {
            out: dir.path().to_owned(),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            days: 1,
            client_name: "chat-bench".into(),
        })?;
        let path = |p: &Path| p.display().to_string();
        Ok(Self {
            ca_pem: std::fs::read(&made.ca_cert)?,
            server_args: vec![
                "--tls-cert".into(),
                path(&made.server_cert),
                "--tls-key".into(),
                path(&made.server_key),
            ],
            _dir: Arc::new(dir),
        })
    }
}
