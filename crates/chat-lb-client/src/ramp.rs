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

use std::time::Duration;

use crate::config::SlowStartConfig;

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
    use super::*;

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
}
