//! Failure accrual: each endpoint's recent outcomes, and the detectors that
//! judge them.
//!
//! Each endpoint counts its finished attempts, answered or failed, in an
//! [`OutcomeWindow`]: the last `accrual_window` (10s by default) in ten
//! buckets, so the counts cover between nine and ten tenths of the window and
//! age out a tenth at a time. Beside it, the endpoint counts its failures in a
//! row (`consecutive_failures`, see `endpoint`). Three rules eject on
//! accrued failures (the first is the endpoint's own, the others compare
//! the endpoints; both of these are gRPC A50's, judged on each failure rather
//! than on a timer, so an outlier is ejected as soon as the evidence is in):
//!
//! * **consecutive failures**: `N` (5) failed attempts in a row;
//! * **success rate** ([`judge`]): among the endpoints with at least
//!   `request_volume` (100) attempts in the window, when there are at least
//!   `minimum_hosts` (5) of them, one whose success rate is below
//!   `mean - stdev_factor (1.9) * stdev` of their rates. The lowest of `n`
//!   rates is at most `(n - 1) / sqrt(n)` standard deviations below their
//!   mean, so with the default factor this rule needs 6 such endpoints to
//!   ever eject: it is for larger clusters;
//! * **failure percentage** ([`judge`]): among the endpoints with at least
//!   `request_volume` (50) attempts in the window, when there are at least
//!   `minimum_hosts` (3) of them, one whose share of failed attempts is over
//!   `threshold` (3%) *and* that failed at least `minimum_failures` (5)
//!   attempts in the window. A50's defaults (85%, 5 endpoints) catch only
//!   replicas that fail nearly everything, which the at-once ejection already
//!   does; a replica failing one call in twenty-five while its peers fail none
//!   is the case this rule is for: chat-bench's flaky replica fails 20% of
//!   its chat calls, but with its health checks (80% of the load, never
//!   failed) about 4% of its attempts. A percentage alone judges a low volume
//!   on luck, though: 2 failures among the 50 attempts of the request volume
//!   are 4%, over the threshold. So the rule also asks for 5 failures within
//!   the window, as many as the first rule needs in a row (the threshold then
//!   binds from 167 attempts on): a couple of transient errors never eject (a
//!   healthy replica failing 0.1% of its calls reaches 5 failures among 166
//!   attempts about once in a million windows), a replica failing 4% of a few
//!   hundred calls a second is out within a second, and one failing 20% is
//!   out about when it has the volume, as on the share alone (by then it has
//!   about 10 failures). A false ejection costs little (brief, capped, and
//!   the endpoint stays a last resort), but it moves the
//!   load onto the others for nothing.
//!
//! Every rule stays within the cap on the share of endpoints ejected, so
//! replicas that all fail alike (a shared store down) are never all ejected.

use std::time::Duration;

use tokio::time::Instant;

use crate::{config::OutlierConfig, snapshot::EjectionReason};

/// Buckets per window.
const BUCKETS: usize = 10;

/// Attempts finished within a window, and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub attempts: u64,
    pub failures: u64,
}

impl Counts {
    /// The share of attempts that did not fail (1 without attempts).
    fn success_rate(self) -> f64 {
        if self.attempts == 0 {
            return 1.0;
        }
        (self.attempts - self.failures) as f64 / self.attempts as f64
    }

    fn add(&mut self, other: Counts) {
        self.attempts += other.attempts;
        self.failures += other.failures;
    }
}

/// One endpoint's outcomes over the last window, in [`BUCKETS`] buckets.
#[derive(Debug)]
pub(crate) struct OutcomeWindow {
    origin: Instant,
    bucket_len: Duration,
    /// Per bucket: the number of the bucket-long period it counts (since
    /// `origin`), and its counts.
    buckets: [(u64, Counts); BUCKETS],
}

impl OutcomeWindow {
    /// An empty window of `window` (at least a nanosecond per bucket).
    pub fn new(window: Duration, now: Instant) -> Self {
        let bucket_len = (window / BUCKETS as u32).max(Duration::from_nanos(1));
        Self {
            origin: now,
            bucket_len,
            buckets: [(0, Counts::default()); BUCKETS],
        }
    }

    fn period(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.bucket_len.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts an attempt that finished at `now`.
    pub fn record(&mut self, now: Instant, failed: bool) {
        let period = self.period(now);
        let (counted, counts) = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if *counted != period {
            *counted = period;
            *counts = Counts::default();
        }
        counts.attempts += 1;
        counts.failures += u64::from(failed);
    }

    /// Turns an attempt counted as a success into a failure at `now`: a call
    /// whose response headers were a success, but whose stream then failed.
    /// When the bucket of `now` holds no success to turn (the headers came in
    /// an earlier bucket), a failed attempt is counted in it instead, so that
    /// failures never outnumber attempts.
    pub fn record_late_failure(&mut self, now: Instant) {
        let period = self.period(now);
        let (counted, counts) = &mut self.buckets[(period % BUCKETS as u64) as usize];
        if *counted == period && counts.failures < counts.attempts {
            counts.failures += 1;
        } else {
            self.record(now, true);
        }
    }

    /// The counts of the window that ends at `now`.
    pub fn counts(&self, now: Instant) -> Counts {
        let period = self.period(now);
        let mut total = Counts::default();
        for (counted, counts) in &self.buckets {
            if period.saturating_sub(*counted) < BUCKETS as u64 && *counted <= period {
                total.add(*counts);
            }
        }
        total
    }

    /// Forgets every outcome.
    pub fn clear(&mut self) {
        self.buckets = [(0, Counts::default()); BUCKETS];
    }
}

/// Whether the endpoint with counts `own` has enough attempts for either
/// windowed detector to judge it (so the caller gathers the others' counts
/// only then).
pub(crate) fn may_judge(own: Counts, cfg: &OutlierConfig) -> bool {
    let (sr, fp) = (&cfg.success_rate, &cfg.failure_percentage);
    cfg.enabled
        && ((sr.enabled && own.attempts >= u64::from(sr.request_volume))
            || (fp.enabled && own.attempts >= u64::from(fp.request_volume)))
}

/// Which windowed detector, if any, finds the endpoint with counts `own` an
/// outlier among every endpoint's counts `all` (its own included): gRPC A50's
/// success-rate, then failure-percentage ejection (see the module docs).
pub(crate) fn judge(own: Counts, all: &[Counts], cfg: &OutlierConfig) -> Option<EjectionReason> {
    if !cfg.enabled {
        return None;
    }
    let sr = &cfg.success_rate;
    let volume = u64::from(sr.request_volume);
    if sr.enabled && own.attempts >= volume {
        let rates = || {
            all.iter()
                .filter(|c| c.attempts >= volume)
                .map(|c| c.success_rate())
        };
        let hosts = rates().count();
        if hosts >= sr.minimum_hosts as usize {
            let mean = rates().sum::<f64>() / hosts as f64;
            let variance = rates().map(|r| (r - mean).powi(2)).sum::<f64>() / hosts as f64;
            if own.success_rate() < mean - sr.stdev_factor * variance.sqrt() {
                return Some(EjectionReason::SuccessRate);
            }
        }
    }
    let fp = &cfg.failure_percentage;
    let volume = u64::from(fp.request_volume);
    if fp.enabled && own.attempts >= volume {
        let hosts = all.iter().filter(|c| c.attempts >= volume).count();
        if hosts >= fp.minimum_hosts as usize
            && own.failures >= u64::from(fp.minimum_failures)
            && own.failures * 100 > u64::from(fp.threshold) * own.attempts
        {
            return Some(EjectionReason::FailurePercentage);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(attempts: u64, failures: u64) -> Counts {
        Counts { attempts, failures }
    }

    /// Only the failure-percentage detector, at its defaults.
    fn failure_percentage_only() -> OutlierConfig {
        let mut cfg = OutlierConfig::default();
        cfg.success_rate.enabled = false;
        cfg
    }

    /// Only the success-rate detector, at its defaults.
    fn success_rate_only() -> OutlierConfig {
        let mut cfg = OutlierConfig::default();
        cfg.failure_percentage.enabled = false;
        cfg
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_outcomes_a_tenth_at_a_time() {
        let mut window = OutcomeWindow::new(Duration::from_secs(10), Instant::now());
        window.record(Instant::now(), true);
        window.record(Instant::now(), false);
        tokio::time::advance(Duration::from_millis(4_500)).await;
        window.record(Instant::now(), false);
        assert_eq!(window.counts(Instant::now()), counts(3, 1));
        // The first second's bucket ages out after ten seconds, the 4.5s one
        // stays until 14s.
        tokio::time::advance(Duration::from_millis(5_500)).await;
        assert_eq!(window.counts(Instant::now()), counts(1, 0));
        window.record(Instant::now(), true);
        assert_eq!(window.counts(Instant::now()), counts(2, 1));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(window.counts(Instant::now()), counts(1, 1));
        // Long idle: nothing left, and a reused bucket starts from zero.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(window.counts(Instant::now()), counts(0, 0));
        window.record(Instant::now(), false);
        assert_eq!(window.counts(Instant::now()), counts(1, 0));
        window.clear();
        assert_eq!(window.counts(Instant::now()), counts(0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_failure_turns_a_counted_success_into_a_failure() {
        let mut window = OutcomeWindow::new(Duration::from_secs(10), Instant::now());
        window.record(Instant::now(), false);
        window.record_late_failure(Instant::now());
        assert_eq!(window.counts(Instant::now()), counts(1, 1));
        // No success left to turn in this bucket: a failed attempt instead.
        window.record_late_failure(Instant::now());
        assert_eq!(window.counts(Instant::now()), counts(2, 2));
        // Headers in one bucket, the stream's failure in the next.
        window.record(Instant::now(), false);
        tokio::time::advance(Duration::from_secs(1)).await;
        window.record_late_failure(Instant::now());
        assert_eq!(window.counts(Instant::now()), counts(4, 3));
    }

    #[test]
    fn failure_percentage_needs_the_volume_and_enough_endpoints() {
        let cfg = failure_percentage_only();
        let healthy = counts(60, 0);
        let flaky = counts(60, 12); // 20%
        assert_eq!(
            judge(flaky, &[healthy, healthy, flaky], &cfg),
            Some(EjectionReason::FailurePercentage)
        );
        assert_eq!(judge(healthy, &[healthy, healthy, flaky], &cfg), None);
        // At the threshold (3%) is not over it.
        let at = counts(100, 3);
        assert_eq!(judge(at, &[healthy, healthy, at], &cfg), None);
        // Under the request volume (50): not judged.
        let young = counts(40, 20);
        assert_eq!(judge(young, &[healthy, healthy, young], &cfg), None);
        // Fewer than 3 endpoints with the volume: not judged.
        let idle = counts(10, 0);
        assert_eq!(judge(flaky, &[healthy, idle, flaky], &cfg), None);
        let mut off = cfg.clone();
        off.failure_percentage.enabled = false;
        assert_eq!(judge(flaky, &[healthy, healthy, flaky], &off), None);
        off = cfg;
        off.enabled = false;
        assert_eq!(judge(flaky, &[healthy, healthy, flaky], &off), None);
    }

    #[test]
    fn a_couple_of_failures_are_not_enough_whatever_their_share() {
        let cfg = failure_percentage_only();
        let healthy = counts(60, 0);
        // 2 and 4 of 50: 4% and 8%, over the threshold, but under the
        // minimum of 5 failures.
        for unlucky in [counts(50, 2), counts(50, 4)] {
            assert_eq!(judge(unlucky, &[healthy, healthy, unlucky], &cfg), None);
        }
        let failing = counts(50, 5);
        assert_eq!(
            judge(failing, &[healthy, healthy, failing], &cfg),
            Some(EjectionReason::FailurePercentage)
        );
        // Five failures are still judged on their share: 5 of 200 is 2.5%.
        let busy = counts(200, 5);
        assert_eq!(judge(busy, &[healthy, healthy, busy], &cfg), None);
        // Without the minimum, the share alone decides.
        let mut any = cfg;
        any.failure_percentage.minimum_failures = 0;
        let two = counts(50, 2);
        assert_eq!(
            judge(two, &[healthy, healthy, two], &any),
            Some(EjectionReason::FailurePercentage)
        );
    }

    #[test]
    fn success_rate_compares_with_the_other_endpoints() {
        let cfg = success_rate_only();
        let healthy = counts(200, 0);
        let flaky = counts(200, 40); // 80%
        let six = [healthy, healthy, healthy, healthy, healthy, flaky];
        assert_eq!(judge(flaky, &six, &cfg), Some(EjectionReason::SuccessRate));
        assert_eq!(judge(healthy, &six, &cfg), None);
        // Fewer than minimum_hosts (5) endpoints are not judged at all ...
        let four = [healthy, healthy, healthy, flaky];
        assert_eq!(judge(flaky, &four, &cfg), None);
        // ... and of four, the lowest rate is at most 1.5 standard deviations
        // under the mean: the default factor (1.9) could not eject it anyway.
        let mut lax = cfg.clone();
        lax.success_rate.minimum_hosts = 4;
        assert_eq!(judge(flaky, &four, &lax), None);
        lax.success_rate.stdev_factor = 1.0;
        assert_eq!(judge(flaky, &four, &lax), Some(EjectionReason::SuccessRate));
        // Endpoints under the request volume (100) neither count nor are judged.
        let quiet = counts(99, 0);
        let five = [healthy, healthy, healthy, quiet, quiet, flaky];
        assert_eq!(judge(flaky, &five, &cfg), None);
        assert_eq!(judge(counts(99, 50), &six, &cfg), None);
    }

    #[test]
    fn only_a_judgeable_endpoint_gathers_the_others() {
        let cfg = OutlierConfig::default();
        assert!(!may_judge(counts(49, 49), &cfg));
        assert!(may_judge(counts(50, 0), &cfg));
        let mut cfg = failure_percentage_only();
        cfg.failure_percentage.enabled = false;
        assert!(!may_judge(counts(1_000, 1_000), &cfg));
    }
}
