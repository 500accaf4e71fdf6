//! [`MongoStore`]: the shared state of a chat cluster in MongoDB, so that stateless
//! replicas on many hosts can share one replica set.
//!
//! Select it with `chat-server --store 'mongodb://h1,h2,h3/chat?replicaSet=rs0'` (any
//! standard connection string, `mongodb+srv://` included). The database is the one the
//! URI's path names, `chat` by default.
//!
//! No operation needs a multi-document transaction, so the store works the same on a
//! replica set, a sharded cluster and a standalone server, and every algorithm is the
//! one the test suite exercises: each is a sequence of single-document atomic writes
//! that leaves the data consistent if the process dies between any two of them.
//!
//! Each concern has a file of its own, with its reasoning at its code:
//!
//! - [`consistency`]: the write and read concerns that make an acknowledged call
//!   durable, set in one place;
//! - `db.rs`: the client and the collections; `documents.rs`: the collections'
//!   documents; `schema.rs`: the schema version and the indexes;
//! - `error.rs`: driver errors as [`StoreError`]s;
//! - `counters.rs`: account and message ids that are never reused;
//! - `accounts.rs`, `deletion.rs` (safely resumable), `sessions.rs` (exact expiry,
//!   lenient garbage collection), `login_failures.rs`;
//! - `messages.rs`: sending, where the inbox insert is the commit point of a gap-free
//!   sequence number, fetching, acknowledging and history retention;
//! - `feed.rs`: message ids that become visible in increasing order, with fillers for
//!   ids that will never hold a message.

pub mod consistency;

mod accounts;
mod counters;
mod db;
mod deletion;
mod documents;
mod error;
mod feed;
mod login_failures;
mod messages;
mod schema;
mod sessions;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mongodb::{Client, Database};

pub use db::DEFAULT_DATABASE;
pub use error::map_error;
pub use feed::{DEFAULT_FEED_HOLE_GRACE, FILLER_RETENTION};
pub use schema::SCHEMA_VERSION;
pub use sessions::SESSION_GC_GRACE;

use super::failure::OutcomeExt;
use super::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, NewMessage, SendOutcome,
    SessionLookup, Store, StoreError, TokenHash,
};
use db::Db;
use error::Outcome;
use feed::HoleWatch;

/// The longest any single store call may take before it fails with
/// [`StoreError::Unavailable`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(15);

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
/// See the [module documentation](self) for where the data model and the algorithms
/// are explained.
#[derive(Clone)]
pub struct MongoStore {
    db: Arc<Db>,
    options: MongoOptions,
    /// The feed poller's hole, shared by clones (they poll as one).
    holes: Arc<HoleWatch>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("database", &self.db.database.name())
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
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
        let store = Self {
            db: Arc::new(Db::connect(uri).await?),
            holes: Arc::new(HoleWatch::new(options.feed_hole_grace)),
            options,
        };
        let db = &store.db;
        store
            .bounded("start-up", async {
                db.ping().await?;
                schema::ensure_version(db).await?;
                schema::ensure_indexes(db).await
            })
            .await?;
        if let Err(error) = store.bounded("start-up", deletion::finish_all(db)).await {
            tracing::warn!(%error, "cannot finish interrupted account deletions now; will retry");
        }
        tracing::info!(database = %db.database.name(), "MongoDB store ready");
        Ok(store)
    }

    /// The database this store uses.
    pub fn database(&self) -> &Database {
        &self.db.database
    }

    /// The underlying client (shared by clones of this store).
    pub fn client(&self) -> &Client {
        &self.db.client
    }

    /// Runs `operation` to its [`StoreError`], failing with [`StoreError::Unavailable`]
    /// if it takes longer than [`MongoOptions::operation_timeout`], so that a server
    /// that accepts connections but does not answer cannot hang a call. A call
    /// abandoned half-way is harmless for the same reason a crash is.
    async fn bounded<T>(
        &self,
        what: &str,
        operation: impl Future<Output = Outcome<T>>,
    ) -> Result<T, StoreError> {
        let limit = self.options.operation_timeout;
        match tokio::time::timeout(limit, operation).await {
            Ok(outcome) => outcome.or_store_error(self.db.server_selection_timeout),
            Err(_) => Err(StoreError::Unavailable(format!(
                "MongoDB did not complete {what} within {}",
                humantime::format_duration(limit)
            ))),
        }
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.bounded("ping", self.db.ping()).await
    }

    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError> {
        let create = accounts::create(&self.db, username, password_hash, created_at_unix_ms);
        self.bounded("create_account", create).await
    }

    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        self.bounded("find_account", accounts::find(&self.db, username))
            .await
    }

    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        self.bounded("list_accounts", accounts::list(&self.db, query))
            .await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.bounded("delete_account", deletion::delete(&self.db, id))
            .await
    }

    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError> {
        self.bounded("login_failures", login_failures::get(&self.db, account))
            .await
    }

    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError> {
        let replace = login_failures::replace(&self.db, account, seen, next);
        self.bounded("replace_login_failures", replace).await
    }

    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError> {
        self.bounded(
            "clear_login_failures",
            login_failures::clear(&self.db, account),
        )
        .await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let create = sessions::create(&self.db, token_hash, account, expires_at_unix_ms);
        self.bounded("create_session", create).await
    }

    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError> {
        let lookup = sessions::lookup(&self.db, token_hash, now_unix_ms);
        self.bounded("lookup_session", lookup).await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError> {
        self.bounded("delete_session", sessions::delete(&self.db, token_hash))
            .await
    }

    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        let purge = sessions::purge_expired(&self.db, now_unix_ms);
        self.bounded("purge_expired_sessions", purge).await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        self.bounded("send_message", messages::send(&self.db, message))
            .await
    }

    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        let fetch = messages::fetch(&self.db, recipient, after_sequence, limit);
        self.bounded("fetch_messages", fetch).await
    }

    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError> {
        let ack = messages::ack(&self.db, recipient, up_to_sequence);
        self.bounded("ack_messages", ack).await
    }

    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError> {
        let purge = messages::purge_history(&self.db, sent_before_unix_ms);
        self.bounded("purge_history", purge).await
    }

    async fn message_feed(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        self.bounded(
            "message_feed",
            feed::page(&self.db, &self.holes, after_id, limit),
        )
        .await
    }
}
