//! Chaos: three real `chat-server` replicas on one shared store, several users each
//! with its own [`Balancer`] sending, fetching, acknowledging and subscribing, while a
//! seeded fault schedule kills (-9) and restarts replicas, freezes them (SIGSTOP /
//! SIGCONT), freezes one while killing another, and finally does a SIGTERM rolling
//! restart of all three.
//!
//! At the end it checks that
//! 1. every send a client saw acknowledged was stored exactly once, in order, for its
//!    recipient (full history), and every live subscription delivered exactly the
//!    stored messages, without duplicates or gaps, across all its resumptions;
//! 2. no retry-safe call failed (the count of failed calls, before any retry by the
//!    test itself, is zero). The schedule keeps at least one replica healthy at all
//!    times: faults do not overlap except one freeze-plus-kill that leaves the third
//!    replica serving (and starts only once every client sees it healthy, see
//!    `inject_faults`), each replica serves again before the next fault, and no
//!    replica is frozen while it holds the shared store's write lock (see `freeze`);
//! 3. no client was rebuilt: each user's balancer, built once, sees every replica
//!    healthy again and serves the final checks.
//!
//! The seed comes from `CHAOS_SEED` (or is random) and is printed at the start and in
//! every failure: it replays the same fault plan (victims, order, durations) and the
//! same workload choices; the exact interleaving with the load is up to the OS.
//!
//! The ignored `soak_mixed_load_with_kills_and_freezes` (`scripts/soak`) runs the same
//! load with fault rounds of the same kinds for `SOAK_SECONDS` (default 30 minutes),
//! checks the same invariants, and reports and bounds the replicas' memory and file
//! descriptors: replica r0 is only ever frozen, so one process lives through it all.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, EndpointState, RetrySafe};
use chat_proto::v1::{
    AckMessagesRequest, CreateAccountRequest, FetchMessagesRequest, LoginRequest, Message,
    SendMessageRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
    health_check_response::ServingStatus,
};
use common::{Replica, SharedStore, authed};
use tokio::{sync::watch, task::JoinHandle, time::Instant};
use tonic::{Response, Status};

const PASSWORD: &str = "correct horse battery";
const REPLICAS: usize = 3;
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

/// Extra replica flags: a bounded SIGTERM drain.
const REPLICA_ARGS: &[&str] = &["--drain-timeout", "5s"];

// The fault plan (milliseconds, drawn from the seed).
const KILLS: usize = 5;
/// Freezes of a random replica (outside a write transaction, see `freeze`).
const FREEZES: usize = 3;
/// One replica frozen and another killed at the same time; the third serves alone.
const DOUBLE_FAULTS: usize = 1;
/// Load between two faults (the faulted replica serves again before the pause).
const PAUSE_MS: (u64, u64) = (500, 1_100);
/// How long a killed replica stays down before it is restarted on its port.
const DOWN_MS: (u64, u64) = (200, 1_000);
/// How long a replica stays frozen: long enough for probes, per-try timeouts and
/// keepalive to act, well below [`CALL_TIMEOUT`].
const FREEZE_MS: (u64, u64) = (500, 1_200);
/// Load after the last fault, before the load stops.
const TAIL: Duration = Duration::from_secs(1);

// Workload pacing.
const SEND_PAUSE_MS: (u64, u64) = (5, 25);
const READ_PAUSE_MS: (u64, u64) = (50, 150);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RESUBSCRIBE_PAUSE: Duration = Duration::from_millis(50);

// Bounds on every wait.
const SERVING_WITHIN: Duration = Duration::from_secs(15);
const TERMINATE_WITHIN: Duration = Duration::from_secs(15);
/// After the load stops, how long a send that keeps failing is retried (same key).
const SEND_GIVE_UP: Duration = Duration::from_secs(10);
const FEEDS_CATCH_UP_WITHIN: Duration = Duration::from_secs(15);
const BALANCERS_RECOVER_WITHIN: Duration = Duration::from_secs(10);
/// The whole test, whatever happens.
const TEST_BUDGET: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_freeze_and_rolling_restart_lose_nothing_and_fail_no_call() {
    let seed = chaos_seed();
    eprintln!(
        "chaos: CHAOS_SEED={seed} (replay with CHAOS_SEED={seed}); host {}",
        host_load()
    );
    run_bounded(seed, "chaos test", TEST_BUDGET, run_chaos(seed)).await;
}

/// Runs a scenario in a task so that any panic, from an assertion in it or in the
/// harness, is reported with the seed, and so that it is bounded as a whole.
async fn run_bounded(
    seed: u64,
    name: &str,
    budget: Duration,
    scenario: impl Future<Output = ()> + Send + 'static,
) {
    let mut run = tokio::spawn(scenario);
    match tokio::time::timeout(budget, &mut run).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) if error.is_panic() => {
            let payload = error.into_panic();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(non-text panic)");
            if message.starts_with("[CHAOS_SEED=") {
                panic!("{message}");
            }
            panic!("[CHAOS_SEED={seed}] {message}");
        }
        Ok(Err(error)) => panic!("[CHAOS_SEED={seed}] the {name} task failed: {error}"),
        Err(_) => {
            run.abort();
            panic!("[CHAOS_SEED={seed}] the {name} did not finish within {budget:?}");
        }
    }
}

/// The whole scenario: start, load + faults, stop, check.
async fn run_chaos(seed: u64) {
    let started = Instant::now();
    let mut rng = SeededRng::new(seed);
    // The fault plan is drawn first, so it depends on the seed only.
    let plan = plan_faults(&mut rng);
    eprintln!("chaos: fault plan: {plan:#?}");

    let store = SharedStore::new();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica::start_with(&store, REPLICA_ARGS))
        .collect();
    let names: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| format!("r{i}={}", r.address))
        .collect();
    eprintln!("chaos: replicas {}", names.join(", "));

    let stats = Arc::new(Stats::new(started));
    let users = sign_up(&replicas, &stats).await;
    let load = Workload::start(&users, &mut rng, &stats);

    let log = FaultLog::new(started);
    let store_path = store_path(&store);
    let faults_started = Instant::now();
    let balancers: Vec<Balancer> = users.iter().map(|u| u.lb.clone()).collect();
    inject_faults(&mut replicas, &plan, &log, &store_path, &balancers).await;
    tokio::time::sleep(TAIL).await;
    let load_time = faults_started.elapsed();
    let Ended {
        senders,
        readers,
        feeds,
        recovered,
        histories,
    } = end_load(load, &users, &balancers, &stats).await;

    report(
        seed,
        (started.elapsed(), load_time),
        &stats,
        &log,
        (&senders, &readers, &feeds),
        &users,
    );
    check_no_failed_calls(seed, &stats, &log);
    check_delivery(seed, &histories, &senders);
    check_reads(seed, &histories, &readers);
    check_live_feeds(seed, &histories, &feeds);
    if let Err(problem) = recovered {
        panic!("[CHAOS_SEED={seed}] a balancer built at the start did not recover: {problem}");
    }
}

/// The soak (`scripts/soak`): the same load and the same kinds of faults for
/// `SOAK_SECONDS` (default 30 minutes), fault round after fault round, with the same
/// invariants, and the replicas' memory and file descriptors at the start and the end.
/// Replica r0 is only ever frozen, never killed or restarted, so its process lives
/// through the whole run and its growth is bounded (see `check_long_lived_replica`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 30-minute soak: run it with scripts/soak (SOAK_SECONDS=60 for a short one)"]
async fn soak_mixed_load_with_kills_and_freezes() {
    let load_for = soak_seconds();
    let seed = chaos_seed();
    eprintln!(
        "soak: CHAOS_SEED={seed} (replay with CHAOS_SEED={seed}), {load_for:?} of faults \
         (SOAK_SECONDS); host {}",
        host_load()
    );
    run_bounded(
        seed,
        "soak",
        soak_budget(load_for),
        run_soak(seed, load_for),
    )
    .await;
}

/// The soak: start, warm-up, sample, fault rounds for `load_for`, sample, stop, check.
async fn run_soak(seed: u64, load_for: Duration) {
    let started = Instant::now();
    let mut rng = SeededRng::new(seed);
    // The faults get their own generator, forked first: they depend on the seed only.
    let mut fault_rng = rng.fork();

    let store = SharedStore::new();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|_| Replica::start_with(&store, REPLICA_ARGS))
        .collect();
    let names: Vec<String> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| format!("r{i}={} (pid {})", r.address, r.pid()))
        .collect();
    eprintln!(
        "soak: replicas {}; r{LONG_LIVED} is never killed",
        names.join(", ")
    );

    let stats = Arc::new(Stats::new(started));
    let users = sign_up(&replicas, &stats).await;
    // The test keeps every acknowledged send and every delivered message for the
    // exactly-once checks: measured about 0.6 KiB per acknowledged send (48 MiB after
    // 63k sends in 5 minutes), some 250 MiB for 30 minutes at ~200 sends/s, which is
    // fine; the report prints the test's own RSS.
    let load = Workload::start(&users, &mut rng, &stats);
    tokio::time::sleep(SOAK_WARM_UP).await;
    let at_start = Resources::sample(&replicas);

    let log = FaultLog::new(started);
    let store_path = store_path(&store);
    let faults_started = Instant::now();
    let balancers: Vec<Balancer> = users.iter().map(|u| u.lb.clone()).collect();
    let faults = inject_soak_faults(
        &mut replicas,
        &mut fault_rng,
        faults_started + load_for,
        (&log, &store_path, &balancers, &stats),
    )
    .await;
    tokio::time::sleep(TAIL).await;
    // Sampled under the same load as at the start, before anything stops.
    let at_end = Resources::sample(&replicas);
    let load_time = faults_started.elapsed();
    let Ended {
        senders,
        readers,
        feeds,
        recovered,
        histories,
    } = end_load(load, &users, &balancers, &stats).await;

    report_load(
        seed,
        (started.elapsed(), load_time),
        &stats,
        (&senders, &readers, &feeds),
        &users,
    );
    let delivery = DeliveryCounts::count(&histories, &senders, &feeds);
    report_soak(
        seed,
        load_time,
        &stats,
        &faults,
        &delivery,
        (&at_start, &at_end),
    );
    check_soak_delivery(seed, &delivery);
    check_soak_failed_calls(seed, &stats, &faults, &log);
    check_long_lived_replica(seed, &at_start, &at_end);
    check_delivery(seed, &histories, &senders);
    check_reads(seed, &histories, &readers);
    check_live_feeds(seed, &histories, &feeds);
    if let Err(problem) = recovered {
        panic!("[CHAOS_SEED={seed}] a balancer built at the start did not recover: {problem}");
    }
}

// ---- seeded randomness -------------------------------------------------------------

/// The seed from `CHAOS_SEED`, or a fresh one.
fn chaos_seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("CHAOS_SEED must be an unsigned integer, got {text:?}")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            SeededRng::new(nanos ^ u64::from(std::process::id())).next_u64()
        }
    }
}

/// SplitMix64: a tiny, well-mixed PRNG, enough for a replayable schedule (the root
/// package has no `rand` dependency).
struct SeededRng(u64);

impl SeededRng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn millis(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }

    /// An independent generator (for one task).
    fn fork(&mut self) -> Self {
        Self::new(self.next_u64())
    }
}

// ---- clients ------------------------------------------------------------------------

/// One user: a session and the balancer built for it at the start (never rebuilt).
struct User {
    name: String,
    token: String,
    lb: Balancer,
    client: ChatServiceClient<Balancer>,
}

fn balancer(replicas: &[Replica]) -> Balancer {
    let list = replicas
        .iter()
        .map(|r| r.address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Balancer::builder()
        .addresses(&list)
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
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
async fn sign_up(replicas: &[Replica], stats: &Stats) -> Vec<User> {
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

// ---- call accounting ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rpc {
    CreateAccount,
    Login,
    SendMessage,
    FetchMessages,
    AckMessages,
    Subscribe,
}

/// Every call's outcome, before any retry by the test itself.
struct Stats {
    started: Instant,
    tally: Mutex<Tally>,
}

#[derive(Default)]
struct Tally {
    ok: BTreeMap<Rpc, u64>,
    failed: BTreeMap<(Rpc, String), u64>,
    slowest: BTreeMap<Rpc, Duration>,
    /// The first failures in full, with when they happened.
    samples: Vec<String>,
    /// Failures of calls whose answer had begun when its connection broke (see
    /// `check_soak_failed_calls`).
    broke_mid_answer: u64,
}

impl Stats {
    fn new(started: Instant) -> Self {
        Self {
            started,
            tally: Mutex::new(Tally::default()),
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes one call and records how it went (a `Subscribe` counts as a call until
    /// its response headers; a stream that breaks later is recorded by the feed).
    async fn call<T>(
        &self,
        rpc: Rpc,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let sent = Instant::now();
        let result = call.await;
        let took = sent.elapsed();
        let mut tally = self.tally();
        let slowest = tally.slowest.entry(rpc).or_default();
        *slowest = (*slowest).max(took);
        match &result {
            Ok(_) => *tally.ok.entry(rpc).or_default() += 1,
            Err(status) => {
                *tally
                    .failed
                    .entry((rpc, format!("{:?}", status.code())))
                    .or_default() += 1;
                if status.message().contains(BROKE_MID_ANSWER) {
                    tally.broke_mid_answer += 1;
                }
                if tally.samples.len() < 20 {
                    let at = sent.duration_since(self.started);
                    tally.samples.push(format!(
                        "at {at:.2?} {rpc:?} failed after {took:.2?}: {:?}: {}",
                        status.code(),
                        status.message()
                    ));
                }
            }
        }
        result
    }

    fn failures(&self) -> u64 {
        self.tally().failed.values().sum()
    }
}

// ---- workload -------------------------------------------------------------------------

/// The running load: per user a sender, a reader (fetch + ack) and a live feed.
struct Workload {
    /// `Some(give_up_at)` once the load must stop: no new sends, and a failing send
    /// is retried (same key) until `give_up_at`.
    stop: watch::Sender<Option<Instant>>,
    senders: Vec<JoinHandle<SenderOutcome>>,
    readers: Vec<JoinHandle<ReaderOutcome>>,
    feeds: Feeds,
}

struct Outcome {
    senders: Vec<SenderOutcome>,
    readers: Vec<ReaderOutcome>,
    feeds: Feeds,
}

/// What the load left to check, once stopped.
struct Ended {
    senders: Vec<SenderOutcome>,
    readers: Vec<ReaderOutcome>,
    feeds: Vec<FeedOutcome>,
    /// Whether every balancer built at the start sees every replica healthy again.
    recovered: Result<Duration, String>,
    histories: BTreeMap<String, History>,
}

/// Stops the load, waits for every balancer to see every replica healthy (invariant 3
/// first: the final fetches go through the same, recovered balancers), then reads the
/// histories and lets the live feeds catch up with them.
async fn end_load(load: Workload, users: &[User], balancers: &[Balancer], stats: &Stats) -> Ended {
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
    fn start(users: &[User], rng: &mut SeededRng, stats: &Arc<Stats>) -> Self {
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
            workload.senders.push(tokio::spawn(send_messages(
                session.clone(),
                others,
                rng.fork(),
                stop_rx.clone(),
            )));
            workload.readers.push(tokio::spawn(read_and_ack(
                session.clone(),
                progress.clone(),
                rng.fork(),
                stop_rx.clone(),
            )));
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
    async fn stop(self, users: &[User]) -> Outcome {
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
#[derive(Clone)]
struct Session {
    name: String,
    token: String,
    client: ChatServiceClient<Balancer>,
    stats: Arc<Stats>,
}

/// A send the client saw acknowledged, with the message the server returned.
#[derive(Debug)]
struct Acked {
    recipient: String,
    text: String,
    message: Message,
}

#[derive(Debug, Default)]
struct SenderOutcome {
    sender: String,
    acked: Vec<Acked>,
    /// Sends given up after `SEND_GIVE_UP` (may or may not be stored; at most once).
    unacked: Vec<String>,
    /// Acknowledgements that do not describe the message sent.
    wrong_answers: Vec<String>,
}

/// Sends messages to random other users, one at a time, each with a unique key; a
/// send that fails is retried with the same key (so it is stored at most once).
async fn send_messages(
    mut session: Session,
    recipients: Vec<String>,
    mut rng: SeededRng,
    stop: watch::Receiver<Option<Instant>>,
) -> SenderOutcome {
    let mut outcome = SenderOutcome {
        sender: session.name.clone(),
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
async fn send_until_acked(
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
struct ReaderOutcome {
    user: String,
    fetches: u64,
    /// The highest acknowledged sequence an `AckMessages` answer reported.
    acked: u64,
    /// The highest `up_to_sequence` asked for.
    asked: u64,
    /// Pages or acknowledgements that break the protocol's promises.
    anomalies: Vec<String>,
}

/// Fetches undelivered messages and acknowledges them (cumulatively), like an inbox.
///
/// It acknowledges no further than the live feed has delivered: `Subscribe` with
/// `after_sequence = 0` (a feed that has seen nothing yet) starts after the last
/// acknowledged message, so acknowledging ahead of the feed would legitimately hide
/// messages from it, and the gap-free check of the feed would mean nothing. A client
/// that acknowledges what it has displayed behaves the same way.
async fn read_and_ack(
    mut session: Session,
    feed_progress: Arc<AtomicU64>,
    mut rng: SeededRng,
    stop: watch::Receiver<Option<Instant>>,
) -> ReaderOutcome {
    let mut outcome = ReaderOutcome {
        user: session.name.clone(),
        ..ReaderOutcome::default()
    };
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
struct Feeds {
    stop: watch::Sender<bool>,
    users: Vec<String>,
    /// Per user, the last sequence its feed delivered.
    progress: Vec<Arc<AtomicU64>>,
    tasks: Vec<JoinHandle<FeedOutcome>>,
}

impl Feeds {
    /// Waits (bounded) until every feed delivered its user's last stored message, then
    /// stops them. A feed that does not catch up is reported by the feed check.
    async fn finish(self, histories: &BTreeMap<String, History>) -> Vec<FeedOutcome> {
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
struct FeedOutcome {
    user: String,
    /// Every message received, in arrival order, over all streams.
    received: Vec<Message>,
    /// Streams opened (1 + resumptions).
    streams: u64,
    /// Replicas that served a stream (`x-chat-replica`).
    replicas: BTreeSet<String>,
    /// How streams broke, by status code.
    breaks: BTreeMap<String, u64>,
    /// Streams that ended without a status (a server must end them with one).
    clean_ends: u64,
    /// Resume points named by a replica that differ from the client's own.
    resume_mismatches: Vec<String>,
}

/// A live subscription that survives replica failures, like `chat-cli`'s feed: when
/// the stream breaks, subscribe again (the balancer places it on a live replica)
/// after the last sequence received. Everything received is kept raw, so duplicates
/// or reordering by the server would show in the check.
async fn live_feed(
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
fn resume_point(message: &str) -> Option<u64> {
    let rest = &message[message.find("after_sequence=")? + "after_sequence=".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What the store holds for one user at the end.
struct History {
    /// Every message, oldest first (`after_sequence: Some(0)`, page by page).
    messages: Vec<Message>,
    /// The acknowledged sequence number.
    acked: u64,
}

/// Every user's history, through the user's own balancer.
async fn fetch_histories(users: &[User], stats: &Stats) -> BTreeMap<String, History> {
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
async fn every_replica_healthy(
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

// ---- faults -----------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL, then restart on the same port after `down_for`.
    Kill { replica: usize, down_for: Duration },
    /// SIGSTOP, then SIGCONT after `frozen_for`.
    Freeze {
        replica: usize,
        frozen_for: Duration,
    },
    /// SIGSTOP one replica and SIGKILL another; after `down_for`, SIGCONT the first
    /// and restart the second.
    FreezeAndKill {
        frozen: usize,
        killed: usize,
        down_for: Duration,
    },
    /// One step of the rolling restart: SIGTERM (exit 0 expected), restart.
    Terminate { replica: usize },
}

/// A fault and the load before it.
#[derive(Debug, Clone, Copy)]
struct Step {
    pause: Duration,
    fault: Fault,
}

/// The fault plan: kills, freezes and a freeze-plus-kill of random replicas in a
/// random order, then a rolling restart of every replica in a random order. Faults
/// never overlap and every replica is back and serving before the next one, so at
/// least two of the three replicas are healthy at any moment, and one during the
/// double fault.
fn plan_faults(rng: &mut SeededRng) -> Vec<Step> {
    let mut faults: Vec<Fault> = Vec::new();
    for _ in 0..KILLS {
        faults.push(Fault::Kill {
            replica: rng.below(REPLICAS),
            down_for: rng.millis(DOWN_MS),
        });
    }
    for _ in 0..FREEZES {
        faults.push(Fault::Freeze {
            replica: rng.below(REPLICAS),
            frozen_for: rng.millis(FREEZE_MS),
        });
    }
    for _ in 0..DOUBLE_FAULTS {
        let frozen = rng.below(REPLICAS);
        let killed = (frozen + 1 + rng.below(REPLICAS - 1)) % REPLICAS;
        faults.push(Fault::FreezeAndKill {
            frozen,
            killed,
            down_for: rng.millis(FREEZE_MS),
        });
    }
    shuffle(&mut faults, rng);
    let mut order: Vec<usize> = (0..REPLICAS).collect();
    shuffle(&mut order, rng);
    faults.extend(
        order
            .into_iter()
            .map(|replica| Fault::Terminate { replica }),
    );
    faults
        .into_iter()
        .map(|fault| Step {
            pause: rng.millis(PAUSE_MS),
            fault,
        })
        .collect()
}

fn shuffle<T>(items: &mut [T], rng: &mut SeededRng) {
    for i in (1..items.len()).rev() {
        items.swap(i, rng.below(i + 1));
    }
}

/// What was done when, for the report and failure messages.
struct FaultLog {
    started: Instant,
    entries: Mutex<Vec<String>>,
}

impl FaultLog {
    fn new(started: Instant) -> Self {
        Self {
            started,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, what: String) {
        let line = format!("at {:.2?} {what}", self.started.elapsed());
        eprintln!("chaos: {line}");
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }

    fn lines(&self) -> String {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .join("\n  ")
    }
}

/// Runs the plan against the replicas while the load runs.
async fn inject_faults(
    replicas: &mut [Replica],
    plan: &[Step],
    log: &FaultLog,
    store: &Path,
    balancers: &[Balancer],
) {
    for step in plan {
        // Pacing the schedule, not synchronising: the load runs meanwhile.
        tokio::time::sleep(step.pause).await;
        match step.fault {
            Fault::Kill { replica, down_for } => {
                let r = &mut replicas[replica];
                r.kill();
                log.note(format!("kill -9 r{replica}"));
                tokio::time::sleep(down_for).await;
                restart(r, replica, log).await;
            }
            Fault::Freeze {
                replica,
                frozen_for,
            } => {
                let r = &replicas[replica];
                let lock = freeze(r, replica, store).await;
                log.note(format!("SIGSTOP r{replica} for {frozen_for:?}{lock}"));
                tokio::time::sleep(frozen_for).await;
                r.signal(libc::SIGCONT);
                log.note(format!("SIGCONT r{replica}"));
                wait_serving(r, replica, log).await;
            }
            Fault::FreezeAndKill {
                frozen,
                killed,
                down_for,
            } => {
                // The third replica must be usable by every client, not just serving:
                // a balancer keeps a replica it ejected (after a call failed on it)
                // out for the whole ejection time, 1-3s here, even once its probes
                // succeed again, and does not fall back to it when every other
                // endpoint is down. A replica faulted a moment ago may still be
                // ejected, and freezing and killing the other two then would leave a
                // client nothing to call although a replica is healthy.
                let waited = every_replica_healthy(balancers, SERVING_WITHIN)
                    .await
                    .unwrap_or_else(|problem| panic!("before the double fault: {problem}"));
                log.note(format!(
                    "every client sees every replica healthy (after {waited:.2?})"
                ));
                let lock = freeze(&replicas[frozen], frozen, store).await;
                replicas[killed].kill();
                log.note(format!(
                    "SIGSTOP r{frozen}{lock} and kill -9 r{killed} for {down_for:?}: \
                     only the third replica serves"
                ));
                tokio::time::sleep(down_for).await;
                replicas[frozen].signal(libc::SIGCONT);
                log.note(format!("SIGCONT r{frozen}"));
                restart(&mut replicas[killed], killed, log).await;
                wait_serving(&replicas[frozen], frozen, log).await;
            }
            Fault::Terminate { replica } => {
                let r = &mut replicas[replica];
                let asked = Instant::now();
                log.note(format!("SIGTERM r{replica} (rolling restart)"));
                let status = r.terminate(TERMINATE_WITHIN).await;
                assert!(
                    status.success(),
                    "r{replica} exited with {status:?} after SIGTERM; faults:\n  {}",
                    log.lines()
                );
                log.note(format!("r{replica} exited 0 after {:.2?}", asked.elapsed()));
                restart(r, replica, log).await;
            }
        }
    }
}

/// Stops (SIGSTOP) a replica at a moment it does not hold the store's write lock:
/// when caught inside a write transaction it is continued at once and stopped again
/// a moment later. Returns a note for the log.
///
/// Why: a process frozen inside a write transaction keeps the shared store's write
/// lock (SQLite's lock cannot be taken from a live process), so every replica's
/// writes wait until SIGCONT. No replica is then healthy for writes, which breaks
/// the premise of the "no failed call while one replica is healthy" invariant: it
/// is the "all healthy replicas frozen" case, so the schedule must not create it.
/// (It does fail calls: healthy replicas time out per try behind the lock and get
/// tried or ejected, and the balancer, having no untried endpoint left, answers
/// UNAVAILABLE instead of waiting for a slow healthy one.) A stop caught inside a
/// transaction lasts a few milliseconds; an unknown lock state (no `/proc/locks`) is
/// noted in the log.
async fn freeze(replica: &Replica, index: usize, store: &Path) -> String {
    const TRIES: usize = 500;
    for attempt in 1..=TRIES {
        replica.signal(libc::SIGSTOP);
        wait_stopped(replica.pid()).await;
        match holds_write_lock(store, replica.pid()) {
            Some(false) if attempt == 1 => return String::new(),
            Some(false) => {
                return format!(
                    " (stopped {} time(s) inside a write transaction and continued first)",
                    attempt - 1
                );
            }
            None => return " (write lock unknown: /proc/locks unreadable)".to_owned(),
            Some(true) => {
                replica.signal(libc::SIGCONT);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    }
    panic!("r{index} held the store's write lock at each of {TRIES} stops");
}

/// Waits (up to 200ms) until every thread of `pid` is stopped: `kill(SIGSTOP)` returns
/// before the stop takes effect, and the lock check must see the frozen state.
async fn wait_stopped(pid: i32) {
    let deadline = Instant::now() + Duration::from_millis(200);
    while Instant::now() < deadline {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return;
        };
        let all_stopped = tasks.flatten().all(|task| {
            std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                // "tid (comm) STATE ...": the state follows the last ')'.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .is_some_and(|state| state == "T" || state == "t")
            })
        });
        if all_stopped {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Restarts a stopped replica on its port and waits until it serves.
async fn restart(replica: &mut Replica, index: usize, log: &FaultLog) {
    // `restart` blocks until the readiness line (bounded by the harness): keep the
    // runtime's other worker running the load meanwhile.
    tokio::task::block_in_place(|| replica.restart());
    log.note(format!("restarted r{index} (pid {})", replica.pid()));
    wait_serving(replica, index, log).await;
}

async fn wait_serving(replica: &Replica, index: usize, log: &FaultLog) {
    let since = Instant::now();
    // `wait_for_status` is bounded by its own deadline; the timeout also bounds a
    // connection attempt that would hang.
    tokio::time::timeout(
        SERVING_WITHIN + Duration::from_secs(1),
        common::wait_for_status(replica, ServingStatus::Serving, SERVING_WITHIN),
    )
    .await
    .unwrap_or_else(|_| panic!("r{index} did not answer HealthCheck within {SERVING_WITHIN:?}"));
    log.note(format!("r{index} serving after {:.2?}", since.elapsed()));
}

/// The store's database file.
fn store_path(store: &SharedStore) -> PathBuf {
    let uri = store.uri();
    PathBuf::from(uri.strip_prefix("sqlite:").expect("a sqlite: store URI"))
}

/// Whether process `pid` holds SQLite's WAL write lock on the store (Linux:
/// `/proc/locks`; `None` when it cannot be told). SQLite takes it as a POSIX lock on
/// byte 120 of the `-shm` file (`UNIX_SHM_BASE + WAL_WRITE_LOCK`).
fn holds_write_lock(db: &Path, pid: i32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let inode = std::fs::metadata(PathBuf::from(shm))
        .ok()?
        .ino()
        .to_string();
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = pid.to_string();
    Some(locks.lines().any(|line| {
        // "3: POSIX  ADVISORY  WRITE 4242 fd:01:1234567 120 120" (waiters have "->").
        let fields: Vec<&str> = line.split_whitespace().collect();
        !line.contains("->")
            && fields.len() >= 8
            && fields[1] == "POSIX"
            && fields[3] == "WRITE"
            && fields[4] == pid
            && fields[5].rsplit(':').next() == Some(inode.as_str())
            && fields[6] == "120"
    }))
}

// ---- invariants -------------------------------------------------------------------------

/// Invariant 2: no call failed (before any retry by the test). At most one replica
/// is faulted at a time, so a healthy one was always there to take every call.
///
/// The host's load is part of the message: when other processes starve the replicas
/// and the test, probes of healthy replicas time out, a client can see no replica
/// healthy, and the balancer (rightly) fails fast.
/// How the balancer reports a call whose connection broke after the server's answer
/// had begun (response headers received).
const BROKE_MID_ANSWER: &str = "broke during the call";

/// The soak's version of invariant 2. Over thousands of kills, one can land in the
/// microseconds between a replica sending an answer's headers and its end. That call
/// is committed once its headers arrived (gRPC's retry rules: a call whose response
/// began is never retried, since the answer may already have been acted on), so the
/// client sees `UNAVAILABLE` "broke during the call" and retries it itself (the
/// workload's sends are idempotent: the exactly-once checks still hold). Those, and
/// only those, are allowed, at most one per hundred kills; any other failure fails.
fn check_soak_failed_calls(seed: u64, stats: &Stats, faults: &SoakFaults, log: &FaultLog) {
    let failures = stats.failures();
    let tally = stats.tally();
    let kills: u64 = faults.restarts.iter().sum();
    let allowed = (kills / 100).max(1);
    assert!(
        failures == tally.broke_mid_answer && failures <= allowed,
        "[CHAOS_SEED={seed}] {failures} call(s) failed ({} with an answer already begun; \
         at most {allowed} of those allowed for {kills} kills): {:?}\nfirst failures:\n  {}\n\
         faults:\n  {}\nhost: {}",
        tally.broke_mid_answer,
        tally.failed,
        tally.samples.join("\n  "),
        log.lines(),
        host_load()
    );
}

fn check_no_failed_calls(seed: u64, stats: &Stats, log: &FaultLog) {
    let failures = stats.failures();
    let tally = stats.tally();
    assert!(
        failures == 0,
        "[CHAOS_SEED={seed}] {failures} call(s) failed while at least one replica was \
         healthy: {:?}\nfirst failures:\n  {}\nfaults:\n  {}\nhost: {}",
        tally.failed,
        tally.samples.join("\n  "),
        log.lines(),
        host_load()
    );
}

/// The load average and CPU count (Linux), for reports.
fn host_load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("load average {} on {cpus} CPUs", load.join(" "))
}

/// Invariant 1, from the store: every acknowledged send is in its recipient's history
/// exactly once, as acknowledged, in the order it was sent; histories are numbered
/// 1, 2, 3, ... and hold nothing that was not sent.
fn check_delivery(seed: u64, histories: &BTreeMap<String, History>, senders: &[SenderOutcome]) {
    // Every stored message by its text (unique per send).
    let mut stored: HashMap<&str, &Message> = HashMap::new();
    for (user, history) in histories {
        for (i, message) in history.messages.iter().enumerate() {
            assert_eq!(
                message.sequence,
                i as u64 + 1,
                "[CHAOS_SEED={seed}] {user}'s history is not numbered 1, 2, 3, ... \
                 (gap or duplicate at position {i}): {message:?}"
            );
            assert_eq!(
                &message.recipient, user,
                "[CHAOS_SEED={seed}] a message in {user}'s history is for someone else"
            );
            let previous = stored.insert(message.text.as_str(), message);
            assert!(
                previous.is_none(),
                "[CHAOS_SEED={seed}] stored twice (duplicate delivery): {previous:?} and {message:?}"
            );
        }
    }
    for sender in senders {
        assert!(
            sender.wrong_answers.is_empty(),
            "[CHAOS_SEED={seed}] {}: acknowledgements for another message: {:#?}",
            sender.sender,
            sender.wrong_answers
        );
        let mut last_sequence: HashMap<&str, u64> = HashMap::new();
        for acked in &sender.acked {
            let found = stored.remove(acked.text.as_str()).unwrap_or_else(|| {
                panic!(
                    "[CHAOS_SEED={seed}] acknowledged but not delivered to {}: {:?}",
                    acked.recipient, acked.message
                )
            });
            assert_eq!(
                (
                    found.id,
                    found.sequence,
                    found.sender.as_str(),
                    found.recipient.as_str()
                ),
                (
                    acked.message.id,
                    acked.message.sequence,
                    sender.sender.as_str(),
                    acked.recipient.as_str()
                ),
                "[CHAOS_SEED={seed}] stored message differs from its acknowledgement"
            );
            let last = last_sequence.entry(acked.recipient.as_str()).or_default();
            assert!(
                found.sequence > *last,
                "[CHAOS_SEED={seed}] {}'s messages to {} out of order: {:?} after sequence {}",
                sender.sender,
                acked.recipient,
                acked.text,
                last
            );
            *last = found.sequence;
        }
    }
    // What is left was never acknowledged: only sends given up at the very end may be.
    let given_up: BTreeSet<&str> = senders
        .iter()
        .flat_map(|s| s.unacked.iter().map(String::as_str))
        .collect();
    let strays: Vec<&&Message> = stored
        .iter()
        .filter(|(text, _)| !given_up.contains(*text))
        .map(|(_, message)| message)
        .collect();
    assert!(
        strays.is_empty(),
        "[CHAOS_SEED={seed}] stored messages that no client sent: {strays:#?}"
    );
}

/// The readers saw well-formed pages and acknowledgements that never went backwards,
/// and every acknowledgement a reader saw confirmed survived the restarts.
fn check_reads(seed: u64, histories: &BTreeMap<String, History>, readers: &[ReaderOutcome]) {
    for reader in readers {
        assert!(
            reader.anomalies.is_empty(),
            "[CHAOS_SEED={seed}] {}: {:#?}",
            reader.user,
            reader.anomalies
        );
        let stored = histories[&reader.user].acked;
        assert!(
            reader.acked <= stored && stored <= reader.asked,
            "[CHAOS_SEED={seed}] {}: acknowledged up to {} (asked {}), the store says {stored}",
            reader.user,
            reader.acked,
            reader.asked
        );
    }
}

/// Invariant 1, live: each feed delivered exactly the stored history, over all its
/// resumptions: no duplicates, no gaps, strictly increasing sequences.
fn check_live_feeds(seed: u64, histories: &BTreeMap<String, History>, feeds: &[FeedOutcome]) {
    for feed in feeds {
        let sequences: Vec<u64> = feed.received.iter().map(|m| m.sequence).collect();
        if let Some(pair) = sequences.windows(2).find(|w| w[1] <= w[0]) {
            panic!(
                "[CHAOS_SEED={seed}] {}'s feed is not strictly increasing ({} after {}): {sequences:?}",
                feed.user, pair[1], pair[0]
            );
        }
        let history = &histories[&feed.user].messages;
        let got: Vec<(u64, u64, &str)> = feed
            .received
            .iter()
            .map(|m| (m.sequence, m.id, m.text.as_str()))
            .collect();
        let want: Vec<(u64, u64, &str)> = history
            .iter()
            .map(|m| (m.sequence, m.id, m.text.as_str()))
            .collect();
        assert!(
            got == want,
            "[CHAOS_SEED={seed}] {}'s feed ({} messages over {} streams) differs from the \
             stored history ({} messages); missing sequences {:?}",
            feed.user,
            got.len(),
            feed.streams,
            want.len(),
            {
                let received: HashSet<u64> = sequences.iter().copied().collect();
                want.iter()
                    .map(|m| m.0)
                    .filter(|s| !received.contains(s))
                    .collect::<Vec<_>>()
            }
        );
        assert!(
            feed.resume_mismatches.is_empty(),
            "[CHAOS_SEED={seed}] {}: {:#?}",
            feed.user,
            feed.resume_mismatches
        );
        // A replica ends a stream with a status (UNAVAILABLE when shutting down), and
        // the balancer reports a broken connection as UNAVAILABLE: one code to resume on.
        let other_codes: Vec<&String> =
            feed.breaks.keys().filter(|c| *c != "Unavailable").collect();
        assert!(
            feed.clean_ends == 0 && other_codes.is_empty(),
            "[CHAOS_SEED={seed}] {}'s streams ended without UNAVAILABLE: clean ends {}, breaks {:?}",
            feed.user,
            feed.clean_ends,
            feed.breaks
        );
    }
}

// ---- report -----------------------------------------------------------------------------

/// Throughput, failures by code, latencies, streams, balancer views and the faults.
fn report(
    seed: u64,
    times: (Duration, Duration),
    stats: &Stats,
    log: &FaultLog,
    outcomes: (&[SenderOutcome], &[ReaderOutcome], &[FeedOutcome]),
    users: &[User],
) {
    report_load(seed, times, stats, outcomes, users);
    eprintln!("chaos: faults:\n  {}", log.lines());
}

/// Throughput, failures by code, latencies, streams and balancer views.
fn report_load(
    seed: u64,
    (total, load_time): (Duration, Duration),
    stats: &Stats,
    (senders, readers, feeds): (&[SenderOutcome], &[ReaderOutcome], &[FeedOutcome]),
    users: &[User],
) {
    let tally = stats.tally();
    let acked: usize = senders.iter().map(|s| s.acked.len()).sum();
    let calls: u64 = tally.ok.values().sum::<u64>() + tally.failed.values().sum::<u64>();
    let secs = load_time.as_secs_f64();
    eprintln!("chaos: ---- report (CHAOS_SEED={seed}) ----");
    eprintln!(
        "chaos: total {total:.2?}, load under faults {load_time:.2?}, host {}",
        host_load()
    );
    eprintln!(
        "chaos: {acked} sends acknowledged ({:.0}/s), {calls} calls ({:.0}/s)",
        acked as f64 / secs,
        calls as f64 / secs
    );
    eprintln!("chaos: succeeded by RPC {:?}", tally.ok);
    eprintln!("chaos: failed by RPC and code {:?}", tally.failed);
    eprintln!("chaos: slowest call by RPC {:?}", tally.slowest);
    for reader in readers {
        eprintln!(
            "chaos: {} fetched {} times, acknowledged up to {}",
            reader.user, reader.fetches, reader.acked
        );
    }
    for feed in feeds {
        eprintln!(
            "chaos: {} feed: {} messages over {} streams on {} replica processes, breaks {:?}",
            feed.user,
            feed.received.len(),
            feed.streams,
            feed.replicas.len(),
            feed.breaks
        );
    }
    for user in users {
        let endpoints: Vec<String> = user
            .lb
            .snapshot()
            .iter()
            .map(|e| {
                format!(
                    "{} {} calls {} errors {} ejections {}",
                    e.address, e.state, e.calls, e.errors, e.ejections
                )
            })
            .collect();
        eprintln!("chaos: {}'s balancer: {}", user.name, endpoints.join("; "));
    }
}

// ---- soak -------------------------------------------------------------------------------

/// The soak's time under faults when `SOAK_SECONDS` is not set: 30 minutes.
const SOAK_DEFAULT_SECONDS: u64 = 1_800;
/// Load before the first sample: every balancer connected, the store's pages cached.
const SOAK_WARM_UP: Duration = Duration::from_secs(2);
/// The replica that is never killed or terminated (only frozen): one process for the
/// whole soak, whose memory and descriptors are bounded.
const LONG_LIVED: usize = 0;
/// How much the long-lived replica's resident memory (VmRSS) may grow between the
/// start and the end of the load, in KiB.
///
/// Measured here (debug build, loaded 2-core host): +1.2 MiB over 60 s, +1.9 MiB over
/// 5 minutes (62.8 -> 64.7 MiB; 89k calls, 25 freezes of r0), nearly all of it in
/// the first 30 s, then about 0.1 MiB a minute: some 5 MiB in 30 minutes. What may
/// legitimately grow is bounded by the replica's configuration: SQLite's page cache
/// (2 MiB per pooled connection, at most 4), the mapped WAL index, the HTTP/2
/// buffers of its client connections and the allocator's arenas. (The password-
/// hashing threads' 19 MiB buffers are allocated at the first hashes, during sign-up,
/// before the start sample: the load logs no one in.) 32 MiB leaves that room
/// several times over, and
/// a leak of ~200 bytes per call served (r0 serves a third or more of some 500k
/// calls in 30 minutes), or of anything per connection or per freeze, exceeds it.
const RSS_GROWTH_BOUND_KIB: u64 = 32 * 1024;
/// How many more open descriptors the long-lived replica may have at the end than
/// at the start. Measured: 26 at the start, at every round and at the end of a
/// 5-minute run (stdio, the listener, the runtime's, the store's files, the clients'
/// connections). Both
/// samples are taken under load, so the end may legitimately hold a few more: pooled
/// store connections opened on demand (up to 3 more, with their files), a balancer's
/// new connection while the one it gave up after a freeze is not yet closed (up to
/// 5). A leak of one descriptor per freeze (some 150 of r0 in 30 minutes) or per
/// connection exceeds 32.
const FD_GROWTH_BOUND: usize = 32;

/// `SOAK_SECONDS` (a positive number of seconds), or 30 minutes.
fn soak_seconds() -> Duration {
    let seconds = match std::env::var("SOAK_SECONDS") {
        Ok(text) => text
            .trim()
            .parse()
            .ok()
            .filter(|s| *s > 0)
            .unwrap_or_else(|| panic!("SOAK_SECONDS must be a positive integer, got {text:?}")),
        Err(_) => SOAK_DEFAULT_SECONDS,
    };
    Duration::from_secs(seconds)
}

/// The whole soak, whatever happens: the load, plus the chaos test's budget for what
/// does not grow with it (start, the last fault running past the end, stopping,
/// recovery, catching up), plus a tenth of the load for fetching and checking the
/// histories, which grow with it (about 200 acknowledged sends per second).
fn soak_budget(load_for: Duration) -> Duration {
    SOAK_WARM_UP + load_for + load_for / 10 + TEST_BUDGET
}

/// One round of soak faults: the chaos plan's faults drawn the same way, except that
/// the long-lived replica is only ever frozen (alone or in the freeze-plus-kill):
/// kills and the rolling restart take the other replicas. The safety rules are the
/// chaos plan's: `inject_faults` runs one fault at a time, each replica serves again
/// before the next, the double fault leaves the third replica serving, and `freeze`
/// never stops a replica holding the store's write lock.
fn plan_soak_round(rng: &mut SeededRng) -> Vec<Step> {
    let killable: Vec<usize> = (0..REPLICAS).filter(|r| *r != LONG_LIVED).collect();
    let mut faults: Vec<Fault> = Vec::new();
    for _ in 0..KILLS {
        faults.push(Fault::Kill {
            replica: killable[rng.below(killable.len())],
            down_for: rng.millis(DOWN_MS),
        });
    }
    for _ in 0..FREEZES {
        faults.push(Fault::Freeze {
            replica: rng.below(REPLICAS),
            frozen_for: rng.millis(FREEZE_MS),
        });
    }
    for _ in 0..DOUBLE_FAULTS {
        let killed = killable[rng.below(killable.len())];
        let frozen = (killed + 1 + rng.below(REPLICAS - 1)) % REPLICAS;
        faults.push(Fault::FreezeAndKill {
            frozen,
            killed,
            down_for: rng.millis(FREEZE_MS),
        });
    }
    shuffle(&mut faults, rng);
    let mut order = killable;
    shuffle(&mut order, rng);
    faults.extend(
        order
            .into_iter()
            .map(|replica| Fault::Terminate { replica }),
    );
    faults
        .into_iter()
        .map(|fault| Step {
            pause: rng.millis(PAUSE_MS),
            fault,
        })
        .collect()
}

/// What the soak's fault rounds did.
#[derive(Debug, Default)]
struct SoakFaults {
    /// Rounds started (the last one is cut short when the time is up).
    rounds: u64,
    faults: u64,
    /// Per replica: kills and SIGTERMs, each followed by a restart (a new process).
    restarts: [u64; REPLICAS],
    /// Per replica: SIGSTOPs, alone or in the freeze-plus-kill.
    freezes: [u64; REPLICAS],
}

impl SoakFaults {
    fn count(&mut self, fault: Fault) {
        self.faults += 1;
        match fault {
            Fault::Kill { replica, .. } | Fault::Terminate { replica } => {
                self.restarts[replica] += 1;
            }
            Fault::Freeze { replica, .. } => self.freezes[replica] += 1,
            Fault::FreezeAndKill { frozen, killed, .. } => {
                self.freezes[frozen] += 1;
                self.restarts[killed] += 1;
            }
        }
    }
}

/// Runs soak rounds (`plan_soak_round`, from `rng`) while the load runs, until
/// `until`: no fault starts after it. Prints a progress line at each round.
async fn inject_soak_faults(
    replicas: &mut [Replica],
    rng: &mut SeededRng,
    until: Instant,
    (log, store, balancers, stats): (&FaultLog, &Path, &[Balancer], &Stats),
) -> SoakFaults {
    let started = Instant::now();
    let mut done = SoakFaults::default();
    'rounds: loop {
        let round = plan_soak_round(rng);
        done.rounds += 1;
        report_soak_progress(&done, started, until, stats, &replicas[LONG_LIVED]);
        for step in &round {
            if Instant::now() + step.pause >= until {
                break 'rounds;
            }
            inject_faults(replicas, std::slice::from_ref(step), log, store, balancers).await;
            done.count(step.fault);
        }
    }
    done
}

/// One line per round: how far, how it goes, and the long-lived replica's resources.
fn report_soak_progress(
    done: &SoakFaults,
    started: Instant,
    until: Instant,
    stats: &Stats,
    long_lived: &Replica,
) {
    let (acked, failed) = {
        let tally = stats.tally();
        let acked = tally.ok.get(&Rpc::SendMessage).copied().unwrap_or(0);
        (acked, tally.failed.values().sum::<u64>())
    };
    let sample = ProcessSample::of(long_lived.pid());
    eprintln!(
        "soak: round {} at {}s ({}s left): {} faults, {acked} sends acknowledged, \
         {failed} calls failed; r{LONG_LIVED} RSS {}, {} fds",
        done.rounds,
        started.elapsed().as_secs(),
        until.saturating_duration_since(Instant::now()).as_secs(),
        done.faults,
        mib(sample.rss_kib),
        sample.fds
    );
}

/// One process's resident memory and open file descriptors (Linux `/proc`).
#[derive(Debug, Clone, Copy)]
struct ProcessSample {
    pid: i32,
    /// `VmRSS` of `/proc/PID/status`.
    rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    fds: usize,
}

impl ProcessSample {
    fn of(pid: i32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|error| panic!("/proc/{pid}/status: {error}"));
        let rss_kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().strip_suffix("kB"))
            .and_then(|kib| kib.trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap_or_else(|error| panic!("/proc/{pid}/fd: {error}"))
            .count();
        Self { pid, rss_kib, fds }
    }
}

/// Every replica's sample (by index) and the test process's own.
struct Resources {
    replicas: Vec<ProcessSample>,
    test: ProcessSample,
}

impl Resources {
    fn sample(replicas: &[Replica]) -> Self {
        Self {
            replicas: replicas
                .iter()
                .map(|r| ProcessSample::of(r.pid()))
                .collect(),
            test: ProcessSample::of(std::process::id() as i32),
        }
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The soak's headline numbers, counted rather than asserted one by one (the full
/// checks, run after the report, say exactly what is wrong).
struct DeliveryCounts {
    /// Sends the clients saw acknowledged.
    acked: usize,
    /// Acknowledged sends that are not in the store.
    lost: usize,
    /// Messages stored more than once (same text: one per send, retries included).
    stored_duplicates: usize,
    /// Messages a live feed delivered more than once (same sequence).
    feed_duplicates: usize,
}

impl DeliveryCounts {
    fn count(
        histories: &BTreeMap<String, History>,
        senders: &[SenderOutcome],
        feeds: &[FeedOutcome],
    ) -> Self {
        let mut stored: HashMap<&str, usize> = HashMap::new();
        for message in histories.values().flat_map(|h| &h.messages) {
            *stored.entry(message.text.as_str()).or_default() += 1;
        }
        let acked = senders.iter().flat_map(|s| &s.acked);
        Self {
            acked: acked.clone().count(),
            lost: acked
                .filter(|a| !stored.contains_key(a.text.as_str()))
                .count(),
            stored_duplicates: stored.values().map(|n| n - 1).sum(),
            feed_duplicates: feeds
                .iter()
                .map(|feed| {
                    let distinct: HashSet<u64> = feed.received.iter().map(|m| m.sequence).collect();
                    feed.received.len() - distinct.len()
                })
                .sum(),
        }
    }
}

/// The soak's report: deliveries, calls, faults, and every replica's memory and
/// descriptors at the start and the end of the load.
fn report_soak(
    seed: u64,
    load_time: Duration,
    stats: &Stats,
    faults: &SoakFaults,
    delivery: &DeliveryCounts,
    (start, end): (&Resources, &Resources),
) {
    let secs = load_time.as_secs_f64();
    let calls: u64 = {
        let tally = stats.tally();
        tally.ok.values().sum::<u64>() + tally.failed.values().sum::<u64>()
    };
    eprintln!("soak: ---- soak report (CHAOS_SEED={seed}) ----");
    eprintln!(
        "soak: {load_time:.0?} of load under faults: {} faults in {} rounds, host {}",
        faults.faults,
        faults.rounds,
        host_load()
    );
    eprintln!(
        "soak: acknowledged sends {} ({:.0}/s); lost {}; duplicates {} stored, {} in live feeds",
        delivery.acked,
        delivery.acked as f64 / secs,
        delivery.lost,
        delivery.stored_duplicates,
        delivery.feed_duplicates
    );
    let tally = stats.tally();
    eprintln!(
        "soak: calls {calls} ({:.0}/s), failed {} ({} broke after the answer began): {:?}",
        calls as f64 / secs,
        tally.failed.values().sum::<u64>(),
        tally.broke_mid_answer,
        tally.failed
    );
    drop(tally);
    for (i, (before, after)) in start.replicas.iter().zip(&end.replicas).enumerate() {
        let process = if i == LONG_LIVED {
            format!("pid {} (never killed)", before.pid)
        } else {
            format!(
                "pid {} -> {} (restarted {} times)",
                before.pid, after.pid, faults.restarts[i]
            )
        };
        eprintln!(
            "soak: r{i} {process}, frozen {} times: RSS {} -> {} ({:+.1} MiB), fds {} -> {} ({:+})",
            faults.freezes[i],
            mib(before.rss_kib),
            mib(after.rss_kib),
            (after.rss_kib as f64 - before.rss_kib as f64) / 1024.0,
            before.fds,
            after.fds,
            after.fds as i64 - before.fds as i64
        );
    }
    eprintln!(
        "soak: bounds for r{LONG_LIVED}: RSS growth <= {}, fds growth <= {FD_GROWTH_BOUND}",
        mib(RSS_GROWTH_BOUND_KIB)
    );
    // With the histories fetched: about the test's peak (see `soak_budget`).
    let now = ProcessSample::of(std::process::id() as i32);
    eprintln!(
        "soak: test process: RSS {} -> {} (with the final histories {}), fds {} -> {}",
        mib(start.test.rss_kib),
        mib(end.test.rss_kib),
        mib(now.rss_kib),
        start.test.fds,
        end.test.fds
    );
}

/// Nothing acknowledged was lost, nothing was stored or delivered twice.
fn check_soak_delivery(seed: u64, delivery: &DeliveryCounts) {
    assert!(
        delivery.lost == 0 && delivery.stored_duplicates == 0 && delivery.feed_duplicates == 0,
        "[CHAOS_SEED={seed}] {} acknowledged sends lost, {} stored twice, {} delivered twice \
         by a live feed",
        delivery.lost,
        delivery.stored_duplicates,
        delivery.feed_duplicates
    );
}

/// The long-lived replica is the process it was at the start, and grew within the
/// bounds (see [`RSS_GROWTH_BOUND_KIB`], [`FD_GROWTH_BOUND`]).
fn check_long_lived_replica(seed: u64, start: &Resources, end: &Resources) {
    let (before, after) = (start.replicas[LONG_LIVED], end.replicas[LONG_LIVED]);
    assert_eq!(
        before.pid, after.pid,
        "[CHAOS_SEED={seed}] r{LONG_LIVED} is not the process it was at the start"
    );
    assert!(
        after.rss_kib <= before.rss_kib + RSS_GROWTH_BOUND_KIB,
        "[CHAOS_SEED={seed}] r{LONG_LIVED}'s RSS grew from {} to {}, more than {}",
        mib(before.rss_kib),
        mib(after.rss_kib),
        mib(RSS_GROWTH_BOUND_KIB)
    );
    assert!(
        after.fds <= before.fds + FD_GROWTH_BOUND,
        "[CHAOS_SEED={seed}] r{LONG_LIVED}'s open descriptors grew from {} to {}, more than \
         {FD_GROWTH_BOUND}",
        before.fds,
        after.fds
    );
}
