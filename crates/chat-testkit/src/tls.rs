//! Certificates made at test time (by `chat-server gen-certs`, as an operator makes
//! them), and TLS clients that look at what a replica serves.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::binary::workspace_binary;

/// A CA with a server certificate for `localhost` and `127.0.0.1` and a client
/// certificate, in a temporary folder (as `chat-server gen-certs` writes them).
pub struct Pki {
    /// The folder holding the files (removed on drop).
    pub dir: tempfile::TempDir,
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
    /// `client.pem`.
    pub client_cert: PathBuf,
    /// `client.key`.
    pub client_key: PathBuf,
}

impl Pki {
    /// A new CA and its certificates.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ca = gen_certs(dir.path(), &["localhost", "127.0.0.1"]);
        assert!(ca.contains("(new)"), "a new CA: {ca}");
        let file = |name: &str| dir.path().join(name);
        Self {
            ca: file("ca.pem"),
            server_cert: file("server.pem"),
            server_key: file("server.key"),
            client_cert: file("client.pem"),
            client_key: file("client.key"),
            dir,
        }
    }

    /// Replaces the server and client certificates with new ones from the same CA,
    /// valid for `hosts` (what an operator does before sending SIGHUP).
    pub fn renew(&self, hosts: &[&str]) {
        let ca = gen_certs(self.dir.path(), hosts);
        assert!(ca.contains("(reused)"), "renewal keeps the CA: {ca}");
    }

    /// `--tls-cert FILE --tls-key FILE` for a replica.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            path(&self.server_cert),
            "--tls-key".into(),
            path(&self.server_key),
        ]
    }

    /// Like [`Pki::server_args`], plus `--tls-client-ca` (mutual TLS).
    pub fn mutual_server_args(&self) -> Vec<String> {
        let mut args = self.server_args();
        args.extend(["--tls-client-ca".into(), path(&self.ca)]);
        args
    }

    /// A server certificate from this CA that expired yesterday, as (cert, key) files.
    pub fn expired_server_certificate(&self) -> (PathBuf, PathBuf) {
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(self.dir.path().join("ca.key")).expect("read CA key"),
        )
        .expect("CA key");
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(&self.ca).expect("read CA"),
            ca_key,
        )
        .expect("CA");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("params");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(30);
        params.not_after = now - time::Duration::days(1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let (cert_path, key_path) = (
            self.dir.path().join("expired.pem"),
            self.dir.path().join("expired.key"),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// A tonic TLS configuration trusting this CA, with the client certificate when
    /// `identity` is set.
    pub fn client_tls(&self, identity: bool) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(&self.ca).expect("read CA"),
        ));
        if identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&self.client_cert).expect("read client cert"),
                std::fs::read(&self.client_key).expect("read client key"),
            ));
        }
        tls
    }

    /// A direct (unbalanced) TLS channel to one replica.
    pub async fn channel(&self, address: SocketAddr, identity: bool) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("https://{address}"))
            .expect("endpoint")
            .tls_config(self.client_tls(identity))
            .expect("tls config")
            .connect()
            .await
            .expect("connect over TLS")
    }

    /// The serial number (colon-separated hex) of the certificate a fresh TLS
    /// handshake with `address` gets.
    pub async fn served_serial(&self, address: SocketAddr) -> String {
        let mut roots = rustls::RootCertStore::empty();
        for cert in
            <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_file_iter(
                &self.ca,
            )
            .expect("read CA")
        {
            roots.add(cert.expect("CA certificate")).expect("add CA");
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(
                rustls_pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .expect("TLS handshake");
        let (_, session) = tls.get_ref();
        let served = &session.peer_certificates().expect("a server certificate")[0];
        let (_, parsed) = x509_parser::parse_x509_certificate(served).expect("X.509");
        parsed.raw_serial_as_string()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs `chat-server gen-certs` into `out` for `hosts` (30 days, client `test-client`);
/// returns its line about the CA (`CA (new): ...` or `CA (reused): ...`).
fn gen_certs(out: &Path, hosts: &[&str]) -> String {
    let output = Command::new(workspace_binary("chat-server"))
        .arg("gen-certs")
        .arg("--out")
        .arg(out)
        .args([
            "--host",
            &hosts.join(","),
            "--days",
            "30",
            "--client-name",
            "test-client",
        ])
        .output()
        .expect("run chat-server gen-certs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "chat-server gen-certs failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .find(|line| line.starts_with("CA ("))
        .unwrap_or_default()
        .to_owned()
}

/// A path as a command-line argument.
pub fn path(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_owned()
}
