//! The replicas of a run and the address list each scenario gives the balancers.
//!
//! Every replica listens on a free port of 127.0.0.1 and they share one temporary
//! SQLite store (in `/dev/shm` when it exists, so that fsync costs do not drown the
//! balancers' differences; `--store-dir` to change). Four replica processes: `A`, `B`
//! and `C` are healthy; `S` runs with `--inject-delay` (`--slow-delay`); for
//! `steady-one-process`, a fifth process serving three healthy servers `P1`, `P2`,
//! `P3` (each on its own port); and, for `overloaded-replica`, `O`, which sheds load
//! beyond `--max-concurrent-rpcs` [`OVERLOADED_LIMIT`].

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context;
use chat_testkit::replica::{Placement, Replica};

use crate::{
    plan::Plan,
    scenario::{OVERLOADED_LIMIT, Scenario},
};

/// The replicas of a run, on one temporary store.
pub struct Cluster {
    /// `A`, `B`, `C`: healthy (`C` is the victim of `killed-replica`).
    pub healthy: [Replica; 3],
    /// `S`: every RPC delayed.
    pub slow: Replica,
    /// `P1`, `P2`, `P3`: three servers in one process (only when
    /// `steady-one-process` is planned).
    pub one_process: Option<Replica>,
    /// `O`: sheds load beyond a tiny `--max-concurrent-rpcs` (only when
    /// `overloaded-replica` is planned).
    pub overloaded: Option<Replica>,
    /// An address where nothing listens.
    pub dead: SocketAddr,
    /// Kept for its `Drop` (removes the store).
    _store_dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the replicas one after the other (the first creates the schema), on
    /// `cpus` (empty: anywhere).
    pub async fn start(
        plan: &Plan,
        store_dir: Option<&Path>,
        cpus: &[usize],
    ) -> anyhow::Result<Self> {
        let dir = temp_store_dir(store_dir)?;
        let store = format!("sqlite:{}", dir.path().join("chat.db").display());
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
        let one_process = if plan.scenarios.contains(&Scenario::SteadyOneProcess) {
            let three = Placement {
                servers: 3,
                ..one.clone()
            };
            Some(Replica::start_placed(&store, &server_args, &three).await?)
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
        Ok(Self {
            healthy: [a, b, c],
            slow,
            one_process,
            overloaded,
            dead: dead_address()?,
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
            Scenario::OverloadedReplica => {
                list.extend(self.overloaded.iter().map(Replica::address))
            }
        }
        list
    }

    /// The name of an address in the output (`A`, `B`, `C`, `S`, `O`, `P1`.., `dead`).
    pub fn name(&self, address: SocketAddr) -> String {
        let mut in_one_process = self.one_process.iter().flat_map(|p| p.addresses());
        if let Some(i) = in_one_process.position(|a| *a == address) {
            return format!("P{}", i + 1);
        }
        let named = ["A", "B", "C"]
            .into_iter()
            .zip(&self.healthy)
            .chain([("S", &self.slow)])
            .chain(self.overloaded.iter().map(|o| ("O", o)))
            .find(|(_, replica)| replica.address() == address);
        match named {
            Some((name, _)) => name.to_owned(),
            None if address == self.dead => "dead".to_owned(),
            None => address.to_string(),
        }
    }

    /// The replica `killed-replica` kills: `C`.
    pub fn victim(&mut self) -> &mut Replica {
        &mut self.healthy[2]
    }

    /// Stops every replica (SIGINT, then SIGKILL after 2s).
    pub async fn stop(self) {
        let [a, b, c] = self.healthy;
        let extra = self.one_process.into_iter().chain(self.overloaded);
        for replica in [a, b, c, self.slow].into_iter().chain(extra) {
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
