//! Real `chat-server` processes on the MongoDB store (a private nx-27017 server per
//! test): replicas sharing it, one killed with SIGKILL; and the database server itself
//! killed and restarted under a running replica, which must report NOT_SERVING, fail
//! calls with UNAVAILABLE, and recover by itself.
//!
//! Skipped with a loud banner when nx-27017 is not installed (`CHAT_TEST_NX27017`
//! unset); under CI that fails instead. `scripts/test` installs it.

use std::time::{Duration, Instant};

use chat_proto::v1::{
    HealthCheckRequest, HealthCheckResponse, ListAccountsRequest, SubscribeRequest,
    health_check_response::ServingStatus,
};
use chat_testkit::{
    MongoFixture, PASSWORD, Replica, authed, client, inbox_texts, kill_for_good,
    register_and_login, send, send_request, two_replicas, wait_for_status,
};
use tonic::Code;

#[tokio::test]
async fn two_replicas_share_mongodb_and_survive_a_kill_9_of_one() {
    let Some(store) = MongoFixture::start("two replicas on the MongoDB store") else {
        return;
    };
    let (mut a, _b, mut on_a, mut on_b) = two_replicas(&store).await;
    let alice = register_and_login(&mut on_a, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_b, "Bob", PASSWORD).await;

    // Bob listens on B; Alice sends through both replicas.
    let mut live = on_b
        .subscribe(authed(&bob, SubscribeRequest::default()))
        .await
        .expect("subscribe")
        .into_inner();
    let mut acknowledged = Vec::new();
    for i in 1..=10 {
        let on = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        let message = send(on, &alice, "bob", &format!("m{i}"), &format!("k{i}")).await;
        assert_eq!(message.sequence, i);
        acknowledged.push((message.sequence, message.text));
    }
    for (sequence, text) in &acknowledged {
        let message = chat_testkit::next_message(&mut live, Duration::from_secs(10)).await;
        assert_eq!((&message.sequence, &message.text), (sequence, text));
    }
    // A resend through the other replica is a duplicate, not a new message.
    let again = send(&mut on_a, &alice, "bob", "m1", "k1").await;
    assert_eq!(again.sequence, 1);

    kill_for_good(&mut a, &mut on_a).await;
    for i in 11..=20 {
        let message = send(&mut on_b, &alice, "bob", &format!("m{i}"), &format!("k{i}")).await;
        acknowledged.push((message.sequence, message.text));
    }
    assert_eq!(
        chat_testkit::fetch_inbox(&mut on_b, &bob).await,
        acknowledged,
        "every acknowledged send is there, in order, once"
    );
    let listed = on_b
        .list_accounts(authed(&bob, ListAccountsRequest::default()))
        .await
        .expect("list")
        .into_inner()
        .usernames;
    assert_eq!(listed, ["alice", "Bob"]);

    a.restart().await.expect("restart the replica");
    let mut on_a = client(&a).await;
    assert_eq!(inbox_texts(&mut on_a, &bob).await.len(), 20);
}

#[tokio::test]
async fn database_outage_turns_health_not_serving_and_recovers_without_a_restart() {
    let Some(mut store) = MongoFixture::start("MongoDB outage under a running replica") else {
        return;
    };
    let replica = Replica::start_with(&store, &["--store-check-interval", "200ms"]);
    let mut on = client(&replica).await;
    let alice = register_and_login(&mut on, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on, "bob", PASSWORD).await;
    for i in 1..=3 {
        send(
            &mut on,
            &alice,
            "bob",
            &format!("before {i}"),
            &format!("b{i}"),
        )
        .await;
    }

    store.kill_server();
    let health = health_once(&replica, ServingStatus::NotServing, 15, "the database died").await;
    assert!(!health.store_reachable);
    assert!(!health.detail.is_empty(), "says why: {health:?}");

    let started = Instant::now();
    let failed = on
        .send_message(send_request(&alice, "bob", "during", "during"))
        .await
        .expect_err("no store, no send");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(
        failed.message().contains("MongoDB"),
        "a readable message: {:?}",
        failed.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "fails quickly: {:?}",
        started.elapsed()
    );

    store.restart_server();
    let health = health_once(
        &replica,
        ServingStatus::Serving,
        30,
        "the database restarted",
    )
    .await;
    assert!(health.store_reachable, "{health:?}");

    // The same process, its sessions and everything written before are all there.
    let before: Vec<String> = chat_testkit::fetch_inbox(&mut on, &bob)
        .await
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(before, ["before 1", "before 2", "before 3"]);
    let after = on
        .send_message(send_request(&alice, "bob", "after", "after"))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "send after recovery: {e:?}; database output:\n{}",
                store.server_output()
            )
        })
        .into_inner()
        .message
        .expect("message");
    assert_eq!(after.sequence, 4);
}

/// Waits (up to `within_secs`) until `replica` reports `want`, says how long that took
/// after `event`, and returns its full health answer.
async fn health_once(
    replica: &Replica,
    want: ServingStatus,
    within_secs: u64,
    event: &str,
) -> HealthCheckResponse {
    let since = Instant::now();
    wait_for_status(replica, want, Duration::from_secs(within_secs)).await;
    eprintln!("{want:?} {:?} after {event}", since.elapsed());
    let mut on = client(replica).await;
    let health = on.health_check(HealthCheckRequest {}).await;
    health.expect("health answers").into_inner()
}
