//! The scenarios: what the replicas behind the balancers' address list do.
//!
//! - `steady`: `A, B, C`, all healthy, three processes;
//! - `steady-one-process`: `P1, P2, P3`, all healthy, in one process: spreading calls
//!   costs the server side no extra processes (only extra connections), so the
//!   comparison with `direct` holds the replicas' CPU equal;
//! - `dead-address`: `A, B, C` and an address where nothing listens;
//! - `slow-replica`: `A, B, S` — `S` delays every RPC by `--slow-delay` (20ms);
//! - `killed-replica`: `A, B, C`; `C` is SIGKILLed during every round (see
//!   `faults.rs`);
//! - `flaky-replica`: `A, B, C, F` — `F` answers `INTERNAL` to 20% of chat calls
//!   (`--inject-error-rate 0.2`).
//! - `overloaded-replica`: `A, B, O` — `O` runs with `--max-concurrent-rpcs 1`
//!   ([`OVERLOADED_LIMIT`]), so it sheds the chat calls beyond one in flight with
//!   `RESOURCE_EXHAUSTED` and a retry pushback (health checks are never shed: with
//!   the default mix it is the `SendMessage` calls that are).
//! - `tail-latency`: `A, B, T` — `T` stalls 50ms on 5% of its calls
//!   (`--inject-stall 50ms --inject-stall-rate 0.05`): the tail that hedging
//!   (`chat-lb-hedged`) should cut.
//! - `store-throughput`: the embedded store's own throughput and latency. Every call
//!   is a `SendMessage`, to replicas `A, B, C` of their own that share a store on the
//!   real disk (`--store-dir`, else the temp dir unless it is a tmpfs, else
//!   `target/`; never `/dev/shm`), so that every commit pays its `fsync`. Only
//!   `direct` (one replica) and `chat-lb` (the three) run, plus `sqlite-ceiling`: raw
//!   single-INSERT transactions in the same directory (`ceiling.rs`).
//! - `delivery-same-replica`, `delivery-cross-replica`: live delivery latency, from
//!   `A` to subscribers on `A`, or from `B` to subscribers on `A` (see `delivery.rs`).
//!
//! The replicas and their address lists are in `cluster.rs`.

use clap::ValueEnum;

/// `O`'s `--max-concurrent-rpcs` in `overloaded-replica`.
pub const OVERLOADED_LIMIT: u32 = 1;

/// What the replicas behind the address list do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    Steady,
    SteadyOneProcess,
    DeadAddress,
    SlowReplica,
    KilledReplica,
    FlakyReplica,
    OverloadedReplica,
    TailLatency,
    StoreThroughput,
    DeliverySameReplica,
    DeliveryCrossReplica,
}

impl Scenario {
    /// Whether every replica behind the list is healthy (`steady`, `steady-one-process`).
    pub fn is_steady(self) -> bool {
        matches!(self, Scenario::Steady | Scenario::SteadyOneProcess)
    }

    /// Whether it measures live delivery rather than calls (`delivery-*`).
    pub fn is_delivery(self) -> bool {
        matches!(
            self,
            Scenario::DeliverySameReplica | Scenario::DeliveryCrossReplica
        )
    }

    /// Every scenario, in the order they run.
    pub const ALL: [Scenario; 11] = [
        Scenario::Steady,
        Scenario::SteadyOneProcess,
        Scenario::DeadAddress,
        Scenario::SlowReplica,
        Scenario::KilledReplica,
        Scenario::FlakyReplica,
        Scenario::OverloadedReplica,
        Scenario::TailLatency,
        Scenario::StoreThroughput,
        Scenario::DeliverySameReplica,
        Scenario::DeliveryCrossReplica,
    ];

    /// Whether it measures the store on the real disk (on replicas of its own), not
    /// the balancers over a store in memory.
    pub fn on_disk(self) -> bool {
        self == Scenario::StoreThroughput
    }

    /// The percentage of calls that are `SendMessage`: `--send-percent`, or 100 in
    /// `store-throughput`.
    pub fn send_percent(self, flag: u8) -> u8 {
        if self.on_disk() { 100 } else { flag }
    }

    /// The name in flags and output.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::SteadyOneProcess => "steady-one-process",
            Scenario::DeadAddress => "dead-address",
            Scenario::SlowReplica => "slow-replica",
            Scenario::KilledReplica => "killed-replica",
            Scenario::FlakyReplica => "flaky-replica",
            Scenario::OverloadedReplica => "overloaded-replica",
            Scenario::TailLatency => "tail-latency",
            Scenario::StoreThroughput => "store-throughput",
            Scenario::DeliverySameReplica => "delivery-same-replica",
            Scenario::DeliveryCrossReplica => "delivery-cross-replica",
        }
    }
}
