//! [`MongoStore`]: the shared state of a chat cluster in MongoDB, so that stateless
//! replicas on many hosts can share one replica set.
//!
//! Select it with `chat-server --store 'mongodb://h1,h2,h3/chat?replicaSet=rs0'` (any
//! standard connection string, `mongodb+srv://` included). The database is the one the
//! URI's path names, `chat` by default.
//!
//! # Consistency and durability
//!
//! Every setting that decides what a reader can see and what survives a failure is in
//! one place, [`consistency`]: writes are acknowledged only once a majority of the
//! replica set has them in its journal (`w: majority, j: true`), reads only return
//! majority-committed data (`readConcern: majority`, from the primary), and the driver
//! retries a read or a write once on another primary after a failover (retryable reads
//! and writes). So an acknowledged call is never rolled back, and a reader never sees
//! anything that could still be rolled back.
//!
//! # Collections
//!
//! | collection | `_id` | holds |
//! | --- | --- | --- |
//! | `accounts` | account id (i64) | username, `username_key` (lower case, unique), password hash, `last_seq` (a hint, see below), `acked_seq`, `state` |
//! | `sessions` | hex SHA-256 of the token | account id, `expires_at` (ms), `gc_at` (a Date for the TTL index) |
//! | `messages` | message id = feed position (i64) | recipient id, `seq`, sender id, idempotency key, names, text, send time; or a *filler* (see the feed) |
//! | `counters` | counter name | the last id handed out, for account ids and message ids |
//! | `login_failures` | account id | `count` and `locked_until` (ms) of an account with failed logins since its last successful one (login throttling); none for the others |
//! | `meta` | `"schema"` | the schema version |
//!
//! Indexes (created at start-up; creating an existing index is a no-op): `username_key`
//! (unique), `state`; `(sender_id, idempotency_key)` (unique), `(recipient_id, seq)`
//! (unique: the inbox), the `_id` index for the feed order, a TTL index on fillers'
//! `expire_at`; sessions' `expires_at` (for purging) and a TTL index on `gc_at`
//! (`expireAfterSeconds: 0`). The unique message indexes are sparse, so fillers (which
//! have none of those fields) do not collide.
//!
//! No operation needs a multi-document transaction, so the store works the same on a
//! replica set, a sharded cluster and a standalone server, and every algorithm below is
//! the one the test suite exercises: each is a sequence of single-document atomic writes
//! that leaves the data consistent if the process dies between any two of them.
//!
//! # Account ids
//!
//! `findOneAndUpdate({_id: "account_id"}, {$inc: {value: 1}}, upsert)` on the counters
//! collection: ids only grow, so a deleted account's id is never reused, even after a
//! crash (a creation that dies after taking an id just leaves that id unused).
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
//!    that checks the recipient still exists (see deletion).
//!
//! A number is only ever proposed after its predecessor was seen stored, and one insert
//! is atomic, so there is no gap and no duplicate whatever fails when; a stale (low)
//! hint after a crash between steps 3 and 5 only costs a retry. The hint is never
//! trusted for anything else: acknowledging past it consults the inbox itself.
//!
//! # The feed: ids that become visible in increasing order
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
//!   [`MongoOptions::feed_hole_grace`] (default [`DEFAULT_FEED_HOLE_GRACE`]) inserts the
//!   filler itself. The filler and the message compete for one `_id`, so exactly one
//!   wins: a sender that was merely slow gets a duplicate-key error and retries with a
//!   new id, so its message is never skipped;
//! - deleting an account turns its inbox into fillers instead of removing documents, and
//!   so does history retention ([`Store::purge_history`]) with old acknowledged
//!   messages (all but each inbox's latest, whose number the next send builds on).
//!
//! A new reader (no cursor) starts at the highest stored id, or just below the lowest
//! hole among the latest ids if there is one, so that a message in flight when the
//! reader starts is not already behind its cursor when it lands.
//!
//! An id is taken only after the sequence number it goes with was proposed from a
//! stored predecessor, so per recipient ids and sequence numbers have the same order,
//! which is what subscribers rely on. The trade-off: a sender that dies mid-send stalls
//! live delivery (not storage, not fetching) for every recipient by up to the grace
//! period, once; fillers cost one small document each and expire after
//! [`FILLER_RETENTION`]. The poll also drops messages whose recipient is no longer
//! active (see deletion), so no live subscriber ever sees a message of a deleted
//! account. This path needs no change streams, so it works on every deployment.
//!
//! # Deleting an account, safely resumable
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
//! that raced with the deletion re-checks its recipient after inserting (step 5 above)
//! and turns its own message into a filler, so no orphan survives in a deleted inbox.
//!
//! # Sessions
//!
//! Expiry is exact: a lookup compares `expires_at` with the caller's clock. The TTL index
//! on `gc_at` is only garbage collection; `gc_at` is the expiry, but never earlier than
//! [`SESSION_GC_GRACE`] after the session was written, so a replica whose clock is
//! behind the database server's never sees a session vanish while it still calls it
//! valid (it would only have answered "expired" a little later anyway).
//!
//! # Failures
//!
//! When MongoDB cannot be reached, calls fail with [`StoreError::Unavailable`] after the
//! server selection timeout (default [`consistency::DEFAULT_SERVER_SELECTION_TIMEOUT`];
//! `serverSelectionTimeoutMS` and `connectTimeoutMS` in the URI override the defaults),
//! `ping` fails so the replica reports NOT_SERVING, and the driver reconnects by itself
//! when the server is back. Each call is also bounded by
//! [`MongoOptions::operation_timeout`], so a server that accepts connections but does not
//! answer cannot hang a call. A call abandoned half-way is harmless for the same reason
//! a crash is.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use serde::Deserialize;

use super::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, NewMessage, SendOutcome,
    SessionLookup, Store, StoreError, StoredMessage, TokenHash,
};

/// The schema version this build creates and understands (in `meta`, `_id: "schema"`).
/// A database with a higher version was written by a newer release and is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// A document of the `login_failures` collection (integers in any BSON width).
#[derive(Debug, Deserialize)]
struct LoginFailuresDoc {
    count: i64,
    locked_until: i64,
}

impl LoginFailuresDoc {
    fn record(&self) -> Result<LoginFailures, StoreError> {
        Ok(LoginFailures {
            count: u32::try_from(self.count).map_err(|_| {
                StoreError::Internal(format!("malformed login_failures record {self:?}"))
            })?,
            locked_until_unix_ms: self.locked_until,
        })
    }
}

/// The database used when the connection string names none.
pub const DEFAULT_DATABASE: &str = "chat";

/// How long a feed hole (an id taken but neither stored nor abandoned) is waited for
/// before a poller abandons it with a filler. See the [module documentation](self).
pub const DEFAULT_FEED_HOLE_GRACE: Duration = Duration::from_secs(2);

/// The longest any single store call may take before it fails with
/// [`StoreError::Unavailable`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

/// How long fillers are kept before the TTL monitor removes them. Only a feed reader
/// whose cursor is older than this could meet the hole again, and it would fill it again.
pub const FILLER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many of the latest ids a new feed reader inspects for holes (see
/// [`Store::message_feed`] without a cursor).
const FEED_START_WINDOW: i64 = 256;

/// The least time between writing a session and its garbage collection by the TTL
/// index (see the [module documentation](self)).
pub const SESSION_GC_GRACE: Duration = Duration::from_secs(3600);

/// How many insert attempts one send makes before giving up (each failed attempt means
/// another send to the same recipient won, so the cluster as a whole made progress).
const MAX_SEND_ATTEMPTS: usize = 500;

/// `accounts.state` of an account in use.
const ACTIVE: &str = "active";
/// `accounts.state` of an account whose deletion has begun.
const DELETING: &str = "deleting";

/// Counter names in the `counters` collection.
const ACCOUNT_COUNTER: &str = "account_id";
const MESSAGE_COUNTER: &str = "message_id";

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "not reachable or not able to serve right now"
/// (network, elections, shutdown, time limits, authentication).
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    13,    // Unauthorized
    18,    // AuthenticationFailed
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// The durability and consistency settings of every connection, in one place. They are
/// applied over whatever the connection string says, because the store's guarantees
/// depend on them; only timeouts can be tuned from the URI.
pub mod consistency {
    use std::time::Duration;

    use mongodb::options::{
        Acknowledgment, ClientOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
    };

    /// How long an operation waits for a suitable server (the primary) before failing
    /// with [`StoreError::Unavailable`](crate::store::StoreError::Unavailable), unless
    /// the URI sets `serverSelectionTimeoutMS`. Short, so that callers learn quickly
    /// that the store is down; an election longer than this fails the call, and the
    /// client's retry (idempotent by design) succeeds on the new primary.
    pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

    /// How long opening a connection may take, unless the URI sets `connectTimeoutMS`.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// How long a write waits for the majority before it fails (the write may still
    /// commit; every write of this store is safe to retry).
    pub const MAJORITY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

    /// Writes: acknowledged once a majority of the replica set has written them to its
    /// journal (`w: "majority", j: true`). Such a write survives the loss of any
    /// minority of members and any failover: it is never rolled back. (On a standalone
    /// server, majority is that server and `j: true` still means "on disk".)
    pub fn write_concern() -> WriteConcern {
        WriteConcern::builder()
            .w(Acknowledgment::Majority)
            .journal(true)
            .w_timeout(MAJORITY_WRITE_TIMEOUT)
            .build()
    }

    /// Reads: only data acknowledged by a majority (`readConcern: "majority"`), so a
    /// reader never acts on a write that a failover could roll back (for example, it
    /// never delivers a message that then disappears).
    pub fn read_concern() -> ReadConcern {
        ReadConcern::majority()
    }

    /// Every read goes to the primary, so a replica reads what it has just written
    /// (with majority reads, a secondary could lag behind by a replication delay).
    pub fn selection_criteria() -> SelectionCriteria {
        SelectionCriteria::ReadPreference(ReadPreference::Primary)
    }

    /// Retryable writes, the driver's default, stated explicitly: a write interrupted by
    /// a failover or a network error is retried once on the new primary with the same
    /// transaction number, so the server applies it exactly once. Together with the
    /// unique indexes (a retried insert of an existing message is a harmless duplicate
    /// key, which the store answers as an idempotent repeat) a failover during a send
    /// neither loses nor duplicates the message.
    pub const RETRY_WRITES: bool = true;

    /// Retryable reads, the driver's default, stated explicitly: a read interrupted by
    /// a failover is retried once.
    pub const RETRY_READS: bool = true;

    /// Applies every setting above to `options`, keeping timeouts the URI set.
    pub fn apply(options: &mut ClientOptions) {
        let weaker = |what: &str| {
            tracing::warn!(
                "the MongoDB connection string sets {what}; chat-server overrides it \
                 (see the consistency settings of the MongoDB store)"
            )
        };
        let wanted = write_concern();
        if options
            .write_concern
            .as_ref()
            .is_some_and(|w| w.w != wanted.w || w.journal == Some(false))
        {
            weaker("a write concern");
        }
        if options
            .read_concern
            .as_ref()
            .is_some_and(|r| *r != read_concern())
        {
            weaker("a read concern");
        }
        if !matches!(
            options.selection_criteria,
            None | Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
        ) {
            weaker("a read preference");
        }
        if options.retry_writes == Some(false) || options.retry_reads == Some(false) {
            weaker("retryWrites/retryReads=false");
        }
        options.write_concern = Some(write_concern());
        options.read_concern = Some(read_concern());
        options.selection_criteria = Some(selection_criteria());
        options.retry_writes = Some(RETRY_WRITES);
        options.retry_reads = Some(RETRY_READS);
        options
            .server_selection_timeout
            .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
        options
            .connect_timeout
            .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "chat-server".into());
    }
}

/// Tuning for [`MongoStore`] that a connection string cannot express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoOptions {
    /// How long a feed poller waits for a hole before abandoning its id with a filler.
    /// Default: [`DEFAULT_FEED_HOLE_GRACE`].
    pub feed_hole_grace: Duration,
    /// The longest a single store call may take. Default: [`DEFAULT_OPERATION_TIMEOUT`].
    pub operation_timeout: Duration,
}

impl Default for MongoOptions {
    fn default() -> Self {
        Self {
            feed_hole_grace: DEFAULT_FEED_HOLE_GRACE,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
        }
    }
}

/// A [`Store`] in a MongoDB database, shared by any number of replicas on any hosts.
/// Cheap to clone: clones share one client (and its connection pools).
///
/// See the [module documentation](self) for the data model and the algorithms.
#[derive(Clone)]
pub struct MongoStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.inner.db.name())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

struct Inner {
    client: Client,
    db: Database,
    accounts: Collection<Document>,
    sessions: Collection<Document>,
    messages: Collection<Document>,
    counters: Collection<Document>,
    login_failures: Collection<Document>,
    options: MongoOptions,
    server_selection_timeout: Duration,
    /// The feed hole this store's poller is waiting for, and since when.
    hole: Mutex<Option<Hole>>,
}

#[derive(Debug, Clone, Copy)]
struct Hole {
    id: u64,
    since: Instant,
}

/// An account document.
#[derive(Debug, Clone, Deserialize)]
struct AccountDoc {
    #[serde(rename = "_id")]
    id: i64,
    username: String,
    password_hash: String,
    #[serde(default)]
    last_seq: i64,
    #[serde(default)]
    acked_seq: i64,
    #[serde(default)]
    state: String,
}

impl AccountDoc {
    fn is_active(&self) -> bool {
        self.state == ACTIVE
    }

    fn account(self) -> Account {
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
struct MessageDoc {
    #[serde(rename = "_id")]
    id: i64,
    recipient_id: Option<i64>,
    seq: Option<i64>,
    sender: Option<String>,
    recipient: Option<String>,
    text: Option<String>,
    sent_at: Option<i64>,
}

impl MessageDoc {
    /// The recipient's id and the message, or `None` for a filler.
    fn into_message(self) -> Result<Option<(AccountId, StoredMessage)>, StoreError> {
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

#[derive(Debug, Deserialize)]
struct SessionDoc {
    account_id: i64,
    expires_at: i64,
}

#[derive(Debug, Deserialize)]
struct CounterDoc {
    value: i64,
}

#[derive(Debug, Deserialize)]
struct IdDoc {
    #[serde(rename = "_id")]
    id: i64,
}

#[derive(Debug, Deserialize)]
struct SeqDoc {
    seq: i64,
}

#[derive(Debug, Deserialize)]
struct UsernameDoc {
    username: String,
}

#[derive(Debug, Deserialize)]
struct MetaDoc {
    version: i64,
}

impl MongoStore {
    /// Connects with a MongoDB connection string (`mongodb://` or `mongodb+srv://`) and
    /// default [`MongoOptions`]. See [`MongoStore::open_with`].
    pub async fn open(uri: &str) -> Result<Self, StoreError> {
        Self::open_with(uri, MongoOptions::default()).await
    }

    /// Connects, checks that the server answers, creates the indexes (idempotently),
    /// checks the schema version, and finishes any account deletion that a crashed
    /// replica left half-done.
    ///
    /// Fails with [`StoreError::Unavailable`] when the URI is invalid, the server cannot
    /// be reached within the server selection timeout, or the database belongs to a
    /// newer release.
    pub async fn open_with(uri: &str, options: MongoOptions) -> Result<Self, StoreError> {
        let mut client_options = ClientOptions::parse(uri).await.map_err(|error| {
            StoreError::Unavailable(format!(
                "invalid MongoDB connection string: {}",
                describe(&error)
            ))
        })?;
        consistency::apply(&mut client_options);
        let server_selection_timeout = client_options
            .server_selection_timeout
            .unwrap_or(consistency::DEFAULT_SERVER_SELECTION_TIMEOUT);
        let database = client_options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(client_options).map_err(|error| {
            StoreError::Unavailable(format!(
                "cannot create a MongoDB client: {}",
                describe(&error)
            ))
        })?;
        let db = client.database(&database);
        let store = Self {
            inner: Arc::new(Inner {
                accounts: db.collection("accounts"),
                sessions: db.collection("sessions"),
                messages: db.collection("messages"),
                counters: db.collection("counters"),
                login_failures: db.collection("login_failures"),
                client,
                db,
                options,
                server_selection_timeout,
                hole: Mutex::new(None),
            }),
        };
        store
            .bounded("start-up", async {
                store.ping_inner().await?;
                store.ensure_schema().await?;
                store.ensure_indexes().await
            })
            .await?;
        if let Err(error) = store.bounded("start-up", store.finish_deletions()).await {
            tracing::warn!(%error, "cannot finish interrupted account deletions now; will retry");
        }
        tracing::info!(database = %database, "MongoDB store ready");
        Ok(store)
    }

    /// The database this store uses.
    pub fn database(&self) -> &Database {
        &self.inner.db
    }

    /// The underlying client (shared by clones of this store).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Runs `operation`, failing with [`StoreError::Unavailable`] if it takes longer than
    /// the operation timeout.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.inner.options.operation_timeout;
        tokio::time::timeout(limit, operation)
            .await
            .unwrap_or_else(|_| {
                Err(StoreError::Unavailable(format!(
                    "MongoDB did not complete {what} within {}",
                    humantime::format_duration(limit)
                )))
            })
    }

    /// Maps a driver error (see [`map_error`]).
    fn error(&self, error: MongoError) -> StoreError {
        map_error(&error, self.inner.server_selection_timeout)
    }

    async fn ping_inner(&self) -> Result<(), StoreError> {
        self.inner
            .db
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn ensure_schema(&self) -> Result<(), StoreError> {
        let meta = self.inner.db.collection::<Document>("meta");
        let insert = meta
            .insert_one(doc! {
                "_id": "schema",
                "version": SCHEMA_VERSION,
                "application": "chat-server",
            })
            .await;
        match insert {
            Ok(_) => return Ok(()),
            Err(error) if is_duplicate_key(&error) => {}
            Err(error) => return Err(self.error(error)),
        }
        let found = meta
            .clone_with_type::<MetaDoc>()
            .find_one(doc! { "_id": "schema" })
            .await
            .map_err(|e| self.error(e))?;
        match found {
            Some(MetaDoc { version }) if version > SCHEMA_VERSION => {
                Err(StoreError::Unavailable(format!(
                    "the MongoDB database {} has schema version {version}, which is newer \
                     than the version {SCHEMA_VERSION} this chat-server understands; it was \
                     written by a newer release, so upgrade this server or use another \
                     database",
                    self.inner.db.name()
                )))
            }
            _ => Ok(()),
        }
    }

    async fn ensure_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, options: IndexOptions| {
            IndexModel::builder().keys(keys).options(options).build()
        };
        let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
        let unique_sparse = |name: &str| {
            IndexOptions::builder()
                .name(name.to_string())
                .unique(true)
                .sparse(true)
                .build()
        };
        let ttl = |name: &str| {
            IndexOptions::builder()
                .name(name.to_string())
                .expire_after(Duration::ZERO)
                .build()
        };
        let plan: [(&Collection<Document>, Vec<IndexModel>); 3] = [
            (
                &self.inner.accounts,
                vec![
                    index(doc! { "username_key": 1 }, unique_sparse("username_key")),
                    index(doc! { "state": 1 }, named("state")),
                ],
            ),
            (
                &self.inner.messages,
                vec![
                    index(
                        doc! { "sender_id": 1, "idempotency_key": 1 },
                        unique_sparse("idempotency"),
                    ),
                    index(doc! { "recipient_id": 1, "seq": 1 }, unique_sparse("inbox")),
                    index(doc! { "expire_at": 1 }, ttl("filler_ttl")),
                ],
            ),
            (
                &self.inner.sessions,
                vec![
                    index(doc! { "expires_at": 1 }, named("expiry")),
                    index(doc! { "gc_at": 1 }, ttl("session_ttl")),
                ],
            ),
        ];
        for (collection, models) in plan {
            collection.create_indexes(models).await.map_err(|error| {
                match map_error(&error, self.inner.server_selection_timeout) {
                    StoreError::Internal(message) => StoreError::Unavailable(format!(
                        "cannot create the indexes of {}.{}: {message}",
                        self.inner.db.name(),
                        collection.name()
                    )),
                    other => other,
                }
            })?;
        }
        Ok(())
    }

    /// The next value of a counter (1 for a new counter).
    async fn next_id(&self, counter: &str) -> Result<i64, StoreError> {
        // Two first upserts of a new counter can race; the loser's upsert fails on the
        // `_id` (or, on some servers, returns no document): it simply tries again.
        for _ in 0..8 {
            let result = self
                .inner
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
                Err(error) => return Err(self.error(error)),
            }
        }
        Err(StoreError::Internal(format!(
            "the {counter} counter returned no value"
        )))
    }

    async fn find_active_account(&self, id: AccountId) -> Result<Option<AccountDoc>, StoreError> {
        self.inner
            .accounts
            .clone_with_type::<AccountDoc>()
            .find_one(doc! { "_id": id, "state": ACTIVE })
            .await
            .map_err(|e| self.error(e))
    }

    /// An active account, or [`StoreError::NoSuchAccount`]; an account marked for
    /// deletion has its deletion finished on the way.
    async fn require_active(&self, id: AccountId) -> Result<AccountDoc, StoreError> {
        let found = self
            .inner
            .accounts
            .clone_with_type::<AccountDoc>()
            .find_one(doc! { "_id": id })
            .await
            .map_err(|e| self.error(e))?;
        match found {
            Some(account) if account.is_active() => Ok(account),
            Some(_) => {
                self.finish_deletion_best_effort(id).await;
                Err(no_such_id(id))
            }
            None => Err(no_such_id(id)),
        }
    }

    /// The highest sequence number stored in a recipient's inbox (0 when empty).
    async fn latest_seq(&self, recipient: AccountId) -> Result<i64, StoreError> {
        let latest = self
            .inner
            .messages
            .clone_with_type::<SeqDoc>()
            .find_one(doc! { "recipient_id": recipient, "seq": { "$gt": 0_i64 } })
            .sort(doc! { "recipient_id": 1, "seq": -1 })
            .projection(doc! { "_id": 0, "seq": 1 })
            .await
            .map_err(|e| self.error(e))?;
        Ok(latest.map_or(0, |doc| doc.seq))
    }

    /// Stores a filler for a message id that will never hold a message. A duplicate key
    /// means the id is already accounted for (by its message or another filler).
    async fn fill(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        let filler = doc! { "_id": id, "filler": reason, "expire_at": filler_expiry() };
        match self.inner.messages.insert_one(filler).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => Ok(()),
            Err(error) => Err(self.error(error)),
        }
    }

    /// [`MongoStore::fill`], logging instead of failing: if it fails, the id stays a
    /// hole until a feed poller fills it after the grace period.
    async fn fill_best_effort(&self, id: i64, reason: &str) {
        if let Err(error) = self.fill(id, reason).await {
            tracing::warn!(id, %error, "cannot record an abandoned message id; the feed will after a grace period");
        }
    }

    /// Turns a stored message back into a filler (its recipient was deleted while it was
    /// being sent).
    async fn retract(&self, id: i64) -> Result<(), StoreError> {
        self.inner
            .messages
            .replace_one(
                doc! { "_id": id },
                doc! { "filler": "retracted", "expire_at": filler_expiry() },
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Steps 2 and 3 of a deletion (see the module documentation); idempotent.
    async fn finish_deletion(&self, id: AccountId) -> Result<(), StoreError> {
        self.inner
            .messages
            .update_many(doc! { "recipient_id": id }, into_filler("deleted"))
            .await
            .map_err(|e| self.error(e))?;
        self.inner
            .login_failures
            .delete_one(doc! { "_id": id })
            .await
            .map_err(|e| self.error(e))?;
        self.inner
            .accounts
            .delete_one(doc! { "_id": id, "state": DELETING })
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    async fn finish_deletion_best_effort(&self, id: AccountId) {
        match self.finish_deletion(id).await {
            Ok(()) => tracing::info!(account = id, "finished an interrupted account deletion"),
            Err(error) => {
                tracing::warn!(account = id, %error, "cannot finish an interrupted account deletion now")
            }
        }
    }

    /// Finishes every deletion that was interrupted after its first step.
    async fn finish_deletions(&self) -> Result<(), StoreError> {
        let marked: Vec<IdDoc> = self
            .inner
            .accounts
            .clone_with_type::<IdDoc>()
            .find(doc! { "state": DELETING })
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        for IdDoc { id } in marked {
            self.finish_deletion(id).await?;
            tracing::info!(account = id, "finished an interrupted account deletion");
        }
        Ok(())
    }

    /// The answer to a send whose (sender, key) is already stored, if it is.
    async fn earlier_send(
        &self,
        new: &NewMessage<'_>,
        recipient: Option<&AccountDoc>,
    ) -> Result<Option<SendOutcome>, StoreError> {
        let earlier = self
            .inner
            .messages
            .clone_with_type::<MessageDoc>()
            .find_one(doc! {
                "sender_id": new.sender_id,
                "idempotency_key": new.idempotency_key,
            })
            .await
            .map_err(|e| self.error(e))?;
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
            Err(StoreError::IdempotencyKeyReused(
                new.idempotency_key.to_string(),
            ))
        }
    }

    async fn send(&self, new: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        let recipient = self
            .inner
            .accounts
            .clone_with_type::<AccountDoc>()
            .find_one(doc! { "username_key": username_key(new.recipient) })
            .await
            .map_err(|e| self.error(e))?;
        // A repeated key is answered before the sender check, so that a retry of a
        // message stored before its sender was deleted still gets its answer.
        if let Some(outcome) = self.earlier_send(&new, recipient.as_ref()).await? {
            return Ok(outcome);
        }
        let sender = self
            .find_active_account(new.sender_id)
            .await?
            .ok_or_else(|| no_such_id(new.sender_id))?;
        let recipient = recipient
            .filter(AccountDoc::is_active)
            .ok_or_else(|| StoreError::NoSuchAccount(new.recipient.to_string()))?;

        let mut seq = recipient.last_seq.max(0) + 1;
        let mut stored = None;
        let mut backoff = Duration::from_millis(1);
        for _ in 0..MAX_SEND_ATTEMPTS {
            // The id is taken after `seq - 1` was seen stored: see the module docs.
            let id = self.next_id(MESSAGE_COUNTER).await?;
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
            match self.inner.messages.insert_one(message).await {
                Ok(_) => {
                    stored = Some(id);
                    break;
                }
                Err(error) if is_duplicate_key(&error) => {
                    self.fill_best_effort(id, "lost").await;
                    if let Some(outcome) = self.earlier_send(&new, Some(&recipient)).await? {
                        return Ok(outcome);
                    }
                    // Either another send took `seq`, or a feed poller abandoned our id
                    // (we were slower than the grace period): then only the id changes.
                    let latest = self.latest_seq(recipient.id).await?;
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
                    self.fill_best_effort(id, "failed").await;
                    return Err(self.error(error));
                }
            }
        }
        let Some(id) = stored else {
            return Err(StoreError::Unavailable(format!(
                "too many concurrent sends to {:?}; try again",
                recipient.username
            )));
        };
        // Still there? (A deletion may have begun after the lookup.) Also raises the hint.
        let still_active = self
            .inner
            .accounts
            .update_one(
                doc! { "_id": recipient.id, "state": ACTIVE },
                doc! { "$max": { "last_seq": seq } },
            )
            .await
            .map_err(|e| self.error(e))?;
        if still_active.matched_count == 0 {
            self.retract(id).await?;
            return Err(StoreError::NoSuchAccount(new.recipient.to_string()));
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

    /// Whether the feed poller should abandon `hole` now (it has waited long enough).
    fn hole_to_fill(&self, hole: Option<u64>) -> Option<u64> {
        let mut state = self
            .inner
            .hole
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(hole) = hole else {
            *state = None;
            return None;
        };
        let grace = self.inner.options.feed_hole_grace;
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

    async fn feed(&self, after_id: Option<u64>, limit: u32) -> Result<FeedPage, StoreError> {
        let Some(after) = after_id else {
            return Ok(FeedPage {
                messages: Vec::new(),
                cursor: self.feed_start().await?,
            });
        };
        if limit == 0 {
            return Ok(FeedPage {
                messages: Vec::new(),
                cursor: after,
            });
        }
        let docs: Vec<MessageDoc> = self
            .inner
            .messages
            .clone_with_type::<MessageDoc>()
            .find(doc! { "_id": { "$gt": to_i64(after) } })
            .sort(doc! { "_id": 1 })
            .limit(i64::from(limit))
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;

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
        if let Some(id) = self.hole_to_fill(hole) {
            tracing::warn!(
                id,
                "message id taken but neither stored nor released within the grace \
                 period (a sender died mid-send?); releasing it so live delivery goes on"
            );
            self.fill(to_i64(id), "abandoned").await?;
        }

        // Drop messages whose recipient is being (or has been) deleted.
        let mut recipients: Vec<AccountId> = messages.iter().map(|(r, _)| *r).collect();
        recipients.sort_unstable();
        recipients.dedup();
        if !recipients.is_empty() {
            let active: Vec<IdDoc> = self
                .inner
                .accounts
                .clone_with_type::<IdDoc>()
                .find(doc! { "_id": { "$in": &recipients }, "state": ACTIVE })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(|e| self.error(e))?
                .try_collect()
                .await
                .map_err(|e| self.error(e))?;
            let active: std::collections::HashSet<AccountId> =
                active.into_iter().map(|doc| doc.id).collect();
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
    async fn feed_start(&self) -> Result<u64, StoreError> {
        let recent: Vec<IdDoc> = self
            .inner
            .messages
            .clone_with_type::<IdDoc>()
            .find(doc! {})
            .sort(doc! { "_id": -1 })
            .limit(FEED_START_WINDOW)
            .projection(doc! { "_id": 1 })
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
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
        to_u64(start, "message id")
    }

    async fn fetch(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        let account = self.require_active(recipient).await?;
        let acked_sequence = to_u64(account.acked_seq, "acknowledged sequence")?;
        let after = after_sequence.unwrap_or(acked_sequence);
        let docs: Vec<MessageDoc> = self
            .inner
            .messages
            .clone_with_type::<MessageDoc>()
            .find(doc! { "recipient_id": recipient, "seq": { "$gt": to_i64(after) } })
            .sort(doc! { "recipient_id": 1, "seq": 1 })
            // One more than asked for, to learn whether more follow.
            .limit(i64::from(limit) + 1)
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        let mut messages = Vec::with_capacity(docs.len());
        for doc in docs {
            if let Some((_, message)) = doc.into_message()? {
                messages.push(message);
            }
        }
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok(InboxPage {
            messages,
            has_more,
            acked_sequence,
        })
    }

    async fn ack(&self, recipient: AccountId, up_to: u64) -> Result<u64, StoreError> {
        let account = self.require_active(recipient).await?;
        let mut latest = to_u64(account.last_seq, "latest sequence")?;
        if up_to > latest {
            // The hint may lag behind the inbox after a crash; the inbox decides.
            latest = latest.max(to_u64(
                self.latest_seq(recipient).await?,
                "latest sequence",
            )?);
        }
        if up_to > latest {
            return Err(StoreError::AckBeyondLatest {
                requested: up_to,
                latest,
            });
        }
        let updated = self
            .inner
            .accounts
            .clone_with_type::<AccountDoc>()
            .find_one_and_update(
                doc! { "_id": recipient, "state": ACTIVE },
                doc! { "$max": { "acked_seq": to_i64(up_to), "last_seq": to_i64(latest) } },
            )
            .return_document(ReturnDocument::After)
            .await
            .map_err(|e| self.error(e))?
            .ok_or_else(|| no_such_id(recipient))?;
        to_u64(updated.acked_seq, "acknowledged sequence")
    }

    async fn create(
        &self,
        username: &str,
        password_hash: &str,
        created_at: i64,
    ) -> Result<Account, StoreError> {
        let id = self.next_id(ACCOUNT_COUNTER).await?;
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
        match self.inner.accounts.insert_one(account).await {
            Ok(_) => Ok(Account {
                id,
                username: username.to_string(),
                password_hash: password_hash.to_string(),
            }),
            // The id stays unused: ids need not be dense, only never reused.
            Err(error) if is_duplicate_key(&error) => {
                Err(StoreError::UsernameTaken(username.to_string()))
            }
            Err(error) => Err(self.error(error)),
        }
    }

    async fn list(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        if query.limit == 0 {
            return Ok(Vec::new());
        }
        // Every match starts with the literal prefix, so the index scan is bounded by
        // the prefix range (and the cursor); the anchored, escaped regex from
        // `Pattern::to_anchored_regex` does the rest. No user text reaches the query
        // in any other form.
        let prefix = query.pattern.literal_prefix();
        let mut condition = doc! { "$regex": query.pattern.to_anchored_regex() };
        match query
            .after
            .map(username_key)
            .filter(|after| after.as_str() >= prefix)
        {
            Some(after) => condition.insert("$gt", after),
            None => condition.insert("$gte", prefix),
        };
        if let Some(upper) = prefix_upper_bound(prefix) {
            condition.insert("$lt", upper);
        }
        let names: Vec<UsernameDoc> = self
            .inner
            .accounts
            .clone_with_type::<UsernameDoc>()
            .find(doc! { "username_key": condition })
            .sort(doc! { "username_key": 1 })
            .limit(i64::from(query.limit))
            .projection(doc! { "_id": 0, "username": 1 })
            .await
            .map_err(|e| self.error(e))?
            .try_collect()
            .await
            .map_err(|e| self.error(e))?;
        Ok(names.into_iter().map(|doc| doc.username).collect())
    }

    async fn delete(&self, id: AccountId) -> Result<(), StoreError> {
        self.inner
            .accounts
            .update_one(
                doc! { "_id": id },
                doc! { "$set": { "state": DELETING }, "$unset": { "username_key": "" } },
            )
            .await
            .map_err(|e| self.error(e))?;
        self.finish_deletion(id).await
    }

    async fn lookup(&self, token_hash: &TokenHash, now: i64) -> Result<SessionLookup, StoreError> {
        let session = self
            .inner
            .sessions
            .clone_with_type::<SessionDoc>()
            .find_one(doc! { "_id": hex::encode(token_hash) })
            .await
            .map_err(|e| self.error(e))?;
        let Some(session) = session else {
            return Ok(SessionLookup::Invalid);
        };
        if session.expires_at <= now {
            return Ok(SessionLookup::Invalid);
        }
        let account = self
            .inner
            .accounts
            .clone_with_type::<AccountDoc>()
            .find_one(doc! { "_id": session.account_id })
            .await
            .map_err(|e| self.error(e))?;
        Ok(match account {
            Some(account) if account.is_active() => SessionLookup::Valid(account.account()),
            Some(_) => {
                self.finish_deletion_best_effort(session.account_id).await;
                SessionLookup::AccountDeleted
            }
            None => SessionLookup::AccountDeleted,
        })
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("ping", self.ping_inner()).await
    }

    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError> {
        self.bounded(
            "create_account",
            self.create(username, password_hash, created_at_unix_ms),
        )
        .await
    }

    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.bounded("find_account", async {
            let found = self
                .inner
                .accounts
                .clone_with_type::<AccountDoc>()
                .find_one(doc! { "username_key": username_key(username) })
                .await
                .map_err(|e| self.error(e))?;
            Ok(found.filter(AccountDoc::is_active).map(AccountDoc::account))
        })
        .await
    }

    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        self.bounded("list_accounts", self.list(query)).await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.bounded("delete_account", self.delete(id)).await
    }

    /// Per active account with acknowledged messages: its old acknowledged messages
    /// below the `last_seq` hint become fillers. The hint only ever holds a stored
    /// number, so the inbox's latest message stays and no sequence number is ever
    /// proposed again (see the module documentation).
    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError> {
        self.bounded("purge_history", async {
            let mut accounts = self
                .inner
                .accounts
                .clone_with_type::<AccountDoc>()
                .find(doc! { "state": ACTIVE, "acked_seq": { "$gt": 0_i64 } })
                .await
                .map_err(|e| self.error(e))?;
            let mut purged = 0;
            while let Some(account) = accounts.try_next().await.map_err(|e| self.error(e))? {
                let keep_from = account.last_seq.min(account.acked_seq.saturating_add(1));
                if keep_from <= 1 {
                    continue;
                }
                let filter = doc! {
                    "recipient_id": account.id,
                    "seq": { "$lt": keep_from },
                    "sent_at": { "$lt": sent_before_unix_ms },
                };
                purged += self
                    .inner
                    .messages
                    .update_many(filter, into_filler("purged"))
                    .await
                    .map_err(|e| self.error(e))?
                    .modified_count;
            }
            Ok(purged)
        })
        .await
    }

    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError> {
        self.bounded("login_failures", async {
            let found = self
                .inner
                .login_failures
                .clone_with_type::<LoginFailuresDoc>()
                .find_one(doc! { "_id": account })
                .await
                .map_err(|e| self.error(e))?;
            found.map_or(Ok(LoginFailures::default()), |record| record.record())
        })
        .await
    }

    /// A record of count 0 is the absence of a document; the filters match the whole
    /// record `seen`, so the write happens only when nobody changed it first.
    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError> {
        self.bounded("replace_login_failures", async {
            let records = &self.inner.login_failures;
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
                (0, 0) => records
                    .find_one(doc! { "_id": account })
                    .await
                    .map_err(|e| self.error(e))?
                    .is_none(),
                (0, _) => {
                    let mut record = next_fields;
                    record.insert("_id", account);
                    match records.insert_one(record).await {
                        Ok(_) => true,
                        Err(error) if is_duplicate_key(&error) => false,
                        Err(error) => return Err(self.error(error)),
                    }
                }
                (_, 0) => {
                    records
                        .delete_one(seen_filter)
                        .await
                        .map_err(|e| self.error(e))?
                        .deleted_count
                        == 1
                }
                (_, _) => {
                    records
                        .update_one(seen_filter, doc! { "$set": next_fields })
                        .await
                        .map_err(|e| self.error(e))?
                        .matched_count
                        == 1
                }
            };
            Ok(claimed)
        })
        .await
    }

    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError> {
        self.bounded("clear_login_failures", async {
            self.inner
                .login_failures
                .delete_one(doc! { "_id": account })
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        self.bounded("create_session", async {
            let session = doc! {
                "_id": hex::encode(token_hash),
                "account_id": account,
                "expires_at": expires_at_unix_ms,
                "gc_at": session_gc_at(expires_at_unix_ms),
            };
            match self.inner.sessions.insert_one(session).await {
                Ok(_) => Ok(()),
                // Token hashes are SHA-256 of random tokens: a collision means a bug.
                Err(error) if is_duplicate_key(&error) => Err(StoreError::Internal(
                    "a session with this token hash already exists".to_string(),
                )),
                Err(error) => Err(self.error(error)),
            }
        })
        .await
    }

    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError> {
        self.bounded("lookup_session", self.lookup(token_hash, now_unix_ms))
            .await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError> {
        self.bounded("delete_session", async {
            self.inner
                .sessions
                .delete_one(doc! { "_id": hex::encode(token_hash) })
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        })
        .await
    }

    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        self.bounded("purge_expired_sessions", async {
            let purged = self
                .inner
                .sessions
                .delete_many(doc! { "expires_at": { "$lte": now_unix_ms } })
                .await
                .map_err(|e| self.error(e))?;
            // Every replica runs this now and then: a good moment to finish deletions
            // that a crashed replica left half-done.
            if let Err(error) = self.finish_deletions().await {
                tracing::warn!(%error, "cannot finish interrupted account deletions now");
            }
            Ok(purged.deleted_count)
        })
        .await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        self.bounded("send_message", self.send(message)).await
    }

    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        self.bounded(
            "fetch_messages",
            self.fetch(recipient, after_sequence, limit),
        )
        .await
    }

    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError> {
        self.bounded("ack_messages", self.ack(recipient, up_to_sequence))
            .await
    }

    async fn message_feed(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        self.bounded("message_feed", self.feed(after_id, limit))
            .await
    }
}

/// The key that usernames are unique by, compared by and sorted by.
fn username_key(username: &str) -> String {
    username.to_lowercase()
}

/// The smallest string above every string that starts with `prefix`, when there is one
/// that is easy to compute: `prefix` with its last byte incremented. Valid patterns are
/// ASCII, so that stays valid UTF-8.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut bytes = prefix.as_bytes().to_vec();
    let last = bytes.last_mut()?;
    if *last >= 0x7f {
        return None;
    }
    *last += 1;
    String::from_utf8(bytes).ok()
}

/// The error for an account id that names no (active) account.
fn no_such_id(id: AccountId) -> StoreError {
    StoreError::NoSuchAccount(format!("#{id}"))
}

/// A `u64` as BSON's `i64`, saturating (no stored value is near `i64::MAX`).
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A stored `i64` that must not be negative.
fn to_u64(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("a stored {what} is negative: {value}")))
}

/// When a filler written now may be garbage-collected.
/// The update that turns messages into fillers (their feed ids stay accounted for; the
/// message, its sequence number and its idempotency key are gone).
fn into_filler(reason: &str) -> Document {
    doc! {
        "$set": { "filler": reason, "expire_at": filler_expiry() },
        "$unset": {
            "recipient_id": "", "seq": "", "sender_id": "", "idempotency_key": "",
            "sender": "", "recipient": "", "text": "", "sent_at": "",
        },
    }
}

fn filler_expiry() -> DateTime {
    DateTime::from_millis(crate::now_unix_ms().saturating_add(millis(FILLER_RETENTION)))
}

/// The last millisecond of the year 9999: the latest date that every server and driver
/// can represent. Only garbage collection uses dates, so capping them there is harmless.
const LATEST_DATE_MS: i64 = 253_402_300_799_999;

/// When the TTL index may remove a session: at its expiry, but not before
/// [`SESSION_GC_GRACE`] from now (and no later than the year 9999).
fn session_gc_at(expires_at_unix_ms: i64) -> DateTime {
    let earliest = crate::now_unix_ms().saturating_add(millis(SESSION_GC_GRACE));
    DateTime::from_millis(expires_at_unix_ms.max(earliest).min(LATEST_DATE_MS))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Whether a driver error is a duplicate key error (E11000), from a write or a command.
fn is_duplicate_key(error: &MongoError) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|e| e.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// A short human-readable description of a driver error.
fn describe(error: &MongoError) -> String {
    match &*error.kind {
        ErrorKind::ServerSelection { message, .. } => message.clone(),
        ErrorKind::Io(io) => io.to_string(),
        ErrorKind::Command(e) => format!("{} ({}, code {})", e.message, e.code_name, e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => {
            format!("write error {}: {}", e.code, e.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => {
            format!(
                "write concern error {} ({}): {}",
                e.code, e.code_name, e.message
            )
        }
        ErrorKind::InvalidArgument { message, .. }
        | ErrorKind::Authentication { message, .. }
        | ErrorKind::DnsResolve { message, .. }
        | ErrorKind::Internal { message, .. }
        | ErrorKind::ConnectionPoolCleared { message, .. }
        | ErrorKind::InvalidResponse { message, .. }
        | ErrorKind::InvalidTlsConfig { message, .. }
        | ErrorKind::IncompatibleServer { message, .. } => message.clone(),
        _ => error.to_string(),
    }
}

/// Maps a driver error that the operation did not handle itself: unreachable servers,
/// network errors, elections, time-outs and authentication to
/// [`StoreError::Unavailable`]; everything else (a bug, bad data) to
/// [`StoreError::Internal`].
pub fn map_error(error: &MongoError, server_selection_timeout: Duration) -> StoreError {
    let detail = describe(error);
    let unavailable = |what: &str| StoreError::Unavailable(format!("{what}: {detail}"));
    match &*error.kind {
        ErrorKind::ServerSelection { .. } => unavailable(&format!(
            "cannot reach a MongoDB primary within {}",
            humantime::format_duration(server_selection_timeout)
        )),
        ErrorKind::Io(_) => unavailable("lost the connection to MongoDB"),
        ErrorKind::ConnectionPoolCleared { .. } => {
            unavailable("the connection to MongoDB was reset")
        }
        ErrorKind::DnsResolve { .. } => unavailable("cannot resolve the MongoDB hosts"),
        ErrorKind::Authentication { .. } => unavailable("cannot authenticate to MongoDB"),
        ErrorKind::InvalidTlsConfig { .. } => unavailable("bad TLS configuration for MongoDB"),
        ErrorKind::IncompatibleServer { .. } => unavailable("incompatible MongoDB server"),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => {
            unavailable("MongoDB could not confirm the write on a majority (it may still commit)")
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) if UNAVAILABLE_CODES.contains(&e.code) => {
            unavailable("MongoDB cannot serve the write right now")
        }
        ErrorKind::Command(e) if UNAVAILABLE_CODES.contains(&e.code) => {
            unavailable("MongoDB cannot serve the request right now")
        }
        _ if error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
            || error.contains_label(mongodb::error::RETRYABLE_ERROR)
            || error.contains_label(mongodb::error::SYSTEM_OVERLOADED_ERROR) =>
        {
            unavailable("MongoDB cannot serve the request right now")
        }
        _ => StoreError::Internal(format!("MongoDB: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    //! Pure logic only; the store itself is tested by the conformance suite and the
    //! MongoDB tests in `tests/mongo_store.rs` (which start a server).

    use super::*;
    use mongodb::options::{Acknowledgment, ReadConcernLevel, ReadPreference};

    #[test]
    fn prefix_bounds() {
        assert_eq!(prefix_upper_bound("pre").as_deref(), Some("prf"));
        assert_eq!(prefix_upper_bound("a-").as_deref(), Some("a."));
        assert_eq!(prefix_upper_bound(""), None);
    }

    #[tokio::test]
    async fn consistency_overrides_the_uri_but_keeps_its_timeouts() {
        let mut options = ClientOptions::parse(
            "mongodb://h1:1,h2:2/db?replicaSet=rs0&w=1&readConcernLevel=local\
             &readPreference=secondary&retryWrites=false&serverSelectionTimeoutMS=1234",
        )
        .await
        .expect("parse");
        consistency::apply(&mut options);
        let write = options.write_concern.expect("write concern");
        assert_eq!(write.w, Some(Acknowledgment::Majority));
        assert_eq!(write.journal, Some(true));
        assert_eq!(
            options.read_concern.expect("read concern").level,
            ReadConcernLevel::Majority
        );
        assert!(matches!(
            options.selection_criteria,
            Some(mongodb::options::SelectionCriteria::ReadPreference(
                ReadPreference::Primary
            ))
        ));
        assert_eq!(options.retry_writes, Some(true));
        assert_eq!(options.retry_reads, Some(true));
        assert_eq!(
            options.server_selection_timeout,
            Some(Duration::from_millis(1234))
        );
        assert_eq!(
            options.connect_timeout,
            Some(consistency::DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(options.default_database.as_deref(), Some("db"));
    }

    #[test]
    fn session_gc_is_never_before_expiry_nor_within_the_grace() {
        let now = crate::now_unix_ms();
        let far = now + 48 * 3600 * 1000;
        assert_eq!(session_gc_at(far).timestamp_millis(), far);
        // A session "expired" by a caller's (test) clock is kept for the grace period.
        let past = session_gc_at(1_700_000_000_000).timestamp_millis();
        assert!(past >= now + millis(SESSION_GC_GRACE));
        assert_eq!(session_gc_at(i64::MAX).timestamp_millis(), LATEST_DATE_MS);
    }

    #[test]
    fn error_mapping() {
        let timeout = Duration::from_secs(3);
        let io = MongoError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        match map_error(&io, timeout) {
            StoreError::Unavailable(message) => assert!(message.contains("refused"), "{message}"),
            other => panic!("{other:?}"),
        }
        let custom = MongoError::custom("something odd");
        assert!(matches!(
            map_error(&custom, timeout),
            StoreError::Internal(_)
        ));
        assert!(!is_duplicate_key(&io));
    }
}
