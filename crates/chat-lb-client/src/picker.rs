//! Choosing an endpoint for a call: power of two choices, round-robin, pick-first.
//!
//! The candidates are the endpoints of the best non-empty *tier*, best first:
//!
//! 1. **preferred** — healthy;
//! 2. **fallback** — not probed to a conclusion yet (state `Unknown`), or
//!    healthy but slow (its probes answer much more slowly than the others',
//!    see `slow`);
//! 3. **last resort** — ejected by outlier detection, but its most recent probe
//!    succeeded (like Envoy's panic threshold: better a replica that failed a
//!    call lately than no replica at all);
//! 4. **excluded** — unhealthy, not serving, or ejected with a failed (or no)
//!    last probe: never picked.
//!
//! Endpoints this call already tried are skipped before the tier is chosen, so
//! a retry falls through to a lower tier only once the better ones were all
//! tried. Picking allocates nothing: it walks the endpoint list at most twice
//! (three times when slow start passes a choice over).
//!
//! An endpoint in its slow start weighs less than 1 (see `ramp`): when the
//! policy's choice weighs `w` and the other candidate (power of two choices)
//! or the next in turn (round-robin) weighs more, `w_other`, the choice is
//! passed over for it with probability `1 - w / w_other`. Pick-first ignores
//! weights.
//!
//! **Tolerance.** Power of two choices compares the two candidates' costs only
//! when they differ by more than a factor, the *tolerance* (see
//! [`Builder::p2c_tolerance`](crate::Builder::p2c_tolerance)): within it they
//! count as equal and the call takes either, at random. Costs are noisy: one
//! call that waited for a lock the replicas share makes an endpoint look
//! dearer for a while, and a strict comparison then sends the next calls to
//! the others, bunching them up instead of spreading them. (What the cost is,
//! and why calls in flight are not part of it by default: [`P2cCost`].)
//!
//! The tolerance trades an even spread over equal replicas against steering
//! away from a somewhat slower one, as measured in the README's benchmarks
//! (with the cost that weighed calls in flight): over three equal replicas
//! sharing one CPU, a strict comparison made the 99.9th percentile 1.2-1.3x
//! that of a uniformly random choice, and a factor of 8 brought it to 1.0x;
//! but a replica slowed by 3 ms per call then kept 14% of the calls instead of
//! 3%. The default, 2, leaves the small differences to chance and still steers
//! away from a replica that costs twice as much or more (a delay, stalls, a
//! replica that stops answering). A tie (equal costs) is always broken
//! at random, so that no endpoint is favoured for its place in the list.
//!
//! An endpoint within the pushback period of a call it shed is avoided: power
//! of two choices sees its raised cost (see `ewma`); pick-first and
//! round-robin, which have no costs, pass it over for the next candidate of
//! its tier (in configuration order, or in turn) that is not under a pushback,
//! and take it only when all of them are.

use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;
use tokio::time::Instant;

/// How a call chooses among the healthy endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    /// Power of two random choices over a cost ([`P2cCost`]; by default the
    /// peak-EWMA latency estimate): two distinct candidates are drawn at
    /// random and the cheaper one wins, unless the two are within the
    /// tolerance of each other (`Builder::p2c_tolerance`), when either is
    /// taken at random. The default.
    #[default]
    PowerOfTwoChoices,
    /// Each call takes the next candidate in turn. Slow and stalling replicas
    /// are then kept out by health probes and outlier detection only.
    RoundRobin,
    /// Every call takes the first candidate in configuration order; the others
    /// are fail-over spares.
    PickFirst,
}

/// What power of two choices compares: an endpoint's *cost*, lower is better.
///
/// Both models start from the peak-EWMA latency estimate, raised while an
/// attempt on the endpoint has waited longer than that for its answer (so a
/// replica that stops answering grows dearer by the millisecond; see `ewma`),
/// and both add a penalty while the endpoint is in a pushback period.
///
/// **Why calls in flight do not count by default.** Weighing them
/// (`latency * (outstanding + 1)`, tower's `PeakEwma` and linkerd2-proxy's
/// cost) sends each call to the candidate with fewer calls in flight: *join
/// the shorter queue*, which pays off when replicas are independent queues.
/// Replicas that share a CPU or a store's write lock (several on one host)
/// are not, and there it measured worse than a random choice: at 8 callers
/// over three replicas sharing a CPU and an SQLite file, its 99.9th
/// percentile was 1.19x that of tonic's `balance_list` (a uniformly random
/// choice) over six runs with the default tolerance of 2, where the latency
/// estimate alone measured 0.94x (the README's steady-state benchmark). The
/// price: a replica only 3 ms slower than the others keeps more of the calls
/// (18-25% against 6-17% in one run), as the peak estimates of loaded
/// replicas differ little. A replica that is busier than the others for long
/// shows it in its latencies anyway, and one that stops answering shows it in
/// the wait bound, which covers what the in-flight count was for in the first
/// place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum P2cCost {
    /// The latency estimate alone. The default.
    #[default]
    Latency,
    /// The latency estimate times `outstanding + 1`, where `outstanding` is
    /// the endpoint's attempts waiting for response headers: for replicas
    /// that are independent queues (each on its own host), where joining the
    /// shorter queue may cut the tail further.
    LatencyTimesOutstanding,
}

/// How a call chooses: the policy and, for power of two choices, the
/// tolerance (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    pub policy: Policy,
    /// Two costs within this factor of each other count as equal (at least 1).
    pub tolerance: f64,
}

impl From<Policy> for Choice {
    /// The policy with a strict comparison of costs.
    fn from(policy: Policy) -> Self {
        Self {
            policy,
            tolerance: 1.0,
        }
    }
}

/// Whether `x` and `y`'s costs are within `tolerance` of each other (so
/// power of two choices takes either at random). Costs are never negative.
fn within_tolerance(x: f64, y: f64, tolerance: f64) -> bool {
    x.max(y) <= x.min(y) * tolerance
}

/// Whether and how eagerly an endpoint may take new calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Tier {
    /// Unhealthy, not serving, or ejected without a successful last probe: no
    /// new calls.
    Excluded = 0,
    /// Ejected, but its last probe succeeded: used only while no endpoint is
    /// healthy or unprobed.
    LastResort = 1,
    /// Not probed yet, or healthy but slow: used only while no endpoint is
    /// healthy (and not slow).
    Fallback = 2,
    /// Healthy.
    Preferred = 3,
}

impl Tier {
    pub fn from_u8(v: u8) -> Self {
        match v {
            3 => Tier::Preferred,
            2 => Tier::Fallback,
            1 => Tier::LastResort,
            _ => Tier::Excluded,
        }
    }
}

/// What the picker needs to know about an endpoint.
pub(crate) trait Candidate {
    /// Its current tier.
    fn tier(&self) -> Tier;
    /// Its current load-balancing cost (lower is better).
    fn cost(&self, now: Instant) -> f64;
    /// Its slow-start weight, 0..=1 (see `ramp`).
    fn weight(&self, _now: Instant) -> f64 {
        1.0
    }
    /// Whether it is within the pushback period of a call it shed (see
    /// `classify::Pushback`).
    fn overloaded(&self, _now: Instant) -> bool {
        false
    }
}

/// Whether `chosen` is passed over for `other`: with probability
/// `1 - w / w_other` when it weighs less than the other, never otherwise. So
/// endpoints ramping up side by side (all weighing the same) still compare by
/// cost, and a ramping one next to a full one is taken with probability `w`.
fn passed_over<C: Candidate, R: Rng + ?Sized>(
    chosen: &C,
    other: &C,
    rng: &mut R,
    now: Instant,
) -> bool {
    let (weight, other) = (chosen.weight(now), other.weight(now));
    weight < other && rng.random::<f64>() * other >= weight
}

/// Pick-first among the candidates of `tier`: the first one in configuration
/// order that is not within a pushback period, or the first one when all are.
/// Power of two choices avoids a shedding endpoint through its raised cost;
/// pick-first, which ignores costs, skips it here, for the first attempt of a
/// call as for its retries, and comes back to it when its pushback is over.
fn pick_first<C: Candidate>(
    list: &[C],
    tier: Tier,
    excluded: impl Fn(&C) -> bool,
    now: Instant,
) -> Option<&C> {
    let mut candidates = list.iter().filter(|c| c.tier() == tier && !excluded(c));
    let first = candidates.next()?;
    if !first.overloaded(now) {
        return Some(first);
    }
    Some(candidates.find(|c| !c.overloaded(now)).unwrap_or(first))
}

/// Picks an endpoint from `list` by `choice` (a [`Choice`], or a bare
/// [`Policy`] with a strict comparison), or `None` when no endpoint may take
/// the call. `excluded` tells which endpoints the call already tried.
pub(crate) fn pick<'a, C: Candidate, R: Rng + ?Sized>(
    choice: impl Into<Choice>,
    list: &'a [C],
    excluded: impl Fn(&C) -> bool,
    next: &AtomicUsize,
    rng: &mut R,
    now: Instant,
) -> Option<&'a C> {
    // First pass: the best tier and how many candidates it has.
    let mut tier = Tier::LastResort;
    let mut count = 0usize;
    for c in list {
        let t = c.tier();
        if t < tier || excluded(c) {
            continue;
        }
        if t > tier {
            tier = t;
            count = 0;
        }
        count += 1;
    }
    if count == 0 {
        return None;
    }
    let Choice { policy, tolerance } = choice.into();
    let nth = |n: usize| {
        list.iter()
            .filter(|c| c.tier() == tier && !excluded(c))
            .nth(n)
    };
    match policy {
        Policy::PickFirst => pick_first(list, tier, excluded, now),
        Policy::RoundRobin => {
            let mut turn = next.fetch_add(1, Ordering::Relaxed) % count;
            let mut chosen = nth(turn)?;
            if chosen.overloaded(now)
                && let Some((free_turn, free)) = (1..count)
                    .map(|i| (turn + i) % count)
                    .filter_map(|t| nth(t).map(|c| (t, c)))
                    .find(|(_, c)| !c.overloaded(now))
            {
                // Under a pushback: its turn goes to the next one that is not.
                (turn, chosen) = (free_turn, free);
            }
            if count > 1
                && let Some(next) = nth((turn + 1) % count)
                && passed_over(chosen, next, rng, now)
            {
                return Some(next);
            }
            Some(chosen)
        }
        Policy::PowerOfTwoChoices => {
            if count == 1 {
                return nth(0);
            }
            let a = rng.random_range(0..count);
            let mut b = rng.random_range(0..count - 1);
            if b >= a {
                b += 1;
            }
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            // One walk finds both.
            let mut found = list
                .iter()
                .filter(|c| c.tier() == tier && !excluded(c))
                .enumerate()
                .filter(|(i, _)| *i == lo || *i == hi)
                .map(|(_, c)| c);
            let (x, y) = (found.next()?, found.next());
            let Some(y) = y else {
                // A tier changed under us; take what we have.
                return Some(x);
            };
            let (x_cost, y_cost) = (x.cost(now), y.cost(now));
            let (winner, other) = if within_tolerance(x_cost, y_cost, tolerance) {
                if rng.random::<bool>() { (x, y) } else { (y, x) }
            } else if y_cost < x_cost {
                (y, x)
            } else {
                (x, y)
            };
            Some(if passed_over(winner, other, rng, now) {
                other
            } else {
                winner
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    struct Fake {
        tier: Tier,
        cost: f64,
        weight: f64,
        tried: bool,
        overloaded: bool,
    }

    impl Candidate for Fake {
        fn tier(&self) -> Tier {
            self.tier
        }
        fn cost(&self, _: Instant) -> f64 {
            self.cost
        }
        fn weight(&self, _: Instant) -> f64 {
            self.weight
        }
        fn overloaded(&self, _: Instant) -> bool {
            self.overloaded
        }
    }

    fn fake(tier: Tier, cost: f64) -> Fake {
        Fake {
            tier,
            cost,
            weight: 1.0,
            tried: false,
            overloaded: false,
        }
    }

    /// Each endpoint's share of `n` picks.
    fn shares(choice: impl Into<Choice> + Copy, list: &[Fake], n: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(11);
        let next = AtomicUsize::new(0);
        let mut hits = vec![0usize; list.len()];
        for _ in 0..n {
            let c = pick(choice, list, |c| c.tried, &next, &mut rng, Instant::now()).unwrap();
            hits[index_of(list, c)] += 1;
        }
        hits.iter().map(|h| *h as f64 / n as f64).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_ramping_endpoint_gets_its_weight_times_its_share() {
        for policy in [Policy::PowerOfTwoChoices, Policy::RoundRobin] {
            let list = |weight| {
                let mut list: Vec<Fake> = (0..3).map(|_| fake(Tier::Preferred, 1.0)).collect();
                list[0].weight = weight;
                list
            };
            let full = shares(policy, &list(1.0), 30_000)[0];
            for weight in [0.1, 0.5] {
                let share = shares(policy, &list(weight), 30_000)[0];
                let expected = weight * full;
                assert!(
                    (share - expected).abs() < 0.02,
                    "{policy:?}, weight {weight}: share {share:.3}, expected {expected:.3}"
                );
            }
        }
        // Ramping side by side with equal weights: the cost decides, as ever.
        let mut list = vec![fake(Tier::Preferred, 2.0), fake(Tier::Preferred, 1.0)];
        list[0].weight = 0.3;
        list[1].weight = 0.3;
        assert_eq!(shares(Policy::PowerOfTwoChoices, &list, 1000)[1], 1.0);
        // Pick-first ignores weights; a lone candidate is never passed over.
        let mut list = vec![fake(Tier::Preferred, 1.0), fake(Tier::Preferred, 1.0)];
        list[0].weight = 0.1;
        assert_eq!(shares(Policy::PickFirst, &list, 100)[0], 1.0);
        list[1].tried = true;
        for policy in [Policy::PowerOfTwoChoices, Policy::RoundRobin] {
            assert_eq!(shares(policy, &list, 100)[0], 1.0, "{policy:?}");
        }
    }

    fn index_of(list: &[Fake], c: &Fake) -> usize {
        list.iter().position(|x| std::ptr::eq(x, c)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_cheaper_endpoint() {
        let list = vec![
            fake(Tier::Preferred, 3.0),
            fake(Tier::Preferred, 1.0),
            fake(Tier::Preferred, 2.0),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let next = AtomicUsize::new(0);
        let mut hits = [0usize; 3];
        for _ in 0..3000 {
            let c = pick(
                Policy::PowerOfTwoChoices,
                &list,
                |c| c.tried,
                &next,
                &mut rng,
                Instant::now(),
            )
            .unwrap();
            hits[index_of(&list, c)] += 1;
        }
        // Each pair is drawn with p=1/3: the cheapest wins 2/3 of calls, the
        // middle 1/3, the dearest never.
        assert_eq!(hits[0], 0, "{hits:?}");
        assert!((1850..2150).contains(&hits[1]), "{hits:?}");
        assert!((850..1150).contains(&hits[2]), "{hits:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_counts_costs_within_the_tolerance_as_equal() {
        let pair = |a, b| vec![fake(Tier::Preferred, a), fake(Tier::Preferred, b)];
        let tolerant = Choice {
            policy: Policy::PowerOfTwoChoices,
            tolerance: 4.0,
        };
        // Within a factor of 4: either, at random.
        for (a, b) in [(1.0, 3.0), (3.0, 1.0), (2.0, 8.0), (0.0, 0.0)] {
            let share = shares(tolerant, &pair(a, b), 4000)[0];
            assert!((0.45..0.55).contains(&share), "{a} vs {b}: {share}");
        }
        // Beyond it: always the cheaper.
        assert_eq!(shares(tolerant, &pair(1.0, 4.5), 1000), [1.0, 0.0]);
        assert_eq!(shares(tolerant, &pair(9.0, 2.0), 1000), [0.0, 1.0]);
        assert_eq!(shares(tolerant, &pair(0.0, 0.1), 1000), [1.0, 0.0]);
        // Strict: the cheaper however close, and a tie favours neither place
        // in the list.
        let strict = Policy::PowerOfTwoChoices;
        assert_eq!(shares(strict, &pair(1.0, 1.1), 1000), [1.0, 0.0]);
        let share = shares(strict, &pair(2.0, 2.0), 4000)[0];
        assert!((0.45..0.55).contains(&share), "tie: {share}");
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cycles_in_order_over_the_best_tier() {
        let list = vec![
            fake(Tier::Preferred, 0.0),
            fake(Tier::Excluded, 0.0),
            fake(Tier::Preferred, 0.0),
            fake(Tier::Fallback, 0.0),
            fake(Tier::Preferred, 0.0),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let next = AtomicUsize::new(0);
        let order: Vec<usize> = (0..6)
            .map(|_| {
                index_of(
                    &list,
                    pick(
                        Policy::RoundRobin,
                        &list,
                        |c| c.tried,
                        &next,
                        &mut rng,
                        Instant::now(),
                    )
                    .unwrap(),
                )
            })
            .collect();
        assert_eq!(order, [0, 2, 4, 0, 2, 4]);
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_and_exclusions() {
        let mut rng = StdRng::seed_from_u64(1);
        let next = AtomicUsize::new(0);
        let now = Instant::now();
        // Only unprobed endpoints: they are used.
        let mut list = vec![
            fake(Tier::Excluded, 0.0),
            fake(Tier::Fallback, 0.0),
            fake(Tier::Fallback, 0.0),
        ];
        let first = pick(Policy::PickFirst, &list, |c| c.tried, &next, &mut rng, now).unwrap();
        assert_eq!(index_of(&list, first), 1);
        // A tried endpoint is skipped.
        list[1].tried = true;
        let first = pick(Policy::PickFirst, &list, |c| c.tried, &next, &mut rng, now).unwrap();
        assert_eq!(index_of(&list, first), 2);
        list[2].tried = true;
        assert!(
            pick(
                Policy::PowerOfTwoChoices,
                &list,
                |c| c.tried,
                &next,
                &mut rng,
                now
            )
            .is_none()
        );
        // A healthy endpoint beats unprobed ones; nothing usable means None.
        let list = vec![fake(Tier::Fallback, 0.0), fake(Tier::Preferred, 9.0)];
        let c = pick(
            Policy::PowerOfTwoChoices,
            &list,
            |c| c.tried,
            &next,
            &mut rng,
            now,
        )
        .unwrap();
        assert_eq!(index_of(&list, c), 1);
        let none: Vec<Fake> = vec![fake(Tier::Excluded, 0.0)];
        assert!(pick(Policy::RoundRobin, &none, |c| c.tried, &next, &mut rng, now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn last_resort_only_when_nothing_better_is_left() {
        let mut rng = StdRng::seed_from_u64(1);
        let next = AtomicUsize::new(0);
        let now = Instant::now();
        let mut list = vec![
            fake(Tier::LastResort, 0.0),
            fake(Tier::Excluded, 0.0),
            fake(Tier::Fallback, 5.0),
            fake(Tier::LastResort, 0.0),
        ];
        for policy in [
            Policy::PickFirst,
            Policy::RoundRobin,
            Policy::PowerOfTwoChoices,
        ] {
            let c = pick(policy, &list, |c| c.tried, &next, &mut rng, now).unwrap();
            assert_eq!(index_of(&list, c), 2, "{policy:?}: an unprobed one first");
        }
        // The unprobed one was tried: the last-resort tier is used, in order.
        list[2].tried = true;
        let c = pick(Policy::PickFirst, &list, |c| c.tried, &next, &mut rng, now).unwrap();
        assert_eq!(index_of(&list, c), 0);
        let order: Vec<usize> = (0..4)
            .map(|_| {
                let c = pick(Policy::RoundRobin, &list, |c| c.tried, &next, &mut rng, now);
                index_of(&list, c.unwrap())
            })
            .collect();
        assert!(order == [0, 3, 0, 3] || order == [3, 0, 3, 0], "{order:?}");
        list[0].tried = true;
        list[3].tried = true;
        assert!(pick(Policy::PickFirst, &list, |c| c.tried, &next, &mut rng, now).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn pick_first_skips_an_endpoint_under_a_pushback_while_another_is_free() {
        let mut rng = StdRng::seed_from_u64(1);
        let next = AtomicUsize::new(0);
        let now = Instant::now();
        let mut list = vec![
            fake(Tier::Preferred, 0.0),
            fake(Tier::Fallback, 0.0),
            fake(Tier::Preferred, 0.0),
            fake(Tier::Preferred, 0.0),
        ];
        let first = |list: &[Fake], rng: &mut StdRng| {
            let c = pick(Policy::PickFirst, list, |c| c.tried, &next, rng, now);
            index_of(list, c.unwrap())
        };
        list[0].overloaded = true;
        assert_eq!(first(&list, &mut rng), 2, "the next free one of the tier");
        list[2].overloaded = true;
        assert_eq!(first(&list, &mut rng), 3);
        // All of the best tier under a pushback: the first of them, not a
        // worse tier.
        list[3].overloaded = true;
        assert_eq!(first(&list, &mut rng), 0);
        // Skipping composes with what the call tried.
        list[2].overloaded = false;
        list[2].tried = true;
        assert_eq!(first(&list, &mut rng), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_passes_over_an_endpoint_under_a_pushback() {
        let mut list: Vec<Fake> = (0..3).map(|_| fake(Tier::Preferred, 1.0)).collect();
        list[1].overloaded = true;
        let some = shares(Policy::RoundRobin, &list, 3000);
        assert_eq!(some[1], 0.0, "never the one under a pushback: {some:?}");
        // Its turns go to the next in turn: a short period's imbalance, for a
        // pick that looks at one endpoint's pushback, not every endpoint's.
        assert!((some[0] - 1.0 / 3.0).abs() < 0.01, "{some:?}");
        assert!((some[2] - 2.0 / 3.0).abs() < 0.01, "{some:?}");
        // All under a pushback: each in turn, as if none were.
        for c in &mut list {
            c.overloaded = true;
        }
        let all = shares(Policy::RoundRobin, &list, 3000);
        assert!(all.iter().all(|s| (s - 1.0 / 3.0).abs() < 0.01), "{all:?}");
    }
}
