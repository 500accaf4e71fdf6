//! Real `chat-server` processes sharing one embedded store, driven with a plain tonic
//! client: every RPC, across replicas, and through SIGKILL and SIGTERM.

use std::time::{Duration, Instant};

use chat_proto::v1::{
    AckMessagesRequest, CreateAccountRequest, DeleteAccountRequest, FetchMessagesRequest,
    HealthCheckRequest, ListAccountsRequest, LoginRequest, LogoutRequest, SubscribeRequest,
    chat_service_client::ChatServiceClient, health_check_response::ServingStatus,
};
use chat_testkit::{
    PASSWORD, Replica, SharedStore, alice_and_bob, authed, client, inbox_texts, kill_for_good,
    login, refused, register_and_login, send, send_request, two_replicas,
};
use futures::StreamExt;
use tonic::{Code, transport::Channel};

#[tokio::test]
async fn accounts_login_logout_and_auth_failures() {
    let store = SharedStore::new();
    let (_a, _b, mut on_a, mut on_b) = two_replicas(&store).await;

    let token = register_and_login(&mut on_a, "Alice", PASSWORD).await;

    // Uniqueness ignores case, across replicas.
    refused(
        on_b.create_account(CreateAccountRequest {
            username: "alice".into(),
            password: PASSWORD.into(),
        }),
        Code::AlreadyExists,
    )
    .await;
    // Retrying the very same creation (a lost response) succeeds on the other replica.
    let again = on_b
        .create_account(CreateAccountRequest {
            username: "Alice".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("idempotent create");
    assert_eq!(again.into_inner().username, "Alice");
    // ... but not with another password.
    refused(
        on_b.create_account(CreateAccountRequest {
            username: "Alice".into(),
            password: "another password".into(),
        }),
        Code::AlreadyExists,
    )
    .await;

    for (username, password) in [("", PASSWORD), ("bad name", PASSWORD), ("ok", "short")] {
        refused(
            on_a.create_account(CreateAccountRequest {
                username: username.into(),
                password: password.into(),
            }),
            Code::InvalidArgument,
        )
        .await;
    }

    refused(
        on_b.login(LoginRequest {
            username: "alice".into(),
            password: "wrong password".into(),
        }),
        Code::Unauthenticated,
    )
    .await;
    refused(
        on_b.login(LoginRequest {
            username: "nobody".into(),
            password: PASSWORD.into(),
        }),
        Code::NotFound,
    )
    .await;

    // Every other call needs a valid token.
    refused(
        on_a.list_accounts(ListAccountsRequest::default()),
        Code::Unauthenticated,
    )
    .await;
    refused(
        on_a.list_accounts(authed(&"0".repeat(64), ListAccountsRequest::default())),
        Code::Unauthenticated,
    )
    .await;

    // A session opened on A works on B; logging out on B ends it on A too.
    let list = || authed(&token, ListAccountsRequest::default());
    let logout = || authed(&token, LogoutRequest {});
    let listed = on_b.list_accounts(list()).await;
    listed.expect("token valid on the other replica");
    on_b.logout(logout()).await.expect("logout");
    refused(on_a.list_accounts(list()), Code::Unauthenticated).await;
    // Sends check the session inside their write: an ended one stores nothing.
    let send = || send_request(&token, "alice", "after logout", "after-logout");
    refused(on_a.send_message(send()), Code::Unauthenticated).await;
    let no_token = tonic::Request::new(send().into_inner());
    refused(on_a.send_message(no_token), Code::Unauthenticated).await;
    let again = on_a.logout(logout()).await;
    again.expect("logging out again is harmless");
}

/// Password guesses are throttled per account in the shared store: five in a row, then
/// waits, whichever replica each guess reaches and whichever RPC checks the password.
#[tokio::test]
async fn password_guesses_are_throttled_across_replicas() {
    let store = SharedStore::new();
    let (_a, _b, mut on_a, mut on_b) = two_replicas(&store).await;
    let token = register_and_login(&mut on_a, "Carol", PASSWORD).await;
    let attempt = |password: &str| LoginRequest {
        username: "carol".into(),
        password: password.into(),
    };

    // Five free attempts, alternating replicas.
    for i in 0..5 {
        let on = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let wrong = on.login(attempt("guess number one")).await.unwrap_err();
        assert_eq!(
            wrong.code(),
            Code::Unauthenticated,
            "attempt {i}: {wrong:?}"
        );
    }
    let fifth_failure = Instant::now();

    // Now even the right password waits, on either replica, and the other RPCs that
    // check a password are no way around it.
    let locked = on_b.login(attempt(PASSWORD)).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    assert!(locked.message().contains("try again in 1s"), "{locked:?}");
    refused(
        on_a.create_account(CreateAccountRequest {
            username: "Carol".into(),
            password: "another guess".into(),
        }),
        Code::ResourceExhausted,
    )
    .await;
    refused(
        on_a.delete_account(authed(
            &token,
            DeleteAccountRequest {
                password: "yet another guess".into(),
            },
        )),
        Code::ResourceExhausted,
    )
    .await;

    // Refused attempts do not count: once the second is over, the right password
    // works, no earlier.
    let logged_in = loop {
        match on_a.login(attempt(PASSWORD)).await {
            Ok(reply) => break reply.into_inner(),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(
                    fifth_failure.elapsed() < Duration::from_secs(5),
                    "{status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(fifth_failure.elapsed() >= Duration::from_millis(900));
    assert_eq!(logged_in.username, "Carol");

    // A successful login forgets the failures: a wrong guess is just wrong again.
    let wrong = on_b.login(attempt("guess number two")).await.unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated, "{wrong:?}");
    login(&mut on_b, "carol", PASSWORD).await;
}

/// Concurrent guesses gain (almost) nothing: the checks of one account take turns on
/// each replica and every failure is counted in the store before the next turn, so of
/// many guesses sent at once through two replicas, the five free ones are checked, plus
/// at most one per other replica that started just before the fifth failure landed.
/// Right passwords sent at once, on the other hand, all get in.
#[tokio::test]
async fn concurrent_password_guesses_get_no_more_than_the_free_attempts() {
    let store = SharedStore::new();
    let (a, b) = (Replica::start(&store), Replica::start(&store));
    let (mut on_a, on_b) = (client(&a).await, client(&b).await);
    register_and_login(&mut on_a, "Dave", PASSWORD).await;
    let clients = [on_a.clone(), on_b];
    let guesses = logins_at_once(
        &clients,
        "dave",
        (0..20).map(|i| format!("guess number {i}")),
    )
    .await;
    let refusals: Vec<_> = guesses.into_iter().map(Result::unwrap_err).collect();
    let checked = refusals
        .iter()
        .filter(|s| s.code() == Code::Unauthenticated)
        .count();
    let throttled = refusals
        .iter()
        .filter(|s| s.code() == Code::ResourceExhausted)
        .count();
    assert!(
        (5..=6).contains(&checked),
        "{checked} checked: {refusals:#?}"
    );
    assert_eq!(checked + throttled, 20, "{refusals:#?}");

    // A fresh account: sixteen logins with the right password at once all succeed.
    register_and_login(&mut on_a, "Erin", PASSWORD).await;
    let passwords = std::iter::repeat_n(PASSWORD.to_owned(), 16);
    for outcome in logins_at_once(&clients, "erin", passwords).await {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
}

/// Sends one login per password at once, spread over `clients` in turn.
async fn logins_at_once(
    clients: &[ChatServiceClient<Channel>],
    username: &str,
    passwords: impl Iterator<Item = String>,
) -> Vec<Result<tonic::Response<chat_proto::v1::LoginResponse>, tonic::Status>> {
    let logins = passwords.enumerate().map(|(i, password)| {
        let mut on = clients[i % clients.len()].clone();
        let request = LoginRequest {
            username: username.into(),
            password,
        };
        async move { on.login(request).await }
    });
    futures::future::join_all(logins).await
}

/// With `--history-retention`, the replica's periodic purge deletes acknowledged
/// messages once they are older than the retention; unacknowledged ones stay.
#[tokio::test]
async fn history_retention_deletes_old_acknowledged_messages() {
    let store = SharedStore::new();
    let a = Replica::start_with(
        &store,
        &["--history-retention", "1s", "--purge-interval", "100ms"],
    );
    let mut on_a = client(&a).await;
    let ann = register_and_login(&mut on_a, "ann", PASSWORD).await;
    let bob = register_and_login(&mut on_a, "bob", PASSWORD).await;
    for i in 1..=5 {
        let key = format!("m{i}");
        send(&mut on_a, &ann, "bob", &key, &key).await;
    }
    // Nothing is acknowledged yet: nothing may go, however old.
    assert_eq!(history(&mut on_a, &bob).await, [1, 2, 3, 4, 5]);
    on_a.ack_messages(authed(&bob, AckMessagesRequest { up_to_sequence: 3 }))
        .await
        .expect("ack");

    let started = Instant::now();
    loop {
        let left = history(&mut on_a, &bob).await;
        if left == [4, 5] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "acknowledged messages were not purged: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sequence numbers of every message in the caller's inbox, acknowledged or not.
async fn history(client: &mut ChatServiceClient<Channel>, token: &str) -> Vec<u64> {
    let request = FetchMessagesRequest {
        after_sequence: Some(0),
        page_size: 100,
    };
    let page = client
        .fetch_messages(authed(token, request))
        .await
        .expect("fetch history")
        .into_inner();
    page.messages.iter().map(|m| m.sequence).collect()
}

#[tokio::test]
async fn wildcard_listing_is_literal_paginated_and_injection_proof() {
    let store = SharedStore::new();
    let a = Replica::start(&store);
    let mut on_a = client(&a).await;
    let token = register_and_login(&mut on_a, "admin", PASSWORD).await;
    for name in ["a.b", "axb", "alice", "Alicia", "bob", "c-1", "c_1", "a.bc"] {
        on_a.create_account(CreateAccountRequest {
            username: name.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("create");
    }
    let mut list = async |pattern: &str| {
        on_a.list_accounts(authed(
            &token,
            ListAccountsRequest {
                pattern: pattern.into(),
                ..Default::default()
            },
        ))
        .await
        .map(|response| response.into_inner().usernames)
    };
    assert_eq!(list("a.b").await.unwrap(), ["a.b"], "'.' is literal");
    assert_eq!(list("a?b").await.unwrap(), ["a.b", "axb"]);
    assert_eq!(
        list("a.*").await.unwrap(),
        ["a.b", "a.bc"],
        "'.*' is not a regex"
    );
    assert_eq!(list("ALI*").await.unwrap(), ["alice", "Alicia"]);
    assert_eq!(list("c?1").await.unwrap(), ["c-1", "c_1"]);
    assert_eq!(list("*x*").await.unwrap(), ["axb"]);
    assert!(list("zed*").await.unwrap().is_empty());
    for hostile in [
        "[ab]*",
        "(a)",
        "a|b",
        "^a",
        "a+",
        "{\"$ne\":null}",
        "%",
        "a\\b",
    ] {
        let error = list(hostile).await.unwrap_err();
        assert_eq!(
            error.code(),
            Code::InvalidArgument,
            "{hostile:?}: {error:?}"
        );
    }

    // Pages of 3 give every account exactly once, in order.
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = on_a
            .list_accounts(authed(
                &token,
                ListAccountsRequest {
                    pattern: "*".into(),
                    page_size: 3,
                    page_token: page_token.clone(),
                },
            ))
            .await
            .expect("page")
            .into_inner();
        assert!(page.usernames.len() <= 3);
        all.extend(page.usernames);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        all,
        [
            "a.b", "a.bc", "admin", "alice", "Alicia", "axb", "bob", "c-1", "c_1"
        ]
    );
}

#[tokio::test]
async fn send_fetch_ack_with_idempotent_resend_through_the_other_replica() {
    let store = SharedStore::new();
    let (_a, _b, mut on_a, mut on_b, alice, bob) = alice_and_bob(&store).await;

    let first = send(&mut on_a, &alice, "BOB", "hello", "key-1").await;
    assert_eq!(
        (
            first.sequence,
            first.sender.as_str(),
            first.recipient.as_str()
        ),
        (1, "alice", "bob")
    );
    // The response was "lost": the client retries through replica B.
    let retried = send(&mut on_b, &alice, "bob", "hello", "key-1").await;
    assert_eq!(retried, first, "a resend returns the original message");
    refused(
        on_b.send_message(send_request(&alice, "bob", "something else", "key-1")),
        Code::AlreadyExists,
    )
    .await;

    let (long, oversized) = ("x".repeat(4097), "x".repeat(100_000));
    for (to, text, key, code) in [
        ("nobody", "hi", "key-2", Code::NotFound),
        ("bob", long.as_str(), "key-3", Code::InvalidArgument),
        // Refused before decoding.
        ("bob", oversized.as_str(), "key-4", Code::OutOfRange),
        ("bob", "hi", "not a key!", Code::InvalidArgument),
    ] {
        refused(on_a.send_message(send_request(&alice, to, text, key)), code).await;
    }

    for i in 2..=10 {
        let on = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        send(on, &alice, "bob", &format!("m{i}"), &format!("key-m{i}")).await;
    }
    let inbox = chat_testkit::fetch_inbox(&mut on_b, &bob).await;
    let expected: Vec<(u64, String)> = std::iter::once((1, "hello".to_string()))
        .chain((2..=10).map(|i| (i, format!("m{i}"))))
        .collect();
    assert_eq!(inbox, expected, "exactly once, oldest first, across pages");

    // Acknowledging is idempotent and never moves backwards.
    for up_to in [4, 4, 2] {
        let acked = on_a
            .ack_messages(authed(
                &bob,
                AckMessagesRequest {
                    up_to_sequence: up_to,
                },
            ))
            .await
            .expect("ack")
            .into_inner()
            .acked_sequence;
        assert_eq!(acked, 4);
    }
    refused(
        on_a.ack_messages(authed(&bob, AckMessagesRequest { up_to_sequence: 99 })),
        Code::InvalidArgument,
    )
    .await;
    let rest = chat_testkit::fetch_inbox(&mut on_b, &bob).await;
    assert_eq!(rest.first().map(|m| m.0), Some(5));
    assert_eq!(rest.len(), 6);
    // An explicit `after_sequence` reaches back into acknowledged history.
    let history = on_a
        .fetch_messages(authed(
            &bob,
            FetchMessagesRequest {
                after_sequence: Some(0),
                page_size: 100,
            },
        ))
        .await
        .expect("history")
        .into_inner();
    assert_eq!(history.messages.len(), 10);
    assert_eq!(history.acked_sequence, 4);
}

#[tokio::test]
async fn subscribe_gets_backlog_then_live_messages_sent_through_another_replica() {
    let store = SharedStore::new();
    let (_a, b, mut on_a, mut on_b, alice, bob) = alice_and_bob(&store).await;

    for i in 1..=3 {
        send(
            &mut on_a,
            &alice,
            "bob",
            &format!("old {i}"),
            &format!("old-{i}"),
        )
        .await;
    }
    let response = on_b
        .subscribe(authed(&bob, SubscribeRequest::default()))
        .await
        .expect("subscribe");
    let serving_replica = response
        .metadata()
        .get(chat_proto::REPLICA_ID_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    assert!(
        serving_replica
            .as_deref()
            .is_some_and(|id| id.starts_with(&b.address().to_string())),
        "the stream names its replica: {serving_replica:?}"
    );
    let mut stream = response.into_inner();
    for i in 1..=3 {
        let message = stream.next().await.expect("backlog").expect("message");
        assert_eq!((message.sequence, message.text), (i, format!("old {i}")));
    }

    let mut latencies = Vec::new();
    for i in 4..=23u64 {
        let sent_at = Instant::now();
        send(
            &mut on_a,
            &alice,
            "bob",
            &format!("live {i}"),
            &format!("live-{i}"),
        )
        .await;
        let message = chat_testkit::next_message(&mut stream, Duration::from_secs(10)).await;
        latencies.push(sent_at.elapsed());
        assert_eq!((message.sequence, message.text), (i, format!("live {i}")));
    }
    latencies.sort();
    eprintln!(
        "cross-replica delivery latency: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // Resuming after a sequence number skips everything up to it.
    let mut resumed = on_a
        .subscribe(authed(&bob, SubscribeRequest { after_sequence: 21 }))
        .await
        .expect("subscribe")
        .into_inner();
    let next = resumed.next().await.expect("message").expect("message");
    assert_eq!(next.sequence, 22);
}

#[tokio::test]
async fn delete_account_keeps_sent_messages_and_revokes_sessions() {
    let store = SharedStore::new();
    let (_a, _b, mut on_a, mut on_b, alice, bob) = alice_and_bob(&store).await;
    let bob_elsewhere = login(&mut on_a, "bob", PASSWORD).await;

    send(&mut on_b, &bob, "alice", "bye from bob", "bye").await;
    send(&mut on_a, &alice, "bob", "unread by bob", "unread").await;

    let delete = |password: &str| {
        let request = DeleteAccountRequest {
            password: password.into(),
        };
        authed(&bob, request)
    };
    let wrong = on_b.delete_account(delete("not it at all"));
    refused(wrong, Code::Unauthenticated).await;
    let listed = on_b.list_accounts(authed(&bob, ListAccountsRequest::default()));
    listed.await.expect("a wrong password deletes nothing");

    on_b.delete_account(delete(PASSWORD)).await.expect("delete");
    // A retry through the other replica (the response was lost) succeeds too.
    let retried = on_a.delete_account(delete(PASSWORD)).await;
    retried.expect("delete is idempotent");

    // Every session of bob ends.
    refused(
        on_a.fetch_messages(authed(&bob_elsewhere, FetchMessagesRequest::default())),
        Code::Unauthenticated,
    )
    .await;
    refused(
        on_a.send_message(send_request(&alice, "bob", "anyone there?", "after-delete")),
        Code::NotFound,
    )
    .await;
    let from_beyond = send_request(&bob_elsewhere, "alice", "from beyond", "beyond");
    let from_beyond = on_a.send_message(from_beyond).await;
    let refusal = from_beyond.expect_err("a deleted account sends nothing");
    assert_eq!(refusal.code(), Code::Unauthenticated, "{refusal:?}");
    assert!(refusal.message().contains("deleted"), "{refusal:?}");
    assert_eq!(
        chat_testkit::fetch_inbox(&mut on_a, &alice).await,
        [(1, "bye from bob".to_string())],
        "messages bob sent stay"
    );

    // The name is free again, for a new account with an empty inbox.
    let new_bob = register_and_login(&mut on_b, "bob", "a new password").await;
    assert!(
        chat_testkit::fetch_inbox(&mut on_b, &new_bob)
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn kill_9_of_one_replica_loses_nothing_and_the_other_keeps_serving() {
    let store = SharedStore::new();
    let (mut a, _b, mut on_a, mut on_b, alice, bob) = alice_and_bob(&store).await;

    let mut acknowledged = Vec::new();
    for i in 1..=20 {
        let on = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let message = send(on, &alice, "bob", &format!("m{i}"), &format!("k{i}")).await;
        acknowledged.push(message.text);
    }
    kill_for_good(&mut a, &mut on_a).await;
    for i in 21..=40 {
        // The surviving replica serves every user.
        let message = send(&mut on_b, &alice, "bob", &format!("m{i}"), &format!("k{i}")).await;
        acknowledged.push(message.text);
    }
    assert_eq!(
        inbox_texts(&mut on_b, &bob).await,
        acknowledged,
        "every acknowledged send is there, in order"
    );

    // The killed replica comes back on the same port and sees everything.
    a.restart().await.expect("restart the replica");
    let mut on_a = client(&a).await;
    assert_eq!(inbox_texts(&mut on_a, &bob).await.len(), 40);
}

#[tokio::test]
async fn sigterm_reports_not_serving_ends_streams_and_exits_zero() {
    use tonic_health::pb::{HealthCheckRequest as GrpcHealthRequest, health_client::HealthClient};

    let store = SharedStore::new();
    let mut a = Replica::start(&store);
    let mut on_a = client(&a).await;
    let bob = register_and_login(&mut on_a, "bob", PASSWORD).await;

    let mut health = HealthClient::new(a.channel().await);
    let overall = health
        .check(GrpcHealthRequest {
            service: String::new(),
        })
        .await
        .expect("grpc.health.v1 Check")
        .into_inner();
    assert_eq!(overall.status, tonic_health::ServingStatus::Serving as i32);
    let mut watch = health
        .watch(GrpcHealthRequest {
            service: chat_proto::CHAT_SERVICE_NAME.into(),
        })
        .await
        .expect("grpc.health.v1 Watch")
        .into_inner();
    let first = watch.next().await.expect("status").expect("status");
    assert_eq!(first.status, tonic_health::ServingStatus::Serving as i32);

    let mut stream = on_a
        .subscribe(authed(&bob, SubscribeRequest::default()))
        .await
        .expect("subscribe")
        .into_inner();

    let status = a.terminate(Duration::from_secs(20)).await;
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );

    let next = watch
        .next()
        .await
        .expect("a NOT_SERVING update")
        .expect("status");
    assert_eq!(next.status, tonic_health::ServingStatus::NotServing as i32);
    let ended = stream.next().await.expect("the stream ends with a status");
    let error = ended.expect_err("an error, not a message");
    assert_eq!(error.code(), Code::Unavailable, "{error:?}");
    assert!(error.message().contains("after_sequence=0"), "{error:?}");
}

#[tokio::test]
async fn health_check_and_reflection_answer() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let store = SharedStore::new();
    let a = Replica::start_with(&store, &["--replica-id", "replica-under-test"]);
    let mut on_a = client(&a).await;
    let health = on_a
        .health_check(HealthCheckRequest {})
        .await
        .expect("health")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    assert_eq!(health.replica_id, "replica-under-test");
    assert!(health.store_reachable);

    let mut reflection = ServerReflectionClient::new(a.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses.next().await.expect("response").expect("response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&chat_proto::CHAT_SERVICE_NAME.to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_drain_file_takes_the_replica_out_of_rotation_and_back() {
    let store = SharedStore::new();
    let drain = tempfile::tempdir().expect("temporary directory");
    let drain_file = drain.path().join("drain");
    let a = Replica::start_with(
        &store,
        &[
            "--drain-file",
            drain_file.to_str().expect("utf-8 path"),
            "--store-check-interval",
            "50ms",
        ],
    );
    chat_testkit::wait_for_status(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
    std::fs::write(&drain_file, b"").expect("create drain file");
    chat_testkit::wait_for_status(&a, ServingStatus::NotServing, Duration::from_secs(5)).await;
    let health = client(&a)
        .await
        .health_check(HealthCheckRequest {})
        .await
        .expect("health")
        .into_inner();
    assert!(health.detail.contains("drain"), "{health:?}");
    assert!(health.store_reachable);
    // Calls that still reach it are answered.
    let mut on_a = client(&a).await;
    register_and_login(&mut on_a, "carol", PASSWORD).await;
    std::fs::remove_file(&drain_file).expect("remove drain file");
    chat_testkit::wait_for_status(&a, ServingStatus::Serving, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_store_that_cannot_be_written_turns_the_replica_not_serving_until_it_recovers() {
    let store = SharedStore::new();
    let a = Replica::start_with(
        &store,
        &[
            "--store-check-interval",
            "50ms",
            "--store-check-timeout",
            "300ms",
        ],
    );
    let mut on_a = client(&a).await;
    let alice = register_and_login(&mut on_a, "alice", PASSWORD).await;

    // Another process holds the database's write lock, as a stuck writer would.
    let path = store.path();
    let blocker = rusqlite::Connection::open(&path).expect("open the shared database");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    chat_testkit::wait_for_status(&a, ServingStatus::NotServing, Duration::from_secs(10)).await;
    let health = on_a
        .health_check(HealthCheckRequest {})
        .await
        .expect("health")
        .into_inner();
    assert!(!health.store_reachable);
    assert!(health.detail.contains("store unreachable"), "{health:?}");
    let refused = refused(
        on_a.send_message(send_request(&alice, "alice", "while locked", "locked-1")),
        Code::Unavailable,
    )
    .await;
    assert!(
        refused.message().contains("store unavailable"),
        "{refused:?}"
    );

    blocker.execute_batch("ROLLBACK").expect("release the lock");
    chat_testkit::wait_for_status(&a, ServingStatus::Serving, Duration::from_secs(10)).await;
    send(&mut on_a, &alice, "alice", "after recovery", "locked-2").await;
}
