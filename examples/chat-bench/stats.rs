//! What the callers observed, pooled over a contender's rounds into its figures.
//!
//! **calls/s** is a contender's successful calls divided by the wall time of its
//! rounds (from the start of the round until its last call returned); the latency
//! percentiles (nearest rank over every successful call, in µs) come from all its
//! rounds; **failed** counts calls that ended in an error, by gRPC code.
//! **ratio_to_direct** is a contender's calls/s divided by `direct`'s in the same
//! scenario and concurrency level. **client CPU µs/call** is the CPU time (user +
//! system, `getrusage`) the benchmark process used during a contender's rounds divided
//! by its successful calls: what the transport costs the calling machine, however
//! busy the replicas are. The attempts per replica come from the balancer's own
//! counters.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::Code;

use crate::{contender::Contender, scenario::Scenario, workload::Rpc};

/// What callers observed: latencies of successful calls (µs) and failures by code.
#[derive(Debug, Default)]
pub struct Samples {
    health_us: Vec<u32>,
    send_us: Vec<u32>,
    failed: [u64; 17],
}

impl Samples {
    /// Adds one call's outcome.
    pub fn record(&mut self, rpc: Rpc, outcome: Result<(), tonic::Status>, elapsed: Duration) {
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

    /// Adds another caller's or round's samples.
    pub fn merge(&mut self, other: Samples) {
        self.health_us.extend(other.health_us);
        self.send_us.extend(other.send_us);
        for (total, n) in self.failed.iter_mut().zip(other.failed) {
            *total += n;
        }
    }
}

/// A contender's pooled rounds in one scenario and concurrency level.
#[derive(Debug, Default)]
pub struct Measured {
    pub samples: Samples,
    pub seconds: f64,
    /// CPU time this (the client's) process used during the rounds.
    pub cpu_seconds: f64,
    /// Balancer contenders only: attempts per replica (named as in the header;
    /// retries and hedges included), from the balancer's own counters.
    pub attempts: Vec<(String, u64)>,
}

/// The figures of one contender in one scenario and concurrency level.
#[derive(Debug, Clone)]
pub struct Row {
    pub contender: Contender,
    pub scenario: Scenario,
    pub concurrency: u32,
    pub calls: u64,
    pub seconds: f64,
    pub calls_per_sec: f64,
    /// The client's CPU time per successful call, in µs: what the transport costs
    /// the caller's machine, whatever the replicas' CPUs do.
    pub client_cpu_us_per_call: f64,
    pub latency: Percentiles,
    pub health: Percentiles,
    pub send: Percentiles,
    pub failed: u64,
    pub failed_by_code: Vec<(Code, u64)>,
    pub ratio_to_direct: Option<f64>,
    pub attempts: Vec<(String, u64)>,
    /// Live streams on the receiving replica (delivery scenarios only).
    pub subscribers: Option<u32>,
}

/// Nearest-rank percentiles of successful calls, in µs (`None` without calls).
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub calls: u64,
    pub p50: Option<u32>,
    pub p99: Option<u32>,
    pub p999: Option<u32>,
}

impl Percentiles {
    /// The percentiles of `micros`.
    pub fn of(mut micros: Vec<u32>) -> Self {
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

    /// The percentiles as a JSON object (`calls`, `p50_us`, `p99_us`, `p999_us`).
    pub fn json(&self) -> Value {
        json!({ "calls": self.calls, "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999 })
    }
}

/// The rows of one scenario and concurrency level, with their ratios to `direct`.
pub fn summarize(
    scenario: Scenario,
    concurrency: u32,
    measured: Vec<(Contender, Measured)>,
) -> Vec<Row> {
    let mut rows: Vec<Row> = measured
        .into_iter()
        .map(|(contender, m)| row(contender, scenario, concurrency, m))
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

/// One contender's figures, without its ratio to `direct`.
pub fn row(contender: Contender, scenario: Scenario, concurrency: u32, m: Measured) -> Row {
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
        subscribers: None,
    }
}

/// The row of `contender` in `scenario` at `concurrency`, if it ran.
pub fn find(
    rows: &[Row],
    contender: Contender,
    scenario: Scenario,
    concurrency: u32,
) -> Option<&Row> {
    rows.iter().find(|r| {
        r.contender == contender && r.scenario == scenario && r.concurrency == concurrency
    })
}
