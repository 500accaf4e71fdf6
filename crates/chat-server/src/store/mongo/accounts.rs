//! Accounts: creation (ids from a counter, a unique username key), look-up and listing.
//! Deleting them is in `deletion.rs`.

use futures::TryStreamExt;
use mongodb::bson::doc;

use super::counters::{ACCOUNT_COUNTER, next_id};
use super::db::{Db, find_one};
use super::deletion;
use super::documents::{ACTIVE, AccountDoc, UsernameDoc};
use super::error::{Outcome, is_duplicate_key};
use crate::store::keys::{ListingRange, RangeStart, username_key};
use crate::store::{Account, AccountId, AccountQuery, StoreError};

/// See [`Store::create_account`](crate::store::Store::create_account).
pub(super) async fn create(
    db: &Db,
    username: &str,
    password_hash: &str,
    created_at: i64,
) -> Outcome<Account> {
    let id = next_id(db, ACCOUNT_COUNTER).await?;
    let account = doc! {
        "_id": id,
        "username": username,
        "username_key": username_key(username),
        "password_hash": password_hash,
        "created_at": created_at,
        "last_seq": 0_i64,
        "acked_seq": 0_i64,
        "state": ACTIVE,
    };
    match db.accounts.insert_one(account).await {
        Ok(_) => Ok(Account {
            id,
            username: username.to_string(),
            password_hash: password_hash.to_string(),
        }),
        // The id stays unused: ids need not be dense, only never reused.
        Err(error) if is_duplicate_key(&error) => {
            Err(StoreError::UsernameTaken(username.to_string()).into())
        }
        Err(error) => Err(error.into()),
    }
}

/// See [`Store::find_account`](crate::store::Store::find_account).
pub(super) async fn find(db: &Db, username: &str) -> Outcome<Option<Account>> {
    let found = find_one::<AccountDoc>(
        &db.accounts,
        doc! { "username_key": username_key(username) },
    )
    .await?;
    Ok(found.filter(AccountDoc::is_active).map(AccountDoc::account))
}

/// See [`Store::list_accounts`](crate::store::Store::list_accounts): a range scan of
/// the `username_key` index ([`ListingRange`]) filtered by the anchored, escaped regex
/// from `Pattern::to_anchored_regex`.
pub(super) async fn list(db: &Db, query: AccountQuery<'_>) -> Outcome<Vec<String>> {
    if query.limit == 0 {
        return Ok(Vec::new());
    }
    let range = ListingRange::of(&query);
    let mut condition = doc! { "$regex": query.pattern.to_anchored_regex() };
    match range.start {
        RangeStart::After(after) => condition.insert("$gt", after),
        RangeStart::From(prefix) => condition.insert("$gte", prefix),
    };
    if let Some(upper) = range.below {
        condition.insert("$lt", upper);
    }
    let names: Vec<UsernameDoc> = db
        .accounts
        .clone_with_type::<UsernameDoc>()
        .find(doc! { "username_key": condition })
        .sort(doc! { "username_key": 1 })
        .limit(i64::from(query.limit))
        .projection(doc! { "_id": 0, "username": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(names.into_iter().map(|doc| doc.username).collect())
}

/// The active account with this id, if there is one.
pub(super) async fn find_active(db: &Db, id: AccountId) -> Outcome<Option<AccountDoc>> {
    find_one::<AccountDoc>(&db.accounts, doc! { "_id": id, "state": ACTIVE }).await
}

/// An active account, or [`StoreError::NoSuchAccount`]; an account marked for
/// deletion has its deletion finished on the way.
pub(super) async fn require_active(db: &Db, id: AccountId) -> Outcome<AccountDoc> {
    let found = find_one::<AccountDoc>(&db.accounts, doc! { "_id": id }).await?;
    match found {
        Some(account) if account.is_active() => Ok(account),
        Some(_) => {
            deletion::finish_best_effort(db, id).await;
            Err(StoreError::no_such_id(id).into())
        }
        None => Err(StoreError::no_such_id(id).into()),
    }
}
