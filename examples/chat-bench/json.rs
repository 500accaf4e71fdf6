//! `--json FILE`: one JSON object per line for each contender, scenario and
//! concurrency level, with the per-RPC figures, the seed and the settings (outside
//! checks read these keys: keep them).

use std::path::Path;

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    faults::KILL_AT,
    machine::Machine,
    plan::{Plan, workload_of},
    stats::Row,
    workload::CALL_DEADLINE,
};

/// Writes one JSON object per row to `path`.
pub fn write(path: &Path, rows: &[Row], plan: &Plan, machine: &Machine) -> anyhow::Result<()> {
    let mut text = String::new();
    for row in rows {
        text.push_str(&line(row, plan, machine).to_string());
        text.push('\n');
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// One JSON object per row.
fn line(row: &Row, plan: &Plan, machine: &Machine) -> Value {
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
        "subscribers": row.subscribers,
        "tls": plan.tls.is_some(),
        "seed": plan.seed,
        "settings": {
            "duration_s": plan.duration.as_secs_f64(),
            "rounds": plan.rounds,
            "round_s": plan.round().as_secs_f64(),
            "warmup_s": plan.warmup.as_secs_f64(),
            "workload": workload_of(row.scenario.send_percent(plan.send_percent)),
            "send_percent": row.scenario.send_percent(plan.send_percent),
            "call_deadline_s": CALL_DEADLINE.as_secs_f64(),
            "slow_delay_ms": plan.slow_delay.as_secs_f64() * 1e3,
            "kill_at_fraction": KILL_AT,
            "chat_lb": plan.chat_lb(),
            "placement": plan.placement,
            "server_metrics": plan.server_metrics,
        },
        "machine": {
            "cpus": machine.cpus,
            "cpu_model": machine.cpu_model,
            "load_average_before": machine.load_before,
        },
    })
}
