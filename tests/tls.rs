//! Transport security with real `chat-server` processes and certificates made at test
//! time: every RPC through the balancer over TLS, SIGKILL under TLS load, the
//! misconfigurations a person makes (wrong CA, wrong name, plaintext against TLS and
//! the reverse), mutual TLS, certificate rotation on SIGHUP, and start-up errors.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use chat_lb_client::{Balancer, RetrySafe};
use chat_proto::v1::{
    AckMessagesRequest, DeleteAccountRequest, HealthCheckRequest, HealthCheckResponse,
    ListAccountsRequest, LogoutRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
};
use chat_testkit::{PASSWORD, Replica, SendLoad, SharedStore, authed, start_up_error, tls::Pki};
use tonic::{Code, Response, Status};

/// What a misconfigured call may take at most: its deadline plus slack. A hang fails.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

fn list(addresses: &[SocketAddr], scheme: &str) -> String {
    addresses
        .iter()
        .map(|address| format!("{scheme}{address}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A balancer over `addresses` trusting `pki`'s CA, with fast LAN settings.
fn tls_balancer(pki: &Pki, addresses: &[SocketAddr]) -> Balancer {
    Balancer::builder()
        .addresses(&list(addresses, "https://"))
        .tls_ca_file(&pki.ca)
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(250))
        .per_try_timeout(Duration::from_millis(500))
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer")
}

fn start_tls(store: &SharedStore, args: &[String]) -> Replica {
    Replica::start_with(store, &args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[tokio::test]
async fn every_rpc_through_the_balancer_over_tls() {
    let (store, pki) = (SharedStore::new(), Pki::new());
    let (a, b) = (
        start_tls(&store, &pki.server_args()),
        start_tls(&store, &pki.server_args()),
    );
    let lb = tls_balancer(&pki, &[a.address(), b.address()]);
    let mut client = ChatServiceClient::new(lb.clone());

    let health = client
        .health_check(HealthCheckRequest {})
        .await
        .expect("HealthCheck over TLS")
        .into_inner();
    assert!(health.store_reachable);
    let alice = chat_testkit::register_and_login(&mut client, "alice", PASSWORD).await;
    let bob = chat_testkit::register_and_login(&mut client, "bob", PASSWORD).await;
    let listed = client
        .list_accounts(authed(&alice, ListAccountsRequest::default()))
        .await
        .expect("ListAccounts")
        .into_inner();
    assert_eq!(listed.usernames.len(), 2);

    let mut stream = client
        .subscribe(authed(&bob, SubscribeRequest::default()))
        .await
        .expect("Subscribe")
        .into_inner();
    for i in 0..6 {
        chat_testkit::send(
            &mut client,
            &alice,
            "bob",
            &format!("hi {i}"),
            &format!("k{i}"),
        )
        .await;
    }
    for i in 0..6 {
        let message = chat_testkit::next_message(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(message.text, format!("hi {i}"));
    }
    assert_eq!(chat_testkit::fetch_inbox(&mut client, &bob).await.len(), 6);
    client
        .ack_messages(authed(&bob, AckMessagesRequest { up_to_sequence: 6 }))
        .await
        .expect("AckMessages");
    client
        .logout(authed(&bob, LogoutRequest {}))
        .await
        .expect("Logout");
    client
        .delete_account(authed(
            &alice,
            DeleteAccountRequest {
                password: PASSWORD.into(),
            },
        ))
        .await
        .expect("DeleteAccount");
    let used: Vec<u64> = lb.snapshot().iter().map(|e| e.calls).collect();
    assert!(
        used.iter().all(|&calls| calls > 0),
        "both replicas served: {used:?}"
    );

    // The standard health service over TLS, on a direct channel.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(pki.channel(a.address(), false).await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("grpc.health.v1 Check over TLS")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn sigkill_under_concurrent_tls_load_fails_no_retry_safe_call() {
    let (store, pki) = (SharedStore::new(), Pki::new());
    let mut replicas: Vec<Replica> = (0..3)
        .map(|_| start_tls(&store, &pki.server_args()))
        .collect();
    let addresses: Vec<SocketAddr> = replicas.iter().map(|r| r.address()).collect();
    let lb = tls_balancer(&pki, &addresses);
    let mut client = ChatServiceClient::new(lb.clone());
    let token = chat_testkit::register_and_login(&mut client, "carol", PASSWORD).await;
    let (workers, per_worker) = (8, 100);
    let load = SendLoad::start(&client, &token, "carol", workers, per_worker);
    load.wait_for(200).await;
    replicas[0].kill().await.expect("kill the replica");
    // One kill: at most one answer cut mid-way (retried by the load, see `ANSWER_CUT`).
    load.finish(1).await;
    // Every acknowledged send is stored once.
    let mut direct = ChatServiceClient::new(pki.channel(replicas[1].address(), false).await);
    let stored = chat_testkit::fetch_all(&mut direct, &token, Some(0), 500).await;
    assert_eq!(stored.len(), workers * per_worker);
}

/// A balancer for one replica at `address` (`https://` for TLS), with the call timeout.
fn lb_for(address: String) -> chat_lb_client::Builder {
    Balancer::builder().address(address).timeout(CALL_TIMEOUT)
}

/// A health check through the balancer `lb` builds.
async fn health(lb: chat_lb_client::Builder) -> Result<Response<HealthCheckResponse>, Status> {
    let lb = lb.build().expect("balancer");
    ChatServiceClient::new(lb)
        .health_check(HealthCheckRequest {})
        .await
}

/// Runs a health check through `lb` and checks it fails, in time, with an error whose
/// text has `needle`.
async fn fails_clearly(what: &str, needle: &str, lb: chat_lb_client::Builder) {
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), health(lb))
        .await
        .unwrap_or_else(|_| panic!("{what}: hung"));
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
    assert!(
        status.message().contains(needle),
        "{what}: {:?} lacks {needle:?}",
        status.message()
    );
    assert!(
        started.elapsed() <= CALL_TIMEOUT + Duration::from_secs(1),
        "{what}: in time"
    );
}

#[tokio::test]
async fn tls_misconfigurations_are_clear_errors_not_hangs() {
    let (store, pki, other) = (SharedStore::new(), Pki::new(), Pki::new());
    let tls = start_tls(&store, &pki.server_args());
    let plain = Replica::start(&store);
    let https = || lb_for(format!("https://{}", tls.address()));

    // A CA that did not sign the replica's certificate.
    let wrong_ca = https().tls_ca_file(&other.ca);
    // Both CAs are named alike (as gen-certs names them), so the message adds a hint.
    let expected = format!(
        "{} (TLS: certificate signed by an unknown authority",
        tls.address()
    );
    fails_clearly("wrong CA", &expected, wrong_ca).await;

    // A name the certificate does not hold.
    let wrong_name = https()
        .tls_ca_file(&pki.ca)
        .tls_server_name("chat.example.org");
    fails_clearly("wrong server name", "not valid for name", wrong_name).await;

    // The right name overrides an address the certificate does not hold.
    let renamed = https().tls_ca_file(&pki.ca).tls_server_name("localhost");
    health(renamed).await.expect("server name override");

    // A plaintext client against the TLS replica. The replica just closes the
    // connection; the error names it and says why that may be.
    let plaintext = lb_for(tls.address().to_string());
    let why = "if it expects TLS, use https:// addresses";
    fails_clearly("plaintext client", why, plaintext).await;

    // A TLS client against a plaintext replica.
    let tls_client = lb_for(format!("https://{}", plain.address())).tls_ca_file(&pki.ca);
    let why = "TLS: the server does not speak TLS";
    fails_clearly("TLS client", why, tls_client).await;
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    let (store, pki, other) = (SharedStore::new(), Pki::new(), Pki::new());
    let replica = start_tls(&store, &pki.mutual_server_args());
    let builder = || lb_for(format!("https://{}", replica.address())).tls_ca_file(&pki.ca);

    let needle = "client certificate";
    fails_clearly("no client certificate", needle, builder()).await;
    let stranger = builder().tls_identity_files(&other.client_cert, &other.client_key);
    fails_clearly("certificate from another CA", needle, stranger).await;

    let member = builder().tls_identity_files(&pki.client_cert, &pki.client_key);
    let answer = health(member)
        .await
        .expect("the right certificate is served");
    assert!(answer.into_inner().store_reachable);
}

#[tokio::test]
async fn sighup_rotates_the_certificate_and_keeps_open_streams() {
    let (store, pki) = (SharedStore::new(), Pki::new());
    let args = pki.server_args();
    let replica =
        Replica::start_logged(&store, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let first_serial = pki.served_serial(replica.address()).await;

    // A stream opened before the rotation.
    let mut client = ChatServiceClient::new(pki.channel(replica.address(), false).await);
    let dave = chat_testkit::register_and_login(&mut client, "dave", PASSWORD).await;
    let mut stream = client
        .subscribe(authed(&dave, SubscribeRequest::default()))
        .await
        .expect("subscribe")
        .into_inner();

    pki.renew(&["localhost", "127.0.0.1"]);
    replica.signal(libc::SIGHUP);
    replica
        .wait_for_log("TLS certificate reloaded", 1, Duration::from_secs(10))
        .await;
    let second_serial = pki.served_serial(replica.address()).await;
    assert_ne!(
        second_serial, first_serial,
        "new handshakes get the new certificate"
    );

    // The stream opened before still delivers, on its old connection.
    chat_testkit::send(&mut client, &dave, "dave", "after rotation", "rot-1").await;
    let message = chat_testkit::next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(message.text, "after rotation");

    // Bad files on SIGHUP: logged, and the previous certificate stays.
    std::fs::write(&pki.server_cert, "not a certificate").expect("overwrite");
    replica.signal(libc::SIGHUP);
    replica
        .wait_for_log("TLS reload failed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(pki.served_serial(replica.address()).await, second_serial);
    chat_testkit::send(&mut client, &dave, "dave", "still here", "rot-2").await;
    let message = chat_testkit::next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(message.text, "still here");
}

#[test]
fn bad_tls_files_are_one_line_start_up_errors() {
    let (store, pki) = (SharedStore::new(), Pki::new());
    let store = chat_testkit::StoreFixture::uri(&store);
    let (cert, key) = (
        chat_testkit::tls::path(&pki.server_cert),
        chat_testkit::tls::path(&pki.server_key),
    );
    let missing = chat_testkit::tls::path(&pki.dir.path().join("missing.pem"));
    let not_pem = pki.dir.path().join("notes.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let not_pem = chat_testkit::tls::path(&not_pem);
    let client_key = chat_testkit::tls::path(&pki.client_key);
    let (expired_cert, expired_key) = pki.expired_server_certificate();
    let (expired_cert, expired_key) = (
        chat_testkit::tls::path(&expired_cert),
        chat_testkit::tls::path(&expired_key),
    );
    // (what, --tls-cert, --tls-key, --tls-client-ca, the file named, the reason given)
    #[rustfmt::skip]
    let cases = [
        ("missing certificate", &missing, &key, None, &missing, "No such file"),
        ("missing key", &cert, &missing, None, &missing, "No such file"),
        ("certificate not PEM", &not_pem, &key, None, &not_pem, "no PEM certificate"),
        ("key not PEM", &cert, &not_pem, None, &not_pem, "no PEM private key"),
        ("key of another certificate", &cert, &client_key, None, &client_key, "does not match"),
        ("expired certificate", &expired_cert, &expired_key, None, &expired_cert, "expired"),
        ("client CA not PEM", &cert, &key, Some(&not_pem), &not_pem, "no PEM certificate"),
    ];
    for (what, cert, key, client_ca, file, reason) in cases {
        let mut args = vec!["--store", &store, "--tls-cert", cert, "--tls-key", key];
        if let Some(client_ca) = client_ca {
            args.extend(["--tls-client-ca", client_ca.as_str()]);
        }
        let stderr = start_up_error(None, &args, 1);
        let named = stderr.contains(file.as_str()) && stderr.contains(reason);
        assert!(named, "{what}: {stderr}");
    }

    // One of the pair without the other is a usage error.
    let args = ["--store", &store, "--tls-cert", &cert];
    let (code, _, stderr) = chat_testkit::run_server_to_exit(None, &args);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");

    // MongoDB over TLS: a missing CA file is a clear start-up error naming it.
    let mongo = format!("mongodb://127.0.0.1:1/chat?tls=true&tlsCAFile={missing}");
    let stderr = start_up_error(None, &["--store", &mongo], 1);
    assert!(stderr.contains(&missing), "{stderr}");
}
