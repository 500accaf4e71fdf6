//! The balancer's settings and their defaults.
//!
//! Every field is set through [`crate::Builder`]; the defaults (listed on each
//! builder method and in [`crate`]'s guide) are tuned for replicas on one LAN:
//! sub-second failure detection, millisecond latencies.

use std::{sync::Arc, time::Duration};

use crate::{
    classify::FailureCodes, error::ConfigError, picker::Policy, retry::RetrySafe, tls::ClientTls,
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
}

impl Default for FailurePercentageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 3,
            minimum_hosts: 3,
            request_volume: 50,
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

/// Everything the builder collects.
#[derive(Clone)]
pub(crate) struct Config {
    pub policy: Policy,
    pub health: HealthConfig,
    pub outlier: OutlierConfig,
    pub slow: SlowConfig,
    pub retry: RetryConfig,
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
            health: HealthConfig::default(),
            outlier: OutlierConfig::default(),
            slow: SlowConfig::default(),
            retry: RetryConfig::default(),
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
        let check = |ok: bool, setting, problem| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { setting, problem })
            }
        };
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
        check(
            self.slow.factor.is_finite() && self.slow.factor >= 1.5,
            "slow_endpoint_factor",
            "must be a finite number >= 1.5 (it clears at 2/3 of it, which must not be below 1)",
        )?;
        let r = &self.retry;
        check(r.max_attempts >= 1, "max_attempts", "must be at least 1")?;
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
        check(
            !self.resolve_interval.is_zero(),
            "resolve_interval",
            "must be above zero",
        )?;
        check(
            !self.ewma_decay.is_zero(),
            "ewma_decay",
            "must be above zero",
        )?;
        Ok(())
    }
}

impl OutlierConfig {
    /// Rejects failure-accrual settings that cannot work.
    fn validate_accrual(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, setting, problem| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange { setting, problem })
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn out_of_range(cfg: &Config) -> Option<&'static str> {
        match cfg.validate() {
            Ok(()) => None,
            Err(ConfigError::OutOfRange { setting, .. }) => Some(setting),
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
}
