//! The settings of one run, after defaults.

use std::{fmt::Write as _, time::Duration};

use crate::{
    cli::Options, contender::Contender, lb_settings::LbSetting, scenario::Scenario, tls::BenchTls,
};

/// How the balancer is configured (before `--lb-set`), for the output.
const CHAT_LB_SETTINGS: &str = "defaults (p2c on peak EWMA within a factor of 2, ChatHealthProbe every 500ms, \
     eject 1s on a failed call, max 3 attempts, per-try timeout 2s, retry budget 20%+10/s) \
     + retry_safe(prefix \"/chat.v1.ChatService/\")";

/// The settings of one run, after defaults.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub duration: Duration,
    pub rounds: u32,
    pub concurrency: Vec<u32>,
    pub scenarios: Vec<Scenario>,
    pub contenders: Vec<Contender>,
    pub send_percent: u8,
    pub slow_delay: Duration,
    pub warmup: Duration,
    /// Subscribers in the delivery scenarios (`--subscribers`).
    pub subscribers: u32,
    /// `--lb-set` overrides of the balancer's settings.
    pub lb_settings: Vec<LbSetting>,
    /// Where the processes run, for the output.
    pub placement: String,
    /// The certificates, when every contender runs over TLS.
    pub tls: Option<BenchTls>,
    /// Whether the replicas record and serve Prometheus metrics (`--server-metrics`).
    pub server_metrics: bool,
}

impl Plan {
    /// The flags, with the defaults (`--quick`'s where asked) filled in.
    pub fn from_options(options: &Options) -> Self {
        let (duration, rounds, concurrency) = if options.quick {
            (Duration::from_secs(1), 2, vec![1, 32])
        } else {
            (Duration::from_secs(3), 6, vec![1, 8, 32])
        };
        let mut scenarios = options.scenarios.clone().unwrap_or(Scenario::ALL.to_vec());
        scenarios.sort();
        scenarios.dedup();
        let mut contenders = options
            .contenders
            .clone()
            .unwrap_or(Contender::ALL.to_vec());
        contenders.sort();
        contenders.dedup();
        Self {
            seed: options.seed.unwrap_or_else(clock_seed),
            duration: options.duration.unwrap_or(duration),
            rounds: options.rounds.unwrap_or(rounds),
            concurrency: options.concurrency.clone().unwrap_or(concurrency),
            scenarios,
            contenders,
            send_percent: options.send_percent,
            slow_delay: options.slow_delay,
            subscribers: options.subscribers,
            warmup: if options.quick {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(200)
            },
            lb_settings: options.lb_set.clone(),
            placement: String::new(),
            tls: None,
            server_metrics: options.server_metrics,
        }
    }

    /// The length of one measured round.
    pub fn round(&self) -> Duration {
        self.duration / self.rounds
    }

    /// A rough total, for the progress display.
    pub fn estimate(&self) -> Duration {
        let contenders_in = |scenario: Scenario| {
            if scenario.is_delivery() {
                // Once, whatever the concurrency levels, with a warm-up of its own.
                return 2;
            }
            let n = self
                .contenders
                .iter()
                .filter(|c| c.runs_in(scenario))
                .count();
            (n * self.concurrency.len()) as u32
        };
        let cells: u32 = self.scenarios.iter().map(|&s| contenders_in(s)).sum();
        let restarts = if self.scenarios.contains(&Scenario::KilledReplica) {
            Duration::from_millis(100) * self.rounds * contenders_in(Scenario::KilledReplica)
        } else {
            Duration::ZERO
        };
        let ceiling = if self.measures_ceiling() {
            self.duration
        } else {
            Duration::ZERO
        };
        (self.duration + self.warmup) * cells + restarts + ceiling
    }

    /// Whether the run measures `sqlite-ceiling` (once, in `store-throughput`).
    pub fn measures_ceiling(&self) -> bool {
        self.scenarios.contains(&Scenario::StoreThroughput)
            && self.contenders.contains(&Contender::SqliteCeiling)
    }

    /// How chat-lb is configured, for the output.
    pub fn chat_lb(&self) -> String {
        let mut text = CHAT_LB_SETTINGS.to_owned();
        for setting in &self.lb_settings {
            let _ = write!(text, " + {}={}", setting.key, setting.value);
        }
        text
    }

    /// The call mix, for the output.
    pub fn workload(&self) -> String {
        workload_of(self.send_percent)
    }

    /// The plan split by store: the scenarios on the in-memory store, then those on
    /// the real disk (`store-throughput`, whose calls are all sends), each part
    /// started on a cluster of its own.
    pub fn by_store(&self) -> Vec<Plan> {
        let (disk, memory): (Vec<Scenario>, Vec<Scenario>) =
            self.scenarios.iter().partition(|s| s.on_disk());
        [memory, disk]
            .into_iter()
            .filter(|scenarios| !scenarios.is_empty())
            .map(|scenarios| Plan {
                send_percent: scenarios[0].send_percent(self.send_percent),
                scenarios,
                ..self.clone()
            })
            .collect()
    }
}

/// A call mix, for the output.
pub fn workload_of(send_percent: u8) -> String {
    format!(
        "{}% HealthCheck, {send_percent}% SendMessage",
        100 - send_percent
    )
}

/// A seed from the clock, short enough to retype.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        % 1_000_000
}
