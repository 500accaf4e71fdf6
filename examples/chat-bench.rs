//! `chat-bench`: the chat-lb-client balancer against a plain tonic `Channel` and
//! tonic's own `Channel::balance_list`, on real replicas, healthy and failing.
//!
//! ```sh
//! cargo run --release --example chat-bench -- [--json FILE] [--seed N] [--duration 3s]
//!     [--rounds 6] [--concurrency 1,8,32] [--send-percent 20] [--placement split]
//!     [--quick] [--markdown] [--tls]
//! ```
//!
//! A default run takes about three minutes, `--quick` (1s per measurement, concurrency
//! 1 and 32) about 45s. `--help` lists the flags for experiments: `--scenarios`,
//! `--contenders`, `--lb-set KEY=VALUE` (any `chat_lb_client::Builder::set` key, e.g.
//! `policy=round_robin`).
//!
//! # What runs
//!
//! The example starts its own replicas: it re-executes itself with `--replica`, which
//! runs `chat_server::run` (see `support/replica.rs`), so nothing but `cargo run` is
//! needed. Every replica listens on a free port of 127.0.0.1 and they share one
//! temporary SQLite store (in `/dev/shm` when it exists, so that fsync costs do not
//! drown the balancers' differences; `--store-dir` to change). Four replica processes:
//! `A`, `B` and `C` are healthy; `S` runs with `--inject-delay 20ms`; and, for
//! `steady-one-process`, a fifth process serving three healthy servers `P1`, `P2`, `P3`
//! (each on its own port). One sender account logs in once per caller slot (one
//! session per concurrent caller) before anything is measured.
//!
//! `--placement split` pins the benchmark (the client) to the first CPU it may use and
//! the replicas to the others — a client host and a server host, as far as one machine
//! allows; the default, `shared`, lets the OS put every process on every CPU.
//!
//! The **contenders** carry the same calls:
//! - `direct`: one tonic `Channel` to replica `A` (`P1` in `steady-one-process`), which
//!   is never dead, slowed or killed — the reference;
//! - `tonic-balance`: `Channel::balance_list` over the scenario's address list;
//! - `chat-lb`: `chat_lb_client::Balancer` over the same list, with its defaults plus
//!   retry-safety for `/chat.v1.ChatService/` (every chat RPC is safe to retry);
//! - `chat-lb-single` (steady scenarios only): the same balancer given `direct`'s one
//!   replica. Same replica, same single connection as `direct`: the difference between
//!   the two is the balancer's own cost per call, apart from the cost of spreading
//!   calls over several connections and processes.
//!
//! The tonic endpoints get the balancer's connection settings (1s connect timeout,
//! `TCP_NODELAY`, HTTP/2 keepalive 10s/5s), and every call carries a 5s deadline.
//!
//! Each **caller** is a task in a closed loop: one call, then the next. A call is a
//! `SendMessage` (to one recipient account, with a unique idempotency key) with
//! probability `--send-percent`, else a `HealthCheck`.
//!
//! **Scenarios** (the address list the balancers get):
//! - `steady`: `A, B, C`, all healthy, three processes;
//! - `steady-one-process`: `P1, P2, P3`, all healthy, in one process: spreading calls
//!   costs the server side no extra processes (only extra connections), so the
//!   comparison with `direct` holds the replicas' CPU equal;
//! - `dead-address`: `A, B, C` and an address where nothing listens;
//! - `slow-replica`: `A, B, S` — `S` delays every RPC by 20ms;
//! - `killed-replica`: `A, B, C`; `C` is SIGKILLed a third of the way into every
//!   round (whichever contender runs it) and restarted on the same port after it.
//!
//! # Method
//!
//! For each scenario and concurrency level, each contender first runs an unmeasured
//! warm-up, then `--rounds` rounds of `--duration / --rounds` each. Contenders
//! **alternate round by round** (a seeded shuffle of them per round), so load
//! from other processes on the machine falls on all of them alike. Within a round
//! every contender's callers draw the same seeded sequence of calls. A contender's
//! rounds are then pooled: **calls/s** is its successful calls divided by the wall
//! time of its rounds (from the start of the round until its last call returned);
//! the latency percentiles (nearest rank over every successful call, in µs) come
//! from all its rounds; **failed** counts calls that ended in an error, by gRPC code.
//! **ratio_to_direct** is a contender's calls/s divided by `direct`'s in the same
//! scenario and concurrency level. **client CPU µs/call** is the CPU time (user +
//! system, `getrusage`) the benchmark process used during a contender's rounds divided
//! by its successful calls: what the transport costs the calling machine, however
//! busy the replicas are.
//!
//! The output also gives, from the balancer's own counters, the share of chat-lb's
//! attempts each replica got, and the machine's load average before and after.
//! At the end, the targets of the balancer (issue 6) are checked against the numbers
//! and reported as met or not met. `--json FILE` writes one JSON object per line for
//! each contender, scenario and concurrency level, with the per-RPC figures, the seed
//! and the settings.
//!
//! Everything runs on one machine: the replicas share its CPUs (with the client, unless
//! `--placement split`), so a balancer that spreads calls over three processes pays
//! for it in CPU and wake-ups that replicas on separate hosts would not cost, and even
//! over three connections to one process the server reads and writes fewer calls per
//! system call; `direct` pays neither. `steady-one-process` removes the first cost,
//! `chat-lb-single` both.

mod support;

use std::{
    fmt::Write as _,
    io::{IsTerminal, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use chat_lb_client::{Balancer, RetrySafe};
use chat_proto::v1::{
    CreateAccountRequest, HealthCheckRequest, LoginRequest, SendMessageRequest,
    chat_service_client::ChatServiceClient,
};
use clap::{Parser, ValueEnum};
use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value, json};
use support::replica::{Placement, Replica};
use tokio::time::Instant;
use tonic::{
    Code, Request,
    metadata::{Ascii, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

// ---- settings ---------------------------------------------------------------------

/// The benchmark's flags.
#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    about = "Benchmark chat-lb-client against a direct tonic Channel and Channel::balance_list"
)]
struct Options {
    /// Also write the results to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Seed of every random choice (round order, call mix) [default: from the clock].
    #[arg(long)]
    seed: Option<u64>,
    /// Measured time per contender, scenario and concurrency level [default: 3s; --quick: 1s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Rounds that time is split into [default: 6; --quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    rounds: Option<u32>,
    /// Concurrent callers, comma-separated levels [default: 1,8,32; --quick: 1,32].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<Vec<u32>>,
    /// A short run (under ~40s): the defaults above marked --quick.
    #[arg(long)]
    quick: bool,
    /// Percentage of calls that are SendMessage; the others are HealthCheck.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    send_percent: u8,
    /// Scenarios to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    scenarios: Option<Vec<Scenario>>,
    /// Contenders to run, comma-separated [default: all; ratios need direct].
    #[arg(long, value_delimiter = ',', value_enum)]
    contenders: Option<Vec<Contender>>,
    /// The delay injected into the slow replica.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    slow_delay: Duration,
    /// Directory for the temporary store [default: /dev/shm if present, else the temp dir].
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// Also print the results as a Markdown table.
    #[arg(long)]
    markdown: bool,
    /// Where the processes run: `shared` (wherever the OS puts them) or `split` (this
    /// client pinned to one CPU, the replicas to the others, like a client host and a
    /// server host; Linux, 2+ CPUs).
    #[arg(long, value_enum, default_value_t = CpuPlacement::Shared)]
    placement: CpuPlacement,
    /// Overrides a chat-lb setting, as `chat_lb_client::Builder::set` takes it (for
    /// experiments, e.g. `--lb-set policy=pick_first`, `--lb-set ewma_decay=1s`);
    /// repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_setting)]
    lb_set: Vec<(String, String)>,
    /// Run every contender over TLS: the replicas serve certificates made at start
    /// (as `chat-server gen-certs` makes them) and every client trusts their CA.
    #[arg(long)]
    tls: bool,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    // Checked now, so that a typo fails before any replica starts.
    let _checked = Balancer::builder()
        .set(key, value)
        .map_err(|e| e.to_string())?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    chat_lb_client::parse_duration(text).map_err(|e| e.to_string())
}

/// The settings of one run, after defaults.
#[derive(Debug, Clone)]
struct Plan {
    seed: u64,
    duration: Duration,
    rounds: u32,
    concurrency: Vec<u32>,
    scenarios: Vec<Scenario>,
    contenders: Vec<Contender>,
    send_percent: u8,
    slow_delay: Duration,
    warmup: Duration,
    /// `Builder::set` overrides of the balancer's settings.
    lb_settings: Vec<(String, String)>,
    /// Where the processes run, for the output.
    placement: String,
    /// The certificates, when every contender runs over TLS.
    tls: Option<BenchTls>,
}

/// Certificates of a `--tls` run: made at start in a temporary folder.
#[derive(Debug, Clone)]
struct BenchTls {
    /// The CA every client trusts, as PEM.
    ca_pem: Vec<u8>,
    /// `--tls-cert FILE --tls-key FILE` for the replicas.
    server_args: Vec<String>,
    /// Kept for its `Drop` (removes the files).
    _dir: Arc<tempfile::TempDir>,
}

impl BenchTls {
    fn make() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("chat-bench-certs-")
            .tempdir()?;
        let made = chat_server::certs::generate(&chat_server::certs::CertRequest {
            out: dir.path().to_owned(),
            hosts: vec!["127.0.0.1".into(), "localhost".into()],
            days: 1,
            client_name: "chat-bench".into(),
        })?;
        let path = |p: &Path| p.display().to_string();
        Ok(Self {
            ca_pem: std::fs::read(&made.ca_cert)?,
            server_args: vec![
                "--tls-cert".into(),
                path(&made.server_cert),
                "--tls-key".into(),
                path(&made.server_key),
            ],
            _dir: Arc::new(dir),
        })
    }
}

impl Plan {
    fn from_options(options: &Options) -> Self {
        let (duration, rounds, concurrency) = if options.quick {
            (Duration::from_secs(1), 2, vec![1, 32])
        } else {
            (Duration::from_secs(3), 6, vec![1, 8, 32])
        };
        let mut scenarios = options.scenarios.clone().unwrap_or(Scenario::ALL.to_vec());
        scenarios.sort();
        scenarios.dedup();
        let mut contenders = options
            .contenders
            .clone()
            .unwrap_or(Contender::ALL.to_vec());
        contenders.sort();
        contenders.dedup();
        Self {
            seed: options.seed.unwrap_or_else(clock_seed),
            duration: options.duration.unwrap_or(duration),
            rounds: options.rounds.unwrap_or(rounds),
            concurrency: options.concurrency.clone().unwrap_or(concurrency),
            scenarios,
            contenders,
            send_percent: options.send_percent,
            slow_delay: options.slow_delay,
            warmup: if options.quick {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(200)
            },
            lb_settings: options.lb_set.clone(),
            placement: String::new(),
            tls: None,
        }
    }

    fn round(&self) -> Duration {
        self.duration / self.rounds
    }

    /// A rough total, for the progress display.
    fn estimate(&self) -> Duration {
        let contenders_in = |scenario: Scenario| {
            let n = self
                .contenders
                .iter()
                .filter(|c| c.runs_in(scenario))
                .count();
            (n * self.concurrency.len()) as u32
        };
        let cells: u32 = self.scenarios.iter().map(|&s| contenders_in(s)).sum();
        let restarts = if self.scenarios.contains(&Scenario::KilledReplica) {
            Duration::from_millis(100) * self.rounds * contenders_in(Scenario::KilledReplica)
        } else {
            Duration::ZERO
        };
        (self.duration + self.warmup) * cells + restarts
    }

    /// How chat-lb is configured, for the output.
    fn chat_lb(&self) -> String {
        let mut text = CHAT_LB_SETTINGS.to_owned();
        for (key, value) in &self.lb_settings {
            let _ = write!(text, " + {key}={value}");
        }
        text
    }

    fn workload(&self) -> String {
        format!(
            "{}% HealthCheck, {}% SendMessage",
            100 - self.send_percent,
            self.send_percent
        )
    }
}

fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        % 1_000_000
}

/// The deadline of every benchmark call.
const CALL_DEADLINE: Duration = Duration::from_secs(5);
/// When the victim of `killed-replica` dies, as a fraction of each round.
const KILL_AT: f64 = 1.0 / 3.0;
/// How the balancer is configured (before `--lb-set`), for the output.
const CHAT_LB_SETTINGS: &str = "defaults (p2c on peak EWMA, ChatHealthProbe every 500ms, \
     eject 1s on a failed call, max 3 attempts, per-try timeout 2s, retry budget 20%+10/s) \
     + retry_safe(prefix \"/chat.v1.ChatService/\")";

// ---- scenarios and contenders ---------------------------------------------------------

/// Where the client and the replicas run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CpuPlacement {
    /// Anywhere: the OS schedules every process on every CPU.
    Shared,
    /// The client on the first CPU it may use, the replicas on the others.
    Split,
}

/// What the replicas behind the address list do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Scenario {
    Steady,
    SteadyOneProcess,
    DeadAddress,
    SlowReplica,
    KilledReplica,
}

impl Scenario {
    fn is_steady(self) -> bool {
        matches!(self, Scenario::Steady | Scenario::SteadyOneProcess)
    }

    const ALL: [Scenario; 5] = [
        Scenario::Steady,
        Scenario::SteadyOneProcess,
        Scenario::DeadAddress,
        Scenario::SlowReplica,
        Scenario::KilledReplica,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::SteadyOneProcess => "steady-one-process",
            Scenario::DeadAddress => "dead-address",
            Scenario::SlowReplica => "slow-replica",
            Scenario::KilledReplica => "killed-replica",
        }
    }
}

/// Who carries the calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Contender {
    Direct,
    TonicBalance,
    ChatLb,
    ChatLbSingle,
}

impl Contender {
    const ALL: [Contender; 4] = [
        Contender::Direct,
        Contender::TonicBalance,
        Contender::ChatLb,
        Contender::ChatLbSingle,
    ];

    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::TonicBalance => "tonic-balance",
            Contender::ChatLb => "chat-lb",
            Contender::ChatLbSingle => "chat-lb-single",
        }
    }

    /// Whether it runs in `scenario`: `chat-lb-single` only in the steady ones,
    /// where it measures the balancer's own cost.
    fn runs_in(self, scenario: Scenario) -> bool {
        self != Contender::ChatLbSingle || scenario.is_steady()
    }
}

/// A contender's transport, ready for calls.
#[derive(Clone)]
enum Transport {
    Channel(Channel),
    Balancer(Balancer),
}

/// The replicas of a run, on one temporary store.
struct Cluster {
    /// `A`, `B`, `C`: healthy (`C` is the victim of `killed-replica`).
    healthy: [Replica; 3],
    /// `S`: every RPC delayed.
    slow: Replica,
    /// `P1`, `P2`, `P3`: three servers in one process (only when
    /// `steady-one-process` is planned).
    one_process: Option<Replica>,
    /// An address where nothing listens.
    dead: SocketAddr,
    /// Kept for its `Drop` (removes the store).
    _store_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the replicas one after the other (the first creates the schema), on
    /// `cpus` (empty: anywhere).
    async fn start(plan: &Plan, store_dir: Option<&Path>, cpus: &[usize]) -> anyhow::Result<Self> {
        let dir = temp_store_dir(store_dir)?;
        let store = format!("sqlite:{}", dir.path().join("chat.db").display());
        let one = Placement {
            servers: 1,
            cpus: cpus.to_vec(),
        };
        let tls_args: Vec<&str> = plan
            .tls
            .iter()
            .flat_map(|tls| tls.server_args.iter().map(String::as_str))
            .collect();
        let a = Replica::start_placed(&store, &tls_args, &one).await?;
        let b = Replica::start_placed(&store, &tls_args, &one).await?;
        let c = Replica::start_placed(&store, &tls_args, &one).await?;
        let delay = format!("{}us", plan.slow_delay.as_micros());
        let slow_args: Vec<&str> = ["--inject-delay", delay.as_str()]
            .into_iter()
            .chain(tls_args.iter().copied())
            .collect();
        let slow = Replica::start_placed(&store, &slow_args, &one).await?;
        let one_process = if plan.scenarios.contains(&Scenario::SteadyOneProcess) {
            let three = Placement { servers: 3, ..one };
            Some(Replica::start_placed(&store, &tls_args, &three).await?)
        } else {
            None
        };
        Ok(Self {
            healthy: [a, b, c],
            slow,
            one_process,
            dead: dead_address()?,
            _store_dir: dir,
        })
    }

    /// The replica `direct` calls in `scenario`: `A`, or `P1` in `steady-one-process`.
    fn reference(&self, scenario: Scenario) -> SocketAddr {
        match (&self.one_process, scenario) {
            (Some(p), Scenario::SteadyOneProcess) => p.address(),
            _ => self.healthy[0].address(),
        }
    }

    /// The balancers' address list in `scenario`.
    fn addresses(&self, scenario: Scenario) -> Vec<SocketAddr> {
        let [a, b, c] = &self.healthy;
        let mut list = vec![a.address(), b.address()];
        match scenario {
            Scenario::SteadyOneProcess => {
                if let Some(p) = &self.one_process {
                    return p.addresses().to_vec();
                }
                list.push(c.address());
            }
            Scenario::Steady | Scenario::KilledReplica => list.push(c.address()),
            Scenario::DeadAddress => list.extend([c.address(), self.dead]),
            Scenario::SlowReplica => list.push(self.slow.address()),
        }
        list
    }

    /// The name of an address in the output (`A`, `B`, `C`, `S`, `P1`.., `dead`).
    fn name(&self, address: SocketAddr) -> String {
        let mut in_one_process = self.one_process.iter().flat_map(|p| p.addresses());
        if let Some(i) = in_one_process.position(|a| *a == address) {
            return format!("P{}", i + 1);
        }
        let named = ["A", "B", "C"]
            .into_iter()
            .zip(&self.healthy)
            .chain([("S", &self.slow)])
            .find(|(_, replica)| replica.address() == address);
        match named {
            Some((name, _)) => name.to_owned(),
            None if address == self.dead => "dead".to_owned(),
            None => address.to_string(),
        }
    }

    fn victim(&mut self) -> &mut Replica {
        &mut self.healthy[2]
    }

    async fn stop(self) {
        let [a, b, c] = self.healthy;
        for replica in [a, b, c, self.slow].into_iter().chain(self.one_process) {
            replica.stop(Duration::from_secs(2)).await;
        }
    }
}

fn temp_store_dir(store_dir: Option<&Path>) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let parent = match store_dir {
        Some(dir) => dir.to_path_buf(),
        None if shm.is_dir() => shm.to_path_buf(),
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("chat-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a store directory in {}", parent.display()))
}

/// A loopback address on which nothing listens: a port bound, then released.
fn dead_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a port")?;
    Ok(listener.local_addr()?)
}

/// A tonic endpoint with the balancer's default connection settings, over TLS when
/// the run has certificates.
fn endpoint(address: SocketAddr, tls: Option<&BenchTls>) -> anyhow::Result<Endpoint> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(match tls {
        Some(tls) => endpoint.tls_config(
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem)),
        )?,
        None => endpoint,
    })
}

/// Call attempts per endpoint so far (chat-lb only; empty for tonic channels).
fn attempts(transport: &Transport) -> Vec<(SocketAddr, u64)> {
    match transport {
        Transport::Channel(_) => Vec::new(),
        Transport::Balancer(balancer) => balancer
            .snapshot()
            .iter()
            .map(|endpoint| (endpoint.address, endpoint.calls))
            .collect(),
    }
}

/// Builds a contender's transport for `scenario` and waits until it can call.
async fn connect(
    contender: Contender,
    cluster: &Cluster,
    scenario: Scenario,
    plan: &Plan,
) -> anyhow::Result<Transport> {
    let addresses = cluster.addresses(scenario);
    Ok(match contender {
        Contender::Direct => Transport::Channel(
            endpoint(cluster.reference(scenario), plan.tls.as_ref())?
                .connect()
                .await
                .context("cannot connect to the reference replica")?,
        ),
        Contender::TonicBalance => {
            let endpoints = addresses
                .iter()
                .map(|&a| endpoint(a, plan.tls.as_ref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Transport::Channel(Channel::balance_list(endpoints.into_iter()))
        }
        Contender::ChatLb | Contender::ChatLbSingle => {
            let addresses = if contender == Contender::ChatLbSingle {
                vec![cluster.reference(scenario)]
            } else {
                addresses
            };
            let mut builder =
                Balancer::builder().retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"));
            for address in addresses {
                builder = builder.address(address);
            }
            for (key, value) in &plan.lb_settings {
                builder = builder.set(key, value)?;
            }
            if let Some(tls) = &plan.tls {
                builder = builder.tls_ca_pem(tls.ca_pem.clone());
            }
            let balancer = builder.build()?;
            // Start from probed endpoints, as a long-running client would.
            balancer.wait_for_probe_round().await;
            Transport::Balancer(balancer)
        }
    })
}

// ---- the calls ----------------------------------------------------------------------

/// What the callers send.
struct Workload {
    send_percent: u8,
    /// One `authorization` value per caller slot.
    sessions: Vec<MetadataValue<Ascii>>,
    recipient: String,
}

const SENDER: &str = "bench-sender";
const RECIPIENT: &str = "bench-recipient";
const PASSWORD: &str = "bench-password";

impl Workload {
    /// Creates the two accounts and logs in once per caller slot, over a direct
    /// channel to the reference replica (password hashing is slow on purpose).
    async fn prepare(plan: &Plan, reference: SocketAddr) -> anyhow::Result<Self> {
        let mut client =
            ChatServiceClient::new(endpoint(reference, plan.tls.as_ref())?.connect().await?);
        for username in [SENDER, RECIPIENT] {
            client
                .create_account(CreateAccountRequest {
                    username: username.to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .with_context(|| format!("cannot create the account {username}"))?;
        }
        let slots = plan.concurrency.iter().copied().max().unwrap_or(1) as usize;
        let sessions = futures::stream::iter(0..slots)
            .map(|_| login(client.clone()))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        Ok(Self {
            send_percent: plan.send_percent,
            sessions,
            recipient: RECIPIENT.to_owned(),
        })
    }
}

async fn login(mut client: ChatServiceClient<Channel>) -> anyhow::Result<MetadataValue<Ascii>> {
    let token = client
        .login(LoginRequest {
            username: SENDER.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .context("cannot log in")?
        .into_inner()
        .token;
    Ok(format!("Bearer {token}").parse()?)
}

/// Which RPC a call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    HealthCheck,
    SendMessage,
}

/// One caller's instructions.
struct Caller {
    workload: Arc<Workload>,
    slot: usize,
    /// Seeds the call mix; the same for every contender in a round.
    seed: u64,
    /// Makes idempotency keys unique across the run.
    key_prefix: String,
    stop_at: Instant,
}

/// What callers observed: latencies of successful calls (µs) and failures by code.
#[derive(Debug, Default)]
struct Samples {
    health_us: Vec<u32>,
    send_us: Vec<u32>,
    failed: [u64; 17],
}

impl Samples {
    fn record(&mut self, rpc: Rpc, outcome: Result<(), tonic::Status>, elapsed: Duration) {
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        match (outcome, rpc) {
            (Ok(()), Rpc::HealthCheck) => self.health_us.push(micros),
            (Ok(()), Rpc::SendMessage) => self.send_us.push(micros),
            (Err(status), _) => {
                let code = (status.code() as usize).min(self.failed.len() - 1);
                self.failed[code] += 1;
            }
        }
    }

    fn merge(&mut self, other: Samples) {
        self.health_us.extend(other.health_us);
        self.send_us.extend(other.send_us);
        for (total, n) in self.failed.iter_mut().zip(other.failed) {
            *total += n;
        }
    }
}

/// A closed loop of calls until `stop_at`.
async fn run_caller<T>(mut client: ChatServiceClient<T>, caller: Caller) -> Samples
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut rng = StdRng::seed_from_u64(caller.seed);
    let mut samples = Samples::default();
    let session = &caller.workload.sessions[caller.slot % caller.workload.sessions.len()];
    let mut sent = 0u64;
    while Instant::now() < caller.stop_at {
        let rpc = if rng.random_range(0..100u8) < caller.workload.send_percent {
            Rpc::SendMessage
        } else {
            Rpc::HealthCheck
        };
        let started = Instant::now();
        let outcome = match rpc {
            Rpc::HealthCheck => client
                .health_check(with_deadline(HealthCheckRequest {}))
                .await
                .map(drop),
            Rpc::SendMessage => {
                sent += 1;
                let mut request = with_deadline(SendMessageRequest {
                    recipient: caller.workload.recipient.clone(),
                    text: "a benchmark message".to_owned(),
                    idempotency_key: format!("{}-{sent}", caller.key_prefix),
                });
                request
                    .metadata_mut()
                    .insert("authorization", session.clone());
                client.send_message(request).await.map(drop)
            }
        };
        samples.record(rpc, outcome, started.elapsed());
    }
    samples
}

fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

fn spawn_caller(transport: &Transport, caller: Caller) -> tokio::task::JoinHandle<Samples> {
    match transport {
        Transport::Channel(channel) => {
            tokio::spawn(run_caller(ChatServiceClient::new(channel.clone()), caller))
        }
        Transport::Balancer(balancer) => {
            tokio::spawn(run_caller(ChatServiceClient::new(balancer.clone()), caller))
        }
    }
}

// ---- rounds ---------------------------------------------------------------------------

/// Where a round sits in the run (seeds the call mix; names idempotency keys).
#[derive(Debug, Clone, Copy)]
struct RoundId {
    scenario: Scenario,
    concurrency: u32,
    /// `None` for the warm-up.
    round: Option<u32>,
}

impl RoundId {
    fn seed(self, plan: &Plan, salt: u64) -> u64 {
        let round = self.round.map_or(u64::MAX, u64::from);
        mix(&[
            plan.seed,
            self.scenario as u64,
            u64::from(self.concurrency),
            round,
            salt,
        ])
    }

    fn key_prefix(self, contender: Contender, slot: usize) -> String {
        let round = self.round.map_or("w".to_owned(), |r| r.to_string());
        let scenario = self.scenario.name();
        format!(
            "{}-{scenario}-{}-{round}-{slot}",
            contender.name(),
            self.concurrency
        )
    }
}

/// A contender's pooled rounds in one scenario and concurrency level.
#[derive(Debug, Default)]
struct Measured {
    samples: Samples,
    seconds: f64,
    /// CPU time this (the client's) process used during the rounds.
    cpu_seconds: f64,
    /// chat-lb only: attempts per replica (named as in the header), from the
    /// balancer's own counters.
    attempts: Vec<(String, u64)>,
}

/// Runs the plan on the cluster.
struct Runner {
    plan: Plan,
    workload: Arc<Workload>,
    cluster: Cluster,
    progress: Progress,
}

impl Runner {
    /// Runs every scenario and concurrency level of the plan.
    async fn run_all(&mut self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        for scenario in self.plan.scenarios.clone() {
            let mut transports = Vec::new();
            for &contender in &self.plan.contenders {
                if !contender.runs_in(scenario) {
                    continue;
                }
                let transport = connect(contender, &self.cluster, scenario, &self.plan)
                    .await
                    .with_context(|| {
                        format!("{}: cannot set up {}", scenario.name(), contender.name())
                    })?;
                transports.push((contender, transport));
            }
            for concurrency in self.plan.concurrency.clone() {
                let measured = self.run_cell(&transports, scenario, concurrency).await?;
                rows.extend(summarize(scenario, concurrency, measured));
            }
        }
        Ok(rows)
    }

    /// One scenario at one concurrency level: warm-ups, then alternating rounds.
    async fn run_cell(
        &mut self,
        transports: &[(Contender, Transport)],
        scenario: Scenario,
        concurrency: u32,
    ) -> anyhow::Result<Vec<(Contender, Measured)>> {
        let mut measured: Vec<(Contender, Measured)> = transports
            .iter()
            .map(|(c, _)| (*c, Measured::default()))
            .collect();
        let warmup = RoundId {
            scenario,
            concurrency,
            round: None,
        };
        for (contender, transport) in transports {
            self.progress.show(&warmup, "warm-up", *contender);
            self.run_round(transport, *contender, warmup, self.plan.warmup, false)
                .await?;
        }
        let marks: Vec<_> = transports.iter().map(|(_, t)| attempts(t)).collect();
        for round in 0..self.plan.rounds {
            let id = RoundId {
                round: Some(round),
                ..warmup
            };
            for (contender, transport) in self.round_order(id, transports) {
                let step = format!("round {}/{}", round + 1, self.plan.rounds);
                self.progress.show(&id, &step, contender);
                let kill = scenario == Scenario::KilledReplica;
                let cpu_before = process_cpu_seconds();
                let (samples, elapsed) = self
                    .run_round(transport, contender, id, self.plan.round(), kill)
                    .await?;
                if kill {
                    self.cluster.victim().restart().await?;
                }
                if let Some((_, m)) = measured.iter_mut().find(|(c, _)| *c == contender) {
                    m.samples.merge(samples);
                    m.seconds += elapsed.as_secs_f64();
                    m.cpu_seconds += process_cpu_seconds() - cpu_before;
                }
            }
        }
        for (((_, m), (_, transport)), before) in measured.iter_mut().zip(transports).zip(marks) {
            m.attempts = attempts(transport)
                .iter()
                .map(|(address, n)| {
                    let earlier = before
                        .iter()
                        .find(|(a, _)| a == address)
                        .map_or(0, |(_, n)| *n);
                    (self.cluster.name(*address), n.saturating_sub(earlier))
                })
                .collect();
        }
        Ok(measured)
    }

    /// The contenders in the seeded order of one round.
    fn round_order<'t>(
        &self,
        id: RoundId,
        transports: &'t [(Contender, Transport)],
    ) -> Vec<(Contender, &'t Transport)> {
        let mut order: Vec<_> = transports.iter().map(|(c, t)| (*c, t)).collect();
        order.shuffle(&mut StdRng::seed_from_u64(id.seed(&self.plan, u64::MAX)));
        order
    }

    /// Runs `id.concurrency` callers of one contender for `length`; with `kill`,
    /// SIGKILLs the victim replica `KILL_AT` of the way in. Returns the samples and
    /// the wall time until the last call returned.
    async fn run_round(
        &mut self,
        transport: &Transport,
        contender: Contender,
        id: RoundId,
        length: Duration,
        kill: bool,
    ) -> anyhow::Result<(Samples, Duration)> {
        let start = Instant::now();
        let callers: Vec<_> = (0..id.concurrency as usize)
            .map(|slot| {
                let caller = Caller {
                    workload: self.workload.clone(),
                    slot,
                    seed: id.seed(&self.plan, slot as u64),
                    key_prefix: id.key_prefix(contender, slot),
                    stop_at: start + length,
                };
                spawn_caller(transport, caller)
            })
            .collect();
        if kill {
            tokio::time::sleep_until(start + length.mul_f64(KILL_AT)).await;
            self.cluster.victim().kill().await?;
        }
        let mut samples = Samples::default();
        for caller in callers {
            samples.merge(caller.await.context("a caller task failed")?);
        }
        Ok((samples, start.elapsed()))
    }
}

// ---- figures ----------------------------------------------------------------------------

/// The figures of one contender in one scenario and concurrency level.
#[derive(Debug, Clone)]
struct Row {
    contender: Contender,
    scenario: Scenario,
    concurrency: u32,
    calls: u64,
    seconds: f64,
    calls_per_sec: f64,
    /// The client's CPU time per successful call, in µs: what the transport costs
    /// the caller's machine, whatever the replicas' CPUs do.
    client_cpu_us_per_call: f64,
    latency: Percentiles,
    health: Percentiles,
    send: Percentiles,
    failed: u64,
    failed_by_code: Vec<(Code, u64)>,
    ratio_to_direct: Option<f64>,
    attempts: Vec<(String, u64)>,
}

/// Nearest-rank percentiles of successful calls, in µs (`None` without calls).
#[derive(Debug, Clone, Copy, Default)]
struct Percentiles {
    calls: u64,
    p50: Option<u32>,
    p99: Option<u32>,
    p999: Option<u32>,
}

impl Percentiles {
    fn of(mut micros: Vec<u32>) -> Self {
        micros.sort_unstable();
        let rank = |q: f64| -> Option<u32> {
            let n = micros.len();
            let index = ((q * n as f64).ceil() as usize).clamp(1, n.max(1)) - 1;
            micros.get(index).copied()
        };
        Self {
            calls: micros.len() as u64,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
        }
    }

    fn json(&self) -> Value {
        json!({ "calls": self.calls, "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999 })
    }
}

fn summarize(
    scenario: Scenario,
    concurrency: u32,
    measured: Vec<(Contender, Measured)>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = measured
        .into_iter()
        .map(|(contender, m)| {
            let Samples {
                health_us,
                send_us,
                failed,
            } = m.samples;
            let all: Vec<u32> = health_us.iter().chain(&send_us).copied().collect();
            let calls = all.len() as u64;
            let failed_by_code: Vec<(Code, u64)> = failed
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(code, n)| (Code::from(code as i32), *n))
                .collect();
            Row {
                contender,
                scenario,
                concurrency,
                calls,
                seconds: m.seconds,
                calls_per_sec: if m.seconds > 0.0 {
                    calls as f64 / m.seconds
                } else {
                    0.0
                },
                client_cpu_us_per_call: m.cpu_seconds * 1e6 / calls.max(1) as f64,
                latency: Percentiles::of(all),
                health: Percentiles::of(health_us),
                send: Percentiles::of(send_us),
                failed: failed.iter().sum(),
                failed_by_code,
                ratio_to_direct: None,
                attempts: m.attempts,
            }
        })
        .collect();
    let direct = rows
        .iter()
        .find(|r| r.contender == Contender::Direct)
        .map(|r| r.calls_per_sec);
    for row in &mut rows {
        row.ratio_to_direct = direct.filter(|d| *d > 0.0).map(|d| row.calls_per_sec / d);
    }
    rows
}

fn find(rows: &[Row], contender: Contender, scenario: Scenario, concurrency: u32) -> Option<&Row> {
    rows.iter().find(|r| {
        r.contender == contender && r.scenario == scenario && r.concurrency == concurrency
    })
}

fn failures_text(row: &Row) -> String {
    if row.failed == 0 {
        return "0".to_owned();
    }
    let codes: Vec<String> = row
        .failed_by_code
        .iter()
        .map(|(code, n)| format!("{code:?} {n}"))
        .collect();
    format!("{} ({})", row.failed, codes.join(", "))
}

fn micros_text(value: Option<u32>) -> String {
    value.map_or("-".to_owned(), |v| v.to_string())
}

/// The results as an aligned text table.
fn table(rows: &[Row]) -> String {
    let header = [
        "scenario",
        "conc",
        "contender",
        "calls/s",
        "vs direct",
        "p50 µs",
        "p99 µs",
        "p999 µs",
        "cpu µs/call",
        "failed",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.scenario.name().to_owned(),
                r.concurrency.to_string(),
                r.contender.name().to_owned(),
                format!("{:.0}", r.calls_per_sec),
                r.ratio_to_direct
                    .map_or("-".to_owned(), |x| format!("{x:.3}")),
                micros_text(r.latency.p50),
                micros_text(r.latency.p99),
                micros_text(r.latency.p999),
                format!("{:.1}", r.client_cpu_us_per_call),
                failures_text(r),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
            let pad = width.saturating_sub(cell.chars().count());
            // Text columns left-aligned, numbers right-aligned; no trailing blanks.
            let last = cells.len() - 1;
            let text = if i < 3 || i == last {
                format!("{cell}{}", " ".repeat(if i == last { 0 } else { pad }))
            } else {
                format!("{}{cell}", " ".repeat(pad))
            };
            if i > 0 {
                out.push_str("  ");
            }
            out.push_str(&text);
        }
        out
    };
    let mut out = line(&header.map(str::to_owned));
    let rule = "-".repeat(out.chars().count());
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    let mut previous = None;
    for (row, cell) in rows.iter().zip(&cells) {
        if previous.is_some_and(|p| p != (row.scenario, row.concurrency)) {
            out.push('\n');
        }
        previous = Some((row.scenario, row.concurrency));
        out.push_str(&line(cell));
        out.push('\n');
    }
    out
}

/// Where chat-lb sent its attempts, per scenario and concurrency level.
fn attempt_shares(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows
        .iter()
        .filter(|r| r.contender == Contender::ChatLb && !r.attempts.is_empty())
    {
        let total: u64 = row.attempts.iter().map(|(_, n)| n).sum();
        let shares: Vec<String> = row
            .attempts
            .iter()
            .map(|(name, n)| format!("{name} {:.2}%", *n as f64 * 100.0 / total.max(1) as f64))
            .collect();
        let _ = writeln!(
            out,
            "  {} c={}: {} of {total} attempts",
            row.scenario.name(),
            row.concurrency,
            shares.join(", ")
        );
    }
    out
}

/// The results as a Markdown table.
fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | concurrency | contender | calls/s | vs direct | p50 µs | p99 µs | p999 µs | client CPU µs/call | failed |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} | {:.1} | {} |",
            r.scenario.name(),
            r.concurrency,
            r.contender.name(),
            r.calls_per_sec,
            r.ratio_to_direct
                .map_or("-".to_owned(), |x| format!("{x:.2}")),
            micros_text(r.latency.p50),
            micros_text(r.latency.p99),
            micros_text(r.latency.p999),
            r.client_cpu_us_per_call,
            failures_text(r),
        );
    }
    out
}

/// One JSON object per row.
fn json_line(row: &Row, plan: &Plan, machine: &Machine) -> Value {
    let errors: serde_json::Map<String, Value> = row
        .failed_by_code
        .iter()
        .map(|(code, n)| (format!("{code:?}"), json!(n)))
        .collect();
    let attempts: serde_json::Map<String, Value> = row
        .attempts
        .iter()
        .map(|(name, n)| (name.clone(), json!(n)))
        .collect();
    json!({
        "contender": row.contender.name(),
        "scenario": row.scenario.name(),
        "concurrency": row.concurrency,
        "calls_per_sec": row.calls_per_sec,
        "p50_us": row.latency.p50,
        "p99_us": row.latency.p99,
        "p999_us": row.latency.p999,
        "failed": row.failed,
        "failed_by_code": errors,
        "ratio_to_direct": row.ratio_to_direct,
        "calls": row.calls,
        "measured_s": row.seconds,
        "client_cpu_us_per_call": row.client_cpu_us_per_call,
        "rpc": { "HealthCheck": row.health.json(), "SendMessage": row.send.json() },
        "attempts_by_replica": attempts,
        "tls": plan.tls.is_some(),
        "seed": plan.seed,
        "settings": {
            "duration_s": plan.duration.as_secs_f64(),
            "rounds": plan.rounds,
            "round_s": plan.round().as_secs_f64(),
            "warmup_s": plan.warmup.as_secs_f64(),
            "workload": plan.workload(),
            "send_percent": plan.send_percent,
            "call_deadline_s": CALL_DEADLINE.as_secs_f64(),
            "slow_delay_ms": plan.slow_delay.as_secs_f64() * 1e3,
            "kill_at_fraction": KILL_AT,
            "chat_lb": plan.chat_lb(),
            "placement": plan.placement,
        },
        "machine": {
            "cpus": machine.cpus,
            "cpu_model": machine.cpu_model,
            "load_average_before": machine.load_before,
        },
    })
}

fn write_json(path: &Path, rows: &[Row], plan: &Plan, machine: &Machine) -> anyhow::Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&json_line(row, plan, machine).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

// ---- targets ----------------------------------------------------------------------------

/// One of the balancer's targets, checked.
struct Verdict {
    target: String,
    /// `None` when the run did not measure it.
    met: Option<bool>,
    details: String,
}

/// Judges `contender`'s rows in `scenario` at every concurrency level (`judge`
/// gives whether the target is met and the numbers); measured only when every
/// scenario in `needs` ran.
fn check(
    rows: &[Row],
    plan: &Plan,
    target: String,
    (contender, scenario): (Contender, Scenario),
    needs: &[Scenario],
    judge: impl Fn(&Row, u32) -> Option<(bool, String)>,
) -> Verdict {
    let mut met = None;
    let mut details = Vec::new();
    if needs
        .iter()
        .chain([&scenario])
        .all(|s| plan.scenarios.contains(s))
    {
        for &c in &plan.concurrency {
            let Some(row) = find(rows, contender, scenario, c) else {
                continue;
            };
            if let Some((ok, text)) = judge(row, c) {
                met = Some(met.unwrap_or(true) && ok);
                details.push(format!("c={c}: {text}"));
            }
        }
    }
    Verdict {
        target,
        met,
        details: details.join("; "),
    }
}

/// The issue's targets, for chat-lb in each steady scenario, and the same two
/// "close to direct" targets for `chat-lb-single` (the balancer's own cost).
fn verdicts(rows: &[Row], plan: &Plan) -> Vec<Verdict> {
    let other = |contender, scenario, c| find(rows, contender, scenario, c);
    let mut verdicts = Vec::new();
    for scenario in [Scenario::Steady, Scenario::SteadyOneProcess] {
        let name = scenario.name();
        for contender in [Contender::ChatLb, Contender::ChatLbSingle] {
            let who = contender.name();
            verdicts.push(check(
                rows,
                plan,
                format!("{name}: {who} throughput within 5% of direct"),
                (contender, scenario),
                &[],
                |r, _| {
                    let ratio = r.ratio_to_direct?;
                    Some((ratio >= 0.95, format!("{:.1}% of direct", ratio * 100.0)))
                },
            ));
            verdicts.push(check(
                rows,
                plan,
                format!("{name}: {who} p50 within 50µs of direct"),
                (contender, scenario),
                &[],
                |r, c| {
                    let (own, direct) = (
                        r.latency.p50?,
                        other(Contender::Direct, scenario, c)?.latency.p50?,
                    );
                    let diff = i64::from(own) - i64::from(direct);
                    Some((diff <= 50, format!("{diff:+}µs ({own} vs {direct})")))
                },
            ));
        }
        verdicts.push(check(
            rows,
            plan,
            format!("{name}: chat-lb throughput at least tonic balance_list's"),
            (Contender::ChatLb, scenario),
            &[],
            |r, c| {
                let tonic = other(Contender::TonicBalance, scenario, c)?.calls_per_sec;
                Some((
                    r.calls_per_sec >= tonic,
                    format!(
                        "{:.0} vs {tonic:.0} calls/s ({:.2}x)",
                        r.calls_per_sec,
                        r.calls_per_sec / tonic.max(1e-9)
                    ),
                ))
            },
        ));
    }
    let no_failures = |r: &Row, _| Some((r.failed == 0, failures_text(r)));
    verdicts.push(check(
        rows,
        plan,
        "chat-lb: no failed call with a dead address".to_owned(),
        (Contender::ChatLb, Scenario::DeadAddress),
        &[],
        no_failures,
    ));
    verdicts.push(check(
        rows,
        plan,
        "chat-lb: no failed call with a killed replica".to_owned(),
        (Contender::ChatLb, Scenario::KilledReplica),
        &[],
        no_failures,
    ));
    verdicts.push(check(
        rows,
        plan,
        "chat-lb: p99 with a slowed replica at most 1.5x steady p99".to_owned(),
        (Contender::ChatLb, Scenario::SlowReplica),
        &[Scenario::Steady],
        |r, c| {
            let (slow, base) = (
                r.latency.p99?,
                other(Contender::ChatLb, Scenario::Steady, c)?.latency.p99?,
            );
            let factor = f64::from(slow) / f64::from(base.max(1));
            Some((
                factor <= 1.5,
                format!("{slow}µs vs {base}µs ({factor:.2}x)"),
            ))
        },
    ));
    verdicts.retain(|v| v.met.is_some());
    verdicts
}

fn print_verdicts(verdicts: &[Verdict]) {
    println!("Targets (issue 6), for what this run measured:");
    for v in verdicts {
        let status = match v.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "not measured",
        };
        println!("  [{status:^12}] {}: {}", v.target, v.details);
    }
}

// ---- output helpers -------------------------------------------------------------------------

/// What the numbers were measured on.
struct Machine {
    cpus: usize,
    cpu_model: String,
    /// `/proc/loadavg`'s first three fields when the run started.
    load_before: String,
}

impl Machine {
    fn read() -> Self {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, model)| model.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            cpus: online_cpus(),
            cpu_model,
            load_before: load_average(),
        }
    }
}

/// The machine's online CPUs (not only those this process may use: with
/// `--placement split` it is pinned to one).
fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a system setting.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The 1, 5 and 15 minute load averages, as text (other work on the machine skews
/// absolute numbers; the alternation keeps the comparisons fair).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A one-line progress display on stderr (a line per step when stderr is not a terminal).
struct Progress {
    start: Instant,
    estimate: Duration,
    terminal: bool,
    last: String,
}

impl Progress {
    fn new(estimate: Duration) -> Self {
        Self {
            start: Instant::now(),
            estimate,
            terminal: std::io::stderr().is_terminal(),
            last: String::new(),
        }
    }

    fn show(&mut self, id: &RoundId, step: &str, contender: Contender) {
        let elapsed = self.start.elapsed().as_secs();
        let head = format!(
            "[{elapsed:>3}s of ~{}s] {} c={}",
            self.estimate.as_secs(),
            id.scenario.name(),
            id.concurrency
        );
        let mut stderr = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(stderr, "\r\x1b[K{head}: {step} {}", contender.name());
            let _ = stderr.flush();
        } else {
            // One line per scenario and concurrency level is enough in a log.
            let cell = format!("{} c={}", id.scenario.name(), id.concurrency);
            if cell != self.last {
                let _ = writeln!(stderr, "{head}");
                self.last = cell;
            }
        }
    }

    fn finish(&self) {
        if self.terminal {
            eprint!("\r\x1b[K");
        }
        eprintln!(
            "chat-bench: done in {:.0}s",
            self.start.elapsed().as_secs_f64()
        );
    }
}

fn print_header(plan: &Plan, machine: &Machine, cluster: &Cluster) {
    println!(
        "chat-bench  seed {} (reproduce the call mix with --seed {})",
        plan.seed, plan.seed
    );
    println!(
        "machine     {} CPUs, {}; load average {}",
        machine.cpus, machine.cpu_model, machine.load_before
    );
    println!(
        "method      {:?} per contender, scenario and concurrency, in {} alternating rounds of {:?} (+{:?} warm-up each)",
        plan.duration,
        plan.rounds,
        plan.round(),
        plan.warmup,
    );
    println!(
        "workload    {}; closed loop; {}s deadline per call",
        plan.workload(),
        CALL_DEADLINE.as_secs()
    );
    let replicas = cluster.healthy.iter().chain([&cluster.slow]);
    let described: Vec<String> = ["A", "B", "C", "S"]
        .iter()
        .zip(replicas)
        .map(|(name, r)| format!("{name} {} (pid {})", r.address(), r.pid().unwrap_or(0)))
        .collect();
    println!(
        "replicas    {}; S delays every RPC by {:?}; dead address {}",
        described.join(", "),
        plan.slow_delay,
        cluster.dead
    );
    if let Some(p) = &cluster.one_process {
        let servers: Vec<String> = p.addresses().iter().map(SocketAddr::to_string).collect();
        println!(
            "one process P1, P2, P3 = {} (pid {}): three servers sharing one process",
            servers.join(", "),
            p.pid().unwrap_or(0)
        );
    }
    println!("placement   {}", plan.placement);
    let transport = match plan.tls {
        Some(_) => "TLS for every contender (rustls, ECDSA P-256 certificates)",
        None => "plaintext HTTP/2",
    };
    println!("transport   {transport}");
    println!("direct      one Channel to A (to P1 in steady-one-process)");
    println!("chat-lb     {}", plan.chat_lb());
    println!();
}

// ---- main ---------------------------------------------------------------------------------

fn main() -> ExitCode {
    if let Some(code) = support::replica::run_if_replica() {
        return code;
    }
    let options = Options::parse();
    // Pinning comes first: the runtime sizes its worker pool on the CPUs it may use.
    let outcome = place(options.placement)
        .and_then(|cpus| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            Ok((runtime, cpus))
        })
        // The replicas are spawned from this (the main) thread, which outlives them.
        .and_then(|(runtime, cpus)| runtime.block_on(run(options, cpus)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Applies `placement` to this process; returns the CPUs for the replicas (empty:
/// anywhere).
fn place(placement: CpuPlacement) -> anyhow::Result<Vec<usize>> {
    match placement {
        CpuPlacement::Shared => Ok(Vec::new()),
        CpuPlacement::Split => {
            let cpus = support::replica::allowed_cpus()?;
            let Some((client, replicas)) = cpus.split_first().filter(|(_, r)| !r.is_empty()) else {
                bail!("--placement split needs at least 2 CPUs, this process may use {cpus:?}");
            };
            support::replica::pin_to_cpus(&[*client])?;
            Ok(replicas.to_vec())
        }
    }
}

fn describe_placement(placement: CpuPlacement, replica_cpus: &[usize]) -> String {
    match placement {
        CpuPlacement::Shared => "shared (the client and the replicas on any CPU)".to_owned(),
        CpuPlacement::Split => {
            let client = support::replica::allowed_cpus().unwrap_or_default();
            format!("split (the client on CPUs {client:?}, the replicas on CPUs {replica_cpus:?})")
        }
    }
}

async fn run(options: Options, replica_cpus: Vec<usize>) -> anyhow::Result<()> {
    let mut plan = Plan::from_options(&options);
    plan.placement = describe_placement(options.placement, &replica_cpus);
    if options.tls {
        plan.tls = Some(BenchTls::make().context("cannot make the TLS certificates")?);
    }
    if plan.concurrency.is_empty() || plan.scenarios.is_empty() {
        bail!("nothing to run: give at least one concurrency level and scenario");
    }
    let runs = |s: Scenario| plan.contenders.iter().any(|c| c.runs_in(s));
    if !plan.scenarios.iter().copied().any(runs) {
        bail!("nothing to run: chat-lb-single runs only in the steady scenarios");
    }
    let machine = Machine::read();
    let cluster = Cluster::start(&plan, options.store_dir.as_deref(), &replica_cpus)
        .await
        .context("cannot start the replicas")?;
    print_header(&plan, &machine, &cluster);
    let reference = cluster.reference(Scenario::Steady);
    let workload = Arc::new(Workload::prepare(&plan, reference).await?);
    let progress = Progress::new(plan.estimate());
    let mut runner = Runner {
        plan,
        workload,
        cluster,
        progress,
    };
    let rows = runner.run_all().await;
    let Runner {
        plan,
        cluster,
        progress,
        ..
    } = runner;
    progress.finish();
    cluster.stop().await;
    let rows = rows?;
    let load_after = load_average();

    print!("{}", table(&rows));
    println!("\nchat-lb attempts per replica:\n{}", attempt_shares(&rows));
    println!(
        "\nload average: {} before, {load_after} after",
        machine.load_before
    );
    println!();
    print_verdicts(&verdicts(&rows, &plan));
    if options.markdown {
        println!();
        print!("{}", markdown(&rows));
    }
    if let Some(path) = &options.json {
        write_json(path, &rows, &plan, &machine)?;
        println!("\nJSON lines written to {}", path.display());
    }
    if rows.iter().all(|r| r.calls == 0) {
        return Err(anyhow!("no call succeeded"));
    }
    Ok(())
}

/// CPU time (user + system) this process has used so far, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return 0.0;
        }
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Mixes numbers into one seed (splitmix64 steps), stable across Rust versions.
fn mix(parts: &[u64]) -> u64 {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for &part in parts {
        state = state.wrapping_add(part).wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        state = z ^ (z >> 31);
    }
    state
}
