//! Passive health checking (outlier detection).
//!
//! **At once.** A call that fails in a way that says "this replica is down"
//! (no connection, a transport error, `UNAVAILABLE`, no response headers
//! within the per-try timeout) ejects its endpoint at once, without waiting
//! for the next probe ([`reason_at_once`]).
//!
//! **Failure accrual.** A replica that answers quickly *with errors* (the
//! other failure codes: `INTERNAL`, `UNKNOWN`, `DATA_LOSS` by default, see
//! `classify`) is up, so one error proves little; its failures accrue
//! instead, and three detectors judge them (see [`accrual`]): `N` failed
//! attempts in a row (consecutive failures), and, over a sliding window, gRPC
//! A50's success-rate and failure-percentage ejection. Every failure kind
//! counts towards them, and every answer that is not a failure (whatever its
//! application status) counts as a success.
//!
//! **Ejection**, whatever its reason, lasts `base_ejection_time * n` for the
//! endpoint's `n`-th ejection in a row, capped at `max_ejection_time`; the
//! count starts over once an endpoint has stayed un-ejected for
//! `max_ejection_time`. At most `max_ejection_percent` of the endpoints (but
//! always at least one) are ejected at a time, so a cluster-wide blip cannot
//! eject everything. After the ejection time the endpoint's prober checks it
//! at once, and it comes back only on a successful probe. An ejection starts
//! the endpoint's accrual over (its consecutive failures and its window), and
//! so does its end, so a readmitted endpoint is judged on its new calls only.
//!
//! An ejected endpoint is not out of reach, though: while its most recent probe
//! succeeded it is a *last resort*, picked only when no endpoint is healthy or
//! unprobed (see `picker`). Such calls do not end or extend the ejection.

pub(crate) mod accrual;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use tokio::time::Instant;

use crate::{classify::CallFailure, config::OutlierConfig, snapshot::EjectionReason};

/// The reason a failure of this kind ejects its endpoint at once, if it does:
/// it says the replica may be down. The other failure codes accrue instead.
pub(crate) fn reason_at_once(kind: CallFailure) -> Option<EjectionReason> {
    match kind {
        CallFailure::Refused => Some(EjectionReason::Refused),
        CallFailure::Transport => Some(EjectionReason::Transport),
        CallFailure::Unavailable => Some(EjectionReason::Unavailable),
        CallFailure::Timeout => Some(EjectionReason::Timeout),
        CallFailure::Status(_) => None,
    }
}

/// One endpoint's ejection history.
#[derive(Debug, Clone, Default)]
pub(crate) struct Ejection {
    /// When the current ejection may end; `None` when not ejected.
    until: Option<Instant>,
    /// Ejections in the current run of repeat offences.
    streak: u32,
    /// Ejections ever.
    total: u32,
    /// When the last ejection ended.
    ended: Option<Instant>,
    /// Why the current (or last) ejection happened.
    reason: Option<EjectionReason>,
}

impl Ejection {
    /// Whether the endpoint is ejected now.
    pub fn is_ejected(&self) -> bool {
        self.until.is_some()
    }

    /// When the current ejection may end.
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// How many times the endpoint was ejected.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// Why the current (or last) ejection happened.
    pub fn reason(&self) -> Option<EjectionReason> {
        self.reason
    }

    /// Ejects the endpoint for `reason`, returning the ejection time. The
    /// caller has checked it is not ejected already and holds a slot of the
    /// [`EjectionCap`].
    pub fn eject(&mut self, now: Instant, cfg: &OutlierConfig, reason: EjectionReason) -> Duration {
        self.reason = Some(reason);
        if self
            .ended
            .is_some_and(|ended| now.saturating_duration_since(ended) >= cfg.max_ejection_time)
        {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        self.total = self.total.saturating_add(1);
        let time = ejection_time(self.streak, cfg);
        self.until = Some(now + time);
        time
    }

    /// Whether the ejection time is over, so a successful probe may end it.
    pub fn expired(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now >= until)
    }

    /// Ends the ejection (on a successful probe after it expired). Returns
    /// whether the endpoint was ejected, in which case the caller releases its
    /// [`EjectionCap`] slot.
    pub fn end(&mut self, now: Instant) -> bool {
        if self.until.take().is_some() {
            self.ended = Some(now);
            true
        } else {
            false
        }
    }
}

/// The ejection time of the `streak`-th ejection in a row.
pub(crate) fn ejection_time(streak: u32, cfg: &OutlierConfig) -> Duration {
    cfg.base_ejection_time
        .saturating_mul(streak.max(1))
        .min(cfg.max_ejection_time)
}

/// How many of `total` endpoints may be ejected at once (at least one).
pub(crate) fn max_ejected(total: usize, max_percent: u8) -> usize {
    (total * usize::from(max_percent) / 100).max(1)
}

/// The balancer-wide count of ejected endpoints, enforcing `max_ejection_percent`.
#[derive(Debug, Default)]
pub(crate) struct EjectionCap {
    ejected: AtomicUsize,
}

impl EjectionCap {
    /// Takes a slot if fewer than the allowed share of `total` endpoints are
    /// ejected.
    pub fn try_acquire(&self, total: usize, max_percent: u8) -> bool {
        let limit = max_ejected(total, max_percent);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        // Never underflows: every release follows an acquire.
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Endpoints ejected now.
    #[cfg(test)]
    pub fn ejected(&self) -> usize {
        self.ejected.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            base_ejection_time: Duration::from_secs(1),
            max_ejection_time: Duration::from_secs(4),
            max_ejection_percent: 50,
            ..OutlierConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_time_grows_for_repeat_offenders_and_is_capped() {
        let cfg = cfg();
        let mut e = Ejection::default();
        let mut times = Vec::new();
        for _ in 0..6 {
            let now = Instant::now();
            let t = e.eject(now, &cfg, EjectionReason::Unavailable);
            times.push(t.as_secs());
            assert!(e.is_ejected() && !e.expired(now));
            tokio::time::advance(t).await;
            assert!(e.expired(Instant::now()));
            assert!(e.end(Instant::now()));
            assert!(!e.is_ejected());
        }
        assert_eq!(times, [1, 2, 3, 4, 4, 4]);
        assert_eq!(e.total(), 6);

        // Staying clean for max_ejection_time starts the count over.
        tokio::time::advance(cfg.max_ejection_time).await;
        let reason = EjectionReason::FailurePercentage;
        assert_eq!(
            e.eject(Instant::now(), &cfg, reason),
            Duration::from_secs(1)
        );
        assert_eq!(e.reason(), Some(reason));
    }

    #[test]
    fn at_most_the_allowed_share_is_ejected() {
        assert_eq!(max_ejected(1, 50), 1, "always at least one");
        assert_eq!(max_ejected(4, 50), 2);
        assert_eq!(max_ejected(5, 50), 2);
        assert_eq!(max_ejected(3, 100), 3);

        let cap = EjectionCap::default();
        assert!(cap.try_acquire(4, 50));
        assert!(cap.try_acquire(4, 50));
        assert!(!cap.try_acquire(4, 50), "a third of four at 50% is refused");
        assert_eq!(cap.ejected(), 2);
        cap.release();
        assert!(cap.try_acquire(4, 50));
        cap.release();
        cap.release();
        cap.release();
        cap.release();
        assert_eq!(cap.ejected(), 0, "release never underflows");
    }
}
