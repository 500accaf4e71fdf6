//! The printed output: the run's header, the results as text and Markdown tables,
//! and where chat-lb sent its attempts.

use std::{fmt::Write as _, net::SocketAddr};

use crate::{
    cluster::Cluster,
    machine::{Machine, load_average},
    plan::Plan,
    stats::Row,
    targets,
    workload::CALL_DEADLINE,
};

/// What runs, before any figure.
pub fn print_header(plan: &Plan, machine: &Machine, cluster: &Cluster) {
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
    if let Some(t) = &cluster.tail {
        println!(
            "tail        T {} (pid {}): stalls 50ms on 5% of its chat calls (never health checks)",
            t.address(),
            t.pid().unwrap_or(0)
        );
    }
    println!("store       {}", cluster.store_dir().display());
    if !cluster.store.starts_with("sqlite:") {
        // Not printed: a connection string may hold a password.
        println!("            replicas on the --store-uri given, not on SQLite");
    }
    println!("placement   {}", plan.placement);
    let transport = match plan.tls {
        Some(_) => "TLS for every contender (rustls, ECDSA P-256 certificates)",
        None => "plaintext HTTP/2",
    };
    println!("transport   {transport}");
    let metrics = if plan.server_metrics {
        "on (--metrics-addr)"
    } else {
        "off"
    };
    println!("metrics     {metrics}");
    println!("direct      one Channel to A (to P1 in steady-one-process)");
    println!("chat-lb     {}", plan.chat_lb());
    println!(
        "chat-lb-hedged  chat-lb + hedge_methods(every chat RPC but HealthCheck): a hedge \
         after the method's recent p95 (at least 2ms), hedge budget 10%+1/s"
    );
    println!();
}

/// The figures, the attempt shares, the load average and the targets; with
/// `markdown`, the figures again as a Markdown table.
pub fn print_results(rows: &[Row], plan: &Plan, machine: &Machine, markdown: bool) {
    let load_after = load_average();
    print!("{}", table(rows));
    println!("\nBalancer attempts per replica:\n{}", attempt_shares(rows));
    println!(
        "\nload average: {} before, {load_after} after",
        machine.load_before
    );
    println!();
    targets::print(&targets::verdicts(rows, plan));
    if markdown {
        println!();
        print!("{}", markdown_table(rows));
    }
}

/// A row's failed calls, with their codes.
pub fn failures_text(row: &Row) -> String {
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

/// Where each balancer contender sent its attempts, per scenario and concurrency
/// level, and how many more attempts than successful calls it made (retries and
/// hedges; failed calls count as extra too).
fn attempt_shares(rows: &[Row]) -> String {
    let mut out = String::new();
    for row in rows
        .iter()
        .filter(|r| r.contender.is_balancer() && !r.attempts.is_empty())
    {
        let total: u64 = row.attempts.iter().map(|(_, n)| n).sum();
        let shares: Vec<String> = row
            .attempts
            .iter()
            .map(|(name, n)| format!("{name} {:.2}%", *n as f64 * 100.0 / total.max(1) as f64))
            .collect();
        let extra = (total as f64 / row.calls.max(1) as f64 - 1.0) * 100.0;
        let _ = writeln!(
            out,
            "  {} {} c={}: {} of {total} attempts ({extra:+.1}% vs calls)",
            row.scenario.name(),
            row.contender.name(),
            row.concurrency,
            shares.join(", ")
        );
    }
    out
}

/// The results as a Markdown table.
fn markdown_table(rows: &[Row]) -> String {
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
