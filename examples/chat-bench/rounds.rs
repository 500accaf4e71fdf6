//! The method: warm-ups, then alternating rounds.
//!
//! For each scenario and concurrency level, each contender first runs an unmeasured
//! warm-up, then `--rounds` rounds of `--duration / --rounds` each. Contenders
//! **alternate round by round** (a seeded shuffle of them per round), so load from
//! other processes on the machine falls on all of them alike. Within a round every
//! contender's callers draw the same seeded sequence of calls. A contender's rounds
//! are then pooled into its figures (`stats.rs`).

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use tokio::time::Instant;

use crate::{
    ceiling,
    cluster::Cluster,
    contender::{self, Contender, Transport},
    delivery, faults,
    machine::process_cpu_seconds,
    plan::Plan,
    progress::Progress,
    scenario::Scenario,
    stats::{Measured, Row, Samples, summarize},
    workload::{Caller, Workload, spawn_caller},
};

/// Where a round sits in the run (seeds the call mix; names idempotency keys).
#[derive(Debug, Clone, Copy)]
pub struct RoundId {
    pub scenario: Scenario,
    pub concurrency: u32,
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

/// Runs the plan on the cluster.
pub struct Runner {
    pub plan: Plan,
    pub workload: Arc<Workload>,
    pub cluster: Cluster,
    pub progress: Progress,
}

impl Runner {
    /// Runs every scenario and concurrency level of the plan.
    pub async fn run_all(&mut self) -> anyhow::Result<Vec<Row>> {
        let mut rows = Vec::new();
        for scenario in self.plan.scenarios.clone() {
            if scenario.is_delivery() {
                if self.plan.contenders.contains(&Contender::Direct) {
                    rows.push(self.run_delivery(scenario).await?);
                }
                continue;
            }
            let mut transports = Vec::new();
            for &contender in &self.plan.contenders {
                if !contender.runs_in(scenario) {
                    continue;
                }
                let transport = contender::connect(contender, &self.cluster, scenario, &self.plan)
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
            if scenario == Scenario::StoreThroughput && self.plan.measures_ceiling() {
                let ceiling = ceiling::measure(self.cluster.store_dir(), self.plan.duration)
                    .await
                    .context("cannot measure sqlite-ceiling")?;
                rows.extend(summarize(
                    scenario,
                    1,
                    vec![(Contender::SqliteCeiling, ceiling)],
                ));
            }
        }
        Ok(rows)
    }

    /// A delivery scenario: once, by its own method (`delivery.rs`).
    async fn run_delivery(&mut self, scenario: Scenario) -> anyhow::Result<Row> {
        let id = RoundId {
            scenario,
            concurrency: 1,
            round: None,
        };
        self.progress.show(&id, "sending", Contender::Direct);
        delivery::run(&self.plan, &self.cluster, scenario)
            .await
            .with_context(|| format!("{}: cannot measure delivery", scenario.name()))
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
        let marks: Vec<_> = transports
            .iter()
            .map(|(_, t)| contender::attempts(t))
            .collect();
        for round in 0..self.plan.rounds {
            let id = RoundId {
                round: Some(round),
                ..warmup
            };
            for (contender, transport) in self.round_order(id, transports) {
                let step = format!("round {}/{}", round + 1, self.plan.rounds);
                self.progress.show(&id, &step, contender);
                let kill = faults::kills_in(scenario);
                let cpu_before = process_cpu_seconds();
                let (samples, elapsed) = self
                    .run_round(transport, contender, id, self.plan.round(), kill)
                    .await?;
                if kill {
                    faults::restart_victim(&mut self.cluster).await?;
                }
                if let Some((_, m)) = measured.iter_mut().find(|(c, _)| *c == contender) {
                    m.samples.merge(samples);
                    m.seconds += elapsed.as_secs_f64();
                    m.cpu_seconds += process_cpu_seconds() - cpu_before;
                }
            }
        }
        for (((_, m), (_, transport)), before) in measured.iter_mut().zip(transports).zip(marks) {
            m.attempts = self.attempts_since(transport, &before);
        }
        Ok(measured)
    }

    /// chat-lb's attempts per replica (named as in the header) since `before`.
    fn attempts_since(
        &self,
        transport: &Transport,
        before: &[(std::net::SocketAddr, u64)],
    ) -> Vec<(String, u64)> {
        contender::attempts(transport)
            .iter()
            .map(|(address, n)| {
                let earlier = before
                    .iter()
                    .find(|(a, _)| a == address)
                    .map_or(0, |(_, n)| *n);
                (self.cluster.name(*address), n.saturating_sub(earlier))
            })
            .collect()
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
    /// kills the victim replica during it (`faults.rs`). Returns the samples and the
    /// wall time until the last call returned.
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
            faults::kill_victim(&mut self.cluster, start, length).await?;
        }
        let mut samples = Samples::default();
        for caller in callers {
            samples.merge(caller.await.context("a caller task failed")?);
        }
        Ok((samples, start.elapsed()))
    }
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
