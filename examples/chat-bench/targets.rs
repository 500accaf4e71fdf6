//! The balancer's targets (issue 6; issue 13's tail-latency one), checked against the run's numbers and reported
//! as met or not met (or left out when the run did not measure them).

use crate::{
    contender::Contender,
    plan::Plan,
    report::failures_text,
    scenario::Scenario,
    stats::{Row, find},
};

/// One of the balancer's targets, checked.
pub struct Verdict {
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

/// The targets, for chat-lb in each steady scenario, and the same two
/// "close to direct" targets for `chat-lb-single` (the balancer's own cost).
pub fn verdicts(rows: &[Row], plan: &Plan) -> Vec<Verdict> {
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
    for (scenario, fault) in [
        (Scenario::DeadAddress, "a dead address"),
        (Scenario::KilledReplica, "a killed replica"),
        (Scenario::FlakyReplica, "a flaky replica"),
        (Scenario::OverloadedReplica, "an overloaded replica"),
    ] {
        verdicts.push(check(
            rows,
            plan,
            format!("chat-lb: no failed call with {fault}"),
            (Contender::ChatLb, scenario),
            &[],
            |r, _| Some((r.failed == 0, failures_text(r))),
        ));
    }
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
    verdicts.extend(misbehaving_replica_verdicts(rows, plan));
    verdicts.extend(delivery_verdicts(rows));
    verdicts.retain(|v| v.met.is_some());
    verdicts
}

/// The targets of the scenarios with one misbehaving replica (issue 13):
/// `flaky-replica`, `overloaded-replica` and `tail-latency`.
fn misbehaving_replica_verdicts(rows: &[Row], plan: &Plan) -> Vec<Verdict> {
    let other = |contender, scenario, c| find(rows, contender, scenario, c);
    let mut verdicts = Vec::new();
    verdicts.push(check(
        rows,
        plan,
        "chat-lb: the flaky replica gets at most 5% of attempts".to_owned(),
        (Contender::ChatLb, Scenario::FlakyReplica),
        &[],
        |r, _| {
            let total: u64 = r.attempts.iter().map(|(_, n)| n).sum();
            let flaky: u64 = r
                .attempts
                .iter()
                .filter(|(name, _)| name == "F")
                .map(|(_, n)| n)
                .sum();
            let share = flaky as f64 / total.max(1) as f64;
            Some((
                share <= 0.05,
                format!("F got {flaky} of {total} attempts ({:.1}%)", share * 100.0),
            ))
        },
    ));
    verdicts.push(check(
        rows,
        plan,
        "chat-lb: p99 with an overloaded replica at most 2x steady p99".to_owned(),
        (Contender::ChatLb, Scenario::OverloadedReplica),
        &[Scenario::Steady],
        |r, c| {
            let (overloaded, base) = (
                r.latency.p99?,
                other(Contender::ChatLb, Scenario::Steady, c)?.latency.p99?,
            );
            let factor = f64::from(overloaded) / f64::from(base.max(1));
            Some((
                factor <= 2.0,
                format!("{overloaded}µs vs {base}µs ({factor:.2}x)"),
            ))
        },
    ));
    verdicts.push(check(
        rows,
        plan,
        "tail-latency: chat-lb-hedged p99 at most 1.5x chat-lb's steady p99, \
         with at most 10% extra attempts"
            .to_owned(),
        (Contender::ChatLbHedged, Scenario::TailLatency),
        &[Scenario::Steady],
        |r, c| {
            let (tail, base) = (
                r.latency.p99?,
                other(Contender::ChatLb, Scenario::Steady, c)?.latency.p99?,
            );
            let factor = f64::from(tail) / f64::from(base.max(1));
            let attempts: u64 = r.attempts.iter().map(|(_, n)| n).sum();
            let extra = attempts as f64 / r.calls.max(1) as f64 - 1.0;
            Some((
                factor <= 1.5 && extra <= 0.10,
                format!(
                    "{tail}µs vs {base}µs ({factor:.2}x), {:+.1}% attempts",
                    extra * 100.0
                ),
            ))
        },
    ));
    verdicts
}

/// Live delivery's targets (issue 14), for `direct`'s one row per delivery scenario:
/// same replica p50 at most 2ms; across replicas p50 at most 3ms and p99 at most 10ms.
fn delivery_verdicts(rows: &[Row]) -> Vec<Verdict> {
    let limits_us = [
        (Scenario::DeliverySameReplica, 2_000, None),
        (Scenario::DeliveryCrossReplica, 3_000, Some(10_000)),
    ];
    limits_us
        .into_iter()
        .map(|(scenario, p50_max, p99_max)| {
            let mut target = format!(
                "{} (issue 14): p50 at most {}ms",
                scenario.name(),
                p50_max / 1000
            );
            if let Some(p99_max) = p99_max {
                target.push_str(&format!(", p99 at most {}ms", p99_max / 1000));
            }
            let judged = find(rows, Contender::Direct, scenario, 1).and_then(|r| {
                let (p50, p99) = (r.latency.p50?, r.latency.p99?);
                let met = p50 <= p50_max && p99_max.is_none_or(|max| p99 <= max);
                let subscribers = r.subscribers.unwrap_or(0);
                Some((
                    met,
                    format!("p50 {p50}µs, p99 {p99}µs, {subscribers} subscribers"),
                ))
            });
            Verdict {
                target,
                met: judged.as_ref().map(|(met, _)| *met),
                details: judged.map(|(_, details)| details).unwrap_or_default(),
            }
        })
        .collect()
}

pub fn print(verdicts: &[Verdict]) {
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
