//! `chat-server gen-certs`: a certificate authority and certificates for a test or
//! small cluster, in one command.
//!
//! Writes into the output folder:
//! - `ca.pem`, `ca.key`: the cluster's CA (created once; when both files are already
//!   there they are reused, so running the command again with other hosts adds or
//!   renews server certificates under the same CA, which every client already trusts);
//! - `server.pem`, `server.key`: a server certificate for every `--host` (DNS names and
//!   IP addresses, as subject alternative names), for `--tls-cert`/`--tls-key`;
//! - `client.pem`, `client.key`: a client certificate for mutual TLS, for chat-cli's
//!   `--client-cert`/`--client-key`.
//!
//! Keys are ECDSA P-256, private keys are written with mode 0600, and every file is
//! written to a temporary name and renamed, so a replica reloading on SIGHUP never
//! reads half a file. Production clusters with their own PKI do not need this.

use std::{
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// What to generate.
#[derive(Debug, Clone)]
pub struct CertRequest {
    /// The folder to write into (created if missing).
    pub out: PathBuf,
    /// The names and IP addresses the server certificate is valid for.
    pub hosts: Vec<String>,
    /// Validity of the server and client certificates, in days (the CA gets ten times
    /// as long).
    pub days: u32,
    /// The common name of the client certificate.
    pub client_name: String,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct GeneratedCerts {
    /// The CA certificate, to trust on every client and (for mutual TLS) every replica.
    pub ca_cert: PathBuf,
    /// Whether an existing CA in the folder was reused.
    pub ca_reused: bool,
    /// The server certificate.
    pub server_cert: PathBuf,
    /// The server certificate's private key.
    pub server_key: PathBuf,
    /// The client certificate.
    pub client_cert: PathBuf,
    /// The client certificate's private key.
    pub client_key: PathBuf,
}

/// Why certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// No `--host` was given.
    #[error(
        "give at least one --host: the names and IP addresses clients use to reach the replicas"
    )]
    NoHosts,
    /// A host is neither an IP address nor a valid DNS name.
    #[error("--host {host:?} is neither an IP address nor a DNS name")]
    BadHost {
        /// The host as given.
        host: String,
    },
    /// Only one of `ca.pem` and `ca.key` exists in the folder.
    #[error("{present:?} exists but {missing:?} does not: remove it, or restore its pair")]
    HalfCa {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The existing CA could not be read.
    #[error("cannot use the existing CA {path:?}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file could not be written.
    #[error("cannot write {path:?}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// rcgen refused the parameters.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Generates (or renews) the CA, server and client certificates in `request.out`.
pub fn generate(request: &CertRequest) -> Result<GeneratedCerts, CertError> {
    if request.hosts.is_empty() {
        return Err(CertError::NoHosts);
    }
    let sans = request
        .hosts
        .iter()
        .map(|host| subject_alt_name(host))
        .collect::<Result<Vec<_>, _>>()?;
    let out = &request.out;
    fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.clone(),
        source,
    })?;

    let now = OffsetDateTime::now_utc();
    let days = Duration::days(i64::from(request.days.max(1)));
    let (ca, ca_reused) = certificate_authority(out, now, days * 10)?;

    let mut server = leaf_params(now, days, "chat-server");
    server.subject_alt_names = sans;
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (server_cert, server_key) = issue(out, "server", server, &ca)?;

    let mut client = leaf_params(now, days, &request.client_name);
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let (client_cert, client_key) = issue(out, "client", client, &ca)?;

    Ok(GeneratedCerts {
        ca_cert: out.join("ca.pem"),
        ca_reused,
        server_cert,
        server_key,
        client_cert,
        client_key,
    })
}

fn subject_alt_name(host: &str) -> Result<SanType, CertError> {
    let bad = || CertError::BadHost {
        host: host.to_owned(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !valid {
        return Err(bad());
    }
    Ok(SanType::DnsName(host.try_into().map_err(|_| bad())?))
}

/// The CA of the folder: the existing `ca.pem` + `ca.key`, or a new one.
fn certificate_authority(
    out: &Path,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(Issuer<'static, KeyPair>, bool), CertError> {
    let (cert_path, key_path) = (out.join("ca.pem"), out.join("ca.key"));
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let bad = |path: &Path, reason: String| CertError::BadCa {
                path: path.to_owned(),
                reason,
            };
            let key_pem =
                fs::read_to_string(&key_path).map_err(|e| bad(&key_path, e.to_string()))?;
            let cert_pem =
                fs::read_to_string(&cert_path).map_err(|e| bad(&cert_path, e.to_string()))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| bad(&key_path, e.to_string()))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|e| bad(&cert_path, e.to_string()))?;
            Ok((issuer, true))
        }
        (false, false) => {
            let mut params = CertificateParams::default();
            params.distinguished_name = name("chat-cluster CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            params.not_before = now - Duration::hours(1);
            params.not_after = now + validity;
            let key = KeyPair::generate()?;
            let cert = params.self_signed(&key)?;
            write(&cert_path, cert.pem().as_bytes(), 0o644)?;
            write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            Ok((Issuer::new(params, key), false))
        }
        (true, false) => Err(CertError::HalfCa {
            present: cert_path,
            missing: key_path,
        }),
        (false, true) => Err(CertError::HalfCa {
            present: key_path,
            missing: cert_path,
        }),
    }
}

/// Parameters of a server or client certificate (random serial, one hour of clock
/// skew allowed at the start).
fn leaf_params(now: OffsetDateTime, validity: Duration, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    params
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Signs `params` with the CA and writes `STEM.pem` and `STEM.key` (0600).
fn issue(
    out: &Path,
    stem: &str,
    params: CertificateParams,
    ca: &Issuer<'static, KeyPair>,
) -> Result<(PathBuf, PathBuf), CertError> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, ca)?;
    let (cert_path, key_path) = (
        out.join(format!("{stem}.pem")),
        out.join(format!("{stem}.key")),
    );
    write(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok((cert_path, key_path))
}

/// Writes a file with the given mode through a temporary file and a rename.
fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let error = |source| CertError::Write {
        path: path.to_owned(),
        source,
    };
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    drop(file);
    fs::rename(&temporary, path).map_err(error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::tls::{TlsFiles, load};

    fn request(out: &Path, hosts: &[&str]) -> CertRequest {
        CertRequest {
            out: out.to_owned(),
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            days: 30,
            client_name: "chat-client".to_owned(),
        }
    }

    #[test]
    fn generated_certificates_load_as_a_mutual_tls_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("certs");
        let made = generate(&request(&out, &["localhost", "127.0.0.1"])).expect("generated");
        assert!(!made.ca_reused);
        for key in [&made.server_key, &made.client_key, &out.join("ca.key")] {
            let mode = fs::metadata(key).expect("key").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key:?}");
        }
        let loaded = load(&TlsFiles {
            cert: made.server_cert.clone(),
            key: made.server_key.clone(),
            client_ca: Some(made.ca_cert.clone()),
        })
        .expect("the server files load");
        assert!(loaded.mutual);
        assert!(loaded.certificate.subject.contains("chat-server"));

        // Run again: the CA is kept, the server certificate is new.
        let again = generate(&request(&out, &["other.example"])).expect("renewed");
        assert!(again.ca_reused);
        let renewed = load(&TlsFiles {
            cert: again.server_cert,
            key: again.server_key,
            client_ca: None,
        })
        .expect("renewed files load");
        assert_ne!(renewed.certificate.serial, loaded.certificate.serial);
    }

    #[test]
    fn bad_requests_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(matches!(
            generate(&request(dir.path(), &[])),
            Err(CertError::NoHosts)
        ));
        for bad in ["bad host", "-a.example", "a..b", ""] {
            match generate(&request(dir.path(), &[bad])) {
                Err(CertError::BadHost { host }) => assert_eq!(host, bad),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        fs::write(dir.path().join("ca.pem"), "x").expect("write");
        let error = generate(&request(dir.path(), &["a.example"])).expect_err("half a CA");
        assert!(error.to_string().contains("ca.key"), "{error}");
    }
}
