//! The retry budget, in the manner of `tower::retry::budget::TpsBudget`.
//!
//! Every call deposits one token; every retry of a call that may have reached a
//! server withdraws one. Retries are allowed while the withdrawals of the last
//! `window` stay below `ratio * calls + min_per_sec * window_secs`: with the
//! defaults (20% + 10/s over 10s) a healthy client may retry one call in five,
//! and a sick cluster sees at most 20% extra load, never a retry storm.
//!
//! The window is split in ten slots kept in atomics, so depositing on the hot
//! path takes no lock. Slot rotation may race with a concurrent deposit and lose
//! it; the budget is an estimate and that is fine.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use tokio::time::Instant;

const SLOTS: u64 = 10;

#[derive(Debug, Default)]
struct Slot {
    /// The period this slot counts for (`0` = never used).
    period: AtomicU64,
    deposits: AtomicU64,
    withdrawals: AtomicU64,
}

/// A sliding-window retry budget.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    origin: Instant,
    slot_nanos: u64,
    slots: [Slot; SLOTS as usize],
    ratio: f64,
    reserve: f64,
}

impl RetryBudget {
    /// A budget allowing `ratio` retries per call plus `min_per_sec` retries per
    /// second, over a sliding `window`.
    pub fn new(ratio: f64, min_per_sec: u32, window: Duration, now: Instant) -> Self {
        let window = window.max(Duration::from_secs(1));
        Self {
            origin: now,
            slot_nanos: (window.as_nanos() / u128::from(SLOTS)).max(1) as u64,
            slots: Default::default(),
            ratio,
            reserve: f64::from(min_per_sec) * window.as_secs_f64(),
        }
    }

    fn period(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.origin).as_nanos();
        (nanos / u128::from(self.slot_nanos)) as u64 + 1
    }

    fn slot(&self, period: u64) -> &Slot {
        let slot = &self.slots[(period % SLOTS) as usize];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period
            && slot
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.deposits.store(0, Ordering::Release);
            slot.withdrawals.store(0, Ordering::Release);
        }
        slot
    }

    /// Records one call.
    pub fn deposit(&self, now: Instant) {
        self.slot(self.period(now))
            .deposits
            .fetch_add(1, Ordering::AcqRel);
    }

    /// Takes one retry from the budget; `false` when it is spent.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let current = self.period(now);
        let (mut deposits, mut withdrawals) = (0u64, 0u64);
        for slot in &self.slots {
            let period = slot.period.load(Ordering::Acquire);
            if period != 0 && period <= current && current - period < SLOTS {
                deposits += slot.deposits.load(Ordering::Acquire);
                withdrawals += slot.withdrawals.load(Ordering::Acquire);
            }
        }
        let allowed = self.reserve + self.ratio * deposits as f64;
        if (withdrawals + 1) as f64 > allowed {
            return false;
        }
        self.slot(current)
            .withdrawals
            .fetch_add(1, Ordering::AcqRel);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_then_ratio_then_window_expiry() {
        // 1 retry/s floor over 10s = 10, plus 20% of calls.
        let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10), Instant::now());
        for i in 0..10 {
            assert!(budget.try_withdraw(Instant::now()), "floor retry {i}");
        }
        assert!(!budget.try_withdraw(Instant::now()), "the floor is spent");

        for _ in 0..50 {
            budget.deposit(Instant::now());
        }
        for i in 0..10 {
            assert!(budget.try_withdraw(Instant::now()), "ratio retry {i}");
        }
        assert!(
            !budget.try_withdraw(Instant::now()),
            "20% of 50 calls is spent"
        );

        // Half a window later the old slots still count.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw(Instant::now()));

        // A full window later they have expired: the floor is back.
        tokio::time::advance(Duration::from_secs(6)).await;
        for i in 0..10 {
            assert!(
                budget.try_withdraw(Instant::now()),
                "renewed floor retry {i}"
            );
        }
        assert!(!budget.try_withdraw(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_floor_means_ratio_only() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(1), Instant::now());
        assert!(!budget.try_withdraw(Instant::now()), "no calls, no retries");
        budget.deposit(Instant::now());
        budget.deposit(Instant::now());
        assert!(budget.try_withdraw(Instant::now()));
        assert!(!budget.try_withdraw(Instant::now()));
    }
}
