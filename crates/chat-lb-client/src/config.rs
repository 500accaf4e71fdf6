//! The balancer's settings and their defaults.
//!
//! Every field is set through [`crate::Builder`]; the defaults (listed on each
//! builder method and in [`crate`]'s guide) are tuned for replicas on one LAN:
//! sub-second failure detection, millisecond latencies.

use std::{sync::Arc, time::Duration};

use crate::{
    classify::FailureCodes,
    error::ConfigError,
    hedge::HedgeDelay,
    picker::{P2cCost, Policy},
    retry::RetrySafe,
    tls::ClientTls,
};

/// Hook to adjust each endpoint's `tonic::transport::Endpoint` (user agent, window
/// sizes, ...) after the balancer applied its own connection settings.
pub(crate) type EndpointHook =
    Arc<dyn Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync>;

/// Active health checking.
#[derive(Debug, Clone)]
pub(crate) struct HealthConfig {
    pub interval: Duration,
    pub timeout: Duration,
    /// Each wait between probes is `interval * (1 ± jitter)`.
    pub jitter: f64,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
    /// Whether to use the probe's push channel (`Watch`), when it has one.
    pub watch: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            jitter: 0.1,
            unhealthy_threshold: 2,
            healthy_threshold: 1,
            watch: true,
        }
    }
}

/// Passive health checking (outlier detection; see `outlier`).
#[derive(Debug, Clone)]
pub(crate) struct OutlierConfig {
    pub enabled: bool,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u8,
    /// The status codes whose answers are failures (see `classify`).
    pub failure_codes: FailureCodes,
    /// Failed attempts in a row that eject; `None`: off.
    pub consecutive_failures: Option<u32>,
    /// The sliding window the success-rate and failure-percentage detectors
    /// count attempts over.
    pub window: Duration,
    pub success_rate: SuccessRateConfig,
    pub failure_percentage: FailurePercentageConfig,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 50,
            failure_codes: FailureCodes::default(),
            consecutive_failures: Some(5),
            window: Duration::from_secs(10),
            success_rate: SuccessRateConfig::default(),
            failure_percentage: FailurePercentageConfig::default(),
        }
    }
}

/// gRPC A50's success-rate ejection (see `outlier::accrual`).
#[derive(Debug, Clone)]
pub(crate) struct SuccessRateConfig {
    pub enabled: bool,
    /// Ejected below `mean - stdev_factor * stdev` of the endpoints' rates.
    pub stdev_factor: f64,
    /// Endpoints with `request_volume` needed for any judgement.
    pub minimum_hosts: u32,
    /// Attempts in the window an endpoint needs to be judged or counted.
    pub request_volume: u32,
}

impl Default for SuccessRateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            stdev_factor: 1.9,
            minimum_hosts: 5,
            request_volume: 100,
        }
    }
}

/// gRPC A50's failure-percentage ejection (see `outlier::accrual`).
#[derive(Debug, Clone)]
pub(crate) struct FailurePercentageConfig {
    pub enabled: bool,
    /// Ejected over this share of failed attempts, in percent.
    pub threshold: u8,
    /// Endpoints with `request_volume` needed for any judgement.
    pub minimum_hosts: u32,
    /// Attempts in the window an endpoint needs to be judged or counted.
    pub request_volume: u32,
    /// Failed attempts in the window an endpoint needs to be ejected.
    pub minimum_failures: u32,
}

impl Default for FailurePercentageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 3,
            minimum_hosts: 3,
            request_volume: 50,
            minimum_failures: 5,
        }
    }
}

/// Slow-endpoint detection: a healthy endpoint whose probes answer much more
/// slowly than the other healthy endpoints' is demoted to the fallback tier.
#[derive(Debug, Clone)]
pub(crate) struct SlowConfig {
    pub enabled: bool,
    /// Slow when its probe latency is over `factor` times the median of the
    /// others'; no longer slow under `2/3 * factor` times.
    pub factor: f64,
    /// Never slow at or under this probe latency.
    pub min_latency: Duration,
}

impl SlowConfig {
    /// The factor under which a slow endpoint is no longer slow.
    pub fn clear_factor(&self) -> f64 {
        self.factor * 2.0 / 3.0
    }
}

impl Default for SlowConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 3.0,
            min_latency: Duration::from_millis(10),
        }
    }
}

/// Slow start: the share of calls of an endpoint that (re)joins the healthy
/// tier ramps up over `window` (see `ramp`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SlowStartConfig {
    /// `None`: off.
    pub window: Option<Duration>,
    /// The curve's exponent is `1 / aggression` (1: linear).
    pub aggression: f64,
    /// The weight at the start of the window.
    pub min_weight: f64,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        Self {
            window: Some(Duration::from_secs(10)),
            aggression: 1.0,
            min_weight: 0.1,
        }
    }
}

/// Retries and the retry budget.
#[derive(Clone)]
pub(crate) struct RetryConfig {
    pub safe: RetrySafe,
    /// Attempts of a retry-safe call that failed after reaching a server,
    /// counting the first.
    pub max_attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub budget_ratio: f64,
    pub budget_min_per_sec: u32,
    pub budget_window: Duration,
    pub max_replay_bytes: usize,
    /// The first backoff of a retry that must wait (see `retry::backoff`).
    pub backoff_base: Duration,
    /// The longest backoff.
    pub backoff_max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            safe: RetrySafe::None,
            max_attempts: 3,
            per_try_timeout: Some(Duration::from_secs(2)),
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            budget_window: Duration::from_secs(10),
            max_replay_bytes: 1024 * 1024,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// Hedging (see `hedge`).
#[derive(Debug, Clone)]
pub(crate) struct HedgeConfig {
    /// The full method paths (`/package.Service/Method`) of the hedged calls.
    pub methods: Vec<String>,
    pub delay: HedgeDelay,
    /// The least adaptive hedging delay (see `hedge`).
    pub min_delay: Duration,
    /// The hedge budget: hedges per hedged call, plus a floor per second,
    /// over the retry budget's window.
    pub budget_ratio: f64,
    pub budget_min_per_sec: u32,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            methods: Vec::new(),
            delay: HedgeDelay::default(),
            min_delay: crate::hedge::DEFAULT_MIN_DELAY,
            budget_ratio: 0.1,
            budget_min_per_sec: 1,
        }
    }
}

/// Connection settings of each endpoint's channel.
#[derive(Clone)]
pub(crate) struct ConnectConfig {
    pub connect_timeout: Duration,
    pub tcp_nodelay: bool,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub hook: Option<EndpointHook>,
    /// TLS for every endpoint (`None`: plaintext), set by `Builder::build`.
    pub tls: Option<Arc<ClientTls>>,
}

impl Default for ConnectConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(1),
            tcp_nodelay: true,
            keepalive_interval: Some(Duration::from_secs(10)),
            keepalive_timeout: Duration::from_secs(5),
            hook: None,
            tls: None,
        }
    }
}

/// The default of [`Builder::p2c_tolerance`](crate::Builder::p2c_tolerance).
pub(crate) const DEFAULT_P2C_TOLERANCE: f64 = 2.0;

/// Everything the builder collects.
#[derive(Clone)]
pub(crate) struct Config {
    pub policy: Policy,
    /// Power of two choices: costs within this factor count as equal.
    pub p2c_tolerance: f64,
    /// Power of two choices: what it compares.
    pub p2c_cost: P2cCost,
    pub health: HealthConfig,
    pub outlier: OutlierConfig,
    pub slow: SlowConfig,
    pub slow_start: SlowStartConfig,
    pub retry: RetryConfig,
    pub hedge: HedgeConfig,
    pub connect: ConnectConfig,
    pub default_timeout: Option<Duration>,
    pub wait_for_ready: Option<Duration>,
    pub resolve_interval: Duration,
    pub resolve_timeout: Duration,
    pub default_rtt: Duration,
    pub ewma_decay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            p2c_tolerance: DEFAULT_P2C_TOLERANCE,
            p2c_cost: P2cCost::default(),
            health: HealthConfig::default(),
            outlier: OutlierConfig::default(),
            slow: SlowConfig::default(),
            slow_start: SlowStartConfig::default(),
            retry: RetryConfig::default(),
            hedge: HedgeConfig::default(),
            connect: ConnectConfig::default(),
            default_timeout: None,
            wait_for_ready: None,
            resolve_interval: Duration::from_secs(30),
            resolve_timeout: Duration::from_secs(5),
            default_rtt: Duration::from_millis(1),
            ewma_decay: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Rejects settings that cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_health()?;
        self.validate_outlier()?;
        self.validate_slow()?;
        self.validate_retry()?;
        self.validate_hedging()?;
        check(
            !self.resolve_interval.is_zero(),
            "resolve_interval",
            "must be above zero",
        )?;
        check(
            self.p2c_tolerance.is_finite() && self.p2c_tolerance >= 1.0,
            "p2c_tolerance",
            "must be a finite factor of at least 1",
        )?;
        check(
            !self.ewma_decay.is_zero(),
            "ewma_decay",
            "must be above zero",
        )?;
        Ok(())
    }

    /// The active health checks' settings.
    fn validate_health(&self) -> Result<(), ConfigError> {
        let h = &self.health;
        check(
            !h.interval.is_zero(),
            "probe_interval",
            "must be above zero",
        )?;
        check(!h.timeout.is_zero(), "probe_timeout", "must be above zero")?;
        check(
            (0.0..1.0).contains(&h.jitter),
            "probe_jitter",
            "must be in [0, 1)",
        )?;
        check(
            h.unhealthy_threshold >= 1,
            "unhealthy_threshold",
            "must be at least 1",
        )?;
        check(
            h.healthy_threshold >= 1,
            "healthy_threshold",
            "must be at least 1",
        )?;
        Ok(())
    }

    /// Outlier detection's settings, failure accrual's included.
    fn validate_outlier(&self) -> Result<(), ConfigError> {
        let o = &self.outlier;
        check(
            o.max_ejection_percent <= 100,
            "max_ejection_percent",
            "must be at most 100",
        )?;
        check(
            o.max_ejection_time >= o.base_ejection_time,
            "max_ejection_time",
            "must not be below base_ejection_time",
        )?;
        o.validate_accrual()?;
        Ok(())
    }

    /// Slow-endpoint detection's and slow start's settings.
    fn validate_slow(&self) -> Result<(), ConfigError> {
        check(
            self.slow.factor.is_finite() && self.slow.factor >= 1.5,
            "slow_endpoint_factor",
            "must be a finite number >= 1.5 (it clears at 2/3 of it, which must not be below 1)",
        )?;
        let ramp = &self.slow_start;
        check(
            ramp.window.is_none_or(|w| !w.is_zero()),
            "slow_start_window",
            "must be above zero (or None: off)",
        )?;
        check(
            ramp.aggression.is_finite() && ramp.aggression > 0.0,
            "slow_start_aggression",
            "must be a finite number above zero",
        )?;
        check(
            ramp.min_weight > 0.0 && ramp.min_weight <= 1.0,
            "slow_start_min_weight",
            "must be above 0 and at most 1",
        )?;
        Ok(())
    }

    /// The retry settings and the retry budget.
    fn validate_retry(&self) -> Result<(), ConfigError> {
        let r = &self.retry;
        check(r.max_attempts >= 1, "max_attempts", "must be at least 1")?;
        check(
            !r.backoff_base.is_zero() && r.backoff_max >= r.backoff_base,
            "retry_backoff",
            "base must be above zero and max not below base",
        )?;
        // The ranges tower's `TpsBudget::new` accepts (it panics outside them).
        check(
            (0.0..=1000.0).contains(&r.budget_ratio),
            "retry_budget ratio",
            "must be a number from 0 to 1000",
        )?;
        check(
            r.budget_min_per_sec < i32::MAX as u32,
            "retry_budget min_per_sec",
            "must be below 2^31 - 1",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(60)).contains(&r.budget_window),
            "retry_budget_window",
            "must be from 1s to 60s",
        )?;
        check(
            r.per_try_timeout.is_none_or(|d| !d.is_zero()),
            "per_try_timeout",
            "must be above zero (or unset)",
        )?;
        Ok(())
    }
}

/// `Ok` when `ok`, else the error that `setting` has `problem`.
fn check(ok: bool, setting: &'static str, problem: &'static str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { setting, problem })
    }
}

impl OutlierConfig {
    /// Rejects failure-accrual settings that cannot work.
    fn validate_accrual(&self) -> Result<(), ConfigError> {
        check(
            self.failure_codes.application_code().is_none(),
            "failure_codes",
            "may hold only UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE and \
             DATA_LOSS (application outcomes never count against a replica)",
        )?;
        check(
            self.consecutive_failures != Some(0),
            "consecutive_failures",
            "must be at least 1 (or off)",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.window),
            "accrual_window",
            "must be from 1s to 10m",
        )?;
        let sr = &self.success_rate;
        check(
            sr.stdev_factor.is_finite() && sr.stdev_factor > 0.0,
            "success_rate_stdev_factor",
            "must be a finite number above 0",
        )?;
        check(
            sr.minimum_hosts >= 1,
            "success_rate_minimum_hosts",
            "must be at least 1",
        )?;
        check(
            sr.request_volume >= 1,
            "success_rate_request_volume",
            "must be at least 1",
        )?;
        let fp = &self.failure_percentage;
        check(
            fp.threshold <= 100,
            "failure_percentage_threshold",
            "must be at most 100",
        )?;
        check(
            fp.minimum_hosts >= 1,
            "failure_percentage_minimum_hosts",
            "must be at least 1",
        )?;
        check(
            fp.request_volume >= 1,
            "failure_percentage_request_volume",
            "must be at least 1",
        )
    }
}

impl Config {
    /// Rejects hedging settings that cannot work: a hedged method must be a
    /// full method path that [`RetrySafe`] calls safe (a hedge runs the call
    /// twice on purpose); the delay must be positive (a percentile strictly
    /// between 0 and 100); the hedge budget is checked like the retry budget.
    fn validate_hedging(&self) -> Result<(), ConfigError> {
        let h = &self.hedge;
        for method in &h.methods {
            let problem = if !is_method_path(method) {
                Some("it is not a method path such as /package.Service/Method")
            } else if !self.retry.safe.is_safe(method) {
                Some("only retry-safe methods can be hedged (see Builder::retry_safe)")
            } else {
                None
            };
            if let Some(problem) = problem {
                return Err(ConfigError::Hedge {
                    method: method.clone(),
                    problem,
                });
            }
        }
        let delay_ok = match h.delay {
            HedgeDelay::Fixed(delay) => !delay.is_zero(),
            HedgeDelay::Percentile(p) => p > 0.0 && p < 100.0,
        };
        let out_of_range = |setting, problem| ConfigError::OutOfRange { setting, problem };
        if !delay_ok {
            return Err(out_of_range(
                "hedge_delay",
                "must be above zero (a percentile above 0 and below 100)",
            ));
        }
        if !(0.0..=1000.0).contains(&h.budget_ratio) {
            return Err(out_of_range(
                "hedge_budget ratio",
                "must be a number from 0 to 1000",
            ));
        }
        if h.budget_min_per_sec >= i32::MAX as u32 {
            return Err(out_of_range(
                "hedge_budget min_per_sec",
                "must be below 2^31 - 1",
            ));
        }
        Ok(())
    }
}

/// Whether `path` looks like `/package.Service/Method`.
fn is_method_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, method)| {
            !service.is_empty() && !method.is_empty() && !method.contains('/')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_of_range(cfg: &Config) -> Option<&'static str> {
        match cfg.validate() {
            Ok(()) => None,
            Err(ConfigError::OutOfRange { setting, .. }) => Some(setting),
            Err(other) => panic!("not a range error: {other}"),
        }
    }

    #[test]
    fn retry_budget_limits_are_those_tower_accepts() {
        let with = |f: fn(&mut RetryConfig)| {
            let mut cfg = Config::default();
            f(&mut cfg.retry);
            out_of_range(&cfg)
        };
        assert_eq!(with(|_| {}), None, "the defaults");
        assert_eq!(with(|r| r.budget_ratio = 0.0), None);
        assert_eq!(with(|r| r.budget_ratio = 1000.0), None);
        assert_eq!(with(|r| r.budget_min_per_sec = i32::MAX as u32 - 1), None);
        assert_eq!(with(|r| r.budget_window = Duration::from_secs(1)), None);
        assert_eq!(with(|r| r.budget_window = Duration::from_secs(60)), None);

        for ratio in [-0.1, 1000.5, f64::NAN, f64::INFINITY] {
            let mut cfg = Config::default();
            cfg.retry.budget_ratio = ratio;
            assert_eq!(out_of_range(&cfg), Some("retry_budget ratio"), "{ratio}");
        }
        assert_eq!(
            with(|r| r.budget_min_per_sec = i32::MAX as u32),
            Some("retry_budget min_per_sec")
        );
        assert_eq!(
            with(|r| r.budget_window = Duration::from_millis(999)),
            Some("retry_budget_window")
        );
        assert_eq!(
            with(|r| r.budget_window = Duration::from_secs(61)),
            Some("retry_budget_window")
        );
    }

    #[test]
    fn slow_start_and_backoff_limits() {
        let with = |f: fn(&mut Config)| {
            let mut cfg = Config::default();
            f(&mut cfg);
            out_of_range(&cfg)
        };
        assert_eq!(with(|c| c.slow_start.window = None), None, "off");
        assert_eq!(with(|c| c.slow_start.min_weight = 1.0), None);
        assert_eq!(with(|c| c.slow_start.aggression = 0.25), None);
        assert_eq!(
            with(|c| c.slow_start.window = Some(Duration::ZERO)),
            Some("slow_start_window")
        );
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut cfg = Config::default();
            cfg.slow_start.aggression = bad;
            assert_eq!(out_of_range(&cfg), Some("slow_start_aggression"), "{bad}");
        }
        for bad in [0.0, 1.5, f64::NAN] {
            let mut cfg = Config::default();
            cfg.slow_start.min_weight = bad;
            assert_eq!(out_of_range(&cfg), Some("slow_start_min_weight"), "{bad}");
        }
        assert_eq!(
            with(|c| c.retry.backoff_base = Duration::ZERO),
            Some("retry_backoff")
        );
        assert_eq!(
            with(|c| c.retry.backoff_max = Duration::from_millis(1)),
            Some("retry_backoff")
        );
    }

    #[test]
    fn a_bad_retry_budget_is_a_build_error_not_a_panic() {
        // `build` checks the settings before it needs a runtime.
        let error = crate::Builder::new()
            .retry_budget(1001.0, 10)
            .build()
            .expect_err("ratio over 1000");
        assert_eq!(
            error.to_string(),
            "balancer setting retry_budget ratio must be a number from 0 to 1000"
        );
        let error = crate::Builder::new()
            .retry_budget_window(Duration::from_secs(120))
            .build()
            .expect_err("window over 60s");
        assert!(
            matches!(
                error,
                crate::BuildError::Config(ConfigError::OutOfRange {
                    setting: "retry_budget_window",
                    ..
                })
            ),
            "{error}"
        );
    }

    #[test]
    fn only_retry_safe_method_paths_can_be_hedged() {
        let with = |safe: RetrySafe, methods: &[&str], delay: HedgeDelay| {
            let mut cfg = Config::default();
            cfg.retry.safe = safe;
            cfg.hedge.methods = methods.iter().map(|m| m.to_string()).collect();
            cfg.hedge.delay = delay;
            cfg.validate()
        };
        let chat = || RetrySafe::prefix("/chat.v1.ChatService/");
        let p95 = HedgeDelay::default();
        assert_eq!(
            with(chat(), &["/chat.v1.ChatService/HealthCheck"], p95),
            Ok(())
        );
        let error = with(RetrySafe::None, &["/chat.v1.ChatService/HealthCheck"], p95);
        assert_eq!(
            error.unwrap_err().to_string(),
            "cannot hedge method \"/chat.v1.ChatService/HealthCheck\": only retry-safe \
             methods can be hedged (see Builder::retry_safe)"
        );
        for bad in [
            "chat.v1.ChatService/X",
            "/chat.v1.ChatService/",
            "/chat.v1.ChatService",
        ] {
            assert!(
                matches!(
                    with(RetrySafe::All, &[bad], p95),
                    Err(ConfigError::Hedge { .. })
                ),
                "{bad}"
            );
        }
        for delay in [
            HedgeDelay::Fixed(Duration::ZERO),
            HedgeDelay::Percentile(0.0),
            HedgeDelay::Percentile(100.0),
            HedgeDelay::Percentile(f64::NAN),
        ] {
            let mut cfg = Config::default();
            cfg.hedge.delay = delay;
            assert_eq!(out_of_range(&cfg), Some("hedge_delay"), "{delay:?}");
        }
    }
}
