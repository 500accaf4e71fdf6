//! Inboxes: sending, fetching, acknowledging and history retention.
//!
//! # Sequence numbers: the inbox insert is the commit point
//!
//! A recipient's messages are numbered 1, 2, 3, ... with no gap or duplicate, also when
//! many replicas send to one recipient at once and when a replica dies mid-send. The
//! obvious "`$inc` the recipient's `last_seq`, then insert the message" cannot give that
//! without a transaction: a sender that dies (or whose insert fails, for example because
//! a concurrent retry with the same idempotency key won) between the two steps leaves a
//! gap for ever, and two senders can commit sequence numbers out of order, so that a
//! subscriber that has seen N+1 skips N. So the message insert itself claims the number:
//!
//! 1. look the recipient up by `username_key`; if `(sender_id, idempotency_key)` is
//!    already stored, answer with that message (or `IdempotencyKeyReused`) and allocate
//!    nothing: a duplicate takes no sequence number and no feed position;
//! 2. propose `seq = latest + 1`, where `latest` is a sequence number known to exist
//!    (the account's `last_seq` hint, which only ever holds stored numbers);
//! 3. take a fresh message id from the `message_id` counter and insert the message. The
//!    unique `(recipient_id, seq)` index lets exactly one of several concurrent inserts
//!    of the same number win, and the unique `(sender_id, idempotency_key)` index lets
//!    exactly one of several concurrent sends with the same key win;
//! 4. on a duplicate-key error: if the key is now stored, answer as in step 1; otherwise
//!    re-read the inbox's latest number and go back to step 2 (with a new id);
//! 5. `$max` the recipient's `last_seq` to the new number, in the same conditional write
//!    that checks the recipient still exists (see `deletion.rs`).
//!
//! A number is only ever proposed after its predecessor was seen stored, and one insert
//! is atomic, so there is no gap and no duplicate whatever fails when; a stale (low)
//! hint after a crash between steps 3 and 5 only costs a retry. The hint is never
//! trusted for anything else: acknowledging past it consults the inbox itself.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::options::ReturnDocument;

use super::accounts::{find_active, require_active};
use super::counters::{MESSAGE_COUNTER, next_id};
use super::db::{Db, find_one};
use super::documents::{ACTIVE, AccountDoc, MessageDoc, SeqDoc, to_u64};
use super::error::{Outcome, is_duplicate_key};
use super::feed::{fill_best_effort, into_filler, retract};
use crate::store::keys::{to_i64, username_key};
use crate::store::{AccountId, InboxPage, NewMessage, SendOutcome, StoreError, StoredMessage};

/// How many insert attempts one send makes before giving up (each failed attempt means
/// another send to the same recipient won, so the cluster as a whole made progress).
const MAX_SEND_ATTEMPTS: usize = 500;

/// See [`Store::send_message`](crate::store::Store::send_message), and the module
/// documentation for the steps.
pub(super) async fn send(db: &Db, new: NewMessage<'_>) -> Outcome<SendOutcome> {
    let recipient = find_one::<AccountDoc>(
        &db.accounts,
        doc! { "username_key": username_key(new.recipient) },
    )
    .await?;
    // A repeated key is answered before the sender check, so that a retry of a
    // message stored before its sender was deleted still gets its answer.
    if let Some(outcome) = earlier_send(db, &new, recipient.as_ref()).await? {
        return Ok(outcome);
    }
    let sender = find_active(db, new.sender_id)
        .await?
        .ok_or_else(|| StoreError::no_such_id(new.sender_id))?;
    let recipient = recipient
        .filter(AccountDoc::is_active)
        .ok_or_else(|| StoreError::NoSuchAccount(new.recipient.to_string()))?;
    let (id, seq) = match insert_numbered(db, &new, &sender, &recipient).await? {
        Inserted::Stored { id, seq } => (id, seq),
        Inserted::Earlier(outcome) => return Ok(outcome),
    };
    // Still there? (A deletion may have begun after the lookup.) Also raises the hint.
    let still_active = db
        .accounts
        .update_one(
            doc! { "_id": recipient.id, "state": ACTIVE },
            doc! { "$max": { "last_seq": seq } },
        )
        .await?;
    if still_active.matched_count == 0 {
        retract(db, id).await?;
        return Err(StoreError::NoSuchAccount(new.recipient.to_string()).into());
    }
    Ok(SendOutcome {
        message: StoredMessage {
            id: to_u64(id, "message id")?,
            sequence: to_u64(seq, "sequence number")?,
            sender: sender.username,
            recipient: recipient.username,
            text: new.text.to_string(),
            sent_at_unix_ms: new.sent_at_unix_ms,
        },
        duplicate: false,
    })
}

/// What the inserting steps of a send came to.
enum Inserted {
    /// The message is stored with this id and sequence number.
    Stored { id: i64, seq: i64 },
    /// A send with the same key won meanwhile: this is the answer.
    Earlier(SendOutcome),
}

/// Steps 2 to 4 of a send: insert the message with the next free sequence number.
async fn insert_numbered(
    db: &Db,
    new: &NewMessage<'_>,
    sender: &AccountDoc,
    recipient: &AccountDoc,
) -> Outcome<Inserted> {
    let mut seq = recipient.last_seq.max(0) + 1;
    let mut backoff = Duration::from_millis(1);
    for _ in 0..MAX_SEND_ATTEMPTS {
        // The id is taken after `seq - 1` was seen stored: see the module docs.
        let id = next_id(db, MESSAGE_COUNTER).await?;
        let message = doc! {
            "_id": id,
            "recipient_id": recipient.id,
            "seq": seq,
            "sender_id": new.sender_id,
            "idempotency_key": new.idempotency_key,
            "sender": &sender.username,
            "recipient": &recipient.username,
            "text": new.text,
            "sent_at": new.sent_at_unix_ms,
        };
        match db.messages.insert_one(message).await {
            Ok(_) => return Ok(Inserted::Stored { id, seq }),
            Err(error) if is_duplicate_key(&error) => {
                fill_best_effort(db, id, "lost").await;
                if let Some(outcome) = earlier_send(db, new, Some(recipient)).await? {
                    return Ok(Inserted::Earlier(outcome));
                }
                // Either another send took `seq`, or a feed poller abandoned our id
                // (we were slower than the grace period): then only the id changes.
                let latest = latest_seq(db, recipient.id).await?;
                if latest >= seq {
                    seq = latest + 1;
                    tokio::task::yield_now().await;
                } else {
                    // Nothing we can read explains the collision yet: the winner's
                    // write is not majority-committed yet (or our id was released).
                    // Give replication a moment instead of spinning.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
            Err(error) => {
                // The insert may or may not have happened; a filler only lands if it
                // did not. A retry with the same key finds the message if it did.
                fill_best_effort(db, id, "failed").await;
                return Err(error.into());
            }
        }
    }
    Err(StoreError::Unavailable(format!(
        "too many concurrent sends to {:?}; try again",
        recipient.username
    ))
    .into())
}

/// The answer to a send whose (sender, key) is already stored, if it is.
async fn earlier_send(
    db: &Db,
    new: &NewMessage<'_>,
    recipient: Option<&AccountDoc>,
) -> Outcome<Option<SendOutcome>> {
    let filter = doc! {
        "sender_id": new.sender_id,
        "idempotency_key": new.idempotency_key,
    };
    let earlier = find_one::<MessageDoc>(&db.messages, filter).await?;
    let Some((recipient_id, message)) =
        earlier.map(MessageDoc::into_message).transpose()?.flatten()
    else {
        return Ok(None);
    };
    let same_recipient = recipient.map(|r| r.id) == Some(recipient_id);
    if same_recipient && message.text == new.text {
        Ok(Some(SendOutcome {
            message,
            duplicate: true,
        }))
    } else {
        Err(StoreError::IdempotencyKeyReused(new.idempotency_key.to_string()).into())
    }
}

/// The highest sequence number stored in a recipient's inbox (0 when empty).
async fn latest_seq(db: &Db, recipient: AccountId) -> Outcome<i64> {
    let latest = db
        .messages
        .clone_with_type::<SeqDoc>()
        .find_one(doc! { "recipient_id": recipient, "seq": { "$gt": 0_i64 } })
        .sort(doc! { "recipient_id": 1, "seq": -1 })
        .projection(doc! { "_id": 0, "seq": 1 })
        .await?;
    Ok(latest.map_or(0, |doc| doc.seq))
}

/// See [`Store::fetch_messages`](crate::store::Store::fetch_messages).
pub(super) async fn fetch(
    db: &Db,
    recipient: AccountId,
    after_sequence: Option<u64>,
    limit: u32,
) -> Outcome<InboxPage> {
    let account = require_active(db, recipient).await?;
    let acked_sequence = to_u64(account.acked_seq, "acknowledged sequence")?;
    let after = after_sequence.unwrap_or(acked_sequence);
    let docs: Vec<MessageDoc> = db
        .messages
        .clone_with_type::<MessageDoc>()
        .find(doc! { "recipient_id": recipient, "seq": { "$gt": to_i64(after) } })
        .sort(doc! { "recipient_id": 1, "seq": 1 })
        // One more than asked for, to learn whether more follow.
        .limit(i64::from(limit) + 1)
        .await?
        .try_collect()
        .await?;
    let mut messages = Vec::with_capacity(docs.len());
    for doc in docs {
        if let Some((_, message)) = doc.into_message()? {
            messages.push(message);
        }
    }
    Ok(InboxPage::from_one_more(messages, limit, acked_sequence))
}

/// See [`Store::ack_messages`](crate::store::Store::ack_messages).
pub(super) async fn ack(db: &Db, recipient: AccountId, up_to: u64) -> Outcome<u64> {
    let account = require_active(db, recipient).await?;
    let mut latest = to_u64(account.last_seq, "latest sequence")?;
    if up_to > latest {
        // The hint may lag behind the inbox after a crash; the inbox decides.
        latest = latest.max(to_u64(latest_seq(db, recipient).await?, "latest sequence")?);
    }
    StoreError::check_ack(up_to, latest)?;
    let updated = db
        .accounts
        .clone_with_type::<AccountDoc>()
        .find_one_and_update(
            doc! { "_id": recipient, "state": ACTIVE },
            doc! { "$max": { "acked_seq": to_i64(up_to), "last_seq": to_i64(latest) } },
        )
        .return_document(ReturnDocument::After)
        .await?
        .ok_or_else(|| StoreError::no_such_id(recipient))?;
    Ok(to_u64(updated.acked_seq, "acknowledged sequence")?)
}

/// See [`Store::purge_history`](crate::store::Store::purge_history). Per active account
/// with acknowledged messages: its old acknowledged messages below the `last_seq` hint
/// become fillers. The hint only ever holds a stored number, so the inbox's latest
/// message stays and no sequence number is ever proposed again.
pub(super) async fn purge_history(db: &Db, sent_before: i64) -> Outcome<u64> {
    let mut accounts = db
        .accounts
        .clone_with_type::<AccountDoc>()
        .find(doc! { "state": ACTIVE, "acked_seq": { "$gt": 0_i64 } })
        .await?;
    let mut purged = 0;
    while let Some(account) = accounts.try_next().await? {
        let keep_from = account.last_seq.min(account.acked_seq.saturating_add(1));
        if keep_from <= 1 {
            continue;
        }
        let filter = doc! {
            "recipient_id": account.id,
            "seq": { "$lt": keep_from },
            "sent_at": { "$lt": sent_before },
        };
        purged += db
            .messages
            .update_many(filter, into_filler("purged"))
            .await?
            .modified_count;
    }
    Ok(purged)
}
