//! The replicas of a run and the address list each scenario gives the balancers.
//!
//! Every replica listens on a free port of 127.0.0.1 and they share one temporary
//! SQLite store (in `/dev/shm` when it exists, so that fsync costs do not drown the
//! balancers' differences; `--store-dir` to change). `store-throughput` measures those
//! costs: it gets a cluster of its own, on a store on the real disk
//! ([`temp_store_dir`]). Four replica processes: `A`, `B`
//! and `C` are healthy; `S` runs with `--inject-delay` (`--slow-delay`); for
//! `steady-one-process`, a fifth process serving three healthy servers `P1`, `P2`,
//! `P3` (each on its own port); for `flaky-replica`, `F`, which answers `INTERNAL`
//! to a share of chat calls (`--inject-error-rate`, [`FLAKY_ERROR_RATE`]); for
//! `overloaded-replica`, `O`, which sheds load beyond `--max-concurrent-rpcs`
//! [`OVERLOADED_LIMIT`]; and, for `tail-latency`, `T`, which stalls 50ms on 5% of its
//! calls (`TAIL_STALL`).

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use chat_testkit::replica::{Placement, Replica};

use crate::{
    plan::Plan,
    scenario::{OVERLOADED_LIMIT, Scenario},
};

/// The share of chat calls `F` answers `INTERNAL` in `flaky-replica`.
pub const FLAKY_ERROR_RATE: &str = "0.2";

/// The replicas of a run, on one temporary store.
pub struct Cluster {
    /// `A`, `B`, `C`: healthy (`C` is the victim of `killed-replica`).
    pub healthy: [Replica; 3],
    /// `S`: every RPC delayed.
    pub slow: Replica,
    /// `P1`, `P2`, `P3`: three servers in one process (only when
    /// `steady-one-process` is planned).
    pub one_process: Option<Replica>,
    /// `F`: fails a share of chat calls (only when `flaky-replica` is planned).
    pub flaky: Option<Replica>,
    /// `O`: sheds load beyond a tiny `--max-concurrent-rpcs` (only when
    /// `overloaded-replica` is planned).
    pub overloaded: Option<Replica>,
    /// `T`: stalls on some calls (only when `tail-latency` is planned).
    pub tail: Option<Replica>,
    /// An address where nothing listens.
    pub dead: SocketAddr,
    /// The `--store` of every replica (`sqlite:PATH`, or `--store-uri`).
    pub store: String,
    /// Kept for its `Drop` (removes the store).
    _store_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the replicas one after the other (the first creates the schema), on
    /// `cpus` (empty: anywhere), on `store_uri` (`--store-uri`, e.g. a MongoDB store)
    /// if given, else on an SQLite file in a new directory in `store_dir`.
    pub async fn start(
        plan: &Plan,
        store_dir: Option<&Path>,
        store_uri: Option<&str>,
        cpus: &[usize],
    ) -> anyhow::Result<Self> {
        let on_disk = plan.scenarios.iter().any(|s| s.on_disk());
        let dir = temp_store_dir(store_dir, on_disk)?;
        let store = match store_uri {
            Some(uri) => uri.to_owned(),
            None => format!("sqlite:{}", dir.path().join("chat.db").display()),
        };
        let one = Placement {
            servers: 1,
            cpus: cpus.to_vec(),
        };
        let metrics_args = ["--metrics-addr", "127.0.0.1:0"];
        let server_args: Vec<&str> = plan
            .tls
            .iter()
            .flat_map(|tls| tls.server_args.iter().map(String::as_str))
            .chain(metrics_args.into_iter().filter(|_| plan.server_metrics))
            .collect();
        let a = Replica::start_placed(&store, &server_args, &one).await?;
        let b = Replica::start_placed(&store, &server_args, &one).await?;
        let c = Replica::start_placed(&store, &server_args, &one).await?;
        let delay = format!("{}us", plan.slow_delay.as_micros());
        let slow_args: Vec<&str> = ["--inject-delay", delay.as_str()]
            .into_iter()
            .chain(server_args.iter().copied())
            .collect();
        let slow = Replica::start_placed(&store, &slow_args, &one).await?;
        let flaky = if plan.scenarios.contains(&Scenario::FlakyReplica) {
            let flaky_args: Vec<&str> = ["--inject-error-rate", FLAKY_ERROR_RATE]
                .into_iter()
                .chain(server_args.iter().copied())
                .collect();
            Some(Replica::start_placed(&store, &flaky_args, &one).await?)
        } else {
            None
        };
        let tail = if plan.scenarios.contains(&Scenario::TailLatency) {
            let tail_args: Vec<&str> = TAIL_STALL
                .into_iter()
                .chain(server_args.iter().copied())
                .collect();
            Some(Replica::start_placed(&store, &tail_args, &one).await?)
        } else {
            None
        };
        let overloaded = if plan.scenarios.contains(&Scenario::OverloadedReplica) {
            let limit = OVERLOADED_LIMIT.to_string();
            let args: Vec<&str> = ["--max-concurrent-rpcs", limit.as_str()]
                .into_iter()
                .chain(server_args.iter().copied())
                .collect();
            Some(Replica::start_placed(&store, &args, &one).await?)
        } else {
            None
        };
        let one_process = if plan.scenarios.contains(&Scenario::SteadyOneProcess) {
            let three = Placement { servers: 3, ..one };
            Some(Replica::start_placed(&store, &server_args, &three).await?)
        } else {
            None
        };
        Ok(Self {
            healthy: [a, b, c],
            slow,
            one_process,
            flaky,
            overloaded,
            tail,
            dead: dead_address()?,
            store,
            _store_dir: dir,
        })
    }

    /// The replica `direct` calls in `scenario`: `A`, or `P1` in `steady-one-process`.
    /// It is never dead, slowed or killed.
    pub fn reference(&self, scenario: Scenario) -> SocketAddr {
        match (&self.one_process, scenario) {
            (Some(p), Scenario::SteadyOneProcess) => p.address(),
            _ => self.healthy[0].address(),
        }
    }

    /// The balancers' address list in `scenario`.
    pub fn addresses(&self, scenario: Scenario) -> Vec<SocketAddr> {
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
            Scenario::FlakyReplica => {
                list.push(c.address());
                list.extend(self.flaky.as_ref().map(Replica::address));
            }
            Scenario::OverloadedReplica => {
                list.extend(self.overloaded.iter().map(Replica::address))
            }
            Scenario::TailLatency => list.extend(self.tail.as_ref().map(Replica::address)),
            Scenario::StoreThroughput => list.push(c.address()),
            // The sender's and the subscribers' replicas (`delivery.rs`).
            Scenario::DeliverySameReplica | Scenario::DeliveryCrossReplica => {}
        }
        list
    }

    /// The name of an address in the output (`A`, `B`, `C`, `S`, `F`, `O`, `T`, `P1`..,
    /// `dead`).
    pub fn name(&self, address: SocketAddr) -> String {
        let mut in_one_process = self.one_process.iter().flat_map(|p| p.addresses());
        if let Some(i) = in_one_process.position(|a| *a == address) {
            return format!("P{}", i + 1);
        }
        let named = ["A", "B", "C"]
            .into_iter()
            .zip(&self.healthy)
            .chain([("S", &self.slow)])
            .chain(self.flaky.iter().map(|f| ("F", f)))
            .chain(self.overloaded.iter().map(|o| ("O", o)))
            .chain(self.tail.iter().map(|t| ("T", t)))
            .find(|(_, replica)| replica.address() == address);
        match named {
            Some((name, _)) => name.to_owned(),
            None if address == self.dead => "dead".to_owned(),
            None => address.to_string(),
        }
    }

    /// The directory of the store (unless `--store-uri` named another) and of
    /// `sqlite-ceiling`'s file.
    pub fn store_dir(&self) -> &Path {
        self._store_dir.path()
    }

    /// The replica `killed-replica` kills: `C`.
    pub fn victim(&mut self) -> &mut Replica {
        &mut self.healthy[2]
    }

    /// Stops every replica (SIGINT, then SIGKILL after 2s).
    pub async fn stop(self) {
        let [a, b, c] = self.healthy;
        let extra = self
            .one_process
            .into_iter()
            .chain(self.flaky)
            .chain(self.overloaded)
            .chain(self.tail);
        for replica in [a, b, c, self.slow].into_iter().chain(extra) {
            replica.stop(Duration::from_secs(2)).await;
        }
    }
}

/// The flags of `T` in `tail-latency`: a 50ms stall on 5% of its calls.
const TAIL_STALL: [&str; 4] = ["--inject-stall", "50ms", "--inject-stall-rate", "0.05"];

/// A new directory for the store in `store_dir`; by default in `/dev/shm` when it
/// exists, but on the real disk when `on_disk`: in the temp dir, or in `target/` when
/// the temp dir is a tmpfs.
fn temp_store_dir(store_dir: Option<&Path>, on_disk: bool) -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let temp = std::env::temp_dir();
    let parent = match store_dir {
        Some(dir) => dir.to_path_buf(),
        None if on_disk && is_tmpfs(&temp) => Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        None if on_disk => temp,
        None if shm.is_dir() => shm.to_path_buf(),
        None => temp,
    };
    tempfile::Builder::new()
        .prefix("chat-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("cannot create a store directory in {}", parent.display()))
}

/// Whether `dir` is on a tmpfs (memory), after `/proc/mounts`: the longest mount
/// point that contains it decides.
fn is_tmpfs(dir: &Path) -> bool {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(point)
                .then(|| (point.len(), kind == "tmpfs"))
        })
        .max_by_key(|(length, _)| *length)
        .is_some_and(|(_, tmpfs)| tmpfs)
}

/// A loopback address on which nothing listens: a port bound, then released.
fn dead_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind a port")?;
    Ok(listener.local_addr()?)
}
