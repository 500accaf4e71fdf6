//! Transport security with real `chat-server` processes and certificates made at test
//! time: every RPC through the balancer over TLS, SIGKILL under TLS load, the
//! misconfigurations a person makes (wrong CA, wrong name, plaintext against TLS and
//! the reverse), mutual TLS, certificate rotation on SIGHUP, and start-up errors.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_lb_client::{Balancer, RetrySafe};
use chat_proto::v1::{
    AckMessagesRequest, DeleteAccountRequest, FetchMessagesRequest, HealthCheckRequest,
    ListAccountsRequest, LogoutRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
};
use common::{Replica, SharedStore, authed, send_request, tls::Pki};
use futures::StreamExt;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";
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
    let lb = tls_balancer(&pki, &[a.address, b.address]);
    let mut client = ChatServiceClient::new(lb.clone());

    let health = client
        .health_check(HealthCheckRequest {})
        .await
        .expect("HealthCheck over TLS")
        .into_inner();
    assert!(health.store_reachable);
    let alice = common::register_and_login(&mut client, "alice", PASSWORD).await;
    let bob = common::register_and_login(&mut client, "bob", PASSWORD).await;
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
        client
            .send_message(send_request(
                &alice,
                "bob",
                &format!("hi {i}"),
                &format!("k{i}"),
            ))
            .await
            .expect("SendMessage");
    }
    for i in 0..6 {
        let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("live message in time")
            .expect("stream open")
            .expect("message");
        assert_eq!(message.text, format!("hi {i}"));
    }
    let fetched = client
        .fetch_messages(authed(&bob, FetchMessagesRequest::default()))
        .await
        .expect("FetchMessages")
        .into_inner();
    assert_eq!(fetched.messages.len(), 6);
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
        tonic_health::pb::health_client::HealthClient::new(pki.channel(a.address, false).await);
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
    let mut replicas = [
        start_tls(&store, &pki.server_args()),
        start_tls(&store, &pki.server_args()),
        start_tls(&store, &pki.server_args()),
    ];
    let addresses: Vec<SocketAddr> = replicas.iter().map(|r| r.address).collect();
    let lb = tls_balancer(&pki, &addresses);
    let mut client = ChatServiceClient::new(lb.clone());
    let token = Arc::new(common::register_and_login(&mut client, "carol", PASSWORD).await);
    let completed = Arc::new(AtomicU64::new(0));
    let (workers, per_worker) = (8, 100);
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let (mut client, token, completed) = (client.clone(), token.clone(), completed.clone());
            tokio::spawn(async move {
                for i in 0..per_worker {
                    let key = format!("w{worker}-{i}");
                    client
                        .send_message(send_request(&token, "carol", &key, &key))
                        .await
                        .map_err(|status| format!("worker {worker} call {i}: {status:?}"))?;
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    while completed.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicas[0].kill();
    for task in tasks {
        task.await.expect("worker").expect("no failed call");
    }
    // Every acknowledged send is stored once.
    let mut direct = ChatServiceClient::new(pki.channel(replicas[1].address, false).await);
    let mut stored = 0;
    let mut after = Some(0);
    loop {
        let page = direct
            .fetch_messages(authed(
                &token,
                FetchMessagesRequest {
                    after_sequence: after,
                    page_size: 500,
                },
            ))
            .await
            .expect("fetch")
            .into_inner();
        stored += page.messages.len();
        after = page.messages.last().map(|m| m.sequence);
        if !page.has_more {
            break;
        }
    }
    assert_eq!(stored, workers * per_worker);
}

/// Runs `call` and checks it fails, in time, with an error whose text has `needle`.
async fn fails_clearly<T: std::fmt::Debug>(
    what: &str,
    needle: &str,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) {
    let started = Instant::now();
    let result = tokio::time::timeout(CALL_TIMEOUT + Duration::from_secs(2), call)
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
    let health = |lb: Balancer| async move {
        ChatServiceClient::new(lb)
            .health_check(HealthCheckRequest {})
            .await
    };

    // A CA that did not sign the replica's certificate.
    let wrong_ca = Balancer::builder()
        .address(format!("https://{}", tls.address))
        .tls_ca_file(&other.ca)
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer");
    // Both CAs are named alike (as gen-certs names them), so the message adds a hint.
    let expected = format!(
        "{} (TLS: certificate signed by an unknown authority",
        tls.address
    );
    fails_clearly("wrong CA", &expected, health(wrong_ca)).await;

    // A name the certificate does not hold.
    let wrong_name = Balancer::builder()
        .address(format!("https://{}", tls.address))
        .tls_ca_file(&pki.ca)
        .tls_server_name("chat.example.org")
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer");
    fails_clearly(
        "wrong server name",
        "not valid for name",
        health(wrong_name),
    )
    .await;

    // The right name overrides an address the certificate does not hold.
    let renamed = Balancer::builder()
        .address(format!("https://{}", tls.address))
        .tls_ca_file(&pki.ca)
        .tls_server_name("localhost")
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer");
    health(renamed).await.expect("server name override");

    // A plaintext client against the TLS replica.
    let plaintext = Balancer::builder()
        .address(tls.address)
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer");
    // The replica just closes the connection; the error names it and says why that may be.
    fails_clearly(
        "plaintext client",
        "if it expects TLS, use https:// addresses",
        health(plaintext),
    )
    .await;

    // A TLS client against a plaintext replica.
    let tls_client = Balancer::builder()
        .address(format!("https://{}", plain.address))
        .tls_ca_file(&pki.ca)
        .timeout(CALL_TIMEOUT)
        .build()
        .expect("balancer");
    fails_clearly(
        "TLS client",
        "TLS: the server does not speak TLS",
        health(tls_client),
    )
    .await;
}

#[tokio::test]
async fn mutual_tls_serves_only_clients_with_a_certificate_from_the_client_ca() {
    let (store, pki, other) = (SharedStore::new(), Pki::new(), Pki::new());
    let replica = start_tls(&store, &pki.mutual_server_args());
    let health = |lb: Balancer| async move {
        ChatServiceClient::new(lb)
            .health_check(HealthCheckRequest {})
            .await
    };
    let builder = || {
        Balancer::builder()
            .address(format!("https://{}", replica.address))
            .tls_ca_file(&pki.ca)
            .timeout(CALL_TIMEOUT)
    };

    let anonymous = builder().build().expect("balancer");
    fails_clearly(
        "no client certificate",
        "client certificate",
        health(anonymous),
    )
    .await;

    let stranger = builder()
        .tls_identity_files(&other.client_cert, &other.client_key)
        .build()
        .expect("balancer");
    fails_clearly(
        "certificate from another CA",
        "client certificate",
        health(stranger),
    )
    .await;

    let member = builder()
        .tls_identity_files(&pki.client_cert, &pki.client_key)
        .build()
        .expect("balancer");
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
    let first_serial = pki.served_serial(replica.address).await;

    // A stream opened before the rotation.
    let mut client = ChatServiceClient::new(pki.channel(replica.address, false).await);
    let dave = common::register_and_login(&mut client, "dave", PASSWORD).await;
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
    let second_serial = pki.served_serial(replica.address).await;
    assert_ne!(
        second_serial, first_serial,
        "new handshakes get the new certificate"
    );

    // The stream opened before still delivers, on its old connection.
    client
        .send_message(send_request(&dave, "dave", "after rotation", "rot-1"))
        .await
        .expect("send");
    let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("message");
    assert_eq!(message.text, "after rotation");

    // Bad files on SIGHUP: logged, and the previous certificate stays.
    std::fs::write(&pki.server_cert, "not a certificate").expect("overwrite");
    replica.signal(libc::SIGHUP);
    replica
        .wait_for_log("TLS reload failed", 1, Duration::from_secs(10))
        .await;
    assert_eq!(pki.served_serial(replica.address).await, second_serial);
    client
        .send_message(send_request(&dave, "dave", "still here", "rot-2"))
        .await
        .expect("send after a failed reload");
    let message = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("in time")
        .expect("open")
        .expect("message");
    assert_eq!(message.text, "still here");
}

/// Starts `chat-server` on `store` with `args`; it must exit by itself.
fn start_fails(store: &SharedStore, args: &[&str]) -> (i32, String, String) {
    let store = store.uri();
    let all: Vec<&str> = ["--store", store.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    common::run_server_to_exit(None, &all)
}

#[test]
fn bad_tls_files_are_one_line_start_up_errors() {
    let (store, pki) = (SharedStore::new(), Pki::new());
    let (cert, key) = (
        common::tls::path(&pki.server_cert),
        common::tls::path(&pki.server_key),
    );
    let missing = common::tls::path(&pki.dir.path().join("missing.pem"));
    let not_pem = pki.dir.path().join("notes.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let not_pem = common::tls::path(&not_pem);
    let client_key = common::tls::path(&pki.client_key);
    let (expired_cert, expired_key) = pki.expired_server_certificate();
    let (expired_cert, expired_key) = (
        common::tls::path(&expired_cert),
        common::tls::path(&expired_key),
    );
    let cases: [(&str, Vec<&str>, &str, &str); 7] = [
        (
            "missing certificate",
            vec!["--tls-cert", &missing, "--tls-key", &key],
            &missing,
            "No such file",
        ),
        (
            "missing key",
            vec!["--tls-cert", &cert, "--tls-key", &missing],
            &missing,
            "No such file",
        ),
        (
            "certificate not PEM",
            vec!["--tls-cert", &not_pem, "--tls-key", &key],
            &not_pem,
            "no PEM certificate",
        ),
        (
            "key not PEM",
            vec!["--tls-cert", &cert, "--tls-key", &not_pem],
            &not_pem,
            "no PEM private key",
        ),
        (
            "key of another certificate",
            vec!["--tls-cert", &cert, "--tls-key", &client_key],
            &client_key,
            "does not match",
        ),
        (
            "expired certificate",
            vec!["--tls-cert", &expired_cert, "--tls-key", &expired_key],
            &expired_cert,
            "expired",
        ),
        (
            "client CA not PEM",
            vec![
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--tls-client-ca",
                &not_pem,
            ],
            &not_pem,
            "no PEM certificate",
        ),
    ];
    for (what, args, file, reason) in cases {
        let (code, stdout, stderr) = start_fails(&store, &args);
        assert_eq!(code, 1, "{what}: {stderr}");
        assert!(stdout.is_empty(), "{what}: it never listened: {stdout}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
        assert!(
            stderr.contains(file) && stderr.contains(reason),
            "{what}: {stderr}"
        );
    }

    // One of the pair without the other is a usage error.
    let (code, _, stderr) = start_fails(&store, &["--tls-cert", &cert]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key"), "{stderr}");

    // MongoDB over TLS: a missing CA file is a clear start-up error naming it.
    let mongo = format!("mongodb://127.0.0.1:1/chat?tls=true&tlsCAFile={missing}");
    let (code, stdout, stderr) = common::run_server_to_exit(None, &["--store", &mongo]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
}
