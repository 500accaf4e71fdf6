//! How long a retry that must wait waits: exponential backoff with jitter.
//!
//! A retry waits when the server shed the call (a retry pushback, see
//! `classify`) and no other endpoint can take it now: every endpoint was tried
//! or is itself under a pushback. Its wait is the longer of the pushback and
//! the call's `n`-th backoff: `min(base * 2^(n-1), max)`, scaled by a random
//! factor from 0.5 to 1 ("equal jitter": never less than half, so the backoff
//! still grows, and callers that were shed together come back spread out).
//! A wait that would end at or after the call's deadline is not made: the
//! call answers with what the server said instead.
//!
//! The formula is a few lines, so it is here rather than tower's
//! `ExponentialBackoff`, which hands out sleep futures where the call's state
//! machine needs an instant for its timer.

use std::time::Duration;

use rand::Rng;

/// The `n`-th backoff (from 1) between `base` and `max`, jittered by `rng`.
pub(crate) fn backoff(n: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let doublings = n.saturating_sub(1).min(31);
    let ceiling = base.saturating_mul(1 << doublings).min(max);
    ceiling.mul_f64(rng.random_range(0.5..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};

    #[test]
    fn it_doubles_up_to_the_cap_with_jitter_within_bounds() {
        let (base, max) = (Duration::from_millis(20), Duration::from_millis(500));
        let mut rng = StdRng::seed_from_u64(3);
        for (n, ceiling_ms) in [
            (1, 20),
            (2, 40),
            (3, 80),
            (4, 160),
            (5, 320),
            (6, 500),
            (40, 500),
        ] {
            let ceiling = Duration::from_millis(ceiling_ms);
            let draws: Vec<Duration> = (0..200).map(|_| backoff(n, base, max, &mut rng)).collect();
            for d in &draws {
                assert!(*d >= ceiling / 2 && *d <= ceiling, "n={n}: {d:?}");
            }
            // Jittered: the draws spread over the range, not one value.
            let (lo, hi) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert!(*hi - *lo > ceiling / 4, "n={n}: {lo:?}..{hi:?}");
        }
    }
}
