//! Sessions, keyed by the hex SHA-256 of their token.
//!
//! Expiry is exact: a lookup compares `expires_at` with the caller's clock. The TTL index
//! on `gc_at` is only garbage collection; `gc_at` is the expiry, but never earlier than
//! [`SESSION_GC_GRACE`] after the session was written, so a replica whose clock is
//! behind the database server's never sees a session vanish while it still calls it
//! valid (it would only have answered "expired" a little later anyway).

use std::time::Duration;

use mongodb::bson::{DateTime, doc};

use super::db::{Db, find_one};
use super::deletion;
use super::documents::{AccountDoc, SessionDoc, millis};
use super::error::{Outcome, is_duplicate_key};
use crate::store::failure::OutcomeExt;
use crate::store::{AccountId, SessionLookup, StoreError, TokenHash};

/// The least time between writing a session and its garbage collection by the TTL
/// index.
pub const SESSION_GC_GRACE: Duration = Duration::from_secs(3600);

/// The last millisecond of the year 9999: the latest date that every server and driver
/// can represent. Only garbage collection uses dates, so capping them there is harmless.
const LATEST_DATE_MS: i64 = 253_402_300_799_999;

/// See [`Store::create_session`](crate::store::Store::create_session).
pub(super) async fn create(
    db: &Db,
    token_hash: &TokenHash,
    account: AccountId,
    expires_at: i64,
) -> Outcome<()> {
    let session = doc! {
        "_id": hex::encode(token_hash),
        "account_id": account,
        "expires_at": expires_at,
        "gc_at": gc_at(expires_at),
    };
    match db.sessions.insert_one(session).await {
        Ok(_) => Ok(()),
        // Token hashes are SHA-256 of random tokens: a collision means a bug.
        Err(error) if is_duplicate_key(&error) => Err(StoreError::Internal(
            "a session with this token hash already exists".to_string(),
        )
        .into()),
        Err(error) => Err(error.into()),
    }
}

/// See [`Store::lookup_session`](crate::store::Store::lookup_session); a session of an
/// account marked for deletion finishes that deletion.
pub(super) async fn lookup(db: &Db, token_hash: &TokenHash, now: i64) -> Outcome<SessionLookup> {
    let session =
        find_one::<SessionDoc>(&db.sessions, doc! { "_id": hex::encode(token_hash) }).await?;
    let Some(session) = session else {
        return Ok(SessionLookup::Invalid);
    };
    if session.expires_at <= now {
        return Ok(SessionLookup::Invalid);
    }
    let account = find_one::<AccountDoc>(&db.accounts, doc! { "_id": session.account_id }).await?;
    Ok(match account {
        Some(account) if account.is_active() => SessionLookup::Valid(account.account()),
        Some(_) => {
            deletion::finish_best_effort(db, session.account_id).await;
            SessionLookup::AccountDeleted
        }
        None => SessionLookup::AccountDeleted,
    })
}

/// See [`Store::delete_session`](crate::store::Store::delete_session).
pub(super) async fn delete(db: &Db, token_hash: &TokenHash) -> Outcome<()> {
    db.sessions
        .delete_one(doc! { "_id": hex::encode(token_hash) })
        .await?;
    Ok(())
}

/// See [`Store::purge_expired_sessions`](crate::store::Store::purge_expired_sessions).
pub(super) async fn purge_expired(db: &Db, now: i64) -> Outcome<u64> {
    let purged = db
        .sessions
        .delete_many(doc! { "expires_at": { "$lte": now } })
        .await?;
    // Every replica runs this now and then: a good moment to finish deletions that a
    // crashed replica left half-done.
    if let Err(error) = deletion::finish_all(db)
        .await
        .or_store_error(db.server_selection_timeout)
    {
        tracing::warn!(%error, "cannot finish interrupted account deletions now");
    }
    Ok(purged.deleted_count)
}

/// When the TTL index may remove a session: at its expiry, but not before
/// [`SESSION_GC_GRACE`] from now (and no later than the year 9999).
fn gc_at(expires_at_unix_ms: i64) -> DateTime {
    let earliest = crate::now_unix_ms().saturating_add(millis(SESSION_GC_GRACE));
    DateTime::from_millis(expires_at_unix_ms.max(earliest).min(LATEST_DATE_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_gc_is_never_before_expiry_nor_within_the_grace() {
        let now = crate::now_unix_ms();
        let far = now + 48 * 3600 * 1000;
        assert_eq!(gc_at(far).timestamp_millis(), far);
        // A session "expired" by a caller's (test) clock is kept for the grace period.
        let past = gc_at(1_700_000_000_000).timestamp_millis();
        assert!(past >= now + millis(SESSION_GC_GRACE));
        assert_eq!(gc_at(i64::MAX).timestamp_millis(), LATEST_DATE_MS);
    }
}
