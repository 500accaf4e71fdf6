//! The collections and the shapes of their documents.
//!
//! | collection | `_id` | holds |
//! | --- | --- | --- |
//! | `accounts` | account id (i64) | username, `username_key` (lower case, unique), password hash, `last_seq` (a hint, see the sequence numbers in `messages.rs`), `acked_seq`, `state` |
//! | `sessions` | hex SHA-256 of the token | account id, `expires_at` (ms), `gc_at` (a Date for the TTL index) |
//! | `messages` | message id = feed position (i64) | recipient id, `seq`, sender id, idempotency key, names, text, send time; or a *filler* (see `feed.rs`) |
//! | `counters` | counter name | the last id handed out, for account ids and message ids |
//! | `login_failures` | account id | `count` and `locked_until` (ms) of an account with failed logins since its last successful one (login throttling); none for the others |
//! | `meta` | `"schema"` | the schema version |
//!
//! Documents are read into the types below (integers in any BSON width); they are
//! written with `doc!` where they are made.

use serde::Deserialize;

use crate::store::{Account, AccountId, LoginFailures, StoreError, StoredMessage};

/// `accounts.state` of an account in use.
pub(super) const ACTIVE: &str = "active";
/// `accounts.state` of an account whose deletion has begun.
pub(super) const DELETING: &str = "deleting";

/// An account document.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct AccountDoc {
    #[serde(rename = "_id")]
    pub id: i64,
    pub username: String,
    pub password_hash: String,
    #[serde(default)]
    pub last_seq: i64,
    #[serde(default)]
    pub acked_seq: i64,
    #[serde(default)]
    pub state: String,
}

impl AccountDoc {
    /// Whether the account is in use (its deletion has not begun).
    pub fn is_active(&self) -> bool {
        self.state == ACTIVE
    }

    /// The account as the store reports it.
    pub fn account(self) -> Account {
        Account {
            id: self.id,
            username: self.username,
            password_hash: self.password_hash,
        }
    }
}

/// A document of the messages collection: a message, or a filler (every message field
/// missing).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct MessageDoc {
    #[serde(rename = "_id")]
    pub id: i64,
    pub recipient_id: Option<i64>,
    pub seq: Option<i64>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub text: Option<String>,
    pub sent_at: Option<i64>,
}

impl MessageDoc {
    /// The recipient's id and the message, or `None` for a filler.
    pub fn into_message(self) -> Result<Option<(AccountId, StoredMessage)>, StoreError> {
        let (Some(recipient_id), Some(seq), Some(sender), Some(recipient), Some(text)) = (
            self.recipient_id,
            self.seq,
            self.sender,
            self.recipient,
            self.text,
        ) else {
            return Ok(None);
        };
        Ok(Some((
            recipient_id,
            StoredMessage {
                id: to_u64(self.id, "message id")?,
                sequence: to_u64(seq, "sequence number")?,
                sender,
                recipient,
                text,
                sent_at_unix_ms: self.sent_at.unwrap_or_default(),
            },
        )))
    }
}

/// A session document.
#[derive(Debug, Deserialize)]
pub(super) struct SessionDoc {
    pub account_id: i64,
    pub expires_at: i64,
}

/// A counter document.
#[derive(Debug, Deserialize)]
pub(super) struct CounterDoc {
    pub value: i64,
}

/// Any document, projected to its `_id`.
#[derive(Debug, Deserialize)]
pub(super) struct IdDoc {
    #[serde(rename = "_id")]
    pub id: i64,
}

/// A message, projected to its sequence number.
#[derive(Debug, Deserialize)]
pub(super) struct SeqDoc {
    pub seq: i64,
}

/// An account, projected to its username.
#[derive(Debug, Deserialize)]
pub(super) struct UsernameDoc {
    pub username: String,
}

/// The schema document of `meta`.
#[derive(Debug, Deserialize)]
pub(super) struct MetaDoc {
    pub version: i64,
}

/// A document of the `login_failures` collection.
#[derive(Debug, Deserialize)]
pub(super) struct LoginFailuresDoc {
    pub count: i64,
    pub locked_until: i64,
}

impl LoginFailuresDoc {
    /// The record as the store reports it.
    pub fn record(&self) -> Result<LoginFailures, StoreError> {
        Ok(LoginFailures {
            count: u32::try_from(self.count).map_err(|_| {
                StoreError::Internal(format!("malformed login_failures record {self:?}"))
            })?,
            locked_until_unix_ms: self.locked_until,
        })
    }
}

/// A stored `i64` that must not be negative.
pub(super) fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("a stored {what} is negative: {value}")))
}

/// A duration in whole milliseconds, the unit of every time in the documents.
pub(super) fn millis(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
