//! Ids from counters: account ids and message ids.
//!
//! `findOneAndUpdate({_id: NAME}, {$inc: {value: 1}}, upsert)` on the `counters`
//! collection: ids only grow, so a deleted account's id is never reused, even after a
//! crash (a creation that dies after taking an id just leaves that id unused).

use mongodb::bson::doc;
use mongodb::options::ReturnDocument;

use super::db::Db;
use super::documents::CounterDoc;
use super::error::{Outcome, is_duplicate_key};
use crate::store::StoreError;

/// The counter of account ids.
pub(super) const ACCOUNT_COUNTER: &str = "account_id";
/// The counter of message ids (feed positions).
pub(super) const MESSAGE_COUNTER: &str = "message_id";

/// The next value of a counter (1 for a new counter).
pub(super) async fn next_id(db: &Db, counter: &str) -> Outcome<i64> {
    // Two first upserts of a new counter can race; the loser's upsert fails on the
    // `_id` (or, on some servers, returns no document): it simply tries again.
    for _ in 0..8 {
        let result = db
            .counters
            .clone_with_type::<CounterDoc>()
            .find_one_and_update(doc! { "_id": counter }, doc! { "$inc": { "value": 1_i64 } })
            .upsert(true)
            .return_document(ReturnDocument::After)
            .await;
        match result {
            Ok(Some(CounterDoc { value })) => return Ok(value),
            Ok(None) => {}
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Err(StoreError::Internal(format!("the {counter} counter returned no value")).into())
}
