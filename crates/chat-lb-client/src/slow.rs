//! Slow-endpoint detection: which healthy endpoints answer their probes so much
//! more slowly than the others that they should only be a fallback.
//!
//! Peak-EWMA already steers calls away from a slow replica, but not far
//! enough: the costs of the healthy replicas swing with their own latency, so a
//! replica that is several times slower still wins some power-of-two draws and
//! its calls set the tail latency. So each endpoint keeps the latencies of its
//! last [`PROBE_WINDOW`] successful probe checks, and its *probe latency* is the
//! fastest of them (one slow connect or hiccup does not count). An endpoint
//! healthy by its probes is **slow** when its probe latency is over `factor`
//! times the median of the other such endpoints' and over `min_latency`; a slow
//! one is no longer slow under `2/3 * factor` times the median (or at or under
//! `min_latency`). An endpoint with fewer than [`PROBE_WINDOW`] successful
//! probes, or no other endpoint to compare with, is never slow.
//!
//! Probes are the yardstick because they are the same cheap RPC on every
//! replica, so they compare like with like, whatever mix of calls each replica
//! happens to get. Their limit: a replica slow only on calls that touch its
//! store (while its health check does not) is not caught.
//!
//! The assessment runs after each probe check (by the membership owner, see `members`),
//! never on the call path; a slow endpoint's tier drops from preferred to
//! fallback, so it takes calls only while no other endpoint is healthy.

use std::time::Duration;

use crate::config::SlowConfig;

/// How many successful probe checks an endpoint's probe latency is taken from.
pub(crate) const PROBE_WINDOW: usize = 3;

/// The latencies of an endpoint's last [`PROBE_WINDOW`] successful probe
/// checks. A fixed ring: recording one allocates nothing.
#[derive(Debug, Default, Clone)]
pub(crate) struct ProbeWindow {
    latencies: [Duration; PROBE_WINDOW],
    len: usize,
    next: usize,
}

impl ProbeWindow {
    /// Records a successful check, replacing the oldest once full.
    pub fn push(&mut self, latency: Duration) {
        self.latencies[self.next] = latency;
        self.next = (self.next + 1) % PROBE_WINDOW;
        self.len = (self.len + 1).min(PROBE_WINDOW);
    }

    /// The fastest of the last [`PROBE_WINDOW`] checks, once there are that many.
    pub fn fastest(&self) -> Option<Duration> {
        (self.len == PROBE_WINDOW)
            .then(|| self.latencies.iter().min().copied())
            .flatten()
    }
}

/// The median of the other endpoints' probe latencies: `sorted` holds every
/// judged endpoint's latency in ascending order, `own` among them. For an even
/// number of others, the upper of the two middle ones (the stricter reference).
/// `None` when there is no other endpoint.
pub(crate) fn median_of_others(own: Duration, sorted: &[Duration]) -> Option<Duration> {
    let others = sorted.len().checked_sub(1).filter(|n| *n > 0)?;
    // Where `own` sits; removing any one copy of it leaves the same others.
    let at = sorted.binary_search(&own).ok()?;
    let middle = others / 2;
    Some(if middle < at {
        sorted[middle]
    } else {
        sorted[middle + 1]
    })
}

/// Whether an endpoint with probe latency `own` is slow next to `median` (of the
/// others'), given whether it was slow until now (hysteresis).
pub(crate) fn is_slow(own: Duration, median: Duration, was_slow: bool, cfg: &SlowConfig) -> bool {
    let factor = if was_slow {
        cfg.clear_factor()
    } else {
        cfg.factor
    };
    own > cfg.min_latency && own.as_secs_f64() > median.as_secs_f64() * factor
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: f64) -> Duration {
        Duration::from_secs_f64(n / 1000.0)
    }

    /// Judges every endpoint as the membership owner does: `None` is an
    /// endpoint that is not judged (not healthy, or too few probes).
    fn judge(latencies: &[Option<Duration>], was: &[bool]) -> Vec<bool> {
        let cfg = SlowConfig::default();
        let mut sorted: Vec<Duration> = latencies.iter().flatten().copied().collect();
        sorted.sort_unstable();
        latencies
            .iter()
            .zip(was)
            .map(|(own, was)| {
                own.and_then(|own| {
                    let median = median_of_others(own, &sorted)?;
                    Some(is_slow(own, median, *was, &cfg))
                })
                .unwrap_or(false)
            })
            .collect()
    }

    #[test]
    fn the_window_needs_three_probes_and_takes_the_fastest() {
        let mut w = ProbeWindow::default();
        assert_eq!(w.fastest(), None);
        w.push(ms(30.0));
        w.push(ms(20.0));
        assert_eq!(w.fastest(), None, "two probes: not judged yet");
        w.push(ms(25.0));
        assert_eq!(w.fastest(), Some(ms(20.0)));
        // The oldest drops out: 20 is the oldest after two more.
        w.push(ms(40.0));
        assert_eq!(w.fastest(), Some(ms(20.0)));
        w.push(ms(50.0));
        assert_eq!(w.fastest(), Some(ms(25.0)));
        // One fast probe is enough to look fast again.
        w.push(ms(0.5));
        assert_eq!(w.fastest(), Some(ms(0.5)));
    }

    #[test]
    fn median_of_the_others() {
        let sorted = [ms(1.0), ms(2.0), ms(3.0), ms(30.0)];
        // Others of 30: [1, 2, 3] -> 2.
        assert_eq!(median_of_others(ms(30.0), &sorted), Some(ms(2.0)));
        // Others of 1: [2, 3, 30] -> 3.
        assert_eq!(median_of_others(ms(1.0), &sorted), Some(ms(3.0)));
        // Others of 2: [1, 3, 30] -> 3.
        assert_eq!(median_of_others(ms(2.0), &sorted), Some(ms(3.0)));
        // Two others: the upper one.
        assert_eq!(
            median_of_others(ms(25.0), &[ms(1.0), ms(2.0), ms(25.0)]),
            Some(ms(2.0))
        );
        assert_eq!(
            median_of_others(ms(1.0), &[ms(1.0), ms(2.0), ms(25.0)]),
            Some(ms(25.0))
        );
        // Duplicates of its own value.
        assert_eq!(
            median_of_others(ms(5.0), &[ms(5.0), ms(5.0), ms(5.0)]),
            Some(ms(5.0))
        );
        // Alone: nothing to compare with.
        assert_eq!(median_of_others(ms(5.0), &[ms(5.0)]), None);
        assert_eq!(median_of_others(ms(5.0), &[]), None);
    }

    #[test]
    fn slow_over_three_times_the_median_and_recovered_under_two() {
        // Well above the 10ms minimum, so only the ratio matters.
        let fast = Some(ms(12.0));
        // 3.5x the others: slow; the others are not.
        assert_eq!(
            judge(&[fast, fast, Some(ms(42.0))], &[false; 3]),
            [false, false, true]
        );
        // 2.5x: not slow when it was not...
        assert_eq!(
            judge(&[fast, fast, Some(ms(30.0))], &[false; 3]),
            [false, false, false]
        );
        // ... but stays slow when it was (cleared only under 2x).
        assert_eq!(
            judge(&[fast, fast, Some(ms(30.0))], &[false, false, true]),
            [false, false, true]
        );
        assert_eq!(
            judge(&[fast, fast, Some(ms(23.0))], &[false, false, true]),
            [false, false, false]
        );
        // The median, not the mean: one very fast endpoint does not make the
        // others slow.
        assert_eq!(
            judge(
                &[
                    Some(ms(1.0)),
                    Some(ms(25.0)),
                    Some(ms(26.0)),
                    Some(ms(27.0)),
                ],
                &[false; 4]
            ),
            [false, false, false, false]
        );
    }

    #[test]
    fn never_slow_under_the_minimum_latency() {
        let tiny = Some(ms(0.5));
        // 15x the others, but under 10ms: not slow.
        assert_eq!(judge(&[tiny, tiny, Some(ms(7.5))], &[false; 3]), [false; 3]);
        // And a slow one that gets under 10ms is no longer slow, whatever the ratio.
        assert_eq!(
            judge(&[tiny, tiny, Some(ms(9.9))], &[false, false, true]),
            [false; 3]
        );
        assert_eq!(
            judge(&[tiny, tiny, Some(ms(10.5))], &[false; 3]),
            [false, false, true]
        );
    }

    #[test]
    fn not_judged_without_three_probes_or_others() {
        // The slow one has fewer than three probes: not judged.
        assert_eq!(
            judge(&[Some(ms(1.0)), Some(ms(1.0)), None], &[false; 3]),
            [false; 3]
        );
        // Only one endpoint is judged: nothing to compare it with.
        assert_eq!(judge(&[Some(ms(50.0)), None], &[false, true]), [false; 2]);
        // A single endpoint is never slow.
        assert_eq!(judge(&[Some(ms(50.0))], &[true]), [false]);
        // Two endpoints: the much slower one is slow.
        assert_eq!(
            judge(&[Some(ms(1.0)), Some(ms(25.0))], &[false; 2]),
            [false, true]
        );
        // All equally slow: none is.
        assert_eq!(judge(&[Some(ms(25.0)); 3], &[false; 3]), [false; 3]);
    }
}
