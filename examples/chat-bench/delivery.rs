//! The delivery scenarios (issue 14): how long a message takes from the start of its
//! `SendMessage` to its receipt on a live `Subscribe` stream.
//!
//! - `delivery-same-replica`: the subscribers and the sender on `A`;
//! - `delivery-cross-replica`: the subscribers on `A`, the sender on `B` (another
//!   process sharing the SQLite file).
//!
//! `--subscribers` accounts (1,000), one stream each, subscribe on `A` over
//! connections of [`STREAMS_PER_CONNECTION`] streams. One sender then sends at a steady
//! [`RATE_PER_SEC`] messages per second (a timer, each send in its own task, so a slow
//! send never delays the next), to each subscriber in turn; each message's text carries
//! its send start, and the stream that receives it records the difference. After an
//! unmeasured warm-up (`--warmup`'s 200ms, at least [`MIN_WARMUP`]), sends run for
//! `--duration`; then the benchmark waits (at most the 5s call deadline) for the last
//! messages to arrive.
//!
//! The row (contender `direct`, concurrency 1: one sender) reads: `p50_us`, `p99_us`,
//! `p999_us` and `calls` are the delivery latencies and deliveries, `calls_per_sec`
//! deliveries per second, `rpc.SendMessage` the send calls themselves, `subscribers`
//! the streams open; `failed` counts failed sends plus messages not delivered by the
//! deadline (as `DeadlineExceeded`).
//!
//! The subscribers' accounts and sessions, and the sender's, are written into the store
//! directly (`chat_server::store`, a session made as `Login` makes one): through
//! `CreateAccount` and `Login`, 2,000 deliberately slow password hashes would take
//! longer than the measurement. Each scenario has accounts of its own.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use chat_proto::v1::{
    SendMessageRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
};
use chat_server::{auth, store::Store};
use futures::{StreamExt, TryStreamExt};
use tokio::{
    sync::Notify,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    cluster::Cluster,
    contender::{Contender, endpoint},
    machine::process_cpu_seconds,
    plan::Plan,
    scenario::Scenario,
    stats::{self, Measured, Percentiles, Row, Samples},
    workload::{CALL_DEADLINE, Rpc},
};

/// Messages sent per second, at a steady pace.
pub const RATE_PER_SEC: u32 = 200;
/// Subscriber streams per connection to the receiving replica.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// The shortest warm-up: long enough for every connection to carry a few messages.
const MIN_WARMUP: Duration = Duration::from_secs(1);
/// The password hash of the seeded accounts: a well-formed argon2id string that no
/// password matches (nobody logs in to them; their sessions are made directly).
const SEEDED_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$YmVuY2hzYWx0$bm8tcGFzc3dvcmQtbWF0Y2hlcw";

/// Runs one delivery scenario; returns its row.
pub async fn run(plan: &Plan, cluster: &Cluster, scenario: Scenario) -> anyhow::Result<Row> {
    let [a, b, _] = &cluster.healthy;
    let sender_replica = match scenario {
        Scenario::DeliveryCrossReplica => b,
        _ => a,
    };
    let prefix = match scenario {
        Scenario::DeliveryCrossReplica => "dcross",
        _ => "dsame",
    };
    let accounts = Accounts::seed(&cluster.store, prefix, plan.subscribers)
        .await
        .context("cannot create the subscribers' accounts")?;
    let tally = Arc::new(Tally::new());
    let mut receivers = subscribe_all(plan, a.address(), &accounts, &tally).await?;
    let sender = Sender {
        client: ChatServiceClient::new(
            endpoint(sender_replica.address(), plan.tls.as_ref())?
                .connect()
                .await
                .context("cannot connect the sender")?,
        ),
        accounts: &accounts,
        tally: &tally,
    };
    sender
        .send_steadily(Phase::WarmUp, plan.warmup.max(MIN_WARMUP))
        .await;
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let (mut samples, accepted) = sender.send_steadily(Phase::Measured, plan.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    let delivered = tally.wait_for(accepted, CALL_DEADLINE).await;
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    receivers.abort_all();
    for _ in delivered..accepted {
        samples.record(
            Rpc::SendMessage,
            Err(Status::deadline_exceeded("not delivered")),
            Duration::ZERO,
        );
    }
    let measured = Measured {
        samples,
        seconds,
        cpu_seconds,
        attempts: Vec::new(),
    };
    let mut row = stats::row(Contender::Direct, scenario, 1, measured);
    let latencies = std::mem::take(&mut *tally.lock());
    row.latency = Percentiles::of(latencies);
    row.calls = row.latency.calls;
    row.calls_per_sec = row.calls as f64 / seconds.max(1e-9);
    row.client_cpu_us_per_call = cpu_seconds * 1e6 / row.calls.max(1) as f64;
    row.subscribers = Some(plan.subscribers);
    Ok(row)
}

/// The scenario's accounts: `authorization` values of the sender and, with their
/// usernames, of the subscribers.
struct Accounts {
    sender: MetadataValue<Ascii>,
    subscribers: Vec<(String, MetadataValue<Ascii>)>,
}

impl Accounts {
    /// Writes `PREFIX-sender` and `PREFIX-0000`.. into the store, with a session each.
    async fn seed(store_uri: &str, prefix: &str, subscribers: u32) -> anyhow::Result<Self> {
        let store = chat_server::store::open(store_uri).await?;
        let (_, sender) = session(&store, format!("{prefix}-sender")).await?;
        let subscribers = futures::stream::iter(0..subscribers)
            .map(|i| session(&store, format!("{prefix}-{i:04}")))
            .buffer_unordered(8)
            .try_collect()
            .await?;
        Ok(Self {
            sender,
            subscribers,
        })
    }
}

/// Creates the account `name` with a session; returns the name and its
/// `authorization` value.
async fn session(
    store: &Arc<dyn Store>,
    name: String,
) -> anyhow::Result<(String, MetadataValue<Ascii>)> {
    let now = chat_server::now_unix_ms();
    let account = store.create_account(&name, SEEDED_HASH, now).await?;
    let token = auth::new_token();
    let day_ms = 24 * 3600 * 1000;
    store
        .create_session(&auth::hash_token(&token), account.id, now + day_ms)
        .await?;
    Ok((name, format!("Bearer {token}").parse()?))
}

/// Which part of the run a message belongs to (the first word of its text).
#[derive(Debug, Clone, Copy)]
enum Phase {
    WarmUp,
    Measured,
}

impl Phase {
    fn word(self) -> &'static str {
        match self {
            Phase::WarmUp => "warm-up",
            Phase::Measured => "measured",
        }
    }
}

/// What the subscribers received of the measured messages.
struct Tally {
    /// Send starts and receipts are measured from here, in µs.
    epoch: Instant,
    latencies_us: Mutex<Vec<u32>>,
    received: AtomicU64,
    arrived: Notify,
}

impl Tally {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            latencies_us: Mutex::new(Vec::new()),
            received: AtomicU64::new(0),
            arrived: Notify::new(),
        }
    }

    /// The text of a message of `phase` whose send starts now.
    fn text(&self, phase: Phase) -> String {
        format!("{} {}", phase.word(), self.epoch.elapsed().as_micros())
    }

    /// Records the receipt of a message with `text` (measured messages only).
    fn receive(&self, text: &str) {
        let now_us = self.epoch.elapsed().as_micros();
        let Some(("measured", sent)) = text.split_once(' ') else {
            return;
        };
        let Ok(sent_us) = sent.parse::<u128>() else {
            return;
        };
        let micros = u32::try_from(now_us.saturating_sub(sent_us)).unwrap_or(u32::MAX);
        self.lock().push(micros);
        self.received.fetch_add(1, Ordering::AcqRel);
        self.arrived.notify_one();
    }

    /// Waits until `expected` measured messages arrived, at most `within`; returns
    /// how many did.
    async fn wait_for(&self, expected: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received.load(Ordering::Acquire);
            if received >= expected {
                return received;
            }
            if tokio::time::timeout_at(deadline, self.arrived.notified())
                .await
                .is_err()
            {
                return self.received.load(Ordering::Acquire);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.latencies_us
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Opens every subscriber's stream on `replica`; each is drained by a task that
/// records what arrives. Returns once every stream is registered with the replica's
/// hub (its response has arrived).
async fn subscribe_all(
    plan: &Plan,
    replica: std::net::SocketAddr,
    accounts: &Accounts,
    tally: &Arc<Tally>,
) -> anyhow::Result<JoinSet<()>> {
    let connections = accounts.subscribers.len().div_ceil(STREAMS_PER_CONNECTION);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let channel = endpoint(replica, plan.tls.as_ref())?.connect().await;
        channels.push(channel.context("cannot connect a subscriber connection")?);
    }
    let streams: Vec<_> = futures::stream::iter(accounts.subscribers.iter().enumerate())
        .map(|(i, (_, token))| {
            let channel = channels[i / STREAMS_PER_CONNECTION].clone();
            let mut request = Request::new(SubscribeRequest::default());
            request
                .metadata_mut()
                .insert("authorization", token.clone());
            async move { ChatServiceClient::new(channel).subscribe(request).await }
        })
        .buffer_unordered(32)
        .try_collect()
        .await
        .context("cannot subscribe")?;
    let mut receivers = JoinSet::new();
    for response in streams {
        let mut stream = response.into_inner();
        let tally = tally.clone();
        receivers.spawn(async move {
            while let Ok(Some(message)) = stream.message().await {
                tally.receive(&message.text);
            }
        });
    }
    Ok(receivers)
}

/// Sends at a steady pace to each subscriber in turn.
struct Sender<'a> {
    client: ChatServiceClient<Channel>,
    accounts: &'a Accounts,
    tally: &'a Tally,
}

impl Sender<'_> {
    /// Sends [`RATE_PER_SEC`] messages per second of `phase` for `length`; returns the
    /// send calls' samples and how many sends succeeded, once every send returned.
    async fn send_steadily(&self, phase: Phase, length: Duration) -> (Samples, u64) {
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE_PER_SEC);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let stop_at = Instant::now() + length;
        let mut sends = JoinSet::new();
        let subscribers = &self.accounts.subscribers;
        let mut sent = 0usize;
        while ticks.tick().await < stop_at {
            let (recipient, _) = &subscribers[sent % subscribers.len()];
            sent += 1;
            let started = Instant::now();
            let mut request = Request::new(SendMessageRequest {
                recipient: recipient.clone(),
                text: self.tally.text(phase),
                idempotency_key: format!("{}-{sent}", phase.word()),
            });
            request.set_timeout(CALL_DEADLINE);
            request
                .metadata_mut()
                .insert("authorization", self.accounts.sender.clone());
            let mut client = self.client.clone();
            sends.spawn(async move {
                let outcome = client.send_message(request).await.map(drop);
                (outcome, started.elapsed())
            });
        }
        let mut samples = Samples::default();
        let mut accepted = 0;
        while let Some(joined) = sends.join_next().await {
            if let Ok((outcome, elapsed)) = joined {
                accepted += u64::from(outcome.is_ok());
                samples.record(Rpc::SendMessage, outcome, elapsed);
            }
        }
        (samples, accepted)
    }
}
