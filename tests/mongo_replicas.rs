//! Real `chat-server` processes on the MongoDB store (a private nx-27017 server per
//! test): replicas sharing it, one killed with SIGKILL; and the database server itself
//! killed and restarted under a running replica, which must report NOT_SERVING, fail
//! calls with UNAVAILABLE, and recover by itself.
//!
//! Skipped with a loud banner when nx-27017 is not installed (`CHAT_TEST_NX27017`
//! unset); under CI that fails instead. `scripts/test` installs it.

mod common;

use std::time::{Duration, Instant};

use chat_proto::v1::{
    HealthCheckRequest, ListAccountsRequest, SubscribeRequest, health_check_response::ServingStatus,
};
use common::{
    MongoFixture, Replica, authed, client, register_and_login, send_request, wait_for_status,
};
use futures::StreamExt;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn two_replicas_share_mongodb_and_survive_a_kill_9_of_one() {
    let Some(store) = MongoFixture::start("two replicas on the MongoDB store") else {
        return;
    };
    let (mut a, b) = (Replica::start(&store), Replica::start(&store));
    let (mut on_a, mut on_b) = (client(&a).await, client(&b).await);
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
        let message = on
            .send_message(send_request(
                &alice,
                "bob",
                &format!("m{i}"),
                &format!("k{i}"),
            ))
            .await
            .expect("send before the kill")
            .into_inner()
            .message
            .expect("message");
        assert_eq!(message.sequence, i);
        acknowledged.push((message.sequence, message.text));
    }
    for (sequence, text) in &acknowledged {
        let message = tokio::time::timeout(Duration::from_secs(10), live.next())
            .await
            .expect("live delivery across replicas")
            .expect("stream open")
            .expect("message");
        assert_eq!((&message.sequence, &message.text), (sequence, text));
    }
    // A resend through the other replica is a duplicate, not a new message.
    let again = on_a
        .send_message(send_request(&alice, "bob", "m1", "k1"))
        .await
        .expect("idempotent resend")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(again.sequence, 1);

    a.kill();
    assert!(
        on_a.health_check(HealthCheckRequest {}).await.is_err(),
        "the killed replica is really gone"
    );
    for i in 11..=20 {
        let message = on_b
            .send_message(send_request(
                &alice,
                "bob",
                &format!("m{i}"),
                &format!("k{i}"),
            ))
            .await
            .expect("the surviving replica serves every user")
            .into_inner()
            .message
            .expect("message");
        acknowledged.push((message.sequence, message.text));
    }
    assert_eq!(
        common::fetch_inbox(&mut on_b, &bob).await,
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

    a.restart();
    let mut on_a = client(&a).await;
    assert_eq!(common::fetch_inbox(&mut on_a, &bob).await.len(), 20);
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
        on.send_message(send_request(
            &alice,
            "bob",
            &format!("before {i}"),
            &format!("b{i}"),
        ))
        .await
        .expect("send before the outage");
    }

    store.kill_server();
    let killed_at = Instant::now();
    wait_for_status(&replica, ServingStatus::NotServing, Duration::from_secs(15)).await;
    eprintln!(
        "NOT_SERVING {:?} after the database died",
        killed_at.elapsed()
    );
    let health = on
        .health_check(HealthCheckRequest {})
        .await
        .expect("health answers during the outage")
        .into_inner();
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
    let restarted_at = Instant::now();
    wait_for_status(&replica, ServingStatus::Serving, Duration::from_secs(30)).await;
    eprintln!(
        "SERVING again {:?} after the database restarted",
        restarted_at.elapsed()
    );
    let health = on
        .health_check(HealthCheckRequest {})
        .await
        .expect("health")
        .into_inner();
    assert!(health.store_reachable, "{health:?}");

    // The same process, its sessions and everything written before are all there.
    let before: Vec<String> = common::fetch_inbox(&mut on, &bob)
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
