//! Peak-EWMA latency estimate, as in `tower::load::PeakEwma`.
//!
//! A new observation above the estimate replaces it at once (the *peak*); one
//! below it is blended in with a weight that grows with the time since the last
//! update. Reading the estimate decays it towards zero, so an endpoint that was
//! slow once and then got no traffic is tried again after a while; sooner when
//! its health probes, answering quickly, lower it ([`PeakEwma::lower_to`], see
//! `Endpoint::on_probe`).
//!
//! **The cost** power of two choices compares ([`PeakEwma::cost`]) is the
//! estimate, raised to how long the endpoint's oldest unanswered attempt has
//! waited when that is longer: an answer that has not come yet is a latency
//! sample too, only a lower bound of one. So a replica that stops answering
//! (frozen, partitioned, a full accept queue) grows dearer with every
//! millisecond of silence, before any answer or timeout says so. By default
//! ([`P2cCost::Latency`]) that is all: the number of attempts in flight does
//! not count. [`P2cCost::LatencyTimesOutstanding`] multiplies it by
//! `outstanding + 1`, as tower's `PeakEwma` and linkerd2-proxy do; see
//! [`P2cCost`] for why that is not the default.
//!
//! **Overload penalty.** A server that sheds a call (`RESOURCE_EXHAUSTED` with
//! a retry pushback, see `classify`) asks to be left alone for the pushback
//! period: until then its cost gets [`OVERLOAD_COST`] added
//! ([`PeakEwma::penalize_until`]), so it loses every power-of-two draw against
//! an endpoint that is not overloaded, whatever their latencies; two
//! overloaded ones compare as any two costs do (within the picker's tolerance
//! they count as equal, see `picker`). The penalty ends exactly
//! when the period does; the endpoint also observes the period as a latency
//! sample (what a call sent there would have waited, see
//! `Endpoint::on_overload`), which then decays as usual.

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::picker::P2cCost;

/// A latency estimate in nanoseconds. Cheap: one short, per-endpoint lock.
#[derive(Debug)]
pub(crate) struct PeakEwma {
    decay_ns: f64,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    estimate_ns: f64,
    updated: Instant,
    /// The end of the overload penalty, if one was ever set.
    penalized_until: Option<Instant>,
}

/// What an overloaded endpoint's cost gets added (in the cost's unit,
/// nanoseconds × calls): 1000 seconds, far above any real latency cost.
pub(crate) const OVERLOAD_COST: f64 = 1e12;

impl PeakEwma {
    /// An estimate that starts at `initial` and decays with time constant `decay`.
    pub fn new(initial: Duration, decay: Duration, now: Instant) -> Self {
        Self {
            decay_ns: nanos(decay).max(1.0),
            state: Mutex::new(State {
                estimate_ns: nanos(initial),
                updated: now,
                penalized_until: None,
            }),
        }
    }

    /// The decayed estimate at `now`, in nanoseconds.
    pub fn estimate(&self, now: Instant) -> f64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.decay_to(now, self.decay_ns)
    }

    /// Folds one observed round-trip time into the estimate.
    pub fn observe(&self, rtt: Duration, now: Instant) {
        let rtt = nanos(rtt);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if rtt > state.estimate_ns {
            state.estimate_ns = rtt;
        } else {
            let elapsed = nanos(now.saturating_duration_since(state.updated));
            let decay = (-elapsed / self.decay_ns).exp();
            state.estimate_ns = state.estimate_ns * decay + rtt * (1.0 - decay);
        }
        state.updated = now;
    }

    /// Raises the (decayed) estimate to `at_least` when that is higher; never
    /// lowers it. For a lower bound of a round-trip time (an attempt still
    /// without an answer after that long), which [`PeakEwma::observe`] would
    /// wrongly average in as a whole sample when lower than the estimate.
    pub fn raise_to(&self, at_least: Duration, now: Instant) {
        let at_least = nanos(at_least);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if at_least > state.decay_to(now, self.decay_ns) {
            state.estimate_ns = at_least;
        }
    }

    /// Lowers the (decayed) estimate to `rtt` when that is lower; never raises it.
    /// For an endpoint that got no calls lately, whose old estimate says little: a
    /// fresh quick answer brings it back into play, a slow one changes nothing.
    pub fn lower_to(&self, rtt: Duration, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let decayed = state.decay_to(now, self.decay_ns);
        state.estimate_ns = decayed.min(nanos(rtt));
    }

    /// The load-balancing cost (see [`P2cCost`]): the decayed estimate, raised
    /// to `waiting` when that is higher (an attempt on the endpoint has been
    /// waiting at least that long for its answer, so its latency is at least
    /// that, see `Endpoint::unanswered_for`); times `outstanding + 1` for
    /// [`P2cCost::LatencyTimesOutstanding`]; plus [`OVERLOAD_COST`] while the
    /// overload penalty lasts.
    pub fn cost(&self, model: P2cCost, outstanding: usize, waiting: Duration, now: Instant) -> f64 {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let latency = state.decay_to(now, self.decay_ns).max(nanos(waiting));
        let cost = match model {
            P2cCost::Latency => latency,
            P2cCost::LatencyTimesOutstanding => latency * (outstanding as f64 + 1.0),
        };
        match state.penalized_until {
            Some(until) if until > now => cost + OVERLOAD_COST,
            _ => cost,
        }
    }

    /// Penalizes the cost until `until` (a later penalty already set stands).
    pub fn penalize_until(&self, until: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.penalized_until = Some(state.penalized_until.map_or(until, |u| u.max(until)));
    }

    /// How long the overload penalty still lasts at `now`, if it does.
    pub fn penalty_left(&self, now: Instant) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .penalized_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

impl State {
    /// Decays the estimate to `now` (time constant `decay_ns`) and returns it.
    fn decay_to(&mut self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed = nanos(now.saturating_duration_since(self.updated));
        if elapsed > 0.0 {
            self.estimate_ns *= (-elapsed / decay_ns).exp();
            self.updated = now;
        }
        self.estimate_ns
    }
}

fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn peaks_then_blends_then_decays() {
        let now = Instant::now();
        let ewma = PeakEwma::new(Duration::from_millis(5), Duration::from_secs(10), now);
        ewma.observe(Duration::from_millis(100), now);
        assert_eq!(
            ewma.estimate(now),
            100e6,
            "a peak replaces the estimate at once"
        );

        // A lower sample 10s (one time constant) later pulls it about 63% of the way.
        let later = now + Duration::from_secs(10);
        ewma.observe(Duration::from_millis(10), later);
        let e = ewma.estimate(later);
        let expected = 100e6 * (-1f64).exp() + 10e6 * (1.0 - (-1f64).exp());
        assert!((e - expected).abs() < 1.0, "{e} vs {expected}");

        // With no traffic it decays towards zero.
        let idle = later + Duration::from_secs(30);
        assert!(ewma.estimate(idle) < e / 10.0);
        let none = Duration::ZERO;
        assert_eq!(
            ewma.cost(P2cCost::Latency, 3, none, idle),
            ewma.estimate(idle)
        );
        assert_eq!(
            ewma.cost(P2cCost::LatencyTimesOutstanding, 3, none, idle),
            ewma.estimate(idle) * 4.0
        );

        // A quick probe answer lowers an estimate; a slow one never raises it.
        let probed = idle + Duration::from_secs(1);
        ewma.lower_to(Duration::from_micros(300), probed);
        assert_eq!(ewma.estimate(probed), 300e3);
        ewma.lower_to(Duration::from_millis(50), probed);
        assert_eq!(ewma.estimate(probed), 300e3);

        // A lower bound raises a lower estimate to it, and never lowers one.
        ewma.raise_to(Duration::from_millis(2), probed);
        assert_eq!(ewma.estimate(probed), 2e6);
        ewma.raise_to(Duration::from_micros(500), probed);
        assert_eq!(ewma.estimate(probed), 2e6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pushback_raises_the_cost_for_exactly_its_period() {
        let start = Instant::now();
        let ewma = PeakEwma::new(Duration::from_millis(1), Duration::from_secs(10), start);
        let plain = |at| ewma.estimate(at) * 3.0;
        let cost = |at| ewma.cost(P2cCost::LatencyTimesOutstanding, 2, Duration::ZERO, at);
        assert_eq!(ewma.penalty_left(start), None);
        ewma.penalize_until(start + Duration::from_millis(40));
        // A shorter pushback arriving meanwhile does not cut the period short.
        ewma.penalize_until(start + Duration::from_millis(10));
        for ms in [0, 20, 39] {
            let at = start + Duration::from_millis(ms);
            assert_eq!(cost(at), plain(at) + OVERLOAD_COST, "at {ms}ms");
            assert_eq!(ewma.penalty_left(at), Some(Duration::from_millis(40 - ms)));
        }
        for ms in [40, 41, 1000] {
            let at = start + Duration::from_millis(ms);
            assert_eq!(cost(at), plain(at), "at {ms}ms: over");
            assert_eq!(ewma.penalty_left(at), None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_attempt_waiting_longer_than_the_estimate_raises_the_cost_while_it_waits() {
        let now = Instant::now();
        let ewma = PeakEwma::new(Duration::from_millis(2), Duration::from_secs(10), now);
        for model in [P2cCost::Latency, P2cCost::LatencyTimesOutstanding] {
            let per_call = |cost: f64| match model {
                P2cCost::Latency => cost,
                P2cCost::LatencyTimesOutstanding => cost / 2.0,
            };
            // Waiting less than the estimate says nothing new.
            let short = ewma.cost(model, 1, Duration::from_millis(1), now);
            assert_eq!(per_call(short), 2e6, "{model:?}");
            // Waiting longer is a latency of at least that long.
            let long = ewma.cost(model, 1, Duration::from_millis(30), now);
            assert_eq!(per_call(long), 30e6, "{model:?}");
        }
        // The bound is not remembered: the estimate itself is unchanged.
        assert_eq!(ewma.estimate(now), 2e6);
    }
}
