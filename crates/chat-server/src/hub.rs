//! Live delivery across replicas, at a cost that does not grow with subscribers.
//!
//! Each replica runs one [`Hub`]: a single task that reads the store's message feed
//! ([`Store::message_feed`]) and hands each new message to the local subscribers of its
//! recipient through bounded channels. It reads the feed:
//!
//! - **at once when woken**: the send path calls [`Hub::committed`] once the store has
//!   acknowledged a send, so a message sent through this replica reaches its
//!   subscribers here without waiting for a poll; and the replicas sharing an SQLite
//!   file on this host wake each other through a [`Doorbell`];
//! - **every `feed_poll_interval`** otherwise: the safety net (a lost or impossible
//!   wake-up costs at most one interval), and all there is for a store with no local
//!   signal (MongoDB, or replicas on other hosts).
//!
//! Wake-ups coalesce: the hub holds at most one pending wake-up, so any number of sends
//! committed while it is reading the feed cost one more read, not one each; and a
//! replica with no subscriber only rings the doorbell, reading nothing until its poll,
//! and then only the feed's newest id (see [`Hub::read_unwatched`]), so a write-heavy
//! replica that nobody subscribes to pays almost nothing for it. The feed is read by
//! this one task only, always from the cursor on, so messages reach subscribers in id
//! order however the reads were triggered.
//!
//! The hub is only a fast path. A subscriber that falls behind (its queue is full) loses
//! queued deliveries, is told so by [`Delivery::Lagged`], and re-reads from the store,
//! which stays the single source of truth, so nothing is lost however slow it is.

mod doorbell;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

pub use doorbell::{Doorbell, DoorbellWatch};

use crate::store::{FeedPage, Store, StoreError, StoredMessage};

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
    wake: Arc<Wake>,
}

/// What makes the feed reader read before its next poll.
#[derive(Default)]
struct Wake {
    /// Holds at most one pending wake-up, however many were asked for.
    notify: Notify,
    /// Whether a message was committed through this replica since the reader last
    /// woke: then the reader rings the doorbell too, once for the lot.
    committed_here: AtomicBool,
    /// Tells the replicas sharing the store on this host; `None` without one.
    doorbell: Option<Doorbell>,
}

/// Where the hub reads new messages: the store's feed (see [`Store::message_feed`]).
pub trait Feed: Send + Sync + 'static {
    /// Up to `limit` messages with an id above `after_id`, in id order.
    fn page(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> impl Future<Output = Result<FeedPage, StoreError>> + Send;
}

impl Feed for Arc<dyn Store> {
    fn page(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> impl Future<Output = Result<FeedPage, StoreError>> + Send {
        self.message_feed(after_id, limit)
    }
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
    /// A hub that rings `doorbell` after messages are committed through this replica
    /// (see [`Hub::committed`]).
    pub fn with_doorbell(doorbell: Doorbell) -> Self {
        Self {
            wake: Arc::new(Wake {
                doorbell: Some(doorbell),
                ..Wake::default()
            }),
            ..Self::default()
        }
    }

    /// Asks the hub to read the feed now: something may have been committed (another
    /// replica rang the doorbell). Coalesces with every other pending wake-up.
    pub fn wake(&self) {
        self.wake.notify.notify_one();
    }

    /// Tells the hub that the store has acknowledged a message sent through this
    /// replica: it reads the feed now, and rings the doorbell (if any) so that the
    /// other replicas on this host do too. Cheap and never blocking; a burst of calls
    /// costs one read and one ring.
    pub fn committed(&self) {
        self.wake.committed_here.store(true, Ordering::Release);
        self.wake.notify.notify_one();
    }

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

    /// Reads the feed and dispatches new messages until `stop` is cancelled: when
    /// woken ([`Hub::wake`], [`Hub::committed`]), and at least every `poll_interval`.
    pub async fn run(self, feed: impl Feed, poll_interval: Duration, stop: CancellationToken) {
        let mut cursor = None;
        let mut backoff = poll_interval;
        loop {
            // Wake-ups from before this read are answered by it; one that comes once it
            // may have started is kept, and answered by one more read right after.
            let woken = self.wake.notify.notified();
            tokio::pin!(woken);
            if woken.as_mut().enable() {
                woken.set(self.wake.notify.notified());
                woken.as_mut().enable();
            }
            self.ring_for_local_commits();
            let read = if cursor.is_some() && self.lock().is_empty() {
                self.read_unwatched(&feed, cursor).await
            } else {
                feed.page(cursor, FEED_BATCH).await
            };
            match read {
                Ok(page) => {
                    if cursor.is_some() && backoff != poll_interval {
                        tracing::info!("message feed readable again");
                    }
                    backoff = poll_interval;
                    let full = page.messages.len() as u32 >= FEED_BATCH;
                    // A subscriber that registered before this read gets these messages
                    // here; one that registers later reads them from the store itself.
                    for message in page.messages {
                        self.dispatch(message);
                    }
                    cursor = Some(page.cursor);
                    if full {
                        if stop.is_cancelled() {
                            return;
                        }
                        continue;
                    }
                    if !self.until_next_read(poll_interval, woken, &stop).await {
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the message feed; live delivery paused");
                    backoff = (backoff * 2).min(MAX_ERROR_BACKOFF);
                    // Wake-ups do not cut the backoff short: they would hammer a store
                    // that is failing. They stay pending for the next read.
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                }
            }
        }
    }

    /// The read of a replica with no subscriber: the feed's newest id alone (a page
    /// without messages), not every message since `cursor`, which nobody here is owed.
    /// A subscriber that registers after this has checked again reads everything up to
    /// that id from the store itself (ids become visible in increasing order, so all of
    /// them were visible before its registration). One that registered while the id was
    /// read may be owed those messages: then they are read after all. Without this,
    /// every replica read and decoded every message sent through any of them, 100 times
    /// a second in pages of up to 1,000, only to drop them all.
    async fn read_unwatched(
        &self,
        feed: &impl Feed,
        cursor: Option<u64>,
    ) -> Result<FeedPage, StoreError> {
        let newest = feed.page(None, 0).await?;
        if self.lock().is_empty() {
            Ok(newest)
        } else {
            feed.page(cursor, FEED_BATCH).await
        }
    }

    /// Waits until the next read is due: `poll_interval` has passed, or a wake-up came
    /// while this replica has subscribers. A wake-up with none only rings the doorbell
    /// (for the other replicas), sparing a read that nobody here needs: a subscriber
    /// that registers later reads what was committed before from the store itself.
    /// Returns false once `stop` is cancelled.
    async fn until_next_read<'hub>(
        &'hub self,
        poll_interval: Duration,
        mut woken: std::pin::Pin<&mut tokio::sync::futures::Notified<'hub>>,
        stop: &CancellationToken,
    ) -> bool {
        let poll = tokio::time::sleep(poll_interval);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = &mut poll => return true,
                _ = woken.as_mut() => {
                    if !self.lock().is_empty() {
                        return true;
                    }
                    self.ring_for_local_commits();
                    woken.set(self.wake.notify.notified());
                    woken.as_mut().enable();
                }
            }
        }
    }

    /// Rings the doorbell if messages were committed through this replica since the
    /// last read: before reading, so the other replicas read while this one does.
    fn ring_for_local_commits(&self) {
        if self.wake.committed_here.swap(false, Ordering::AcqRel)
            && let Some(doorbell) = &self.wake.doorbell
        {
            doorbell.ring();
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

    /// A feed of messages the test appends to, which records when it is read and can
    /// hold a read in flight until the test lets it finish.
    #[derive(Default)]
    struct FakeFeed {
        messages: Mutex<Vec<StoredMessage>>,
        /// When each read started (on the paused clock).
        reads: Mutex<Vec<tokio::time::Instant>>,
        /// The `after_id` of each read.
        asked: Mutex<Vec<Option<u64>>>,
        /// While set, each read waits for one permit.
        gate: Option<tokio::sync::Semaphore>,
        /// Tells the test that a read has started.
        started: Notify,
    }

    impl FakeFeed {
        fn push(&self, message: StoredMessage) {
            self.messages.lock().expect("messages").push(message);
        }

        fn asked(&self) -> Vec<Option<u64>> {
            self.asked.lock().expect("asked").clone()
        }

        fn reads(&self) -> Vec<Duration> {
            let reads = self.reads.lock().expect("reads");
            reads.iter().map(|at| at.duration_since(reads[0])).collect()
        }
    }

    impl Feed for Arc<FakeFeed> {
        async fn page(&self, after_id: Option<u64>, limit: u32) -> Result<FeedPage, StoreError> {
            self.reads
                .lock()
                .expect("reads")
                .push(tokio::time::Instant::now());
            self.asked.lock().expect("asked").push(after_id);
            self.started.notify_one();
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("gate open").forget();
            }
            let messages: Vec<StoredMessage> = self
                .messages
                .lock()
                .expect("messages")
                .iter()
                .filter(|m| after_id.is_some_and(|after| m.id > after))
                .take(limit as usize)
                .cloned()
                .collect();
            let latest = self
                .messages
                .lock()
                .expect("messages")
                .last()
                .map_or(0, |m| m.id);
            let cursor = match after_id {
                None => latest,
                Some(after) => messages.last().map_or(after, |m| m.id),
            };
            Ok(FeedPage { messages, cursor })
        }
    }

    /// A hub reading `feed`, polling every [`POLL`]; cancel the token to stop it.
    fn run_hub(feed: &Arc<FakeFeed>) -> (Hub, CancellationToken, tokio::task::JoinHandle<()>) {
        let hub = Hub::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(hub.clone().run(feed.clone(), POLL, stop.clone()));
        (hub, stop, task)
    }

    /// Far longer than anything the tests wait for: a read that happens only at a poll
    /// shows up as one an hour after the first on the paused clock.
    const POLL: Duration = Duration::from_secs(3600);

    async fn received(subscription: &mut Subscription) -> u64 {
        match subscription.next().await {
            Some(Delivery::Message(m)) => m.sequence,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_commits_costs_one_feed_read_not_one_each() {
        let feed = Arc::new(FakeFeed::default());
        let (hub, stop, task) = run_hub(&feed);
        let mut bob = hub.subscribe("bob");
        feed.started.notified().await;
        for id in 1..=50 {
            feed.push(message("bob", id));
            hub.committed();
        }
        for id in 1..=50 {
            assert_eq!(received(&mut bob).await, id, "in feed order");
        }
        // Everything was delivered with no time passing (by wake-up, not by poll): the
        // first read found the cursor, the burst of 50 commits cost one more.
        assert_eq!(feed.reads(), vec![Duration::ZERO; 2]);
        stop.cancel();
        task.await.expect("the hub stops");
    }

    #[tokio::test(start_paused = true)]
    async fn wake_ups_during_a_read_cost_exactly_one_more_read() {
        let feed = Arc::new(FakeFeed {
            gate: Some(tokio::sync::Semaphore::new(1)),
            ..FakeFeed::default()
        });
        let (hub, stop, task) = run_hub(&feed);
        let mut bob = hub.subscribe("bob");
        // The first read (the starting cursor) passes the gate; the second is held
        // while the test commits a burst behind it.
        feed.started.notified().await;
        feed.push(message("bob", 1));
        hub.committed();
        feed.started.notified().await;
        for id in 2..=20 {
            feed.push(message("bob", id));
            hub.committed();
            hub.wake();
        }
        let gate = feed.gate.as_ref().expect("gated");
        gate.add_permits(2);
        for id in 1..=20 {
            assert_eq!(received(&mut bob).await, id, "in feed order");
        }
        assert_eq!(
            feed.reads(),
            vec![Duration::ZERO; 3],
            "start, the held read, one read for the whole burst"
        );
        // Then nothing until the poll.
        gate.add_permits(1);
        feed.push(message("bob", 21));
        assert_eq!(received(&mut bob).await, 21, "the poll still delivers");
        assert_eq!(
            feed.reads(),
            vec![Duration::ZERO, Duration::ZERO, Duration::ZERO, POLL]
        );
        stop.cancel();
        task.await.expect("the hub stops");
    }

    #[tokio::test(start_paused = true)]
    async fn without_wake_ups_the_poll_still_delivers() {
        let feed = Arc::new(FakeFeed::default());
        let (hub, stop, task) = run_hub(&feed);
        let mut bob = hub.subscribe("bob");
        feed.started.notified().await;
        feed.push(message("bob", 1));
        assert_eq!(received(&mut bob).await, 1);
        assert_eq!(feed.reads(), vec![Duration::ZERO, POLL]);
        stop.cancel();
        task.await.expect("the hub stops");
    }

    /// With no local subscriber, a poll reads only the feed's newest id, and delivery
    /// to a later subscriber goes on from there.
    #[tokio::test(start_paused = true)]
    async fn without_subscribers_a_poll_reads_only_the_newest_id() {
        let feed = Arc::new(FakeFeed::default());
        let (hub, stop, task) = run_hub(&feed);
        feed.started.notified().await;
        for id in 1..=3 {
            feed.push(message("bob", id));
        }
        feed.started.notified().await; // the poll
        // A subscriber from now on reads 1 to 3 from the store; the hub brings it 4.
        let mut bob = hub.subscribe("bob");
        feed.push(message("bob", 4));
        hub.committed();
        assert_eq!(received(&mut bob).await, 4);
        assert_eq!(feed.asked(), [None, None, Some(3)]);
        assert_eq!(feed.reads(), [Duration::ZERO, POLL, POLL]);
        stop.cancel();
        task.await.expect("the hub stops");
    }

    /// A subscriber that registers while an unwatched poll reads the newest id is not
    /// skipped past: the hub reads the messages since its cursor after all.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_registering_during_an_unwatched_read_gets_its_messages() {
        let feed = Arc::new(FakeFeed {
            gate: Some(tokio::sync::Semaphore::new(1)),
            ..FakeFeed::default()
        });
        let (hub, stop, task) = run_hub(&feed);
        feed.started.notified().await;
        for id in 1..=3 {
            feed.push(message("bob", id));
        }
        feed.started.notified().await; // the poll, held at the gate
        let mut bob = hub.subscribe("bob");
        feed.gate.as_ref().expect("gated").add_permits(2);
        for id in 1..=3 {
            // At once (on the paused clock), not at some later poll, which would not
            // bring them either.
            let delivered = tokio::time::timeout(Duration::from_secs(1), received(&mut bob));
            assert_eq!(delivered.await.expect("delivered, not skipped past"), id);
        }
        assert_eq!(feed.asked(), [None, None, Some(0)]);
        stop.cancel();
        task.await.expect("the hub stops");
    }

    /// With no local subscriber, a commit only rings the doorbell: the other replicas
    /// read, this one spares a read nobody here needs (on the real clock: the doorbell
    /// is real file-system work).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn without_local_subscribers_a_commit_rings_the_doorbell_and_reads_nothing() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = dir.path().join("chat.db");
        let hub = Hub::with_doorbell(Doorbell::open(&database).expect("open"));
        let mut other_replica = Doorbell::open(&database)
            .expect("open")
            .watch()
            .expect("watch");
        let feed = Arc::new(FakeFeed::default());
        let stop = CancellationToken::new();
        let task = tokio::spawn(hub.clone().run(feed.clone(), POLL, stop.clone()));
        feed.started.notified().await;
        feed.push(message("bob", 1));
        hub.committed();
        tokio::time::timeout(Duration::from_secs(5), other_replica.rung())
            .await
            .expect("the other replicas are told")
            .expect("the watch works");
        let mut bob = hub.subscribe("bob");
        feed.push(message("bob", 2));
        hub.committed();
        assert_eq!(received(&mut bob).await, 1);
        assert_eq!(received(&mut bob).await, 2);
        assert_eq!(
            feed.reads().len(),
            2,
            "the start, then one read once someone subscribed"
        );
        stop.cancel();
        task.await.expect("the hub stops");
    }
}
