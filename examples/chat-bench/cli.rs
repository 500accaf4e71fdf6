//! The benchmark's flags (outside checks use their names and defaults: keep them).

use std::{path::PathBuf, time::Duration};

use clap::Parser;

use crate::{
    contender::Contender,
    lb_settings::{self, LbSetting},
    placement::CpuPlacement,
    scenario::Scenario,
};

/// The benchmark's flags.
#[derive(Debug, Parser)]
#[command(
    name = "chat-bench",
    about = "Benchmark chat-lb-client against a direct tonic Channel and Channel::balance_list"
)]
pub struct Options {
    /// Also write the results to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Seed of every random choice (round order, call mix) [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Measured time per contender, scenario and concurrency level [default: 3s; --quick: 1s].
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Rounds that time is split into [default: 6; --quick: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Concurrent callers, comma-separated levels [default: 1,8,32; --quick: 1,32].
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<Vec<u32>>,
    /// A short run (under ~40s): the defaults above marked --quick.
    #[arg(long)]
    pub quick: bool,
    /// Percentage of calls that are SendMessage; the others are HealthCheck.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub send_percent: u8,
    /// Scenarios to run, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub scenarios: Option<Vec<Scenario>>,
    /// Contenders to run, comma-separated [default: all; ratios need direct].
    #[arg(long, value_delimiter = ',', value_enum)]
    pub contenders: Option<Vec<Contender>>,
    /// Live streams (one account each) on the receiving replica in the delivery
    /// scenarios.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub subscribers: u32,
    /// The delay injected into the slow replica.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub slow_delay: Duration,
    /// Directory for the temporary store [default: /dev/shm if present, else the temp
    /// dir; for `store-throughput`, the real disk: the temp dir unless it is a tmpfs,
    /// else target/].
    #[arg(long, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// Run the replicas on this store (their `--store`, e.g.
    /// `mongodb://127.0.0.1:27017/bench`; give it an empty database) instead of an
    /// SQLite file in the store directory; `sqlite-ceiling` still measures SQLite there.
    #[arg(long, value_name = "URI")]
    pub store_uri: Option<String>,
    /// Also print the results as a Markdown table.
    #[arg(long)]
    pub markdown: bool,
    /// Where the processes run: `shared` (wherever the OS puts them) or `split` (this
    /// client pinned to one CPU, the replicas to the others, like a client host and a
    /// server host; Linux, 2+ CPUs).
    #[arg(long, value_enum, default_value_t = CpuPlacement::Shared)]
    pub placement: CpuPlacement,
    /// Overrides a chat-lb setting: KEY names a `chat_lb_client::Builder` setter (for
    /// experiments, e.g. `--lb-set policy=pick_first`, `--lb-set ewma_decay=1s`);
    /// repeatable.
    #[arg(long, value_name = "KEY=VALUE", value_parser = lb_settings::parse)]
    pub lb_set: Vec<LbSetting>,
    /// Run every contender over TLS: the replicas serve certificates made at start
    /// (as `chat-server gen-certs` makes them) and every client trusts their CA.
    #[arg(long)]
    pub tls: bool,
    /// Every replica serves Prometheus metrics (`--metrics-addr 127.0.0.1:0`), to
    /// compare throughput with metrics on against a run without this flag.
    #[arg(long)]
    pub server_metrics: bool,
}

/// A duration flag, in humantime syntax (`250ms`, `2s`, `1m 30s`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?}: {e} (expected e.g. \"250ms\", \"2s\", \"1m 30s\")")
    })
}
