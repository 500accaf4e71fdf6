//! Failed-login records for login throttling, changed only by compare-and-set. A record
//! of count 0 is the absence of a row.

use rusqlite::{OptionalExtension, params};

use super::pool::Pool;
use crate::store::{AccountId, LoginFailures, StoreError};

/// See [`Store::login_failures`](crate::store::Store::login_failures).
pub(super) async fn get(pool: &Pool, account: AccountId) -> Result<LoginFailures, StoreError> {
    pool.run(move |connection| {
        let found = connection
            .prepare_cached("SELECT count, locked_until FROM login_failures WHERE account_id = ?1")?
            .query_row([account], |row| {
                Ok(LoginFailures {
                    count: row.get(0)?,
                    locked_until_unix_ms: row.get(1)?,
                })
            })
            .optional()?;
        Ok(found.unwrap_or_default())
    })
    .await
}

/// See [`Store::replace_login_failures`](crate::store::Store::replace_login_failures):
/// each statement matches the whole record `seen`, so it changes one row only when
/// nobody changed that row first.
pub(super) async fn replace(
    pool: &Pool,
    account: AccountId,
    seen: LoginFailures,
    next: LoginFailures,
) -> Result<bool, StoreError> {
    pool.write(move |tx| {
        let changed = match (seen.count, next.count) {
            (0, 0) => {
                let exists: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM login_failures WHERE account_id = ?1")?
                    .query_row([account], |row| row.get(0))
                    .optional()?;
                usize::from(exists.is_none())
            }
            (0, _) => tx
                .prepare_cached(
                    "INSERT INTO login_failures (account_id, count, locked_until)
                     VALUES (?1, ?2, ?3) ON CONFLICT (account_id) DO NOTHING",
                )?
                .execute(params![account, next.count, next.locked_until_unix_ms])?,
            (_, 0) => tx
                .prepare_cached(
                    "DELETE FROM login_failures
                     WHERE account_id = ?1 AND count = ?2 AND locked_until = ?3",
                )?
                .execute(params![account, seen.count, seen.locked_until_unix_ms])?,
            (_, _) => tx
                .prepare_cached(
                    "UPDATE login_failures SET count = ?4, locked_until = ?5
                     WHERE account_id = ?1 AND count = ?2 AND locked_until = ?3",
                )?
                .execute(params![
                    account,
                    seen.count,
                    seen.locked_until_unix_ms,
                    next.count,
                    next.locked_until_unix_ms
                ])?,
        };
        Ok(changed == 1)
    })
    .await
}

/// See [`Store::clear_login_failures`](crate::store::Store::clear_login_failures).
pub(super) async fn clear(pool: &Pool, account: AccountId) -> Result<(), StoreError> {
    pool.write(move |tx| {
        tx.prepare_cached("DELETE FROM login_failures WHERE account_id = ?1")?
            .execute([account])?;
        Ok(())
    })
    .await
}
