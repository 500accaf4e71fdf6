//! Transport security against in-process replicas on 127.0.0.1 serving TLS
//! (tonic's `ServerTlsConfig`) with certificates made at test time: calls and
//! probes over TLS, each kind of TLS failure named per endpoint, failing
//! endpoints ejected while calls go elsewhere, mutual TLS, plaintext against TLS
//! both ways, and the settings `build` refuses.

mod common;

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use chat_lb_client::{
    Balancer, BuildError, Change, EndpointState, PemOrigin, PemRole, Policy, ProbeOutcome, Scheme,
    Target, TlsConfigError,
};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use common::{Frozen, Replica, app_call, endpoint, init_tracing, wait_all_healthy, wait_until};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};
use tokio::time::Instant;
use tonic::{
    Code,
    transport::{Certificate, Identity, ServerTlsConfig},
};

const LIMIT: Duration = Duration::from_secs(10);
/// The deadline of calls expected to fail.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
const UNKNOWN_AUTHORITY: &str = "TLS: certificate signed by an unknown authority";

// ---- certificates -------------------------------------------------------------

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, in PEM.
struct Issued {
    cert: String,
    key: String,
}

impl Ca {
    /// A CA with a name of its own (two CAs of one name would be told apart
    /// only by their signatures).
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], expired: bool) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, "test");
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().pem();
        Issued {
            cert,
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    fn server(&self) -> Issued {
        self.issue(&["localhost", "127.0.0.1"], false)
    }

    /// A client certificate (for mutual TLS).
    fn client(&self) -> Issued {
        self.issue(&["client.test"], false)
    }
}

impl Issued {
    fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert, &self.key))
    }
}

/// A TLS replica with a certificate for localhost and 127.0.0.1 from `ca`.
fn tls_replica(name: &str, ca: &Ca) -> Replica {
    Replica::start_tls(name, ca.server().server_tls())
}

/// A folder of files for one test, removed on drop.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "chat-lb-client-tls-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- set-ups ------------------------------------------------------------------

/// Fast probes; calls fail after `CALL_TIMEOUT` at the latest.
fn fast() -> chat_lb_client::Builder {
    Balancer::builder()
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(500))
        .timeout(CALL_TIMEOUT)
}

fn https(replicas: &[&Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("https://{}", r.addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// Makes one app call that must fail, in time, with UNAVAILABLE; returns the
/// message.
async fn fails_unavailable(lb: &Balancer) -> String {
    let started = Instant::now();
    let mut client = ChatServiceClient::new(lb.clone());
    let status = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), app_call(&mut client))
        .await
        .expect("the call must not hang")
        .expect_err("the call must fail");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() <= CALL_TIMEOUT + Duration::from_millis(500),
        "took {:?}",
        started.elapsed()
    );
    status.message().to_owned()
}

/// Waits until the endpoint's last error is `expected`.
async fn wait_for_last_error(lb: &Balancer, addr: std::net::SocketAddr, expected: &str) {
    wait_until(
        lb,
        LIMIT,
        &format!("{addr}'s last error is {expected:?}"),
        |s| {
            s.iter()
                .any(|e| e.address == addr && e.last_error.as_deref() == Some(expected))
        },
    )
    .await;
}

// ---- calls and probes ---------------------------------------------------------

#[tokio::test]
async fn calls_and_probes_go_over_tls_with_a_ca() {
    init_tracing();
    let ca = Ca::new("test CA");
    let a = tls_replica("a", &ca);
    let b = tls_replica("b", &ca);
    let files = Files::new();
    // One https:// address and one plain: the plain one follows the TLS setting.
    let lb = fast()
        .policy(Policy::RoundRobin)
        .addresses(&format!("https://{},{}", a.addr, b.addr))
        .tls_ca_file(files.write("ca.pem", &ca.pem))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    for e in lb.snapshot() {
        assert!(
            matches!(
                e.last_probe.as_ref().map(|p| &p.outcome),
                Some(ProbeOutcome::Healthy { .. })
            ),
            "probes over TLS: {e:#?}"
        );
    }
    let mut client = ChatServiceClient::new(lb.clone());
    for _ in 0..20 {
        app_call(&mut client).await.expect("a call over TLS");
    }
    assert_eq!((a.calls(), b.calls()), (10, 10));
}

#[tokio::test]
async fn a_host_name_is_verified_through_its_resolution_and_discovered_endpoints_follow_tls() {
    init_tracing();
    let ca = Ca::new("test CA");
    // A certificate for the name only: the IP address it resolves to is not in it.
    let by_name = Replica::start_tls("by-name", ca.issue(&["localhost"], false).server_tls());
    let discovered = tls_replica("discovered", &ca);
    let lb = fast()
        .address(format!("https://localhost:{}", by_name.addr.port()))
        .discover(futures::stream::iter([Ok::<_, std::io::Error>(
            Change::Insert(1, discovered.addr),
        )]))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    wait_until(&lb, LIMIT, "both replicas healthy", |s| {
        [by_name.addr, discovered.addr].iter().all(|addr| {
            s.iter()
                .any(|e| e.address == *addr && e.state == EndpointState::Healthy)
        })
    })
    .await;
    let mut client = ChatServiceClient::new(lb.clone());
    for _ in 0..10 {
        app_call(&mut client).await.expect("a call over TLS");
    }
}

// ---- the server's certificate ---------------------------------------------------

#[tokio::test]
async fn an_endpoint_with_a_certificate_from_another_ca_fails_no_call() {
    init_tracing();
    let (ca, other) = (Ca::new("test CA"), Ca::new("another CA"));
    let good = tls_replica("good", &ca);
    let bad = tls_replica("bad", &other);
    // Calls start at once, before any probe has answered; pick-first sends the
    // first one to `bad`, listed first, whatever the choice's costs and coin tosses.
    let lb = fast()
        .policy(Policy::PickFirst)
        .addresses(&https(&[&bad, &good]))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    for i in 0..50 {
        if let Err(status) = app_call(&mut client).await {
            panic!("call {i} failed: {status:?}");
        }
    }
    assert_eq!(good.calls(), 50);
    assert!(
        endpoint(&lb, bad.addr).calls >= 1,
        "a call met the bad certificate (and was retried on good)"
    );
    wait_for_last_error(&lb, bad.addr, UNKNOWN_AUTHORITY).await;
    assert!(!endpoint(&lb, bad.addr).state.is_routable());
}

#[tokio::test]
async fn with_every_endpoint_failing_tls_calls_fail_fast_naming_each_problem() {
    init_tracing();
    let (ca, other) = (Ca::new("test CA"), Ca::new("another CA"));
    let a = tls_replica("a", &other);
    let b = tls_replica("b", &other);
    let lb = fast()
        .addresses(&https(&[&a, &b]))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let message = fails_unavailable(&lb).await;
    for replica in [&a, &b] {
        let expected = format!("{} ({UNKNOWN_AUTHORITY})", replica.addr);
        assert!(
            message.contains(&expected),
            "{message:?} lacks {expected:?}"
        );
    }
    assert_eq!((a.calls(), b.calls()), (0, 0));
}

#[tokio::test]
async fn a_name_the_certificate_lacks_is_named_and_tls_server_name_fixes_it() {
    init_tracing();
    let ca = Ca::new("test CA");
    let replica = Replica::start_tls("named", ca.issue(&["chat.internal"], false).server_tls());
    let by_ip = fast()
        .address(format!("https://{}", replica.addr))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let message = fails_unavailable(&by_ip).await;
    let expected = format!(
        "{} (TLS: certificate is not valid for name \"127.0.0.1\" (it is valid for chat.internal))",
        replica.addr
    );
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );

    let renamed = fast()
        .address(format!("https://{}", replica.addr))
        .tls_ca_pem(&ca.pem)
        .tls_server_name("chat.internal")
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(renamed);
    app_call(&mut client)
        .await
        .expect("the name overrides the IP");
    assert_eq!(replica.calls(), 1);
}

#[tokio::test]
async fn an_expired_certificate_is_named() {
    init_tracing();
    let ca = Ca::new("test CA");
    let expired = Replica::start_tls(
        "expired",
        ca.issue(&["localhost", "127.0.0.1"], true).server_tls(),
    );
    let lb = fast()
        .address(format!("https://{}", expired.addr))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let message = fails_unavailable(&lb).await;
    let expected = format!(
        "{} (TLS: certificate has expired (not valid after 2001-01-01T00:00:00Z))",
        expired.addr
    );
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
}

#[tokio::test]
async fn the_system_roots_do_not_trust_a_private_ca() {
    init_tracing();
    let ca = Ca::new("test CA");
    let replica = tls_replica("a", &ca);
    let lb = match fast()
        .address(format!("https://{}", replica.addr))
        .tls_system_roots()
        .build()
    {
        Ok(lb) => lb,
        Err(BuildError::Tls(TlsConfigError::SystemRoots { reason })) => {
            eprintln!("skipped: this system has no trusted roots ({reason})");
            return;
        }
        Err(other) => panic!("{other}"),
    };
    let message = fails_unavailable(&lb).await;
    let expected = format!("{} ({UNKNOWN_AUTHORITY})", replica.addr);
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
}

// ---- mutual TLS -----------------------------------------------------------------

/// A replica that requires a client certificate from `ca`.
fn mutual_replica(name: &str, ca: &Ca) -> Replica {
    Replica::start_tls(
        name,
        ca.server()
            .server_tls()
            .client_ca_root(Certificate::from_pem(&ca.pem)),
    )
}

#[tokio::test]
async fn mutual_tls_refuses_no_certificate_and_a_stranger_and_serves_a_member() {
    init_tracing();
    let (ca, other) = (Ca::new("test CA"), Ca::new("another CA"));
    let replica = mutual_replica("mutual", &ca);
    let files = Files::new();
    let builder = || {
        fast()
            .address(format!("https://{}", replica.addr))
            .tls_ca_pem(&ca.pem)
    };

    // The refusal shows on the first request over the connection (TLS 1.3):
    // the request that meets the server's alert gets the exact reason, one that
    // only sees the connection close gets a likely one. Either is a TLS error
    // naming the endpoint; its last error ends up the exact reason.
    let anonymous = builder().build().unwrap();
    let message = fails_unavailable(&anonymous).await;
    let expected = format!("{} (TLS: the server ", replica.addr);
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
    assert!(message.contains("client certificate"), "{message:?}");
    wait_for_last_error(
        &anonymous,
        replica.addr,
        "TLS: the server requires a client certificate",
    )
    .await;

    let stranger = other.client();
    let stranger = builder()
        .tls_identity_pem(&stranger.cert, &stranger.key)
        .build()
        .unwrap();
    let message = fails_unavailable(&stranger).await;
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
    assert!(message.contains("client certificate"), "{message:?}");
    wait_for_last_error(
        &stranger,
        replica.addr,
        "TLS: the server rejected our client certificate (signed by a CA it does not trust)",
    )
    .await;
    assert_eq!(replica.calls(), 0);

    let member = ca.client();
    let member = builder()
        .tls_identity_files(
            files.write("client.pem", &member.cert),
            files.write("client.key", &member.key),
        )
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(member.clone());
    app_call(&mut client).await.expect("a member is served");
    wait_all_healthy(&member, LIMIT).await;
    assert_eq!(replica.calls(), 1);
}

#[tokio::test]
async fn a_refused_client_certificate_ejects_the_endpoint_and_the_call_goes_elsewhere() {
    init_tracing();
    let ca = Ca::new("test CA");
    // The refusal only shows on the first request (TLS 1.3): such calls never
    // reached the server, so even calls not marked retry-safe move on.
    let mutual = mutual_replica("mutual", &ca);
    let open = tls_replica("open", &ca);
    let lb = fast()
        .policy(Policy::PickFirst)
        .addresses(&https(&[&mutual, &open]))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    for i in 0..20 {
        if let Err(status) = app_call(&mut client).await {
            panic!("call {i} failed: {status:?}");
        }
    }
    assert_eq!((mutual.calls(), open.calls()), (0, 20));
    let refused = endpoint(&lb, mutual.addr);
    assert!(!refused.state.is_routable(), "{refused:#?}");
    wait_for_last_error(
        &lb,
        mutual.addr,
        "TLS: the server requires a client certificate",
    )
    .await;
}

// ---- plaintext against TLS ------------------------------------------------------

#[tokio::test]
async fn a_plaintext_client_against_a_tls_server_fails_clearly_in_time() {
    init_tracing();
    let ca = Ca::new("test CA");
    let replica = tls_replica("tls", &ca);
    let lb = fast().address(replica.addr).build().unwrap();
    let message = fails_unavailable(&lb).await;
    assert!(message.contains(&replica.addr.to_string()), "{message:?}");
    assert!(message.contains("if it expects TLS"), "{message:?}");
}

#[tokio::test]
async fn a_tls_client_against_a_plaintext_server_fails_clearly_in_time() {
    init_tracing();
    let ca = Ca::new("test CA");
    let replica = Replica::start("plain");
    let lb = fast()
        .address(format!("https://{}", replica.addr))
        .tls_ca_pem(&ca.pem)
        .build()
        .unwrap();
    let message = fails_unavailable(&lb).await;
    let expected = format!(
        "{} (TLS: the server does not speak TLS (plaintext server?))",
        replica.addr
    );
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out_within_the_connect_timeout() {
    init_tracing();
    let ca = Ca::new("test CA");
    let frozen = Frozen::start().await;
    let lb = fast()
        .address(format!("https://{}", frozen.addr))
        .tls_ca_pem(&ca.pem)
        .connect_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let started = Instant::now();
    let message = fails_unavailable(&lb).await;
    let expected = format!("{} (TLS: the handshake timed out", frozen.addr);
    assert!(
        message.contains(&expected),
        "{message:?} lacks {expected:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// ---- settings build refuses -------------------------------------------------------

fn build_error(builder: chat_lb_client::Builder) -> TlsConfigError {
    match builder.build() {
        Err(BuildError::Tls(error)) => error,
        Err(other) => panic!("not a TLS error: {other}"),
        Ok(_) => panic!("built"),
    }
}

#[test]
fn addresses_carry_their_scheme() {
    let target: Target = "https://127.0.0.1:8500".parse().unwrap();
    assert_eq!(target.scheme(), Some(Scheme::Https));
    assert_eq!(target.to_string(), "127.0.0.1:8500");
    let target: Target = "http://127.0.0.1:8500".parse().unwrap();
    assert_eq!(target.scheme(), Some(Scheme::Http));
}

#[test]
fn schemes_that_contradict_each_other_or_the_settings_are_refused() {
    let error = build_error(Balancer::builder().addresses("https://a:1,http://b:2"));
    assert_eq!(
        error.to_string(),
        "the address list mixes https:// (https://a:1) and http:// (http://b:2) addresses: use \
         one scheme"
    );
    let error = build_error(Balancer::builder().addresses("https://a:1,b:2"));
    assert_eq!(error, TlsConfigError::HttpsWithoutRoots);
    assert_eq!(
        error.to_string(),
        "https:// needs trusted roots: set tls_ca_pem/tls_ca_file or tls_system_roots"
    );
    let ca = Ca::new("test CA");
    let error = build_error(
        Balancer::builder()
            .addresses("http://a:1")
            .tls_ca_pem(&ca.pem),
    );
    assert!(
        matches!(&error, TlsConfigError::PlaintextWithTls { address } if address == "http://a:1"),
        "{error}"
    );
    let client = ca.client();
    let error = build_error(
        Balancer::builder()
            .address("a:1")
            .tls_identity_pem(&client.cert, &client.key),
    );
    assert_eq!(error, TlsConfigError::NoRoots);
    let error = build_error(
        Balancer::builder()
            .address("a:1")
            .tls_ca_pem(&ca.pem)
            .tls_server_name("not a name"),
    );
    assert_eq!(
        error.to_string(),
        "invalid TLS server name \"not a name\": not a DNS name or IP address"
    );
}

#[test]
fn files_that_cannot_be_read_or_hold_no_pem_are_named() {
    let files = Files::new();
    let missing = files.0.join("missing.pem");
    let error = build_error(Balancer::builder().address("a:1").tls_ca_file(&missing));
    assert_eq!(
        error.to_string(),
        format!("cannot read TLS CA file {missing:?}: No such file or directory")
    );

    let empty = files.write("empty.pem", "not a certificate\n");
    let error = build_error(Balancer::builder().address("a:1").tls_ca_file(&empty));
    assert_eq!(
        error.to_string(),
        format!("TLS CA file {empty:?} holds no PEM certificate")
    );
    assert_eq!(
        error,
        TlsConfigError::NoPem {
            role: PemRole::Ca,
            origin: PemOrigin::File(empty.clone()),
        }
    );
    let error = build_error(Balancer::builder().address("a:1").tls_ca_pem(""));
    assert_eq!(
        error.to_string(),
        "TLS CA given to tls_ca_pem holds no PEM certificate"
    );

    let ca = Ca::new("test CA");
    let (client, other) = (ca.client(), ca.client());
    let cert = files.write("client.pem", &client.cert);
    let key = files.write("client.key", &client.key);
    let wrong_key = files.write("other.key", &other.key);
    let base = || Balancer::builder().address("a:1").tls_ca_pem(&ca.pem);
    let error = build_error(base().tls_identity_files(&cert, &cert));
    assert_eq!(
        error.to_string(),
        format!("TLS client key file {cert:?} holds no PEM private key")
    );
    let error = build_error(base().tls_identity_files(&key, &key));
    assert_eq!(
        error.to_string(),
        format!("TLS client certificate file {key:?} holds no PEM certificate")
    );
    let error = build_error(base().tls_identity_files(&cert, files.0.join("nope.key")));
    assert!(
        matches!(
            error,
            TlsConfigError::Unreadable {
                role: PemRole::ClientKey,
                ..
            }
        ),
        "{error}"
    );
    let error = build_error(base().tls_identity_files(&cert, &wrong_key));
    assert_eq!(
        error.to_string(),
        format!(
            "TLS client key file {wrong_key:?} does not match the client certificate file {cert:?}"
        )
    );
    let broken = files.write(
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
    );
    let error = build_error(Balancer::builder().address("a:1").tls_ca_file(&broken));
    assert!(
        error.to_string().starts_with(&format!(
            "TLS CA file {broken:?} holds an unusable certificate: "
        )),
        "{error}"
    );
}
