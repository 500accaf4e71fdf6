//! Login throttling: a guessed password costs the guesser time, on every replica.
//!
//! Each login attempt on an existing account is counted *before* its password is
//! checked, in the shared store ([`Store::claim_login_attempt`], a compare-and-set), and
//! a successful login forgets the count. The first [`FREE_ATTEMPTS`] attempts in a row
//! may come as fast as the caller likes; after that, each failed attempt makes the
//! account wait before taking the next one: [`FIRST_DELAY`], doubling with every further
//! failure, at most [`MAX_DELAY`]. An attempt that comes too early is refused with
//! `RESOURCE_EXHAUSTED` naming the wait, without hashing anything, so guessing costs the
//! server nothing either. Failures are forgotten a [`FORGET_AFTER`] after the last
//! attempt, so occasional typos over months never add up.
//!
//! Because the count lives in the store, spreading guesses over replicas gains nothing;
//! because it is claimed before the check, concurrent guesses cannot all slip through
//! on one count. The prices: as with any lock-out, someone who knows a username can
//! make its owner wait too (at most [`MAX_DELAY`] per attempt); and since an attempt
//! counts from before its password is checked, more than [`FREE_ATTEMPTS`] checks of
//! one account at the very same moment meet the wait even when every password is right
//! (the first success forgets the count, so a retry after the second named passes).
//! Unknown usernames are answered `NOT_FOUND` at once (they have nothing to guess).
//!
//! [`Store::claim_login_attempt`]: crate::store::Store::claim_login_attempt

use std::time::Duration;

use crate::store::LoginFailures;

/// Attempts in a row that are never delayed.
pub const FREE_ATTEMPTS: u32 = 5;
/// The wait after the first failure beyond the free ones.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last attempt.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an account waits after its `attempts`-th attempt in a row (counted from
/// its last successful login) before it takes another.
pub fn delay_after(attempts: u32) -> Duration {
    if attempts < FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    let doublings = attempts - FREE_ATTEMPTS;
    FIRST_DELAY
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY)
}

/// What to do with a login attempt arriving at `now_unix_ms`, given the account's
/// record `seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Too early: refuse it, and say how long is left.
    Wait(Duration),
    /// Take it: first replace `seen` with this record (compare-and-set).
    Count(LoginFailures),
}

/// Decides on an attempt (see the [module documentation](self)).
pub fn decide(seen: LoginFailures, now_unix_ms: i64) -> Decision {
    if now_unix_ms < seen.locked_until_unix_ms {
        let left = seen.locked_until_unix_ms.saturating_sub(now_unix_ms);
        return Decision::Wait(Duration::from_millis(u64::try_from(left).unwrap_or(0)));
    }
    let last_attempt = seen
        .locked_until_unix_ms
        .saturating_sub(millis(delay_after(seen.count)));
    let forgotten = now_unix_ms >= last_attempt.saturating_add(millis(FORGET_AFTER));
    let before = if forgotten { 0 } else { seen.count };
    let attempts = before.saturating_add(1);
    Decision::Count(LoginFailures {
        count: attempts,
        locked_until_unix_ms: now_unix_ms.saturating_add(millis(delay_after(attempts))),
    })
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_attempts_are_free_then_the_wait_doubles_up_to_the_cap() {
        let delays: Vec<u64> = (1..=16).map(|n| delay_after(n).as_secs()).collect();
        assert_eq!(
            delays,
            [0, 0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]
        );
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }

    /// Runs `n` attempts, each as early as allowed; returns the record and the time.
    fn attempts(n: u32, start: i64) -> (LoginFailures, i64) {
        let (mut record, mut now) = (LoginFailures::default(), start);
        for _ in 0..n {
            match decide(record, now) {
                Decision::Count(next) => record = next,
                Decision::Wait(wait) => panic!("waited {wait:?} at {now}"),
            }
            now = now.max(record.locked_until_unix_ms);
        }
        (record, now)
    }

    #[test]
    fn five_attempts_in_a_row_then_a_wait() {
        let (record, now) = attempts(5, 1_000);
        assert_eq!(record.count, 5);
        assert_eq!(
            decide(record, 1_000),
            Decision::Wait(Duration::from_secs(1))
        );
        assert_eq!(
            decide(record, 1_400),
            Decision::Wait(Duration::from_millis(600))
        );
        assert_eq!(now, 2_000);
        assert_eq!(
            decide(record, 2_000),
            Decision::Count(LoginFailures {
                count: 6,
                locked_until_unix_ms: 4_000,
            })
        );
    }

    #[test]
    fn failures_are_forgotten_a_day_after_the_last_attempt() {
        let (record, now) = attempts(8, 0);
        let last_attempt = now - i64::try_from(delay_after(8).as_millis()).unwrap();
        let day = i64::try_from(FORGET_AFTER.as_millis()).unwrap();
        // Just before the day is over, the count goes on...
        let Decision::Count(next) = decide(record, last_attempt + day - 1) else {
            panic!("not locked any more");
        };
        assert_eq!(next.count, 9);
        // ...from then on it starts again.
        assert_eq!(
            decide(record, last_attempt + day),
            Decision::Count(LoginFailures {
                count: 1,
                locked_until_unix_ms: last_attempt + day,
            })
        );
    }
}
