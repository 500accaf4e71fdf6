//! `chat-bench`: the chat-lb-client balancer against a plain tonic `Channel` and
//! tonic's own `Channel::balance_list`, on real replicas, healthy and failing.
//!
//! ```sh
//! cargo run --release --example chat-bench -- [--json FILE] [--seed N] [--duration 3s]
//!     [--rounds 6] [--concurrency 1,8,32] [--send-percent 20] [--placement split]
//!     [--quick] [--markdown] [--tls]
//! ```
//!
//! A default run takes about three minutes, `--quick` (1s per measurement, concurrency
//! 1 and 32) about 45s. `--help` lists the flags for experiments: `--scenarios`,
//! `--contenders`, `--lb-set KEY=VALUE` (a balancer setting by name, e.g.
//! `policy=round_robin`; the keys are in `lb_settings.rs`). With `RUST_LOG` set, the
//! client logs to stderr (the balancer's judgements: `RUST_LOG=chat_lb_client=warn`),
//! and so do the replicas.
//!
//! The example starts its own replicas: it re-executes itself with `--replica`, which
//! runs `chat_server::run` (see `chat_testkit::replica`), so nothing but `cargo run` is
//! needed. Then, for each scenario and concurrency level, every contender carries the
//! same seeded calls in alternating rounds; the figures, the share of each balancer
//! contender's attempts each replica got, and the balancer's targets (issue 6 and
//! issue 13's tail-latency one), met or not, are printed at the end, and written as
//! JSON lines with `--json FILE`.
//!
//! Everything runs on one machine: the replicas share its CPUs (with the client, unless
//! `--placement split`), so a balancer that spreads calls over three processes pays
//! for it in CPU and wake-ups that replicas on separate hosts would not cost, and even
//! over three connections to one process the server reads and writes fewer calls per
//! system call; `direct` pays neither. `steady-one-process` removes the first cost,
//! `chat-lb-single` both.
//!
//! Where each part is explained, at the code that does it:
//! - `cli.rs`: the flags; `plan.rs`: the settings of a run after defaults;
//!   `lb_settings.rs`: `--lb-set` keys onto the balancer's builder;
//! - `scenario.rs`: the scenarios; `contender.rs`: the contenders and their transports;
//!   `ceiling.rs`: `sqlite-ceiling`, the disk's raw commit rate;
//! - `cluster.rs`: the replicas and which address lists they make;
//!   `placement.rs`: `--placement`; `tls.rs`: `--tls`;
//! - `workload.rs`: the callers and their calls; `faults.rs`: the replica killed
//!   during `killed-replica` rounds; `rounds.rs`: the method (warm-up, alternating
//!   rounds); `delivery.rs`: the delivery scenarios' own method;
//! - `stats.rs`: what the figures mean; `report.rs` and `json.rs`: the output;
//!   `targets.rs`: the targets checked; `machine.rs`, `progress.rs`: the rest.

mod ceiling;
mod cli;
mod cluster;
mod contender;
mod delivery;
mod faults;
mod json;
mod lb_settings;
mod machine;
mod placement;
mod plan;
mod progress;
mod report;
mod rounds;
mod scenario;
mod stats;
mod targets;
mod tls;
mod workload;

use std::{process::ExitCode, sync::Arc};

use anyhow::{Context, anyhow, bail};
use clap::Parser;

use crate::{
    cli::Options, cluster::Cluster, machine::Machine, plan::Plan, progress::Progress,
    rounds::Runner, scenario::Scenario, stats::Row, tls::BenchTls, workload::Workload,
};

fn main() -> ExitCode {
    if let Some(code) = chat_testkit::replica::run_if_replica(chat_server::run) {
        return code;
    }
    let options = Options::parse();
    // Quiet unless asked: `RUST_LOG=chat_lb_client=warn` shows the balancer's own
    // judgements (an endpoint marked slow, ejected, readmitted) on stderr, to count them.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // Pinning comes first: the runtime sizes its worker pool on the CPUs it may use.
    let outcome = placement::place(options.placement)
        .and_then(|cpus| {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            Ok((runtime, cpus))
        })
        // The replicas are spawned from this (the main) thread, which outlives them.
        .and_then(|(runtime, cpus)| runtime.block_on(run(options, cpus)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options, replica_cpus: Vec<usize>) -> anyhow::Result<()> {
    let mut plan = Plan::from_options(&options);
    plan.placement = placement::describe(options.placement, &replica_cpus);
    if options.tls {
        plan.tls = Some(BenchTls::make().context("cannot make the TLS certificates")?);
    }
    if plan.concurrency.is_empty() || plan.scenarios.is_empty() {
        bail!("nothing to run: give at least one concurrency level and scenario");
    }
    let runs = |s: Scenario| plan.contenders.iter().any(|c| c.runs_in(s));
    if !plan.scenarios.iter().copied().any(runs) {
        bail!(
            "nothing to run: chat-lb-single runs only in the steady scenarios, the delivery scenarios only with direct"
        );
    }
    let machine = Machine::read();
    let mut rows = Vec::new();
    // The scenarios on the in-memory store, then store-throughput on the real disk.
    for part in plan.by_store() {
        rows.extend(run_on_one_store(part, &options, &machine, &replica_cpus).await?);
    }

    report::print_results(&rows, &plan, &machine, options.markdown);
    if let Some(path) = &options.json {
        json::write(path, &rows, &plan, &machine)?;
        println!("\nJSON lines written to {}", path.display());
    }
    if rows.iter().all(|r| r.calls == 0) {
        return Err(anyhow!("no call succeeded"));
    }
    Ok(())
}

/// Runs `plan` on a cluster of its own (one store); returns the rows.
async fn run_on_one_store(
    plan: Plan,
    options: &Options,
    machine: &Machine,
    replica_cpus: &[usize],
) -> anyhow::Result<Vec<Row>> {
    let cluster = Cluster::start(
        &plan,
        options.store_dir.as_deref(),
        options.store_uri.as_deref(),
        replica_cpus,
    )
    .await
    .context("cannot start the replicas")?;
    report::print_header(&plan, machine, &cluster);
    let reference = cluster.reference(Scenario::Steady);
    let workload = Arc::new(Workload::prepare(&plan, reference).await?);
    let progress = Progress::new(plan.estimate());
    let mut runner = Runner {
        plan,
        workload,
        cluster,
        progress,
    };
    let rows = runner.run_all().await;
    let Runner {
        cluster, progress, ..
    } = runner;
    progress.finish();
    cluster.stop().await;
    rows
}
