//! `--lb-set KEY=VALUE`: a balancer setting by name, mapped here onto the typed
//! `chat_lb_client::Builder` setter of that name (the library takes no string keys).
//!
//! Keys (`-` and `_` are equivalent, case does not matter): `policy` (`p2c` |
//! `round_robin` | `pick_first`), `probe_interval`, `probe_timeout`, `probe_jitter`,
//! `unhealthy_threshold`, `healthy_threshold`, `health_watch`,
//! `slow_endpoint_detection`, `slow_endpoint_factor`, `slow_endpoint_min_latency`,
//! `slow_start_window` (a duration, or `off`), `slow_start_aggression`,
//! `slow_start_min_weight`,
//! `outlier_detection`, `base_ejection_time`, `max_ejection_time`,
//! `max_ejection_percent`, `failure_codes` (comma-separated gRPC code names such as
//! `unavailable,internal`, or `none`), `consecutive_failures` (a number or `off`),
//! `accrual_window`, `success_rate_ejection`, `success_rate_stdev_factor`,
//! `success_rate_minimum_hosts`, `success_rate_request_volume`,
//! `failure_percentage_ejection`, `failure_percentage_threshold`,
//! `failure_percentage_minimum_hosts`, `failure_percentage_request_volume`,
//! `failure_percentage_minimum_failures`, `retry_safe` (`none` | `all` | a method path prefix),
//! `max_attempts`, `per_try_timeout`, `retry_budget_ratio`, `retry_budget_min_per_sec`,
//! `retry_budget_window`, `max_replay_bytes`, `timeout`, `wait_for_ready`,
//! `connect_timeout`, `resolve_interval`, `resolve_timeout`, `default_rtt`, `p2c_tolerance`,
//! `p2c_cost` (`latency` | `latency_times_outstanding`),
//! `ewma_decay`, `hedge_delay` (`pNN` for that percentile of the method's recent
//! latency, e.g. `p95`, or a fixed duration), `hedge_min_delay` (the floor of a
//! percentile delay; both matter for `chat-lb-hedged` only).
//! Durations are humantime text (`250ms`, `2s`); `per_try_timeout`, `timeout` and
//! `wait_for_ready` also take `off` or `none`.

use std::{fmt, str::FromStr, sync::Arc, time::Duration};

use chat_lb_client::{Builder, HedgeDelay, P2cCost, Policy, RetrySafe};
use tonic::Code;

/// One `--lb-set` override: its text (for the output) and what it sets.
#[derive(Clone)]
pub struct LbSetting {
    /// The key as given, trimmed.
    pub key: String,
    /// The value as given, trimmed.
    pub value: String,
    setter: Setter,
}

impl fmt::Debug for LbSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// What a setting does to the builder.
#[derive(Clone)]
enum Setter {
    /// A setter that takes the value alone.
    Plain(Arc<dyn Fn(Builder) -> Builder + Send + Sync>),
    /// The two halves of the retry budget, which the builder sets together.
    BudgetRatio(f64),
    BudgetMinPerSec(u32),
}

/// The builder's retry budget before any `--lb-set` (its documented default).
const DEFAULT_BUDGET: (f64, u32) = (0.2, 10);

/// Reads `KEY=VALUE` (a `clap` value parser), checking it now so that a typo fails
/// before any replica starts.
pub fn parse(text: &str) -> Result<LbSetting, String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {text:?}"))?;
    let setter = setter(key, value.trim())?;
    Ok(LbSetting {
        key: key.trim().to_owned(),
        value: value.trim().to_owned(),
        setter,
    })
}

/// Applies `settings` to `builder`, in order (a later one wins).
pub fn apply(settings: &[LbSetting], mut builder: Builder) -> Builder {
    let (mut ratio, mut min_per_sec) = DEFAULT_BUDGET;
    for setting in settings {
        builder = match &setting.setter {
            Setter::Plain(set) => set(builder),
            Setter::BudgetRatio(r) => {
                ratio = *r;
                builder.retry_budget(ratio, min_per_sec)
            }
            Setter::BudgetMinPerSec(m) => {
                min_per_sec = *m;
                builder.retry_budget(ratio, min_per_sec)
            }
        };
    }
    builder
}

/// The setter `key` names, with `value` read for it.
fn setter(key: &str, value: &str) -> Result<Setter, String> {
    let text = Text { key, value };
    let norm = key.trim().to_ascii_lowercase().replace('-', "_");
    Ok(match norm.as_str() {
        "policy" => with(text.policy()?, Builder::policy),
        "probe_interval" => with(text.duration()?, Builder::probe_interval),
        "probe_timeout" => with(text.duration()?, Builder::probe_timeout),
        "probe_jitter" => with(text.parse()?, Builder::probe_jitter),
        "unhealthy_threshold" => with(text.parse()?, Builder::unhealthy_threshold),
        "healthy_threshold" => with(text.parse()?, Builder::healthy_threshold),
        "health_watch" => with(text.parse()?, Builder::health_watch),
        "slow_endpoint_detection" => with(text.parse()?, Builder::slow_endpoint_detection),
        "slow_endpoint_factor" => with(text.parse()?, Builder::slow_endpoint_factor),
        "slow_endpoint_min_latency" => with(text.duration()?, Builder::slow_endpoint_min_latency),
        "slow_start_window" => with(text.optional_duration()?, |b, d| b.slow_start_window(d)),
        "slow_start_aggression" => with(text.parse()?, Builder::slow_start_aggression),
        "slow_start_min_weight" => with(text.parse()?, Builder::slow_start_min_weight),
        "outlier_detection" => with(text.parse()?, Builder::outlier_detection),
        "base_ejection_time" => with(text.duration()?, Builder::base_ejection_time),
        "max_ejection_time" => with(text.duration()?, Builder::max_ejection_time),
        "max_ejection_percent" => with(text.parse()?, Builder::max_ejection_percent),
        "failure_codes" => with(text.codes()?, |b, codes: Vec<Code>| b.failure_codes(codes)),
        "consecutive_failures" => with(text.optional()?, |b, n| b.consecutive_failures(n)),
        "accrual_window" => with(text.duration()?, Builder::accrual_window),
        "success_rate_ejection" => with(text.parse()?, Builder::success_rate_ejection),
        "success_rate_stdev_factor" => with(text.parse()?, Builder::success_rate_stdev_factor),
        "success_rate_minimum_hosts" => with(text.parse()?, Builder::success_rate_minimum_hosts),
        "success_rate_request_volume" => with(text.parse()?, Builder::success_rate_request_volume),
        "failure_percentage_ejection" => with(text.parse()?, Builder::failure_percentage_ejection),
        "failure_percentage_threshold" => {
            with(text.parse()?, Builder::failure_percentage_threshold)
        }
        "failure_percentage_minimum_hosts" => {
            with(text.parse()?, Builder::failure_percentage_minimum_hosts)
        }
        "failure_percentage_request_volume" => {
            with(text.parse()?, Builder::failure_percentage_request_volume)
        }
        "failure_percentage_minimum_failures" => {
            with(text.parse()?, Builder::failure_percentage_minimum_failures)
        }
        "retry_safe" => with(text.retry_safe()?, Builder::retry_safe),
        "max_attempts" => with(text.parse()?, Builder::max_attempts),
        "per_try_timeout" => with(text.optional_duration()?, |b, d| b.per_try_timeout(d)),
        "retry_budget_ratio" => Setter::BudgetRatio(text.parse()?),
        "retry_budget_min_per_sec" => Setter::BudgetMinPerSec(text.parse()?),
        "retry_budget_window" => with(text.duration()?, Builder::retry_budget_window),
        "max_replay_bytes" => with(text.parse()?, Builder::max_replay_bytes),
        "timeout" => with(text.optional_duration()?, |b, d| b.timeout(d)),
        "wait_for_ready" => with(text.optional_duration()?, |b, d| b.wait_for_ready(d)),
        "connect_timeout" => with(text.duration()?, Builder::connect_timeout),
        "resolve_interval" => with(text.duration()?, Builder::resolve_interval),
        "resolve_timeout" => with(text.duration()?, Builder::resolve_timeout),
        "default_rtt" => with(text.duration()?, Builder::default_rtt),
        "p2c_tolerance" => with(text.parse()?, Builder::p2c_tolerance),
        "p2c_cost" => with(text.p2c_cost()?, Builder::p2c_cost),
        "ewma_decay" => with(text.duration()?, Builder::ewma_decay),
        "hedge_delay" => with(text.hedge_delay()?, Builder::hedge_delay),
        "hedge_min_delay" => with(text.duration()?, Builder::hedge_min_delay),
        _ => return Err(format!("unknown balancer setting {key:?}")),
    })
}

/// A setter that takes `value`.
fn with<T>(value: T, set: fn(Builder, T) -> Builder) -> Setter
where
    T: Clone + Send + Sync + 'static,
{
    Setter::Plain(Arc::new(move |builder| set(builder, value.clone())))
}

/// A setting's value, read for its key.
struct Text<'a> {
    key: &'a str,
    value: &'a str,
}

impl Text<'_> {
    fn invalid(&self, reason: impl fmt::Display) -> String {
        format!(
            "invalid value {:?} for balancer setting {:?}: {reason}",
            self.value, self.key
        )
    }

    fn parse<T: FromStr>(&self) -> Result<T, String>
    where
        T::Err: fmt::Display,
    {
        self.value.parse().map_err(|e| self.invalid(e))
    }

    fn duration(&self) -> Result<Duration, String> {
        humantime::parse_duration(self.value).map_err(|e| self.invalid(e))
    }

    /// A duration, or `off`/`none` for none.
    fn optional_duration(&self) -> Result<Option<Duration>, String> {
        match self.value {
            "off" | "none" => Ok(None),
            _ => self.duration().map(Some),
        }
    }

    /// A number, or `off`/`none` for none.
    fn optional<T: FromStr>(&self) -> Result<Option<T>, String>
    where
        T::Err: fmt::Display,
    {
        match self.value {
            "off" | "none" => Ok(None),
            _ => self.parse().map(Some),
        }
    }

    /// gRPC code names (`internal`, `DATA_LOSS`, `data-loss`), comma-separated;
    /// `none` for none.
    fn codes(&self) -> Result<Vec<Code>, String> {
        if self.value == "none" {
            return Ok(Vec::new());
        }
        self.value
            .split(',')
            .map(|name| {
                let norm = name.trim().to_ascii_lowercase().replace(['-', '_'], "");
                (0..17)
                    .map(Code::from_i32)
                    .find(|code| format!("{code:?}").to_ascii_lowercase() == norm)
                    .ok_or_else(|| self.invalid(format!("{name:?} is not a gRPC code name")))
            })
            .collect()
    }

    /// `pNN` (a percentile) or a duration.
    fn hedge_delay(&self) -> Result<HedgeDelay, String> {
        match self.value.strip_prefix('p') {
            Some(percentile) => percentile
                .parse()
                .map(HedgeDelay::Percentile)
                .map_err(|e| self.invalid(e)),
            None => self.duration().map(HedgeDelay::Fixed),
        }
    }

    fn policy(&self) -> Result<Policy, String> {
        match self.value {
            "p2c" | "power_of_two_choices" => Ok(Policy::PowerOfTwoChoices),
            "round_robin" | "rr" => Ok(Policy::RoundRobin),
            "pick_first" | "first" => Ok(Policy::PickFirst),
            _ => Err(self.invalid("expected p2c, round_robin or pick_first")),
        }
    }

    fn p2c_cost(&self) -> Result<P2cCost, String> {
        match self.value {
            "latency" => Ok(P2cCost::Latency),
            "latency_times_outstanding" => Ok(P2cCost::LatencyTimesOutstanding),
            _ => Err(self.invalid("expected latency or latency_times_outstanding")),
        }
    }

    fn retry_safe(&self) -> Result<RetrySafe, String> {
        match self.value {
            "none" => Ok(RetrySafe::None),
            "all" => Ok(RetrySafe::All),
            prefix if prefix.starts_with('/') => Ok(RetrySafe::prefix(prefix)),
            _ => {
                Err(self
                    .invalid("expected none, all or a method path prefix such as /pkg.Service/"))
            }
        }
    }
}
