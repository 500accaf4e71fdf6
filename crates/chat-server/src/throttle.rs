//! Login throttling: a guessed password costs the guesser time, on every replica.
//!
//! Every failed password check of an existing account is counted in the shared store
//! (a compare-and-set, [`Store::replace_login_failures`], so concurrent failures on
//! several replicas are all counted), and a successful check forgets the count. The
//! first [`FREE_ATTEMPTS`] failures in a row cost nothing; from then on the account
//! takes its next check only after a wait: [`FIRST_DELAY`], doubling with every further
//! failure, at most [`MAX_DELAY`]. A check that comes too early is refused with
//! `RESOURCE_EXHAUSTED` naming the wait, without hashing anything, so guessing costs
//! the server nothing either. Failures are forgotten a [`FORGET_AFTER`] after the last
//! one, so occasional typos over months never add up.
//!
//! Within a replica the checks of one account take turns ([`CheckTurns`]): a check
//! reads the account's record, and is counted, before the next one starts. So guesses
//! sent at once gain at most one check per replica over the count (on its other
//! replicas, a check may start just before a failure elsewhere is counted), while
//! legitimate logins sent at once simply queue for a few milliseconds each. Because the
//! count lives in the store, spreading guesses over replicas gains nothing more.
//!
//! The price, as with any lock-out: someone who knows a username can make its owner
//! wait too (at most [`MAX_DELAY`] per attempt). Unknown usernames are answered
//! `NOT_FOUND` at once (they have nothing to guess).
//!
//! [`Store::replace_login_failures`]: crate::store::Store::replace_login_failures

use std::time::Duration;

use crate::store::{AccountId, LoginFailures};

/// Failed checks in a row that cause no wait.
pub const FREE_ATTEMPTS: u32 = 5;
/// The wait after the first failure beyond the free ones.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// Failures are forgotten this long after the last one.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// How long an account waits after its `failures`-th failed check in a row (counted
/// from its last successful one) before it takes another.
pub fn delay_after(failures: u32) -> Duration {
    if failures < FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    let doublings = failures - FREE_ATTEMPTS;
    FIRST_DELAY
        .checked_mul(1u32.checked_shl(doublings).unwrap_or(u32::MAX))
        .unwrap_or(MAX_DELAY)
        .min(MAX_DELAY)
}

/// How long a password check arriving at `now_unix_ms` must wait, given the account's
/// record `seen`; `None` when it may go ahead.
pub fn wait_before_check(seen: LoginFailures, now_unix_ms: i64) -> Option<Duration> {
    let left = seen.locked_until_unix_ms.saturating_sub(now_unix_ms);
    (left > 0).then(|| Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// The record after one more failed check at `now_unix_ms`.
pub fn after_failure(seen: LoginFailures, now_unix_ms: i64) -> LoginFailures {
    let last_failure = seen
        .locked_until_unix_ms
        .saturating_sub(millis(delay_after(seen.count)));
    let forgotten = now_unix_ms >= last_failure.saturating_add(millis(FORGET_AFTER));
    let failures = if forgotten { 0 } else { seen.count }.saturating_add(1);
    LoginFailures {
        count: failures,
        locked_until_unix_ms: now_unix_ms.saturating_add(millis(delay_after(failures))),
    }
}

/// Makes the password checks of one account take turns within this replica (striped:
/// accounts whose ids share a stripe take turns too, which costs them little).
#[derive(Debug)]
pub struct CheckTurns {
    stripes: Box<[tokio::sync::Mutex<()>]>,
}

impl Default for CheckTurns {
    fn default() -> Self {
        Self {
            stripes: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl CheckTurns {
    /// Waits for the account's turn; the turn lasts as long as the guard.
    pub async fn take(&self, account: AccountId) -> tokio::sync::MutexGuard<'_, ()> {
        let stripe = usize::try_from(account.rem_euclid(self.stripes.len() as i64)).unwrap_or(0);
        self.stripes[stripe].lock().await
    }
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

    /// Records `n` failures, each as early as allowed; returns the record and the
    /// time of the last.
    fn failures(n: u32, start: i64) -> (LoginFailures, i64) {
        let (mut record, mut now) = (LoginFailures::default(), start);
        for _ in 0..n {
            now = now.max(record.locked_until_unix_ms);
            assert_eq!(wait_before_check(record, now), None, "at {now}");
            record = after_failure(record, now);
        }
        (record, now)
    }

    #[test]
    fn five_failures_in_a_row_then_a_wait() {
        let (record, last) = failures(5, 1_000);
        assert_eq!((record.count, last), (5, 1_000));
        assert_eq!(
            wait_before_check(record, 1_000),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            wait_before_check(record, 1_400),
            Some(Duration::from_millis(600))
        );
        assert_eq!(wait_before_check(record, 2_000), None);
        assert_eq!(
            after_failure(record, 2_000),
            LoginFailures {
                count: 6,
                locked_until_unix_ms: 4_000,
            }
        );
        assert_eq!(wait_before_check(LoginFailures::default(), 0), None);
    }

    #[test]
    fn failures_are_forgotten_a_day_after_the_last() {
        let (record, last) = failures(8, 0);
        let day = i64::try_from(FORGET_AFTER.as_millis()).unwrap();
        assert_eq!(after_failure(record, last + day - 1).count, 9);
        assert_eq!(
            after_failure(record, last + day),
            LoginFailures {
                count: 1,
                locked_until_unix_ms: last + day,
            }
        );
    }

    #[tokio::test]
    async fn checks_of_one_account_take_turns() {
        let turns = CheckTurns::default();
        let first = turns.take(7).await;
        let other_account = tokio::time::timeout(Duration::from_millis(50), turns.take(8)).await;
        assert!(other_account.is_ok(), "another account goes ahead");
        let same = tokio::time::timeout(Duration::from_millis(50), turns.take(7)).await;
        assert!(same.is_err(), "the same account waits its turn");
        drop(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), turns.take(7))
                .await
                .is_ok()
        );
    }
}
