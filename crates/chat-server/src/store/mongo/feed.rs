//! The feed: ids that become visible in increasing order.
//!
//! Live delivery polls [`Store::message_feed`] with the highest id it has seen. Message
//! ids come from a counter, and two replicas may insert ids 10 and 11 in the opposite
//! order, so a naive `_id > cursor` poll could see 11, move its cursor, and never see
//! 10. Every id in `1..=counter` is therefore accounted for by exactly one document: the
//! message, or a *filler* (`{_id, filler: reason}`) that stands for an id that will never
//! hold a message. The poll returns only the **contiguous** run of ids after the cursor
//! and stops at the first missing one (a *hole*: an id whose insert is still in flight).
//! Holes are closed by whoever abandons the id:
//!
//! - a sender whose insert failed (duplicate key, error) inserts a filler for its id;
//! - a sender that died between taking an id and inserting leaves a hole that nobody
//!   else can explain: a poller that sees the same hole for
//!   [`MongoOptions::feed_hole_grace`](super::MongoOptions::feed_hole_grace) (default
//!   [`DEFAULT_FEED_HOLE_GRACE`]) inserts the filler itself. The filler and the message
//!   compete for one `_id`, so exactly one wins: a sender that was merely slow gets a
//!   duplicate-key error and retries with a new id, so its message is never skipped;
//! - deleting an account turns its inbox into fillers instead of removing documents, and
//!   so does history retention ([`Store::purge_history`]) with old acknowledged
//!   messages (all but each inbox's latest, whose number the next send builds on).
//!
//! A new reader (no cursor) starts at the highest stored id, or just below the lowest
//! hole among the latest ids if there is one, so that a message in flight when the
//! reader starts is not already behind its cursor when it lands.
//!
//! An id is taken only after the sequence number it goes with was proposed from a
//! stored predecessor (see `messages.rs`), so per recipient ids and sequence numbers
//! have the same order, which is what subscribers rely on. The trade-off: a sender that
//! dies mid-send stalls live delivery (not storage, not fetching) for every recipient by
//! up to the grace period, once; fillers cost one small document each and expire after
//! [`FILLER_RETENTION`]. The poll also drops messages whose recipient is no longer
//! active (see `deletion.rs`), so no live subscriber ever sees a message of a deleted
//! account. This path needs no change streams, so it works on every deployment.
//!
//! [`Store::message_feed`]: crate::store::Store::message_feed
//! [`Store::purge_history`]: crate::store::Store::purge_history

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use tokio::time::Instant;

use super::db::Db;
use super::documents::{ACTIVE, IdDoc, MessageDoc, millis, to_u64};
use super::error::{Outcome, is_duplicate_key};
use crate::store::failure::OutcomeExt;
use crate::store::keys::to_i64;
use crate::store::{AccountId, FeedPage, StoreError};

/// How long a feed hole (an id taken but neither stored nor abandoned) is waited for
/// before a poller abandons it with a filler.
pub const DEFAULT_FEED_HOLE_GRACE: Duration = Duration::from_secs(2);

/// How long fillers are kept before the TTL monitor removes them. Only a feed reader
/// whose cursor is older than this could meet the hole again, and it would fill it again.
pub const FILLER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many of the latest ids a new feed reader inspects for holes (see [`start`]).
const FEED_START_WINDOW: i64 = 256;

/// The feed hole this store's poller is waiting for, and since when.
#[derive(Debug)]
pub(super) struct HoleWatch {
    /// How long a hole is waited for before it is filled.
    grace: Duration,
    seen: Mutex<Option<Hole>>,
}

#[derive(Debug, Clone, Copy)]
struct Hole {
    id: u64,
    since: Instant,
}

impl HoleWatch {
    /// Watches for holes that last `grace`
    /// ([`MongoOptions::feed_hole_grace`](super::MongoOptions::feed_hole_grace)).
    pub fn new(grace: Duration) -> Self {
        Self {
            grace,
            seen: Mutex::new(None),
        }
    }

    /// Whether the feed poller should abandon `hole` now (it has seen it for the grace
    /// period).
    fn to_fill(&self, hole: Option<u64>) -> Option<u64> {
        let grace = self.grace;
        let mut state = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(hole) = hole else {
            *state = None;
            return None;
        };
        match *state {
            Some(Hole { id, since }) if id == hole => {
                if since.elapsed() >= grace {
                    *state = None;
                    Some(hole)
                } else {
                    None
                }
            }
            _ if grace.is_zero() => Some(hole),
            _ => {
                *state = Some(Hole {
                    id: hole,
                    since: Instant::now(),
                });
                None
            }
        }
    }
}

/// See [`Store::message_feed`](crate::store::Store::message_feed): the contiguous run
/// of ids after the cursor, without messages of accounts no longer active.
pub(super) async fn page(
    db: &Db,
    holes: &HoleWatch,
    after_id: Option<u64>,
    limit: u32,
) -> Outcome<FeedPage> {
    let Some(after) = after_id else {
        return Ok(FeedPage {
            messages: Vec::new(),
            cursor: start(db).await?,
        });
    };
    if limit == 0 {
        return Ok(FeedPage {
            messages: Vec::new(),
            cursor: after,
        });
    }
    let docs: Vec<MessageDoc> = db
        .messages
        .clone_with_type::<MessageDoc>()
        .find(doc! { "_id": { "$gt": to_i64(after) } })
        .sort(doc! { "_id": 1 })
        .limit(i64::from(limit))
        .await?
        .try_collect()
        .await?;

    // Only the contiguous run after the cursor: the first missing id is in flight.
    let mut cursor = after;
    let mut hole = None;
    let mut messages = Vec::new();
    for doc in docs {
        let id = to_u64(doc.id, "message id")?;
        if id != cursor + 1 {
            hole = Some(cursor + 1);
            break;
        }
        cursor = id;
        if let Some(message) = doc.into_message()? {
            messages.push(message);
        }
    }
    if let Some(id) = holes.to_fill(hole) {
        tracing::warn!(
            id,
            "message id taken but neither stored nor released within the grace \
             period (a sender died mid-send?); releasing it so live delivery goes on"
        );
        fill(db, to_i64(id), "abandoned").await?;
    }

    // Drop messages whose recipient is being (or has been) deleted.
    let mut recipients: Vec<AccountId> = messages.iter().map(|(r, _)| *r).collect();
    recipients.sort_unstable();
    recipients.dedup();
    if !recipients.is_empty() {
        let active: Vec<IdDoc> = db
            .accounts
            .clone_with_type::<IdDoc>()
            .find(doc! { "_id": { "$in": &recipients }, "state": ACTIVE })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        let active: HashSet<AccountId> = active.into_iter().map(|doc| doc.id).collect();
        messages.retain(|(recipient, _)| active.contains(recipient));
    }
    Ok(FeedPage {
        messages: messages.into_iter().map(|(_, message)| message).collect(),
        cursor,
    })
}

/// Where a new feed reader starts: the highest stored id, unless a recent id below it
/// is still in flight, in which case just below the lowest such hole, so that the
/// in-flight message is not behind the reader's cursor when it lands. (Starting a
/// little early only re-delivers messages that subscribers skip by sequence.)
async fn start(db: &Db) -> Outcome<u64> {
    let recent: Vec<IdDoc> = db
        .messages
        .clone_with_type::<IdDoc>()
        .find(doc! {})
        .sort(doc! { "_id": -1 })
        .limit(FEED_START_WINDOW)
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    let mut ids: Vec<i64> = recent.into_iter().map(|doc| doc.id).collect();
    if ids.len() < FEED_START_WINDOW as usize {
        // The window holds every id there is: below the lowest one is only 0.
        ids.push(0);
    }
    let mut start = ids.first().copied().unwrap_or(0);
    for pair in ids.windows(2) {
        if pair[0] - pair[1] > 1 {
            start = pair[1];
        }
    }
    Ok(to_u64(start, "message id")?)
}

/// Stores a filler for a message id that will never hold a message. A duplicate key
/// means the id is already accounted for (by its message or another filler).
pub(super) async fn fill(db: &Db, id: i64, reason: &str) -> Outcome<()> {
    let filler = doc! { "_id": id, "filler": reason, "expire_at": filler_expiry() };
    match db.messages.insert_one(filler).await {
        Ok(_) => Ok(()),
        Err(error) if is_duplicate_key(&error) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// [`fill`], logging instead of failing: if it fails, the id stays a hole until a feed
/// poller fills it after the grace period.
pub(super) async fn fill_best_effort(db: &Db, id: i64, reason: &str) {
    let filled: Result<(), StoreError> = fill(db, id, reason)
        .await
        .or_store_error(db.server_selection_timeout);
    if let Err(error) = filled {
        tracing::warn!(id, %error, "cannot record an abandoned message id; the feed will after a grace period");
    }
}

/// Turns a stored message back into a filler (its recipient was deleted while it was
/// being sent).
pub(super) async fn retract(db: &Db, id: i64) -> Outcome<()> {
    db.messages
        .replace_one(
            doc! { "_id": id },
            doc! { "filler": "retracted", "expire_at": filler_expiry() },
        )
        .await?;
    Ok(())
}

/// The update that turns messages into fillers (their feed ids stay accounted for; the
/// message, its sequence number and its idempotency key are gone).
pub(super) fn into_filler(reason: &str) -> Document {
    doc! {
        "$set": { "filler": reason, "expire_at": filler_expiry() },
        "$unset": {
            "recipient_id": "", "seq": "", "sender_id": "", "idempotency_key": "",
            "sender": "", "recipient": "", "text": "", "sent_at": "",
        },
    }
}

/// When a filler written now may be garbage-collected.
fn filler_expiry() -> DateTime {
    DateTime::from_millis(crate::now_unix_ms().saturating_add(millis(FILLER_RETENTION)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_hole_is_filled_once_it_was_seen_for_the_grace_period() {
        assert_eq!(HoleWatch::new(Duration::ZERO).to_fill(Some(7)), Some(7));
        let grace = Duration::from_secs(2);
        let watch = HoleWatch::new(grace);
        assert_eq!(watch.to_fill(Some(7)), None, "first sighting");
        tokio::time::advance(grace - Duration::from_millis(1)).await;
        assert_eq!(watch.to_fill(Some(7)), None, "within the grace");
        assert_eq!(watch.to_fill(Some(8)), None, "another hole starts over");
        tokio::time::advance(grace).await;
        assert_eq!(watch.to_fill(Some(8)), Some(8), "waited long enough");
        assert_eq!(watch.to_fill(Some(8)), None, "a filled hole is forgotten");
        assert_eq!(watch.to_fill(None), None);
        tokio::time::advance(grace).await;
        assert_eq!(watch.to_fill(Some(8)), None, "so is a closed one");
    }
}
