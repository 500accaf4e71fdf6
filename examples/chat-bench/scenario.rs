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
//! - `delivery-same-replica`, `delivery-cross-replica`: live delivery latency, from
//!   `A` to subscribers on `A`, or from `B` to subscribers on `A` (see `delivery.rs`).
//!
//! The replicas and their address lists are in `cluster.rs`.

use clap::ValueEnum;

/// What the replicas behind the address list do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    Steady,
    SteadyOneProcess,
    DeadAddress,
    SlowReplica,
    KilledReplica,
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
    pub const ALL: [Scenario; 7] = [
        Scenario::Steady,
        Scenario::SteadyOneProcess,
        Scenario::DeadAddress,
        Scenario::SlowReplica,
        Scenario::KilledReplica,
        Scenario::DeliverySameReplica,
        Scenario::DeliveryCrossReplica,
    ];

    /// The name in flags and output.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::SteadyOneProcess => "steady-one-process",
            Scenario::DeadAddress => "dead-address",
            Scenario::SlowReplica => "slow-replica",
            Scenario::KilledReplica => "killed-replica",
            Scenario::DeliverySameReplica => "delivery-same-replica",
            Scenario::DeliveryCrossReplica => "delivery-cross-replica",
        }
    }
}
