//! The retry budget: tower's [`TpsBudget`].
//!
//! Every call deposits one token; every retry of a call that may have reached a
//! server withdraws one. Retries are allowed while the withdrawals of the last
//! `window` stay within `ratio * calls + min_per_sec * window_secs`: with the
//! defaults (20% + 10/s over 10s) a healthy client may retry one call in five,
//! and a sick cluster sees at most 20% extra load, never a retry storm.
//!
//! How tower counts, where it differs from the formula above:
//! * the floor counts whole seconds of the window (`min_per_sec *
//!   window.as_secs()`);
//! * a ratio up to 1 allows one retry per *whole* number of calls,
//!   `1 / ratio` rounded down (0.2: one per 5 calls; 0.3: one per 3); a ratio
//!   above 1 is counted in thousandths the same way;
//! * it reads tokio's clock (`tokio::time::Instant`) itself, so a paused test
//!   clock drives it.
//!
//! `TpsBudget::new` panics on a window outside 1s..=60s, a ratio outside
//! 0..=1000 and a floor of `i32::MAX` or more: `Config::validate` rejects those
//! values first (as a `ConfigError`), so they never reach it.

use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};

/// A sliding-window retry budget.
#[derive(Debug)]
pub(crate) struct RetryBudget(TpsBudget);

impl RetryBudget {
    /// A budget allowing `ratio` retries per call plus `min_per_sec` retries per
    /// second, over a sliding `window`. The values must have passed
    /// `Config::validate` (see the module notes).
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration) -> Self {
        Self(TpsBudget::new(window, min_per_sec, ratio as f32))
    }

    /// Records one call.
    pub fn deposit(&self) {
        self.0.deposit();
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self) -> bool {
        self.0.withdraw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_then_ratio_then_window_expiry() {
        // 1 retry/s floor over 10s = 10, plus 20% of calls.
        let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        for i in 0..10 {
            assert!(budget.try_withdraw(), "floor retry {i}");
        }
        assert!(!budget.try_withdraw(), "the floor is spent");

        for _ in 0..50 {
            budget.deposit();
        }
        for i in 0..10 {
            assert!(budget.try_withdraw(), "ratio retry {i}");
        }
        assert!(!budget.try_withdraw(), "20% of 50 calls is spent");

        // Half a window later the old slots still count.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw());

        // A full window later they have expired: the floor is back.
        tokio::time::advance(Duration::from_secs(6)).await;
        for i in 0..10 {
            assert!(budget.try_withdraw(), "renewed floor retry {i}");
        }
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn zero_floor_means_ratio_only() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(1));
        assert!(!budget.try_withdraw(), "no calls, no retries");
        budget.deposit();
        budget.deposit();
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
    }

    #[test]
    fn the_extremes_that_validation_lets_through_do_not_panic() {
        for (ratio, min_per_sec, window) in [
            (0.0, 0, Duration::from_secs(1)),
            (1000.0, i32::MAX as u32 - 1, Duration::from_secs(60)),
            (1e-30, 0, Duration::from_millis(1500)),
        ] {
            let budget = RetryBudget::new(ratio, min_per_sec, window);
            budget.deposit();
            budget.try_withdraw();
        }
    }
}
