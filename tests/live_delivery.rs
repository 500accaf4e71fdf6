//! Live delivery without poll delay, on real `chat-server` processes sharing one SQLite
//! file: with the feed poll set to a minute, a message still reaches a subscriber at
//! once, on the replica it was sent through (the send path wakes the hub) and on
//! another replica (the doorbell beside the database file).

use std::time::{Duration, Instant};

use chat_proto::v1::{Message, SubscribeRequest, chat_service_client::ChatServiceClient};
use chat_testkit::{
    PASSWORD, Replica, SharedStore, authed, client, next_message, register_and_login, send,
};
use tonic::{Streaming, transport::Channel};

/// The feed poll of every replica here: far longer than any test takes, so only a
/// wake-up can deliver in time.
const POLL: &str = "1m";
/// How long a delivery may take: generous for a loaded machine, and still a small
/// fraction of [`POLL`].
const WITHIN: Duration = Duration::from_secs(5);
/// Messages sent one after the other, each awaited before the next: a poll that
/// happened to fall right after one send could not explain them all.
const MESSAGES: usize = 5;

/// Opens `Subscribe` for the token's user; the replica has registered the stream with
/// its hub once the response arrives.
async fn subscribe(client: &mut ChatServiceClient<Channel>, token: &str) -> Streaming<Message> {
    client
        .subscribe(authed(token, SubscribeRequest::default()))
        .await
        .expect("subscribe")
        .into_inner()
}

/// Sends [`MESSAGES`] messages from `sender` to bob through `through`, each received
/// on `stream` within [`WITHIN`] before the next is sent.
async fn each_arrives_at_once(
    through: &mut ChatServiceClient<Channel>,
    sender: &str,
    stream: &mut Streaming<Message>,
) {
    let started = Instant::now();
    for i in 1..=MESSAGES {
        let text = format!("live {i}");
        send(through, sender, "bob", &text, &format!("k{i}")).await;
        let received = next_message(stream, WITHIN).await;
        assert_eq!(received.text, text, "in order, one each");
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "far below the feed poll interval: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_message_reaches_a_subscriber_on_its_replica_without_waiting_for_the_poll() {
    let store = SharedStore::new();
    let replica = Replica::start_with(&store, &["--feed-poll-interval", POLL]);
    let mut on_it = client(&replica).await;
    let alice = register_and_login(&mut on_it, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_it, "bob", PASSWORD).await;
    let mut stream = subscribe(&mut on_it, &bob).await;
    each_arrives_at_once(&mut on_it, &alice, &mut stream).await;
}

#[tokio::test]
async fn a_message_reaches_a_subscriber_on_another_replica_of_the_file_without_waiting_for_the_poll()
 {
    let store = SharedStore::new();
    let args = ["--feed-poll-interval", POLL];
    let (a, b) = (
        Replica::start_with(&store, &args),
        Replica::start_with(&store, &args),
    );
    let (mut on_a, mut on_b) = (client(&a).await, client(&b).await);
    let alice = register_and_login(&mut on_b, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_a, "bob", PASSWORD).await;
    let mut stream = subscribe(&mut on_a, &bob).await;
    each_arrives_at_once(&mut on_b, &alice, &mut stream).await;
}
