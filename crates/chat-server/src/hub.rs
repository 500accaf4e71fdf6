//! Live delivery across replicas, at a cost that does not grow with subscribers.
//!
//! Each replica runs one [`Hub`]: a single task that polls the store's message feed
//! ([`Store::message_feed`]) every `feed_poll_interval` — one query per interval per
//! replica, however many subscribers it has — and hands each new message to the local
//! subscribers of its recipient through bounded channels. A message sent through
//! replica A thus reaches a subscriber on replica B within about one poll interval.
//!
//! The hub is only a fast path. A subscriber that falls behind (its queue is full) loses
//! queued deliveries, is told so by [`Delivery::Lagged`], and re-reads from the store,
//! which stays the single source of truth, so nothing is lost however slow it is.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::{Store, StoredMessage};

/// Messages queued per subscriber before it must catch up from the store instead.
const SUBSCRIBER_QUEUE: usize = 256;
/// The most messages read from the feed in one query.
const FEED_BATCH: u32 = 1000;
/// The longest pause between feed polls while the store is failing.
const MAX_ERROR_BACKOFF: Duration = Duration::from_secs(2);

/// What a subscriber receives from the hub.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A new message for the subscriber's account.
    Message(Arc<StoredMessage>),
    /// Messages were dropped because the subscriber fell behind: re-read from the store.
    Lagged,
}

/// The hub's side of one subscription.
struct Subscriber {
    id: u64,
    sender: mpsc::Sender<Arc<StoredMessage>>,
    /// Set when a message could not be queued; cleared by the subscriber.
    lagged: Arc<AtomicBool>,
}

type Subscribers = HashMap<String, Vec<Subscriber>>;

/// The per-replica dispatcher of new messages to live subscribers.
#[derive(Clone, Default)]
pub struct Hub {
    subscribers: Arc<Mutex<Subscribers>>,
    next_id: Arc<AtomicU64>,
}

/// A live subscription; dropping it unsubscribes.
pub struct Subscription {
    receiver: mpsc::Receiver<Arc<StoredMessage>>,
    lagged: Arc<AtomicBool>,
    hub: Hub,
    key: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        ::metrics::gauge!(crate::metrics::SUBSCRIBERS).decrement(1);
        let mut subscribers = self.hub.lock();
        if let Some(list) = subscribers.get_mut(&self.key) {
            list.retain(|subscriber| subscriber.id != self.id);
            if list.is_empty() {
                subscribers.remove(&self.key);
            }
        }
    }
}

impl Subscription {
    /// The next delivery, in feed order. `None` only if the hub is gone.
    ///
    /// A message was dropped for this subscriber whenever its queue was full, and a full
    /// queue always has a next message to receive, so checking the lag flag on every
    /// receive notices every drop.
    pub async fn next(&mut self) -> Option<Delivery> {
        let message = self.receiver.recv().await?;
        if self.lagged.swap(false, Ordering::AcqRel) {
            ::metrics::counter!(crate::metrics::SUBSCRIBER_LAGS).increment(1);
            Some(Delivery::Lagged)
        } else {
            Some(Delivery::Message(message))
        }
    }
}

impl Hub {
    /// Subscribes to the messages of a recipient (any case of the username).
    pub fn subscribe(&self, username: &str) -> Subscription {
        let (sender, receiver) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = username.to_ascii_lowercase();
        let lagged = Arc::new(AtomicBool::new(false));
        ::metrics::gauge!(crate::metrics::SUBSCRIBERS).increment(1);
        self.lock()
            .entry(key.clone())
            .or_default()
            .push(Subscriber {
                id,
                sender,
                lagged: lagged.clone(),
            });
        Subscription {
            receiver,
            lagged,
            hub: self.clone(),
            key,
            id,
        }
    }

    /// How many subscriptions are open on this replica.
    pub fn subscriber_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Hands one message to every local subscriber of its recipient, never blocking: for
    /// a subscriber whose queue is full the message is dropped and the subscriber marked
    /// lagged; one whose receiver is gone is removed.
    pub fn dispatch(&self, message: StoredMessage) {
        let key = message.recipient.to_ascii_lowercase();
        let mut subscribers = self.lock();
        let Some(list) = subscribers.get_mut(&key) else {
            return;
        };
        let message = Arc::new(message);
        let delivered = crate::metrics::Delivered::now(message.sent_at_unix_ms);
        list.retain(
            |subscriber| match subscriber.sender.try_send(message.clone()) {
                Ok(()) => {
                    delivered.record();
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    subscriber.lagged.store(true, Ordering::Release);
                    true
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
        if list.is_empty() {
            subscribers.remove(&key);
        }
    }

    /// Polls the store's feed and dispatches new messages until `stop` is cancelled.
    pub async fn run(
        self,
        store: Arc<dyn Store>,
        poll_interval: Duration,
        stop: CancellationToken,
    ) {
        let mut cursor = None;
        let mut backoff = poll_interval;
        loop {
            let wait = match store.message_feed(cursor, FEED_BATCH).await {
                Ok(page) => {
                    if cursor.is_some() && backoff != poll_interval {
                        tracing::info!("message feed readable again");
                    }
                    backoff = poll_interval;
                    let full = page.messages.len() as u32 >= FEED_BATCH;
                    // A subscriber that registered before this poll gets these messages
                    // here; one that registers later reads them from the store itself.
                    for message in page.messages {
                        self.dispatch(message);
                    }
                    cursor = Some(page.cursor);
                    if full { Duration::ZERO } else { poll_interval }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the message feed; live delivery paused");
                    backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                    backoff
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Subscribers> {
        // The map stays consistent even if a holder panicked: every critical section
        // leaves it valid.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(recipient: &str, sequence: u64) -> StoredMessage {
        StoredMessage {
            id: sequence,
            sequence,
            sender: "s".into(),
            recipient: recipient.into(),
            text: "t".into(),
            sent_at_unix_ms: 0,
        }
    }

    #[tokio::test]
    async fn routes_by_recipient_without_regard_to_case() {
        let hub = Hub::default();
        let mut alice = hub.subscribe("Alice");
        let mut bob = hub.subscribe("bob");
        hub.dispatch(message("alice", 1));
        hub.dispatch(message("BOB", 7));
        match alice.next().await {
            Some(Delivery::Message(m)) => assert_eq!(m.sequence, 1),
            other => panic!("unexpected {other:?}"),
        }
        match bob.next().await {
            Some(Delivery::Message(m)) => assert_eq!(m.sequence, 7),
            other => panic!("unexpected {other:?}"),
        }
        assert!(alice.receiver.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_signals_lag_instead_of_blocking() {
        let hub = Hub::default();
        let mut slow = hub.subscribe("slow");
        for sequence in 1..=(SUBSCRIBER_QUEUE as u64 + 10) {
            hub.dispatch(message("slow", sequence));
        }
        // The first receive after the drops reports the lag, so the subscriber re-reads
        // the store; the queued messages after it are still delivered in order.
        assert!(matches!(slow.next().await, Some(Delivery::Lagged)));
        match slow.next().await {
            Some(Delivery::Message(m)) => assert_eq!(m.sequence, 2),
            other => panic!("unexpected {other:?}"),
        }
        let mut last = 2;
        while let Ok(message) = slow.receiver.try_recv() {
            last = message.sequence;
        }
        assert_eq!(
            last, SUBSCRIBER_QUEUE as u64,
            "the queue held the oldest messages"
        );
        hub.dispatch(message("slow", 1000));
        assert!(matches!(slow.next().await, Some(Delivery::Message(_))));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let hub = Hub::default();
        let first = hub.subscribe("carol");
        let second = hub.subscribe("carol");
        assert_eq!(hub.subscriber_count(), 2);
        drop(first);
        assert_eq!(hub.subscriber_count(), 1);
        drop(second);
        assert_eq!(hub.subscriber_count(), 0);
    }
}
