//! Hedging: which calls are hedged, after what delay, within what budget.
//!
//! A *hedge* is a second (third, ...) attempt of a call sent to another
//! endpoint while the earlier attempt still waits for response headers; the
//! first attempt to get headers answers the call, the others are dropped
//! (cancelled). Only methods named with [`crate::Builder::hedge_methods`] are
//! hedged, and only retry-safe ones can be named (the build fails otherwise):
//! a hedge runs the call twice on purpose. The transitions that send hedges are
//! the call state machine's (`call/state.rs`); this module says *when* and
//! *whether*:
//!
//! * **The hedging delay** ([`HedgeDelay`]) is either fixed or adaptive: a
//!   percentile (p95 by default) of the recent latency of that method through
//!   this balancer, from the call's start to its response headers, but never
//!   under a floor (`Builder::hedge_min_delay`, [`DEFAULT_MIN_DELAY`] = 2ms).
//!   **Why a floor.** A hedge can only win when the first attempt would
//!   still take longer than a whole second attempt: when calls take 0.3-1ms
//!   and their p95 is a few hundred microseconds over their median, what
//!   makes a call that slow is ordinary jitter (a thread not yet scheduled, a
//!   packet coalesced), which hedging cannot cut, and at p95 one call in
//!   twenty is hedged for it: 5% more load for nothing, which is what made
//!   `chat-lb-hedged`'s p99 worse than plain `chat-lb`'s at 8 callers in
//!   chat-bench's `steady` and `tail-latency`. The stalls hedging is for (a
//!   pause, a slow disk, a lock) last tens of milliseconds: waiting 2ms
//!   rather than 0.5ms before hedging them costs little, and hedges stop
//!   firing on jitter. Where the percentile is above the floor (slower
//!   methods, a loaded machine) the floor changes nothing. A fixed delay is
//!   taken as given.
//! * **The budget.** Each hedge takes a token from the hedge budget (default 10%
//!   of the hedged methods' calls plus 1/s, over the retry budget's window) and
//!   one from the retry budget (see `retry::budget`), so hedges and retries
//!   together stay within the retry budget, and hedges alone within theirs. The
//!   hedge budget is asked first (it is the tighter one): a hedge it allows
//!   that the retry budget then refuses has used up its hedge token, which
//!   errs on the side of less load.
//!
//! **Why a window of recent samples.** Each hedged method keeps the latencies
//! of its last [`WINDOW`] answered calls in a ring (4 KiB), and the delay is
//! the chosen percentile of them, recomputed every [`REFRESH_EVERY`] new
//! samples with a linear-time selection and kept in an atomic, so a call only
//! loads one number. A ring is exact and bounded, and "recent" by construction
//! (at a few thousand calls a second it spans a fraction of a second, so the
//! delay follows a change of load at once); a decaying histogram would save
//! the copy on each recomputation but blur the percentile into buckets. Until
//! [`MIN_SAMPLES`] calls have answered, a method has no adaptive delay and is
//! not hedged. Hedged calls feed the window too: a call rescued by a hedge
//! answers after `delay + latency`, so the tail the delay is taken from stays
//! put instead of collapsing onto itself.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::{config::HedgeConfig, retry::budget::RetryBudget};

/// Latencies kept per hedged method.
pub(crate) const WINDOW: usize = 512;
/// New samples between two recomputations of an adaptive delay.
pub(crate) const REFRESH_EVERY: u32 = 32;
/// Samples a method needs before it has an adaptive delay.
pub(crate) const MIN_SAMPLES: usize = 32;
/// The least adaptive hedging delay by default (see the module docs).
pub(crate) const DEFAULT_MIN_DELAY: Duration = Duration::from_millis(2);

/// How long a hedged call waits for response headers before the balancer
/// sends a hedge to another endpoint (see [`crate::Builder::hedge_delay`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// Always this long.
    Fixed(Duration),
    /// This percentile (above 0, below 100) of the method's recent latency
    /// through this balancer, from a call's start to its response headers:
    /// with 95, about one call in twenty is hedged. The default, at 95.
    Percentile(f64),
}

impl Default for HedgeDelay {
    fn default() -> Self {
        HedgeDelay::Percentile(95.0)
    }
}

/// The hedging state every call shares: the hedged methods with their recent
/// latencies, and the hedge budget.
pub(crate) struct Hedging {
    methods: HashMap<Box<str>, Arc<MethodLatency>>,
    delay: HedgeDelay,
    /// The floor of an adaptive delay.
    min_delay: Duration,
    /// Hedges draw on it (and on the retry budget).
    pub budget: RetryBudget,
}

impl Hedging {
    /// The hedging of `cfg`; `window`: the retry budget's window, which the
    /// hedge budget shares.
    pub fn new(cfg: &HedgeConfig, window: Duration) -> Self {
        let methods = cfg
            .methods
            .iter()
            .map(|m| (Box::from(m.as_str()), Arc::default()))
            .collect();
        Self {
            methods,
            delay: cfg.delay,
            min_delay: cfg.min_delay,
            budget: RetryBudget::new(cfg.budget_ratio, cfg.budget_min_per_sec, window),
        }
    }

    /// The latency record of the method at `path` if it is hedged.
    pub fn method(&self, path: &str) -> Option<Arc<MethodLatency>> {
        if self.methods.is_empty() {
            return None;
        }
        self.methods.get(path).cloned()
    }

    /// The current hedging delay of `method` (`None`: not yet known): the
    /// fixed one, or the percentile of its recent latency but at least the
    /// floor.
    pub fn delay(&self, method: &MethodLatency) -> Option<Duration> {
        match self.delay {
            HedgeDelay::Fixed(delay) => Some(delay),
            HedgeDelay::Percentile(_) => method.delay().map(|d| d.max(self.min_delay)),
        }
    }

    /// A call of `method` got its response headers `latency` after it started.
    pub fn record(&self, method: &MethodLatency, latency: Duration) {
        if let HedgeDelay::Percentile(percentile) = self.delay {
            method.record(latency, percentile);
        }
    }
}

/// The recent latencies of one hedged method, and the delay they give.
#[derive(Default)]
pub(crate) struct MethodLatency {
    recent: Mutex<Recent>,
    /// The adaptive delay in nanoseconds; 0 until there are enough samples.
    delay_ns: AtomicU64,
}

/// A ring of the last [`WINDOW`] latencies, in nanoseconds.
#[derive(Default)]
struct Recent {
    samples: Vec<u64>,
    /// Where the next sample goes once the ring is full.
    next: usize,
    /// Samples since the delay was last computed.
    fresh: u32,
    /// Reused for the selection, so recomputing allocates nothing.
    scratch: Vec<u64>,
}

impl MethodLatency {
    fn delay(&self) -> Option<Duration> {
        match self.delay_ns.load(Ordering::Relaxed) {
            0 => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }

    /// Adds a sample; every [`REFRESH_EVERY`] samples (once there are
    /// [`MIN_SAMPLES`]) recomputes the delay as `percentile` of the window.
    fn record(&self, latency: Duration, percentile: f64) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        let mut guard = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let recent = &mut *guard;
        if recent.samples.len() < WINDOW {
            recent.samples.push(ns);
        } else {
            recent.samples[recent.next] = ns;
            recent.next = (recent.next + 1) % WINDOW;
        }
        recent.fresh += 1;
        if recent.fresh < REFRESH_EVERY || recent.samples.len() < MIN_SAMPLES {
            return;
        }
        recent.fresh = 0;
        recent.scratch.clear();
        recent.scratch.extend_from_slice(&recent.samples);
        let rank = nearest_rank(recent.scratch.len(), percentile);
        let (_, value, _) = recent.scratch.select_nth_unstable(rank);
        self.delay_ns.store(*value, Ordering::Relaxed);
    }
}

/// The index of the `percentile` in `n` sorted samples, by the nearest-rank
/// method (the smallest sample at or above that share of them).
fn nearest_rank(n: usize, percentile: f64) -> usize {
    let rank = (percentile / 100.0 * n as f64).ceil() as usize;
    rank.clamp(1, n) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hedging(delay: HedgeDelay) -> Hedging {
        floored(delay, Duration::ZERO)
    }

    fn floored(delay: HedgeDelay, min_delay: Duration) -> Hedging {
        let cfg = HedgeConfig {
            methods: vec!["/a.B/C".to_owned()],
            delay,
            min_delay,
            ..HedgeConfig::default()
        };
        Hedging::new(&cfg, Duration::from_secs(10))
    }

    #[test]
    fn only_named_methods_are_hedged() {
        let h = hedging(HedgeDelay::default());
        assert!(h.method("/a.B/C").is_some());
        assert!(h.method("/a.B/D").is_none());
        assert!(h.method("/a.B/C/").is_none(), "exact paths, not prefixes");
    }

    #[test]
    fn a_fixed_delay_needs_no_samples() {
        let h = hedging(HedgeDelay::Fixed(Duration::from_millis(7)));
        let m = h.method("/a.B/C").unwrap();
        assert_eq!(h.delay(&m), Some(Duration::from_millis(7)));
        h.record(&m, Duration::from_secs(1));
        assert_eq!(h.delay(&m), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_adaptive_delay_is_the_percentile_of_the_recent_window() {
        let h = hedging(HedgeDelay::Percentile(95.0));
        let m = h.method("/a.B/C").unwrap();
        let ms = Duration::from_millis;
        for i in 0..MIN_SAMPLES as u64 - 1 {
            h.record(&m, ms(i + 1));
        }
        assert_eq!(h.delay(&m), None, "too few samples");
        h.record(&m, ms(32));
        // 1..=32ms: the nearest rank of p95 is the 31st sample.
        assert_eq!(h.delay(&m), Some(ms(31)));

        // A full window of 100 * 1..=5ms (p95: 5ms) pushes the old ones out.
        for i in 0..WINDOW as u64 {
            h.record(&m, ms(1 + i % 5));
        }
        assert_eq!(h.delay(&m), Some(ms(5)));
        for _ in 0..WINDOW {
            h.record(&m, ms(2));
        }
        assert_eq!(h.delay(&m), Some(ms(2)), "only recent samples count");
    }

    #[test]
    fn the_adaptive_delay_never_goes_under_the_floor() {
        let us = Duration::from_micros;
        let h = floored(HedgeDelay::Percentile(95.0), DEFAULT_MIN_DELAY);
        let m = h.method("/a.B/C").unwrap();
        // Calls of 300-700µs: p95 is 680µs, ordinary jitter; the floor holds.
        for i in 0..WINDOW as u64 {
            h.record(&m, us(300 + (i % 21) * 20));
        }
        assert_eq!(h.delay(&m), Some(Duration::from_millis(2)));
        // Slower calls: the percentile is over the floor and decides.
        for i in 0..WINDOW as u64 {
            h.record(&m, us(1_000 + (i % 21) * 200));
        }
        assert_eq!(h.delay(&m), Some(us(4_800)));
        // A fixed delay is taken as given.
        let h = floored(HedgeDelay::Fixed(us(500)), DEFAULT_MIN_DELAY);
        let m = h.method("/a.B/C").unwrap();
        assert_eq!(h.delay(&m), Some(us(500)));
    }

    #[test]
    fn nearest_rank_bounds() {
        assert_eq!(nearest_rank(1, 95.0), 0);
        assert_eq!(nearest_rank(100, 95.0), 94);
        assert_eq!(nearest_rank(100, 99.9), 99);
        assert_eq!(nearest_rank(100, 0.1), 0);
    }
}
