//! The load: users, each with its own balancer built once, sending, fetching,
//! acknowledging and subscribing; every call counted; the stored histories read back.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, EndpointState};
use chat_proto::v1::{
    AckMessagesRequest, CreateAccountRequest, FetchMessagesRequest, LoginRequest, Message,
    SendMessageRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
};
use chat_testkit::{PASSWORD, Replica, authed};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::stats::{Rpc, Stats};
use crate::{REPLICAS, SeededRng};

const USERS: usize = 5;

// Balancer settings: fast enough that a dead or frozen replica is left within a few
// hundred milliseconds, on a loaded 2-core machine running debug builds (the probe
// timeout is not lower: two slow probes in a row mark a healthy replica unhealthy).
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
const PER_TRY_TIMEOUT: Duration = Duration::from_millis(400);
/// Each call's overall deadline (retries included).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive interval and timeout: a connection to a frozen replica (and the
/// subscription on it) is given up after about one second.
const KEEPALIVE: Duration = Duration::from_millis(500);
/// Longest ejection: a replica faulted several times in a row comes back in seconds,
/// not the default 30s, so the final "every replica healthy" check stays short.
const MAX_EJECTION: Duration = Duration::from_secs(3);

// Workload pacing.
const SEND_PAUSE_MS: (u64, u64) = (5, 25);
const READ_PAUSE_MS: (u64, u64) = (50, 150);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

// Bounds on every wait.
/// After the load stops, how long a send that keeps failing is retried (same key).
const SEND_GIVE_UP: Duration = Duration::from_secs(10);
const FEEDS_CATCH_UP_WITHIN: Duration = Duration::from_secs(15);
const BALANCERS_RECOVER_WITHIN: Duration = Duration::from_secs(10);

/// One user: a session and the balancer built for it at the start (never rebuilt).
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) token: String,
    pub(crate) lb: Balancer,
    pub(crate) client: ChatServiceClient<Balancer>,
}

pub(crate) fn balancer(replicas: &[Replica]) -> Balancer {
    chat_testkit::balancer_builder(replicas.iter().map(Replica::address))
        .probe_interval(PROBE_INTERVAL)
        .probe_timeout(PROBE_TIMEOUT)
        .per_try_timeout(PER_TRY_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .http2_keepalive(Some(KEEPALIVE), KEEPALIVE)
        .max_ejection_time(MAX_EJECTION)
        .build()
        .expect("balancer")
}

/// Creates and logs in every user, each through its own new balancer.
pub(crate) async fn sign_up(replicas: &[Replica], stats: &Stats) -> Vec<User> {
    let mut users = Vec::new();
    for i in 0..USERS {
        let name = format!("user{i}");
        let lb = balancer(replicas);
        let mut client = ChatServiceClient::new(lb.clone());
        stats
            .call(
                Rpc::CreateAccount,
                client.create_account(CreateAccountRequest {
                    username: name.clone(),
                    password: PASSWORD.into(),
                }),
            )
            .await
            .expect("create account");
        let token = stats
            .call(
                Rpc::Login,
                client.login(LoginRequest {
                    username: name.clone(),
                    password: PASSWORD.into(),
                }),
            )
            .await
            .expect("login")
            .into_inner()
            .token;
        users.push(User {
            name,
            token,
            lb,
            client,
        });
    }
    users
}

// ---- workload -------------------------------------------------------------------------

/// The running load: per user a sender, a reader (fetch + ack) and a live feed.
pub(crate) struct Workload {
    /// `Some(give_up_at)` once the load must stop: no new sends, and a failing send
    /// is retried (same key) until `give_up_at`.
    pub(crate) stop: watch::Sender<Option<Instant>>,
    pub(crate) senders: Vec<JoinHandle<SenderOutcome>>,
    pub(crate) readers: Vec<JoinHandle<ReaderOutcome>>,
    pub(crate) feeds: Feeds,
}

pub(crate) struct Outcome {
    pub(crate) senders: Vec<SenderOutcome>,
    pub(crate) readers: Vec<ReaderOutcome>,
    pub(crate) feeds: Feeds,
}

/// What the load left to check, once stopped.
pub(crate) struct Ended {
    pub(crate) senders: Vec<SenderOutcome>,
    pub(crate) readers: Vec<ReaderOutcome>,
    pub(crate) feeds: Vec<FeedOutcome>,
    /// Whether every balancer built at the start sees every replica healthy again.
    pub(crate) recovered: Result<Duration, String>,
    pub(crate) histories: BTreeMap<String, History>,
}

/// Stops the load, waits for every balancer to see every replica healthy (invariant 3
/// first: the final fetches go through the same, recovered balancers), then reads the
/// histories and lets the live feeds catch up with them.
pub(crate) async fn end_load(
    load: Workload,
    users: &[User],
    balancers: &[Balancer],
    stats: &Stats,
) -> Ended {
    let Outcome {
        senders,
        readers,
        feeds,
    } = load.stop(users).await;
    let recovered = every_replica_healthy(balancers, BALANCERS_RECOVER_WITHIN).await;
    let histories = fetch_histories(users, stats).await;
    let feeds = feeds.finish(&histories).await;
    Ended {
        senders,
        readers,
        feeds,
        recovered,
        histories,
    }
}

impl Workload {
    pub(crate) fn start(users: &[User], rng: &mut SeededRng, stats: &Arc<Stats>) -> Self {
        let (stop, stop_rx) = watch::channel(None);
        let (feeds_stop, feeds_stop_rx) = watch::channel(false);
        let names: Vec<String> = users.iter().map(|u| u.name.clone()).collect();
        let mut workload = Self {
            stop,
            senders: Vec::new(),
            readers: Vec::new(),
            feeds: Feeds {
                stop: feeds_stop,
                users: Vec::new(),
                progress: Vec::new(),
                tasks: Vec::new(),
            },
        };
        for user in users {
            let session = Session {
                name: user.name.clone(),
                token: user.token.clone(),
                client: user.client.clone(),
                stats: stats.clone(),
            };
            let others: Vec<String> = names.iter().filter(|n| **n != user.name).cloned().collect();
            // What the live feed has delivered: the reader acknowledges no further
            // (see `read_and_ack`).
            let progress = Arc::new(AtomicU64::new(0));
            let mut worker = || Worker {
                session: session.clone(),
                rng: rng.fork(),
                stop: stop_rx.clone(),
            };
            let sender = send_messages(worker(), others);
            workload.senders.push(tokio::spawn(sender));
            let reader = read_and_ack(worker(), progress.clone());
            workload.readers.push(tokio::spawn(reader));
            workload.feeds.tasks.push(tokio::spawn(live_feed(
                session,
                progress.clone(),
                feeds_stop_rx.clone(),
            )));
            workload.feeds.users.push(user.name.clone());
            workload.feeds.progress.push(progress);
        }
        workload
    }

    /// Stops sending and reading (the feeds keep going until they caught up).
    pub(crate) async fn stop(self, users: &[User]) -> Outcome {
        let give_up_at = Instant::now() + SEND_GIVE_UP;
        self.stop.send_replace(Some(give_up_at));
        let mut senders = Vec::new();
        for (user, task) in users.iter().zip(self.senders) {
            // Each sender finishes its current send, retried until `give_up_at`.
            let outcome = tokio::time::timeout(SEND_GIVE_UP + CALL_TIMEOUT * 2, task)
                .await
                .unwrap_or_else(|_| panic!("{}'s sender did not stop", user.name))
                .expect("sender task");
            senders.push(outcome);
        }
        let mut readers = Vec::new();
        for (user, task) in users.iter().zip(self.readers) {
            let outcome = tokio::time::timeout(CALL_TIMEOUT * 3, task)
                .await
                .unwrap_or_else(|_| panic!("{}'s reader did not stop", user.name))
                .expect("reader task");
            readers.push(outcome);
        }
        Outcome {
            senders,
            readers,
            feeds: self.feeds,
        }
    }
}

/// What a workload task needs of its user.
/// What a sender or a reader task works with: its user's session, its own random
/// choices, and the signal to stop.
pub(crate) struct Worker {
    session: Session,
    rng: SeededRng,
    stop: watch::Receiver<Option<Instant>>,
}

#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) name: String,
    pub(crate) token: String,
    pub(crate) client: ChatServiceClient<Balancer>,
    pub(crate) stats: Arc<Stats>,
}

/// A send the client saw acknowledged, with the message the server returned.
#[derive(Debug)]
pub(crate) struct Acked {
    pub(crate) recipient: String,
    pub(crate) text: String,
    pub(crate) message: Message,
}

#[derive(Debug, Default)]
pub(crate) struct SenderOutcome {
    pub(crate) sender: String,
    pub(crate) acked: Vec<Acked>,
    /// Sends given up after `SEND_GIVE_UP` (may or may not be stored; at most once).
    pub(crate) unacked: Vec<String>,
    /// Acknowledgements that do not describe the message sent.
    pub(crate) wrong_answers: Vec<String>,
}

/// Sends messages to random other users, one at a time, each with a unique key; a
/// send that fails is retried with the same key (so it is stored at most once).
pub(crate) async fn send_messages(worker: Worker, recipients: Vec<String>) -> SenderOutcome {
    let (mut session, mut rng, stop) = (worker.session, worker.rng, worker.stop);
    let sender = session.name.clone();
    let mut outcome = SenderOutcome {
        sender,
        ..SenderOutcome::default()
    };
    for n in 1u64.. {
        if stop.borrow().is_some() {
            break;
        }
        let recipient = recipients[rng.below(recipients.len())].clone();
        let text = format!("{}->{recipient} #{n}", session.name);
        let key = format!("{}-{n}", session.name);
        let Some(message) = send_until_acked(&mut session, &recipient, &text, &key, &stop).await
        else {
            outcome.unacked.push(text);
            break;
        };
        if message.text != text || message.recipient != recipient || message.sender != session.name
        {
            outcome.wrong_answers.push(format!(
                "sent {text:?} to {recipient}, acknowledged {message:?}"
            ));
        }
        outcome.acked.push(Acked {
            recipient,
            text,
            message,
        });
        tokio::time::sleep(rng.millis(SEND_PAUSE_MS)).await;
    }
    outcome
}

/// One send, retried by the test (same key) until acknowledged or given up.
pub(crate) async fn send_until_acked(
    session: &mut Session,
    recipient: &str,
    text: &str,
    key: &str,
    stop: &watch::Receiver<Option<Instant>>,
) -> Option<Message> {
    loop {
        let request = authed(
            &session.token,
            SendMessageRequest {
                recipient: recipient.into(),
                text: text.into(),
                idempotency_key: key.into(),
            },
        );
        let sent = session
            .stats
            .call(Rpc::SendMessage, session.client.send_message(request))
            .await;
        match sent {
            Ok(response) => {
                return Some(
                    response
                        .into_inner()
                        .message
                        .expect("an acknowledged send returns its message"),
                );
            }
            Err(_)
                if stop
                    .borrow()
                    .is_some_and(|give_up| Instant::now() >= give_up) =>
            {
                return None;
            }
            Err(_) => tokio::time::sleep(RETRY_PAUSE).await,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct ReaderOutcome {
    pub(crate) user: String,
    pub(crate) fetches: u64,
    /// The highest acknowledged sequence an `AckMessages` answer reported.
    pub(crate) acked: u64,
    /// The highest `up_to_sequence` asked for.
    pub(crate) asked: u64,
    /// Pages or acknowledgements that break the protocol's promises.
    pub(crate) anomalies: Vec<String>,
}

/// Fetches undelivered messages and acknowledges them (cumulatively), like an inbox.
///
/// It acknowledges no further than the live feed has delivered: `Subscribe` with
/// `after_sequence = 0` (a feed that has seen nothing yet) starts after the last
/// acknowledged message, so acknowledging ahead of the feed would legitimately hide
/// messages from it, and the gap-free check of the feed would mean nothing. A client
/// that acknowledges what it has displayed behaves the same way.
pub(crate) async fn read_and_ack(worker: Worker, feed_progress: Arc<AtomicU64>) -> ReaderOutcome {
    let (mut session, mut rng, stop) = (worker.session, worker.rng, worker.stop);
    let mut outcome = ReaderOutcome::default();
    outcome.user.clone_from(&session.name);
    let mut fetched = 0u64;
    while stop.borrow().is_none() {
        let request = authed(
            &session.token,
            FetchMessagesRequest {
                after_sequence: None,
                page_size: 50,
            },
        );
        if let Ok(page) = session
            .stats
            .call(Rpc::FetchMessages, session.client.fetch_messages(request))
            .await
        {
            let page = page.into_inner();
            outcome.fetches += 1;
            let mut previous = page.acked_sequence;
            for message in &page.messages {
                if message.sequence <= previous {
                    outcome.anomalies.push(format!(
                        "undelivered page (acked {}) out of order at {}",
                        page.acked_sequence, message.sequence
                    ));
                }
                previous = message.sequence;
            }
            fetched = fetched.max(previous);
        }
        let up_to = fetched.min(feed_progress.load(Ordering::Acquire));
        if up_to > outcome.acked {
            outcome.asked = up_to;
            let request = authed(
                &session.token,
                AckMessagesRequest {
                    up_to_sequence: up_to,
                },
            );
            if let Ok(response) = session
                .stats
                .call(Rpc::AckMessages, session.client.ack_messages(request))
                .await
            {
                let acked = response.into_inner().acked_sequence;
                if acked < up_to {
                    outcome.anomalies.push(format!(
                        "acknowledged up to {up_to}, the server says {acked}"
                    ));
                }
                outcome.acked = outcome.acked.max(acked);
            }
        }
        tokio::time::sleep(rng.millis(READ_PAUSE_MS)).await;
    }
    outcome
}

/// The users' live feeds, which run until they have caught up with the store.
pub(crate) struct Feeds {
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) users: Vec<String>,
    /// Per user, the last sequence its feed delivered.
    pub(crate) progress: Vec<Arc<AtomicU64>>,
    pub(crate) tasks: Vec<JoinHandle<FeedOutcome>>,
}

impl Feeds {
    /// Waits (bounded) until every feed delivered its user's last stored message, then
    /// stops them. A feed that does not catch up is reported by the feed check.
    pub(crate) async fn finish(self, histories: &BTreeMap<String, History>) -> Vec<FeedOutcome> {
        let deadline = Instant::now() + FEEDS_CATCH_UP_WITHIN;
        let targets: Vec<u64> = self
            .users
            .iter()
            .map(|user| histories[user].messages.last().map_or(0, |m| m.sequence))
            .collect();
        while Instant::now() < deadline
            && self
                .progress
                .iter()
                .zip(&targets)
                .any(|(progress, target)| progress.load(Ordering::Acquire) < *target)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.send_replace(true);
        let mut outcomes = Vec::new();
        for task in self.tasks {
            let outcome = tokio::time::timeout(CALL_TIMEOUT * 2, task)
                .await
                .expect("a feed did not stop")
                .expect("feed task");
            outcomes.push(outcome);
        }
        outcomes
    }
}

#[derive(Debug, Default)]
pub(crate) struct FeedOutcome {
    pub(crate) user: String,
    /// Every message received, in arrival order, over all streams.
    pub(crate) received: Vec<Message>,
    /// Streams opened (1 + resumptions).
    pub(crate) streams: u64,
    /// Replicas that served a stream (`x-chat-replica`).
    pub(crate) replicas: BTreeSet<String>,
    /// How streams broke, by status code.
    pub(crate) breaks: BTreeMap<String, u64>,
    /// Streams that ended without a status (a server must end them with one).
    pub(crate) clean_ends: u64,
    /// Resume points named by a replica that differ from the client's own.
    pub(crate) resume_mismatches: Vec<String>,
}

/// A live subscription that survives replica failures, like `chat-cli`'s feed: when
/// the stream breaks, subscribe again (the balancer places it on a live replica)
/// after the last sequence received. Everything received is kept raw, so duplicates
/// or reordering by the server would show in the check.
pub(crate) async fn live_feed(
    mut session: Session,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> FeedOutcome {
    let mut outcome = FeedOutcome {
        user: session.name.clone(),
        ..FeedOutcome::default()
    };
    let mut after = 0u64;
    'resubscribe: while !*stop.borrow() {
        let request = authed(
            &session.token,
            SubscribeRequest {
                after_sequence: after,
            },
        );
        let opened = tokio::select! {
            opened = session.stats.call(Rpc::Subscribe, session.client.subscribe(request)) => opened,
            _ = stop.changed() => break,
        };
        if let Ok(response) = opened {
            outcome.streams += 1;
            if let Some(replica) = response
                .metadata()
                .get(chat_proto::REPLICA_ID_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                outcome.replicas.insert(replica.to_owned());
            }
            let mut stream = response.into_inner();
            loop {
                let item = tokio::select! {
                    item = stream.message() => item,
                    _ = stop.changed() => break 'resubscribe,
                };
                match item {
                    Ok(Some(message)) => {
                        after = after.max(message.sequence);
                        progress.store(after, Ordering::Release);
                        outcome.received.push(message);
                    }
                    Ok(None) => {
                        outcome.clean_ends += 1;
                        break;
                    }
                    Err(status) => {
                        *outcome
                            .breaks
                            .entry(format!("{:?}", status.code()))
                            .or_default() += 1;
                        if let Some(named) = resume_point(status.message())
                            && named != after
                        {
                            outcome.resume_mismatches.push(format!(
                                "replica said resume after {named}, client received up to {after}"
                            ));
                        }
                        break;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESUBSCRIBE_PAUSE) => {}
            _ = stop.changed() => break,
        }
    }
    outcome
}

/// The `after_sequence=N` a shutting-down replica names in its final status.
pub(crate) fn resume_point(message: &str) -> Option<u64> {
    let rest = &message[message.find("after_sequence=")? + "after_sequence=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the store holds for one user at the end.
pub(crate) struct History {
    /// Every message, oldest first (`after_sequence: Some(0)`, page by page).
    pub(crate) messages: Vec<Message>,
    /// The acknowledged sequence number.
    pub(crate) acked: u64,
}

/// Every user's history, through the user's own balancer.
pub(crate) async fn fetch_histories(users: &[User], stats: &Stats) -> BTreeMap<String, History> {
    let mut histories = BTreeMap::new();
    for user in users {
        let mut client = user.client.clone();
        let mut history: Vec<Message> = Vec::new();
        let acked = loop {
            let after = history.last().map_or(0, |m| m.sequence);
            let request = authed(
                &user.token,
                FetchMessagesRequest {
                    after_sequence: Some(after),
                    page_size: 100,
                },
            );
            let page = stats
                .call(Rpc::FetchMessages, client.fetch_messages(request))
                .await
                .unwrap_or_else(|status| panic!("history of {}: {status:?}", user.name))
                .into_inner();
            let empty = page.messages.is_empty();
            history.extend(page.messages);
            if !page.has_more || empty {
                break page.acked_sequence;
            }
        };
        histories.insert(
            user.name.clone(),
            History {
                messages: history,
                acked,
            },
        );
    }
    histories
}

/// Waits (bounded) until every balancer sees every replica healthy; returns how long
/// that took, or what is wrong. At the end this is invariant 3: the balancers built
/// at the start recovered by themselves.
pub(crate) async fn every_replica_healthy(
    balancers: &[Balancer],
    within: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + within;
    for (i, lb) in balancers.iter().enumerate() {
        loop {
            let changed = lb.changed();
            let snapshot = lb.snapshot();
            if snapshot.len() == REPLICAS
                && snapshot.iter().all(|e| e.state == EndpointState::Healthy)
            {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(format!(
                    "user{i}'s balancer does not see every replica healthy within {within:?}: \
                     {snapshot:#?}"
                ));
            }
        }
    }
    Ok(started.elapsed())
}
