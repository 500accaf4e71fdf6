//! Accounts: creation (a unique username key, ids from `AUTOINCREMENT`), look-up,
//! listing by wildcard and deletion.

use rusqlite::{OptionalExtension, Row, params};

use super::error::is_unique_violation;
use super::pool::Pool;
use crate::store::keys::{ListingRange, RangeStart, username_key};
use crate::store::{Account, AccountId, AccountQuery, StoreError};

/// See [`Store::create_account`](crate::store::Store::create_account).
pub(super) async fn create(
    pool: &Pool,
    username: &str,
    password_hash: &str,
    created_at: i64,
) -> Result<Account, StoreError> {
    let (username, password_hash) = (username.to_string(), password_hash.to_string());
    let key = username_key(&username);
    pool.write(move |tx| {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO accounts (username, username_key, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4) RETURNING id",
            )?
            .query_row(params![username, key, password_hash, created_at], |row| {
                row.get(0)
            });
        match inserted {
            Ok(id) => Ok(Account {
                id,
                username,
                password_hash,
            }),
            Err(error) if is_unique_violation(&error) => {
                Err(StoreError::UsernameTaken(username).into())
            }
            Err(error) => Err(error.into()),
        }
    })
    .await
}

/// See [`Store::find_account`](crate::store::Store::find_account).
pub(super) async fn find(pool: &Pool, username: &str) -> Result<Option<Account>, StoreError> {
    let key = username_key(username);
    pool.run(move |connection| {
        Ok(connection
            .prepare_cached(
                "SELECT id, username, password_hash FROM accounts WHERE username_key = ?1",
            )?
            .query_row([key], account_from_row)
            .optional()?)
    })
    .await
}

/// See [`Store::list_accounts`](crate::store::Store::list_accounts): a range scan of
/// the `username_key` index ([`ListingRange`]) filtered by `GLOB`.
pub(super) async fn list(pool: &Pool, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
    let pattern = query.pattern.to_sqlite_glob().to_string();
    let range = ListingRange::of(&query);
    let limit = query.limit;
    pool.run(move |connection| {
        let (sql, lower) = match (&range.start, &range.below) {
            (RangeStart::After(after), Some(_)) => (
                "SELECT username FROM accounts
                 WHERE username_key GLOB ?1 AND username_key > ?2 AND username_key < ?4
                 ORDER BY username_key LIMIT ?3",
                after,
            ),
            (RangeStart::After(after), None) => (
                "SELECT username FROM accounts
                 WHERE username_key GLOB ?1 AND username_key > ?2
                 ORDER BY username_key LIMIT ?3",
                after,
            ),
            (RangeStart::From(prefix), Some(_)) => (
                "SELECT username FROM accounts
                 WHERE username_key GLOB ?1 AND username_key >= ?2 AND username_key < ?4
                 ORDER BY username_key LIMIT ?3",
                prefix,
            ),
            (RangeStart::From(prefix), None) => (
                "SELECT username FROM accounts
                 WHERE username_key GLOB ?1 AND username_key >= ?2
                 ORDER BY username_key LIMIT ?3",
                prefix,
            ),
        };
        let mut statement = connection.prepare_cached(sql)?;
        let names = match &range.below {
            Some(upper) => statement
                .query_map(params![pattern, lower, limit, upper], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>(),
            None => statement
                .query_map(params![pattern, lower, limit], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>(),
        }?;
        Ok(names)
    })
    .await
}

/// See [`Store::delete_account`](crate::store::Store::delete_account): the inbox, the
/// account and its failed-login record in one transaction (sessions stay).
pub(super) async fn delete(pool: &Pool, id: AccountId) -> Result<(), StoreError> {
    pool.write(move |tx| {
        tx.prepare_cached("DELETE FROM messages WHERE recipient_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM accounts WHERE id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM login_failures WHERE account_id = ?1")?
            .execute([id])?;
        Ok(())
    })
    .await
}

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
    })
}
