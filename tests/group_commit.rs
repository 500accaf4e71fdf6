//! Group commit in the embedded store, through real `chat-server` processes sharing one
//! file: many concurrent sends per replica share transactions, and still every
//! idempotency key, sequence number and acknowledgement is exact, even through a
//! SIGKILL in the middle of batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chat_proto::v1::{Message, chat_service_client::ChatServiceClient};
use chat_testkit::{
    PASSWORD, Replica, SharedStore, client, fetch_all, register_and_login, send_request,
};
use tonic::transport::Channel;

/// Concurrent senders per replica.
const SENDERS: usize = 8;

/// One sender task's instructions.
struct Sender {
    on: ChatServiceClient<Channel>,
    token: String,
    /// Keys and texts are `{name}-{i}`.
    name: String,
    count: usize,
    /// Counts acknowledged sends (shared by several senders).
    acknowledged: Arc<AtomicU64>,
}

/// Sends `count` messages to bob; stops at the first failed call. Returns the
/// acknowledged messages, and the key of the call that failed, if one did.
async fn sender(task: Sender) -> (Vec<Message>, Option<String>) {
    let Sender {
        mut on,
        token,
        name,
        count,
        acknowledged: counter,
    } = task;
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let key = format!("{name}-{i}");
        match on
            .send_message(send_request(&token, "bob", &key, &key))
            .await
        {
            Ok(response) => {
                acknowledged.push(response.into_inner().message.expect("the stored message"));
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => return (acknowledged, Some(key)),
        }
    }
    (acknowledged, None)
}

/// Bob's whole history, checked: sequence numbers 1, 2, 3... without gaps, and no text
/// (every text is its idempotency key) stored twice. Returns it by text.
async fn checked_history(
    on: &mut ChatServiceClient<Channel>,
    bob: &str,
) -> BTreeMap<String, Message> {
    let history = fetch_all(on, bob, Some(0), 500).await;
    let sequences: Vec<u64> = history.iter().map(|m| m.sequence).collect();
    let expected: Vec<u64> = (1..=history.len() as u64).collect();
    assert_eq!(sequences, expected, "gap-free numbering");
    let ids: Vec<u64> = history.iter().map(|m| m.id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids follow sequence order"
    );
    let by_text: BTreeMap<String, Message> =
        history.into_iter().map(|m| (m.text.clone(), m)).collect();
    assert_eq!(by_text.len(), sequences.len(), "no message stored twice");
    by_text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_through_three_replicas_are_exact() {
    const UNIQUE_PER_SENDER: usize = 15;
    const SHARED_KEYS: usize = 20;
    let store = SharedStore::new();
    let replicas = Replica::start_several(&store, 3);
    let mut on_a = client(&replicas[0]).await;
    let alice = register_and_login(&mut on_a, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_a, "bob", PASSWORD).await;

    let counter = Arc::new(AtomicU64::new(0));
    let mut unique = Vec::new();
    let mut shared = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        for s in 0..SENDERS {
            unique.push(tokio::spawn(sender(Sender {
                on: client(replica).await,
                token: alice.clone(),
                name: format!("r{r}-s{s}"),
                count: UNIQUE_PER_SENDER,
                acknowledged: counter.clone(),
            })));
        }
        // The same keys, sent at once through every replica: one message each.
        shared.push(tokio::spawn(sender(Sender {
            on: client(replica).await,
            token: alice.clone(),
            name: "shared".to_owned(),
            count: SHARED_KEYS,
            acknowledged: counter.clone(),
        })));
    }
    let mut acknowledged = Vec::new();
    for task in unique {
        let (messages, failed) = task.await.expect("sender");
        assert_eq!(failed, None, "every send succeeds");
        acknowledged.extend(messages);
    }
    let mut shared_answers: BTreeMap<String, HashSet<u64>> = BTreeMap::new();
    for task in shared {
        let (messages, failed) = task.await.expect("sender");
        assert_eq!(failed, None, "every send succeeds");
        for message in messages {
            shared_answers
                .entry(message.text.clone())
                .or_default()
                .insert(message.id);
            acknowledged.push(message);
        }
    }

    let history = checked_history(&mut on_a, &bob).await;
    assert_eq!(
        history.len(),
        3 * SENDERS * UNIQUE_PER_SENDER + SHARED_KEYS,
        "every key stored once"
    );
    for (key, ids) in &shared_answers {
        assert_eq!(
            ids.len(),
            1,
            "every replica answered {key} with one message"
        );
    }
    for message in &acknowledged {
        assert_eq!(
            history.get(&message.text),
            Some(message),
            "acknowledged, stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_in_the_middle_of_batches_loses_nothing_acknowledged() {
    const PER_SENDER: usize = 400;
    let store = SharedStore::new();
    let mut replicas = Replica::start_several(&store, 2);
    let mut on_b = client(&replicas[1]).await;
    let alice = register_and_login(&mut on_b, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_b, "bob", PASSWORD).await;

    let counter = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    for s in 0..2 * SENDERS {
        senders.push(tokio::spawn(sender(Sender {
            on: client(&replicas[0]).await,
            token: alice.clone(),
            name: format!("s{s}"),
            count: PER_SENDER,
            acknowledged: counter.clone(),
        })));
    }
    // Kill A once its senders are well under way: batches are being committed.
    while counter.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replicas[0].kill().await.expect("kill -9 replica A");

    let mut acknowledged = Vec::new();
    let mut in_flight = Vec::new();
    for task in senders {
        let (messages, failed) = task.await.expect("sender");
        acknowledged.extend(messages);
        in_flight.extend(failed);
    }
    assert!(!in_flight.is_empty(), "the kill interrupted sends");
    assert!(
        acknowledged.len() < 2 * SENDERS * PER_SENDER,
        "the kill came in the middle of the load"
    );
    let history = checked_history(&mut on_b, &bob).await;
    for message in &acknowledged {
        assert_eq!(
            history.get(&message.text),
            Some(message),
            "acknowledged, kept"
        );
    }
    // A send whose answer was lost is retried through B with its key: stored once,
    // whether or not A had committed it before dying.
    for key in &in_flight {
        let retried = on_b
            .send_message(send_request(&alice, "bob", key, key))
            .await
            .expect("retry through B")
            .into_inner()
            .message
            .expect("the stored message");
        if let Some(stored) = history.get(key) {
            assert_eq!(
                &retried, stored,
                "a committed send is answered, not repeated"
            );
        }
    }
    let after = checked_history(&mut on_b, &bob).await;
    let new: HashSet<&String> = after.keys().filter(|k| !history.contains_key(*k)).collect();
    assert!(
        new.iter().all(|k| in_flight.contains(k)),
        "only retried keys are new"
    );
    assert_eq!(after.len(), history.len() + new.len());
}
