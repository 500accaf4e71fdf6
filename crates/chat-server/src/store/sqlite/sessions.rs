//! Sessions, keyed by token hash. They have no foreign key to their account, so a
//! lookup can tell a deleted account from a missing session.

use rusqlite::{Connection, OptionalExtension, params};

use super::error::is_unique_violation;
use super::pool::Pool;
use crate::store::{Account, AccountId, SessionLookup, StoreError, TokenHash};

/// See [`Store::create_session`](crate::store::Store::create_session).
pub(super) async fn create(
    pool: &Pool,
    token_hash: &TokenHash,
    account: AccountId,
    expires_at: i64,
) -> Result<(), StoreError> {
    let token_hash = *token_hash;
    pool.write(move |tx| {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO sessions (token_hash, account_id, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&token_hash[..], account, expires_at]);
        match inserted {
            Ok(_) => Ok(()),
            // Token hashes are SHA-256 of random tokens: a collision means a bug.
            Err(error) if is_unique_violation(&error) => Err(StoreError::Internal(
                "a session with this token hash already exists".to_string(),
            )
            .into()),
            Err(error) => Err(error.into()),
        }
    })
    .await
}

/// See [`Store::lookup_session`](crate::store::Store::lookup_session): one query on a
/// read connection.
pub(super) async fn lookup(
    pool: &Pool,
    token_hash: &TokenHash,
    now: i64,
) -> Result<SessionLookup, StoreError> {
    let token_hash = *token_hash;
    pool.run(move |connection| Ok(resolve(connection, &token_hash, now)?))
        .await
}

/// What `token_hash` resolves to as of `now`: the session joined with its account if
/// that still exists, in one query on `connection` (a read connection, or the writer's
/// transaction for [`Store::send_message_as`](crate::store::Store::send_message_as)).
pub(super) fn resolve(
    connection: &Connection,
    token_hash: &TokenHash,
    now: i64,
) -> rusqlite::Result<SessionLookup> {
    let found = connection
        .prepare_cached(
            "SELECT s.expires_at, a.id, a.username, a.password_hash
             FROM sessions AS s LEFT JOIN accounts AS a ON a.id = s.account_id
             WHERE s.token_hash = ?1",
        )?
        .query_row([&token_hash[..]], |row| {
            let expires_at: i64 = row.get(0)?;
            let id: Option<AccountId> = row.get(1)?;
            let account = match id {
                Some(id) => Some(Account {
                    id,
                    username: row.get(2)?,
                    password_hash: row.get(3)?,
                }),
                None => None,
            };
            Ok((expires_at, account))
        })
        .optional()?;
    Ok(match found {
        None => SessionLookup::Invalid,
        Some((expires_at, _)) if expires_at <= now => SessionLookup::Invalid,
        Some((_, None)) => SessionLookup::AccountDeleted,
        Some((_, Some(account))) => SessionLookup::Valid(account),
    })
}

/// See [`Store::delete_session`](crate::store::Store::delete_session).
pub(super) async fn delete(pool: &Pool, token_hash: &TokenHash) -> Result<(), StoreError> {
    let token_hash = *token_hash;
    pool.write(move |tx| {
        tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute([&token_hash[..]])?;
        Ok(())
    })
    .await
}

/// See [`Store::purge_expired_sessions`](crate::store::Store::purge_expired_sessions).
pub(super) async fn purge_expired(pool: &Pool, now: i64) -> Result<u64, StoreError> {
    pool.write(move |tx| {
        let purged = tx
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute([now])?;
        Ok(purged as u64)
    })
    .await
}
