//! Faults injected during runs: in `killed-replica`, the victim `C` is SIGKILLed
//! `KILL_AT` of the way into every round (whichever contender runs it) and restarted
//! on the same port after the round: the restart's wall time is not measured, the
//! CPU it costs this process counts in the round's client CPU.

use std::time::Duration;

use tokio::time::Instant;

use crate::{cluster::Cluster, scenario::Scenario};

/// When the victim of `killed-replica` dies, as a fraction of each round.
pub const KILL_AT: f64 = 1.0 / 3.0;

/// Whether the rounds of `scenario` kill the victim.
pub fn kills_in(scenario: Scenario) -> bool {
    scenario == Scenario::KilledReplica
}

/// Waits until `KILL_AT` of the round that started at `start` and lasts `length`,
/// then SIGKILLs the victim.
pub async fn kill_victim(
    cluster: &mut Cluster,
    start: Instant,
    length: Duration,
) -> anyhow::Result<()> {
    tokio::time::sleep_until(start + length.mul_f64(KILL_AT)).await;
    cluster.victim().kill().await
}

/// Restarts the victim on its port, after its round.
pub async fn restart_victim(cluster: &mut Cluster) -> anyhow::Result<()> {
    cluster.victim().restart().await
}
