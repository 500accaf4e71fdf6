//! Slow start: an endpoint that (re)joins the healthy tier gets a share of the
//! calls that ramps up over a window, instead of its full share at once.
//!
//! A replica that just started (or came back after an ejection or a failed
//! probe) has cold caches, cold connections and, for a JIT or a store client,
//! cold code paths; peak-EWMA knows nothing of it yet (its estimate decayed
//! while it took no calls, so it even looks cheap). Sending it a full share at
//! once is how a restart shows in the tail latency. So for `window` after an
//! endpoint's tier rises to *preferred* (healthy; see `picker`), its **weight**
//! is, as in Envoy's slow start:
//!
//! ```text
//! weight = max(min_weight, (elapsed / window) ^ (1 / aggression))
//! ```
//!
//! `aggression` 1 (the default) ramps linearly; above 1 the share grows fast
//! early and slowly late, below 1 the reverse. `min_weight` (default 0.1) keeps
//! the endpoint taking some calls from the start, so its latency estimate
//! warms up with it. After the window the weight is 1.
//!
//! The picker applies the weight as a chance of being *passed over*: when the
//! endpoint it would choose weighs `w` and the other candidate (under power of
//! two choices) or the next one in turn (round-robin) weighs more, `w_other`,
//! it takes that one instead with probability `1 - w / w_other`. So an
//! endpoint's share of the calls is about `w` times what it would get at full
//! weight, while endpoints ramping side by side still compare by cost.
//! Pick-first has no shares to ramp: slow start is off under it. A lone
//! candidate is never passed over.
//!
//! Which admissions ramp: every readmission (after an ejection, failed or
//! not-serving probes, or slowness), and a new endpoint's first one when the
//! balancer already had a healthy endpoint as it was added (one found by
//! discovery or DNS later on). The endpoints a balancer starts with are all
//! cold together: ramping them would change nothing but the balancer's first
//! seconds.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

use crate::config::SlowStartConfig;

/// `Ramp::from_ns` before any slow start.
const NO_RAMP: u64 = u64::MAX;

/// One endpoint's slow start: lock-free, read on every pick.
#[derive(Debug)]
pub(crate) struct Ramp {
    /// `None`: off (as under pick-first).
    cfg: Option<SlowStartConfig>,
    /// Whether the endpoint's first admission ramps too (see the module docs).
    ramp_first: bool,
    /// Whether the endpoint was ever in the healthy tier.
    joined_before: AtomicBool,
    /// The origin of `from_ns`: when the ramp state was made.
    born: Instant,
    /// When the current slow start began, in nanoseconds since `born`
    /// ([`NO_RAMP`]: none yet).
    from_ns: AtomicU64,
}

impl Ramp {
    /// The slow start of a new endpoint (`cfg` without a window: off).
    pub fn new(cfg: Option<SlowStartConfig>, ramp_first: bool) -> Self {
        Self {
            cfg: cfg.filter(|cfg| cfg.window.is_some()),
            ramp_first,
            joined_before: AtomicBool::new(false),
            born: Instant::now(),
            from_ns: AtomicU64::new(NO_RAMP),
        }
    }

    /// The endpoint (re)joined the healthy tier at `now`: its slow start
    /// begins, unless it is off or this is a first admission that does not
    /// ramp. Returns whether it began.
    pub fn joined(&self, now: Instant) -> bool {
        let again = self.joined_before.swap(true, Ordering::Relaxed);
        if self.cfg.is_none() || !(again || self.ramp_first) {
            return false;
        }
        let since_born = now.saturating_duration_since(self.born);
        let ns = u64::try_from(since_born.as_nanos()).unwrap_or(NO_RAMP - 1);
        self.from_ns.store(ns, Ordering::Relaxed);
        true
    }

    /// The weight at `now` while the endpoint ramps up; `None` when it does
    /// not (off, never ramped, or the window is over).
    pub fn weight(&self, now: Instant) -> Option<f64> {
        let cfg = self.cfg.as_ref()?;
        let from = self.from_ns.load(Ordering::Relaxed);
        if from == NO_RAMP {
            return None;
        }
        let elapsed = now
            .saturating_duration_since(self.born)
            .saturating_sub(Duration::from_nanos(from));
        let weight = weight(elapsed, cfg);
        (weight < 1.0).then_some(weight)
    }
}

/// The weight (0..=1) of an endpoint `elapsed` into its slow-start window.
pub(crate) fn weight(elapsed: Duration, cfg: &SlowStartConfig) -> f64 {
    let Some(window) = cfg.window else {
        return 1.0;
    };
    if elapsed >= window {
        return 1.0;
    }
    let fraction = elapsed.as_secs_f64() / window.as_secs_f64();
    fraction.powf(1.0 / cfg.aggression).max(cfg.min_weight)
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{
        ProbeStatus,
        classify::CallFailure,
        config::{HealthConfig, OutlierConfig},
        endpoint::Endpoint,
        outlier::EjectionCap,
        snapshot::EndpointState,
    };

    fn cfg(aggression: f64) -> SlowStartConfig {
        SlowStartConfig {
            window: Some(Duration::from_secs(10)),
            aggression,
            min_weight: 0.1,
        }
    }

    fn at(secs: f64, cfg: &SlowStartConfig) -> f64 {
        weight(Duration::from_secs_f64(secs), cfg)
    }

    #[test]
    fn linear_by_default_from_the_floor_to_full_weight() {
        let linear = cfg(1.0);
        assert_eq!(at(0.0, &linear), 0.1, "the floor");
        assert_eq!(at(0.5, &linear), 0.1);
        assert!((at(2.5, &linear) - 0.25).abs() < 1e-12);
        assert!((at(5.0, &linear) - 0.5).abs() < 1e-12);
        assert!((at(9.0, &linear) - 0.9).abs() < 1e-12);
        assert_eq!(at(10.0, &linear), 1.0);
        assert_eq!(at(3600.0, &linear), 1.0);
    }

    #[test]
    fn aggression_bends_the_curve() {
        // 2: the square root, fast early.
        assert!((at(2.5, &cfg(2.0)) - 0.5).abs() < 1e-12);
        // 0.5: the square, slow early.
        assert!((at(5.0, &cfg(0.5)) - 0.25).abs() < 1e-12);
        assert_eq!(at(1.0, &cfg(0.5)), 0.1, "0.01, held at the floor");
    }

    #[test]
    fn without_a_window_the_weight_is_always_full() {
        let off = SlowStartConfig {
            window: None,
            ..cfg(1.0)
        };
        assert_eq!(at(0.0, &off), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_new_and_a_readmitted_endpoint() {
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1")
            .connect_lazy()
            .into();
        let ms = Duration::from_millis;
        let endpoint = Endpoint::new(
            addr,
            channel,
            None,
            ms(1),
            Duration::from_secs(10),
            OutlierConfig::default().window,
        )
        .with_slow_start(Some(SlowStartConfig::default()), true);
        let health = HealthConfig::default();
        let cap = EjectionCap::default();
        let serving = || {
            Ok(ProbeStatus::Healthy {
                latency: ms(1),
                detail: String::new(),
            })
        };
        let weight = |endpoint: &Endpoint| endpoint.slow_start_weight(Instant::now());
        assert_eq!(weight(&endpoint), None, "not healthy yet");
        endpoint.on_probe((&health, &cap), serving(), ms(1), false);
        assert_eq!(weight(&endpoint), Some(0.1), "the floor at first");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!((weight(&endpoint).unwrap() - 0.5).abs() < 1e-9);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(weight(&endpoint), None, "the window is over");
        assert_eq!(endpoint.snapshot().slow_start_weight, None);

        // Ejected, then readmitted by a probe after its ejection time: it ramps again.
        let outlier = OutlierConfig::default();
        let reason = endpoint
            .on_failure(
                &outlier,
                CallFailure::Transport,
                "reset",
                ms(0),
                Instant::now(),
            )
            .expect("a transport failure ejects at once");
        assert!(endpoint.eject(&outlier, (&cap, 1), reason, "reset"));
        tokio::time::advance(outlier.base_ejection_time).await;
        endpoint.on_probe((&health, &cap), serving(), ms(1), false);
        assert_eq!(endpoint.snapshot().state, EndpointState::Healthy);
        assert_eq!(endpoint.snapshot().slow_start_weight, Some(0.1));

        // One of the endpoints the balancer started with: its first admission
        // does not ramp, a readmission does.
        let channel = endpoint.channel.clone();
        let initial = Endpoint::new(
            addr,
            channel,
            None,
            ms(1),
            Duration::from_secs(10),
            OutlierConfig::default().window,
        )
        .with_slow_start(Some(SlowStartConfig::default()), false);
        initial.on_probe((&health, &cap), serving(), ms(1), false);
        assert_eq!(weight(&initial), None);
        let reason = initial
            .on_failure(
                &outlier,
                CallFailure::Transport,
                "reset",
                ms(0),
                Instant::now(),
            )
            .expect("a transport failure ejects at once");
        assert!(initial.eject(&outlier, (&cap, 1), reason, "reset"));
        tokio::time::advance(outlier.base_ejection_time * 2).await;
        initial.on_probe((&health, &cap), serving(), ms(1), false);
        assert_eq!(weight(&initial), Some(0.1));

        // Off (as under pick-first): never ramps.
        let channel = endpoint.channel.clone();
        let plain = Endpoint::new(
            addr,
            channel,
            None,
            ms(1),
            Duration::from_secs(10),
            OutlierConfig::default().window,
        )
        .with_slow_start(None, true);
        plain.on_probe((&health, &cap), serving(), ms(1), false);
        assert_eq!(weight(&plain), None);
    }
}
