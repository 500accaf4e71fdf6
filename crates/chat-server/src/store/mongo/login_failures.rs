//! Failed-login records for login throttling, changed only by compare-and-set. A record
//! of count 0 is the absence of a document.

use mongodb::bson::doc;

use super::db::{Db, find_one};
use super::documents::LoginFailuresDoc;
use super::error::{Outcome, is_duplicate_key};
use crate::store::{AccountId, LoginFailures};

/// See [`Store::login_failures`](crate::store::Store::login_failures).
pub(super) async fn get(db: &Db, account: AccountId) -> Outcome<LoginFailures> {
    let found = find_one::<LoginFailuresDoc>(&db.login_failures, doc! { "_id": account }).await?;
    Ok(found.map_or(Ok(LoginFailures::default()), |record| record.record())?)
}

/// See [`Store::replace_login_failures`](crate::store::Store::replace_login_failures):
/// the filters match the whole record `seen`, so the write happens only when nobody
/// changed it first.
pub(super) async fn replace(
    db: &Db,
    account: AccountId,
    seen: LoginFailures,
    next: LoginFailures,
) -> Outcome<bool> {
    let records = &db.login_failures;
    let seen_filter = doc! {
        "_id": account,
        "count": i64::from(seen.count),
        "locked_until": seen.locked_until_unix_ms,
    };
    let next_fields = doc! {
        "count": i64::from(next.count),
        "locked_until": next.locked_until_unix_ms,
    };
    let claimed = match (seen.count, next.count) {
        (0, 0) => records.find_one(doc! { "_id": account }).await?.is_none(),
        (0, _) => {
            let mut record = next_fields;
            record.insert("_id", account);
            match records.insert_one(record).await {
                Ok(_) => true,
                Err(error) if is_duplicate_key(&error) => false,
                Err(error) => return Err(error.into()),
            }
        }
        (_, 0) => records.delete_one(seen_filter).await?.deleted_count == 1,
        (_, _) => {
            records
                .update_one(seen_filter, doc! { "$set": next_fields })
                .await?
                .matched_count
                == 1
        }
    };
    Ok(claimed)
}

/// See [`Store::clear_login_failures`](crate::store::Store::clear_login_failures).
pub(super) async fn clear(db: &Db, account: AccountId) -> Outcome<()> {
    db.login_failures
        .delete_one(doc! { "_id": account })
        .await?;
    Ok(())
}
