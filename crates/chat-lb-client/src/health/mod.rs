//! Active health checking: the probe trait, the built-in probes, the
//! per-endpoint prober task and the health state machine it drives.
//!
//! Every endpoint is probed every `probe_interval * (1 ± probe_jitter)` with its
//! own `probe_timeout`. After `unhealthy_threshold` failed probes in a row it is
//! *unhealthy*; after `healthy_threshold` successful ones in a row it is
//! *healthy* again. A probe answering "not serving" takes the endpoint out of
//! rotation at once. Probes whose [`HealthProbe::watch`] pushes updates (the
//! standard `grpc.health.v1.Health/Watch`) learn of a change as it happens.

#[cfg(feature = "chat-probe")]
mod chat;
mod grpc;
mod probe;
pub(crate) mod prober;

use std::{sync::Arc, time::Duration};

use rand::Rng;

#[cfg(feature = "chat-probe")]
pub use chat::ChatHealthProbe;
pub use grpc::GrpcHealthProbe;
pub use probe::{HealthProbe, ProbeStatus, ProbeTarget};

use crate::config::HealthConfig;

/// The probe of a balancer built without one: [`ChatHealthProbe`] with the
/// `chat-probe` feature (on by default), which the chat replicas answer.
#[cfg(feature = "chat-probe")]
pub(crate) fn default_probe() -> Arc<dyn HealthProbe> {
    Arc::new(ChatHealthProbe::new())
}

/// The probe of a balancer built without one: [`GrpcHealthProbe`] without the
/// `chat-probe` feature, for any server with the standard gRPC health service.
#[cfg(not(feature = "chat-probe"))]
pub(crate) fn default_probe() -> Arc<dyn HealthProbe> {
    Arc::new(GrpcHealthProbe::new())
}

/// What the probes say about an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Active {
    /// Not probed to a conclusion yet.
    Unknown,
    /// Probes succeed.
    Healthy,
    /// `unhealthy_threshold` probes in a row failed.
    Unhealthy,
    /// The replica said it is not serving.
    NotServing,
}

/// One probe's result, reduced to what the state machine needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The replica answered and is serving.
    Serving,
    /// The replica answered that it is not serving.
    NotServing,
    /// No answer (error or timeout).
    Failed,
}

/// The health state machine of one endpoint.
#[derive(Debug, Clone)]
pub(crate) struct HealthTracker {
    state: Active,
    successes: u32,
    failures: u32,
}

impl Default for HealthTracker {
    fn default() -> Self {
        Self {
            state: Active::Unknown,
            successes: 0,
            failures: 0,
        }
    }
}

impl HealthTracker {
    /// The current state.
    pub fn state(&self) -> Active {
        self.state
    }

    /// Failed probes in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Applies one probe result; returns the new state when it changed.
    pub fn observe(&mut self, verdict: Verdict, cfg: &HealthConfig) -> Option<Active> {
        let next = match verdict {
            Verdict::Serving => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                (self.successes >= cfg.healthy_threshold).then_some(Active::Healthy)
            }
            Verdict::NotServing => {
                self.failures = 0;
                self.successes = 0;
                Some(Active::NotServing)
            }
            Verdict::Failed => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                (self.failures >= cfg.unhealthy_threshold).then_some(Active::Unhealthy)
            }
        }?;
        if next == self.state {
            return None;
        }
        self.state = next;
        Some(next)
    }
}

/// The wait before the next probe: `interval * (1 ± jitter)`, drawn uniformly.
pub(crate) fn jittered<R: Rng + ?Sized>(interval: Duration, jitter: f64, rng: &mut R) -> Duration {
    if jitter <= 0.0 {
        return interval;
    }
    let factor = 1.0 + rng.random_range(-jitter..=jitter);
    interval.mul_f64(factor.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    fn cfg(unhealthy: u32, healthy: u32) -> HealthConfig {
        HealthConfig {
            unhealthy_threshold: unhealthy,
            healthy_threshold: healthy,
            ..HealthConfig::default()
        }
    }

    #[test]
    fn n_failures_make_unhealthy_and_m_successes_healthy() {
        let cfg = cfg(3, 2);
        let mut t = HealthTracker::default();
        assert_eq!(
            t.observe(Verdict::Serving, &cfg),
            None,
            "one success of two"
        );
        assert_eq!(t.observe(Verdict::Serving, &cfg), Some(Active::Healthy));

        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(
            t.state(),
            Active::Healthy,
            "two failures of three keep it healthy"
        );
        // A success in between resets the failure run.
        assert_eq!(t.observe(Verdict::Serving, &cfg), None);
        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(t.observe(Verdict::Failed, &cfg), Some(Active::Unhealthy));
        assert_eq!(t.consecutive_failures(), 3);
        assert_eq!(
            t.observe(Verdict::Failed, &cfg),
            None,
            "no repeated transition"
        );

        assert_eq!(
            t.observe(Verdict::Serving, &cfg),
            None,
            "one success of two"
        );
        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(
            t.observe(Verdict::Serving, &cfg),
            None,
            "the run started over"
        );
        assert_eq!(t.observe(Verdict::Serving, &cfg), Some(Active::Healthy));
    }

    #[test]
    fn not_serving_takes_effect_at_once() {
        let cfg = cfg(2, 1);
        let mut t = HealthTracker::default();
        assert_eq!(t.observe(Verdict::Serving, &cfg), Some(Active::Healthy));
        assert_eq!(
            t.observe(Verdict::NotServing, &cfg),
            Some(Active::NotServing)
        );
        assert_eq!(t.observe(Verdict::Failed, &cfg), None);
        assert_eq!(t.observe(Verdict::Failed, &cfg), Some(Active::Unhealthy));
        assert_eq!(t.observe(Verdict::Serving, &cfg), Some(Active::Healthy));
    }

    #[test]
    fn jitter_stays_within_bounds_and_spreads() {
        let mut rng = StdRng::seed_from_u64(3);
        let interval = Duration::from_millis(500);
        let (mut lo, mut hi) = (Duration::MAX, Duration::ZERO);
        for _ in 0..10_000 {
            let d = jittered(interval, 0.2, &mut rng);
            assert!(
                d >= Duration::from_millis(400) && d <= Duration::from_millis(600),
                "{d:?}"
            );
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(
            lo < Duration::from_millis(410) && hi > Duration::from_millis(590),
            "{lo:?} {hi:?}"
        );
        assert_eq!(jittered(interval, 0.0, &mut rng), interval);
    }
}
