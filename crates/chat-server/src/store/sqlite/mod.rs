//! [`SqliteStore`]: the embedded default store, one SQLite database file that several
//! chat-server processes on one host share.
//!
//! Each concern has a file of its own, with its reasoning at its code:
//!
//! - `pool.rs`: the connections, set up for sharing one file between processes (WAL,
//!   `busy_timeout`, `BEGIN IMMEDIATE` writes) and for durability (`synchronous=FULL`),
//!   and blocking work kept off the async runtime;
//! - `writer.rs`: group commit (one writer thread per process commits concurrent
//!   writes in one transaction, a savepoint each, answering only once durable), with
//!   health checks served before queued writes;
//! - `process_lock.rs`: how the writer waits for other processes: a bounded `flock` on
//!   a side file that hands the lock from replica to replica without polling, and a
//!   short-step busy handler for any other writer;
//! - `schema.rs`: the tables, the schema version and the file header, created by
//!   whichever process opens a new file first;
//! - `error.rs`: SQLite errors as [`StoreError`]s;
//! - `accounts.rs`, `sessions.rs`, `login_failures.rs`, `messages.rs` (sending, with
//!   the sender's session resolved in the same write for a signed-in send; the inbox,
//!   acknowledgement, history retention) and `feed.rs`: the operations, each one
//!   transaction.
//!
//! [`StoreError`]: crate::store::StoreError

mod accounts;
mod error;
mod feed;
mod login_failures;
mod messages;
mod pool;
mod process_lock;
mod schema;
mod sessions;
mod writer;

use std::path::Path;

use async_trait::async_trait;

pub use pool::SqliteOptions;
pub use schema::SCHEMA_VERSION;

use super::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, MessageDraft, NewMessage,
    SendOutcome, SessionLookup, SessionSend, Store, StoreError, TokenHash,
};
use pool::Pool;

/// A [`Store`] in one SQLite database file, safe to share between several processes on
/// one host. Cheap to clone: clones share one connection pool.
///
/// See the [module documentation](self) for where locking, durability and retention are
/// explained.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Pool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.pool.path())
            .field("options", self.pool.options())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating it if need be; its directory must exist) the database file at
    /// `path`, switches it to WAL mode, and creates the schema if the file is new.
    ///
    /// This is a blocking call (file system work, and possibly waiting up to
    /// `busy_timeout` for another process that is creating the schema at the same time).
    /// Call it once at startup; from async code either accept the short block or wrap
    /// it in [`tokio::task::spawn_blocking`].
    ///
    /// Fails with [`StoreError::Unavailable`] when the directory does not exist, when the
    /// file cannot be created, opened or
    /// switched to WAL mode, when it belongs to another application, or when its schema
    /// version is newer than [`SCHEMA_VERSION`].
    pub fn open(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StoreError> {
        let pool = Pool::open(path.as_ref().to_path_buf(), options)?;
        Ok(Self { pool })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        self.pool.path()
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // Ahead of queued sends: under write load a health check must not wait for them.
        self.pool
            .write_urgent(schema::check_writable_and_current)
            .await
    }

    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError> {
        accounts::create(&self.pool, username, password_hash, created_at_unix_ms).await
    }

    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        accounts::find(&self.pool, username).await
    }

    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        accounts::list(&self.pool, query).await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        accounts::delete(&self.pool, id).await
    }

    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError> {
        login_failures::get(&self.pool, account).await
    }

    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError> {
        login_failures::replace(&self.pool, account, seen, next).await
    }

    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError> {
        login_failures::clear(&self.pool, account).await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        sessions::create(&self.pool, token_hash, account, expires_at_unix_ms).await
    }

    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError> {
        sessions::lookup(&self.pool, token_hash, now_unix_ms).await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError> {
        sessions::delete(&self.pool, token_hash).await
    }

    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        sessions::purge_expired(&self.pool, now_unix_ms).await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        messages::send(&self.pool, message).await
    }

    async fn send_message_as(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
        message: MessageDraft<'_>,
    ) -> Result<SessionSend, StoreError> {
        messages::send_as(&self.pool, token_hash, now_unix_ms, message).await
    }

    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        messages::fetch(&self.pool, recipient, after_sequence, limit).await
    }

    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError> {
        messages::ack(&self.pool, recipient, up_to_sequence).await
    }

    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError> {
        messages::purge_history(&self.pool, sent_before_unix_ms).await
    }

    async fn message_feed(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        feed::page(&self.pool, after_id, limit).await
    }
}

/// What the tests of several parts of this store share.
#[cfg(test)]
mod test_support {
    use std::path::Path;

    use super::{SqliteOptions, SqliteStore};
    use crate::store::{Account, AccountId, NewMessage, SendOutcome, Store, StoreError};

    /// Opens a store with default options.
    pub fn open(path: &Path) -> SqliteStore {
        SqliteStore::open(path, SqliteOptions::default()).expect("open store")
    }

    /// The message of the [`StoreError::Unavailable`] that opening `path` fails with
    /// (panics, naming `what` is wrong with the file, on any other outcome).
    pub fn open_error(path: &Path, what: &str) -> String {
        match SqliteStore::open(path, SqliteOptions::default()) {
            Err(StoreError::Unavailable(message)) => message,
            other => panic!("expected Unavailable for {what}, got {other:?}"),
        }
    }

    /// Creates an account.
    pub async fn account(store: &SqliteStore, name: &str) -> Account {
        store
            .create_account(name, "$argon2id$test", 1_000)
            .await
            .expect("create account")
    }

    /// Sends "hi" with idempotency key `key`.
    pub async fn send(store: &SqliteStore, from: AccountId, to: &str, key: &str) -> SendOutcome {
        store
            .send_message(NewMessage {
                sender_id: from,
                recipient: to,
                text: "hi",
                idempotency_key: key,
                sent_at_unix_ms: 2_000,
            })
            .await
            .expect("send")
    }
}

#[cfg(test)]
mod tests {
    //! SQLite-specific behaviour of the store as a whole; the contract itself is tested
    //! by the conformance suite in `tests/`, each part's own behaviour next to it.

    use super::test_support::{account, open, send};
    use crate::store::{SessionLookup, Store};

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_stores_on_one_file_see_each_others_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("shared.db");
        let (a, b) = (open(&path), open(&path));
        let alice = account(&a, "Alice").await;
        let found = b
            .find_account("alice")
            .await
            .expect("find")
            .expect("visible");
        assert_eq!(found, alice);
        let bob = account(&b, "bob").await;
        let sent = send(&b, bob.id, "alice", "k1").await;
        let page = a.fetch_messages(alice.id, None, 10).await.expect("fetch");
        assert_eq!(page.messages, vec![sent.message.clone()]);
        // The idempotency key is shared too.
        let again = send(&a, bob.id, "ALICE", "k1").await;
        assert!(again.duplicate);
        assert_eq!(again.message, sent.message);
        let token = [7u8; 32];
        a.create_session(&token, bob.id, 10_000)
            .await
            .expect("session");
        assert_eq!(
            b.lookup_session(&token, 5_000).await.expect("lookup"),
            SessionLookup::Valid(bob.clone())
        );
        b.delete_account(bob.id).await.expect("delete");
        assert_eq!(
            a.lookup_session(&token, 5_000).await.expect("lookup"),
            SessionLookup::AccountDeleted
        );
    }
}
