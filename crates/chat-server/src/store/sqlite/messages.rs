//! Inboxes: sending (idempotent, numbered per recipient), fetching, acknowledging and
//! history retention.
//!
//! Acknowledging messages only moves the recipient's acknowledged sequence number; the
//! messages stay in the database (a fetch with an explicit `after_sequence` returns them
//! again) until their recipient's account is deleted, or until history retention
//! (`chat-server --history-retention`, [`purge_history`]) deletes them.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::error::Outcome;
use super::pool::Pool;
use super::sessions;
use crate::store::keys::{to_i64, username_key};
use crate::store::{
    AccountId, InboxPage, MessageDraft, NewMessage, SendOutcome, SessionSend, StoreError,
    StoredMessage, TokenHash,
};

/// The columns [`message_from_row`] reads, in its order.
macro_rules! message_columns {
    () => {
        "id, seq, sender, recipient, text, sent_at"
    };
}
pub(super) use message_columns;

/// A message from a row of [`message_columns`] (from its first column on).
pub(super) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_from_columns(row, 0)
}

/// A message from a row of [`message_columns`] that start at column `first`.
fn message_from_columns(row: &Row<'_>, first: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(first)?,
        sequence: row.get(first + 1)?,
        sender: row.get(first + 2)?,
        recipient: row.get(first + 3)?,
        text: row.get(first + 4)?,
        sent_at_unix_ms: row.get(first + 5)?,
    })
}

/// An owned copy of a [`MessageDraft`], to move onto the writer's thread.
struct OwnedDraft {
    recipient: String,
    text: String,
    idempotency_key: String,
    sent_at: i64,
}

impl OwnedDraft {
    fn new(draft: MessageDraft<'_>) -> Self {
        Self {
            recipient: draft.recipient.to_string(),
            text: draft.text.to_string(),
            idempotency_key: draft.idempotency_key.to_string(),
            sent_at: draft.sent_at_unix_ms,
        }
    }
}

/// See [`Store::send_message`](crate::store::Store::send_message): one write
/// transaction that checks the idempotency key, numbers the message and stores it.
pub(super) async fn send(pool: &Pool, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
    let NewMessage {
        sender_id,
        recipient,
        text,
        idempotency_key,
        sent_at_unix_ms,
    } = message;
    let new = OwnedDraft::new(MessageDraft {
        recipient,
        text,
        idempotency_key,
        sent_at_unix_ms,
    });
    pool.write(move |tx| store(tx, sender_id, new)).await
}

/// See [`Store::send_message_as`](crate::store::Store::send_message_as): [`send`] with
/// the session resolved in the same write transaction, so a signed-in send costs one
/// batched write and no read of its own, and a logout or account deletion committed
/// before it is always seen.
pub(super) async fn send_as(
    pool: &Pool,
    token_hash: &TokenHash,
    now: i64,
    message: MessageDraft<'_>,
) -> Result<SessionSend, StoreError> {
    let token_hash = *token_hash;
    let new = OwnedDraft::new(message);
    pool.write(
        move |tx| match sessions::resolve(tx, &token_hash, now)?.live() {
            Ok(account) => Ok(SessionSend::Sent(store(tx, account.id, new)?)),
            Err(refusal) => Ok(SessionSend::Refused(refusal)),
        },
    )
    .await
}

/// The body of a send by `sender_id`, in the writer's transaction: the idempotency
/// check, the sender and recipient checks, the recipient's next sequence number and the
/// insert.
fn store(tx: &Connection, sender_id: AccountId, new: OwnedDraft) -> Outcome<SendOutcome> {
    let recipient = tx
        .prepare_cached("SELECT id, username FROM accounts WHERE username_key = ?1")?
        .query_row([username_key(&new.recipient)], |row| {
            Ok((row.get::<_, AccountId>(0)?, row.get::<_, String>(1)?))
        })
        .optional()?;

    // The key was used before: a retry of that message, or a misuse of the key. This
    // comes before the sender check, so that a retry of a message that was stored
    // before its sender was deleted still gets its (durable) answer.
    let earlier = tx
        .prepare_cached(concat!(
            "SELECT recipient_id, ",
            message_columns!(),
            " FROM messages WHERE sender_id = ?1 AND idempotency_key = ?2"
        ))?
        .query_row(params![sender_id, new.idempotency_key], |row| {
            Ok((row.get::<_, AccountId>(0)?, message_from_columns(row, 1)?))
        })
        .optional()?;
    if let Some((recipient_id, message)) = earlier {
        let same_recipient = recipient.as_ref().map(|(id, _)| *id) == Some(recipient_id);
        return if same_recipient && message.text == new.text {
            Ok(SendOutcome {
                message,
                duplicate: true,
            })
        } else {
            Err(StoreError::IdempotencyKeyReused(new.idempotency_key).into())
        };
    }

    // A deleted account sends nothing new (its sessions say AccountDeleted, so this
    // only happens when the deletion races with the send).
    let sender: String = tx
        .prepare_cached("SELECT username FROM accounts WHERE id = ?1")?
        .query_row([sender_id], |row| row.get(0))
        .optional()?
        .ok_or_else(|| StoreError::no_such_id(sender_id))?;
    let (recipient_id, recipient) =
        recipient.ok_or_else(|| StoreError::NoSuchAccount(new.recipient.clone()))?;

    let sequence: u64 = tx
        .prepare_cached(
            "UPDATE accounts SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
        )?
        .query_row([recipient_id], |row| row.get(0))?;
    // SQLite has one writer at a time and this transaction holds the write lock from
    // its first statement to its commit, so AUTOINCREMENT ids are handed out in
    // commit order: a message becomes visible only after every lower id has (or
    // never will, if its transaction rolled back). Within a group-committed batch
    // (`writer.rs`) the ids follow the savepoint order and all become visible at
    // the one commit; an id taken by a request rolled back to its savepoint is
    // handed out again, never seen. The feed relies on that.
    let id: u64 = tx
        .prepare_cached(
            "INSERT INTO messages
                 (recipient_id, seq, sender_id, sender, recipient, text, sent_at, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )?
        .query_row(
            params![
                recipient_id,
                to_i64(sequence),
                sender_id,
                sender,
                recipient,
                new.text,
                new.sent_at,
                new.idempotency_key,
            ],
            |row| row.get(0),
        )?;
    Ok(SendOutcome {
        message: StoredMessage {
            id,
            sequence,
            sender,
            recipient,
            text: new.text,
            sent_at_unix_ms: new.sent_at,
        },
        duplicate: false,
    })
}

/// See [`Store::fetch_messages`](crate::store::Store::fetch_messages): one read
/// transaction, so the acknowledged sequence and the page agree.
pub(super) async fn fetch(
    pool: &Pool,
    recipient: AccountId,
    after_sequence: Option<u64>,
    limit: u32,
) -> Result<InboxPage, StoreError> {
    pool.read(move |tx| {
        let (_, acked_sequence) = sequences(tx, recipient)?;
        let after = after_sequence.unwrap_or(acked_sequence);
        let messages = tx
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE recipient_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?
            // One more than asked for, to learn whether more follow.
            .query_map(
                params![recipient, to_i64(after), i64::from(limit) + 1],
                message_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(InboxPage::from_one_more(messages, limit, acked_sequence))
    })
    .await
}

/// See [`Store::ack_messages`](crate::store::Store::ack_messages).
pub(super) async fn ack(pool: &Pool, recipient: AccountId, up_to: u64) -> Result<u64, StoreError> {
    pool.write(move |tx| {
        let (latest, _) = sequences(tx, recipient)?;
        StoreError::check_ack(up_to, latest)?;
        let acked = tx
            .prepare_cached(
                "UPDATE accounts SET acked_seq = MAX(acked_seq, ?2) WHERE id = ?1
                 RETURNING acked_seq",
            )?
            .query_row(params![recipient, to_i64(up_to)], |row| row.get(0))?;
        Ok(acked)
    })
    .await
}

/// The recipient's latest and acknowledged sequence numbers, or
/// [`StoreError::NoSuchAccount`].
fn sequences(tx: &Connection, recipient: AccountId) -> Outcome<(u64, u64)> {
    let found = tx
        .prepare_cached("SELECT last_seq, acked_seq FROM accounts WHERE id = ?1")?
        .query_row([recipient], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    Ok(found.ok_or_else(|| StoreError::no_such_id(recipient))?)
}

/// How many messages one retention transaction deletes at most, so that the write lock
/// is never held for long.
const PURGE_BATCH: i64 = 1000;

/// See [`Store::purge_history`](crate::store::Store::purge_history): batches of at
/// most [`PURGE_BATCH`] messages, each in a transaction of its own, until a batch comes
/// back short. Each inbox's latest message stays (`seq < last_seq`), so the inbox's
/// numbering goes on.
pub(super) async fn purge_history(pool: &Pool, sent_before: i64) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let deleted = pool
            .write(move |tx| {
                let deleted = tx
                    .prepare_cached(
                        "DELETE FROM messages WHERE id IN (
                             SELECT m.id FROM messages AS m JOIN accounts AS a ON a.id = m.recipient_id
                             WHERE m.sent_at < ?1 AND m.seq <= a.acked_seq AND m.seq < a.last_seq
                             LIMIT ?2)",
                    )?
                    .execute(params![sent_before, PURGE_BATCH])?;
                Ok(deleted as u64)
            })
            .await?;
        total += deleted;
        if deleted < PURGE_BATCH as u64 {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use std::time::Duration;

    use super::super::test_support::{account, open, send};
    use super::super::{SqliteOptions, SqliteStore};
    use crate::store::{MessageDraft, SessionSend, Store};

    /// A signed-in send resolves its session in the writer's transaction, so it needs
    /// no read connection: it completes while the only one is held, where a session
    /// lookup waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_as_a_session_needs_no_read_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            pool_size: 1,
            ..SqliteOptions::default()
        };
        let store = SqliteStore::open(dir.path().join("chat.db"), options).expect("open");
        let alice = account(&store, "alice").await;
        account(&store, "bob").await;
        let token = [3u8; 32];
        let session = store.create_session(&token, alice.id, 10_000).await;
        session.expect("session");

        // Hold the pool's one read connection until told to let go.
        let (held, is_held) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let pool = store.pool.clone();
        let reader = tokio::spawn(async move {
            pool.run(move |_| {
                let _ = held.send(());
                let _ = released.recv();
                Ok(())
            })
            .await
        });
        is_held.await.expect("the reader holds the connection");

        let draft = MessageDraft {
            recipient: "bob",
            text: "hi",
            idempotency_key: "k",
            sent_at_unix_ms: 2_000,
        };
        let sent = tokio::time::timeout(
            Duration::from_secs(10),
            store.send_message_as(&token, 2_000, draft),
        )
        .await
        .expect("the send waited for a read connection");
        assert!(matches!(sent, Ok(SessionSend::Sent(_))), "{sent:?}");
        let lookup = store.lookup_session(&token, 2_000);
        let waited = tokio::time::timeout(Duration::from_millis(100), lookup).await;
        assert!(waited.is_err(), "a lookup needs the held connection");

        release.send(()).expect("the reader waits");
        reader.await.expect("reader task").expect("read");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_sends_from_two_stores_get_gap_free_sequences() {
        const TASKS_PER_STORE: usize = 4;
        const SENDS_PER_TASK: usize = 25;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.db");
        let stores = [open(&path), open(&path)];
        let recipient = account(&stores[0], "inbox").await;
        let sender = account(&stores[1], "sender").await;
        let start = stores[0].message_feed(None, 1).await.expect("feed").cursor;

        let mut tasks = Vec::new();
        for (s, store) in stores.iter().enumerate() {
            for t in 0..TASKS_PER_STORE {
                let store = store.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0..SENDS_PER_TASK {
                        send(&store, sender.id, "inbox", &format!("{s}-{t}-{i}")).await;
                    }
                }));
            }
        }
        for task in tasks {
            task.await.expect("sending task");
        }

        let total = 2 * TASKS_PER_STORE * SENDS_PER_TASK;
        let page = stores[1]
            .fetch_messages(recipient.id, Some(0), 1_000)
            .await
            .expect("fetch");
        let sequences: Vec<u64> = page.messages.iter().map(|m| m.sequence).collect();
        assert_eq!(sequences, (1..=total as u64).collect::<Vec<_>>());
        // Ids are unique and, because SQLite serialises writers, follow sequence order.
        let ids: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // The feed read through the other store sees every message exactly once.
        let feed = stores[0]
            .message_feed(Some(start), 1_000)
            .await
            .expect("feed");
        let feed_ids: Vec<u64> = feed.messages.iter().map(|m| m.id).collect();
        assert_eq!(feed_ids, ids);
        assert_eq!(ids.iter().collect::<HashSet<_>>().len(), total);
    }
}
