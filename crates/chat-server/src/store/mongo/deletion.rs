//! Deleting an account, safely resumable.
//!
//! Deletion is an order of single-document steps, each idempotent, rather than a
//! transaction, on every deployment:
//!
//! 1. mark the account `state: "deleting"` and unset its `username_key`, in one write.
//!    From then on every lookup treats it as deleted (sessions say `AccountDeleted`,
//!    fetch and ack say `NoSuchAccount`, sends to it fail, the feed drops its messages)
//!    and its name can be registered again, as a new account with a new id;
//! 2. turn every message in its inbox into a filler (the text is gone);
//! 3. delete the account document.
//!
//! If the process dies after step 1, whoever next meets the marked account finishes
//! steps 2 and 3: a session lookup, a fetch or an ack for it, a repeated
//! `delete_account`, the periodic session purge, and every store at start-up. A send
//! that raced with the deletion re-checks its recipient after inserting (see
//! `messages.rs`) and turns its own message into a filler, so no orphan survives in a
//! deleted inbox.

use futures::TryStreamExt;
use mongodb::bson::doc;

use super::db::Db;
use super::documents::{DELETING, IdDoc};
use super::error::Outcome;
use super::feed::into_filler;
use crate::store::AccountId;
use crate::store::failure::OutcomeExt;

/// See [`Store::delete_account`](crate::store::Store::delete_account): step 1, then
/// the rest.
pub(super) async fn delete(db: &Db, id: AccountId) -> Outcome<()> {
    db.accounts
        .update_one(
            doc! { "_id": id },
            doc! { "$set": { "state": DELETING }, "$unset": { "username_key": "" } },
        )
        .await?;
    finish(db, id).await
}

/// Steps 2 and 3 of a deletion (and the account's failed-login record); idempotent.
async fn finish(db: &Db, id: AccountId) -> Outcome<()> {
    db.messages
        .update_many(doc! { "recipient_id": id }, into_filler("deleted"))
        .await?;
    db.login_failures.delete_one(doc! { "_id": id }).await?;
    db.accounts
        .delete_one(doc! { "_id": id, "state": DELETING })
        .await?;
    Ok(())
}

/// Finishes the deletion of an account met marked, logging instead of failing (the
/// next one to meet it tries again).
pub(super) async fn finish_best_effort(db: &Db, id: AccountId) {
    match finish(db, id)
        .await
        .or_store_error(db.server_selection_timeout)
    {
        Ok(()) => tracing::info!(account = id, "finished an interrupted account deletion"),
        Err(error) => {
            tracing::warn!(account = id, %error, "cannot finish an interrupted account deletion now")
        }
    }
}

/// Finishes every deletion that was interrupted after its first step.
pub(super) async fn finish_all(db: &Db) -> Outcome<()> {
    let marked: Vec<IdDoc> = db
        .accounts
        .clone_with_type::<IdDoc>()
        .find(doc! { "state": DELETING })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    for IdDoc { id } in marked {
        finish(db, id).await?;
        tracing::info!(account = id, "finished an interrupted account deletion");
    }
    Ok(())
}
