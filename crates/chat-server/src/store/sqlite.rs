//! [`SqliteStore`]: the embedded default store, one SQLite database file that several
//! chat-server processes on one host share.
//!
//! # Sharing one file between processes
//!
//! Every connection runs in WAL mode (`journal_mode=WAL`), so readers never block the
//! writer and the writer never blocks readers, with `busy_timeout` set so that a process
//! waiting for the write lock sleeps and retries instead of failing at once. Every write
//! transaction starts with `BEGIN IMMEDIATE`: it takes the write lock before reading
//! anything, so two processes can never both hold a read snapshot and then deadlock
//! trying to upgrade it (the `SQLITE_BUSY` that no busy timeout can resolve). The schema
//! is created on first start inside such a transaction, with `CREATE ... IF NOT EXISTS`,
//! so several processes that start at once on a new file all succeed.
//!
//! # Durability
//!
//! A committed transaction is in the write-ahead log before `send_message` returns. In
//! WAL mode that alone makes it survive the process being killed (even `kill -9`), with
//! any `synchronous` setting. This store also sets `synchronous=FULL`, which syncs the
//! log to disk at every commit, so an acknowledged send survives a power loss or an OS
//! crash too, at the cost of one `fsync` per write.
//!
//! # History
//!
//! Acknowledging messages only moves the recipient's acknowledged sequence number; the
//! messages stay in the database (a fetch with an explicit `after_sequence` returns them
//! again) until their recipient's account is deleted, or until history retention
//! (`chat-server --history-retention`, [`Store::purge_history`]) deletes them.
//!
//! # Blocking
//!
//! rusqlite is blocking, so every operation runs on [`tokio::task::spawn_blocking`] with
//! a connection from a small pool. If the calling future is dropped, the operation still
//! runs to completion (or rolls back) on its blocking thread: it is never half-applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
    params,
};
use tokio::sync::Semaphore;

use super::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, NewMessage, SendOutcome,
    SessionLookup, Store, StoreError, StoredMessage, TokenHash,
};

/// The schema version this build creates and understands (kept in `PRAGMA user_version`).
/// A database with a higher version was written by a newer release and is refused; one
/// with a lower version is upgraded in place (version 2 only added `login_failures` and
/// the `messages_by_time` index).
pub const SCHEMA_VERSION: i64 = 2;

/// Marks the file as a chat-server database (`PRAGMA application_id`, ASCII "CHAT"), so
/// that a database belonging to something else is refused rather than written into.
const APPLICATION_ID: i64 = 0x4348_4154;

/// How many distinct prepared statements each connection keeps.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// The schema of version [`SCHEMA_VERSION`]. Every statement is idempotent.
///
/// - Account ids come from `AUTOINCREMENT`, so they are never reused, even after the
///   account with the highest id is deleted. `username_key` is the lower-case username
///   and carries the uniqueness; its index also serves the range scans of listing.
/// - `last_seq` is the recipient's latest sequence number, `acked_seq` the acknowledged
///   one. Both only grow (until the account is deleted).
/// - Sessions have no foreign key: they outlive their account, so that a lookup can tell
///   "account deleted" from "no such session".
/// - Messages name their recipient by foreign key (an inbox cannot outlive its account)
///   but their sender only by id, because sent messages outlive the sender's account.
/// - `login_failures` has a row only for an account with failed logins since its last
///   successful one (login throttling); deleting the account deletes it.
/// - `messages_by_time` serves history retention (`purge_history`).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS accounts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL,
    username_key  TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seq      INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    acked_seq     INTEGER NOT NULL DEFAULT 0 CHECK (acked_seq >= 0 AND acked_seq <= last_seq)
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash BLOB    NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
    account_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (expires_at);
CREATE TABLE IF NOT EXISTS messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient_id    INTEGER NOT NULL REFERENCES accounts (id),
    seq             INTEGER NOT NULL CHECK (seq > 0),
    sender_id       INTEGER NOT NULL,
    sender          TEXT    NOT NULL,
    recipient       TEXT    NOT NULL,
    text            TEXT    NOT NULL,
    sent_at         INTEGER NOT NULL,
    idempotency_key TEXT    NOT NULL,
    UNIQUE (recipient_id, seq),
    UNIQUE (sender_id, idempotency_key)
);
CREATE INDEX IF NOT EXISTS messages_by_time ON messages (sent_at);
CREATE TABLE IF NOT EXISTS login_failures (
    account_id   INTEGER NOT NULL PRIMARY KEY,
    count        INTEGER NOT NULL CHECK (count > 0),
    locked_until INTEGER NOT NULL
);
";

/// The columns [`message_from_row`] reads, in its order.
macro_rules! message_columns {
    () => {
        "id, seq, sender, recipient, text, sent_at"
    };
}

/// Tuning for [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a connection waits for a lock held by another connection (of this or
    /// another process) before the operation fails with [`StoreError::Unavailable`].
    /// Default: 5 seconds.
    pub busy_timeout: Duration,
    /// How many connections, and so how many concurrent blocking operations, this store
    /// keeps at most. Zero is treated as one. Default: 4.
    pub pool_size: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            busy_timeout: Duration::from_secs(5),
            pool_size: 4,
        }
    }
}

/// A [`Store`] in one SQLite database file, safe to share between several processes on
/// one host. Cheap to clone: clones share one connection pool.
///
/// See the [module documentation](self) for locking, durability and retention.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// The pool: idle connections plus one semaphore permit per connection that may exist.
struct Inner {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

/// Why an operation on a connection failed: SQLite itself, or a store-level outcome
/// (such as [`StoreError::UsernameTaken`]) decided by the operation.
#[derive(Debug)]
enum Failure {
    Sqlite(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sqlite(error)
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

type Outcome<T> = Result<T, Failure>;

/// Creates the database file empty with mode 0600 if it does not exist yet, so that the
/// database (and its `-wal` and `-shm` files, which SQLite creates with the database
/// file's permissions) is readable by its owner only: it holds password hashes and
/// messages. An existing file keeps its permissions.
fn create_owner_only(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        // Opening reports a missing directory or a permission problem in its own words.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(StoreError::Unavailable(format!(
            "cannot create the database {}: {error}",
            path.display()
        ))),
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
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::Unavailable(format!(
                "cannot open the database {}: the directory {} does not exist (create it first)",
                path.display(),
                parent.display()
            )));
        }
        create_owner_only(&path)?;
        let pool_size = options.pool_size.max(1);
        let inner = Inner {
            path,
            options,
            idle: Mutex::new(Vec::with_capacity(pool_size)),
            permits: Arc::new(Semaphore::new(pool_size)),
        };
        // Open one connection now, so that a bad path or schema fails at startup, and
        // keep it as the first pooled connection. The others are opened on demand.
        let first = inner.open_connection()?;
        inner.release(first);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `operation` on a pooled connection on a blocking thread.
    async fn run<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Outcome<T> + Send + 'static,
    {
        let permit = Arc::clone(&self.inner.permits)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("the store's connection pool is closed".into()))?;
        let inner = Arc::clone(&self.inner);
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            inner.run_blocking(operation)
        })
        .await;
        match joined {
            Ok(result) => result,
            Err(error) if error.is_panic() => Err(StoreError::Internal(
                "a store operation panicked".to_string(),
            )),
            Err(_) => Err(StoreError::Unavailable(
                "the store operation was cancelled (the runtime is shutting down)".to_string(),
            )),
        }
    }
}

impl Inner {
    /// Runs `operation` on an idle connection (or a new one), then returns the
    /// connection to the pool unless it may be broken.
    fn run_blocking<T>(
        &self,
        operation: impl FnOnce(&mut Connection) -> Outcome<T>,
    ) -> Result<T, StoreError> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut connection = match idle {
            Some(connection) => connection,
            None => self.open_connection()?,
        };
        let result = operation(&mut connection);
        let broken = match &result {
            Err(Failure::Sqlite(error)) => breaks_connection(error),
            _ => false,
        };
        // A connection still inside a transaction (a failed rollback) is not reusable.
        if broken || !connection.is_autocommit() {
            tracing::warn!(
                path = %self.path.display(),
                "discarding a database connection after an error; a new one will be opened"
            );
        } else {
            self.release(connection);
        }
        result.map_err(|failure| self.store_error(failure))
    }

    fn release(&self, connection: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }

    fn store_error(&self, failure: Failure) -> StoreError {
        match failure {
            Failure::Store(error) => error,
            Failure::Sqlite(error) => map_sqlite_error(&error, self.options.busy_timeout),
        }
    }

    /// Opens and configures a connection and makes sure the schema exists.
    fn open_connection(&self) -> Result<Connection, StoreError> {
        self.configure_new_connection()
            .map_err(|failure| match failure {
                Failure::Store(error) => error,
                Failure::Sqlite(error) => {
                    match map_sqlite_error(&error, self.options.busy_timeout) {
                        StoreError::Unavailable(message) | StoreError::Internal(message) => {
                            StoreError::Unavailable(format!(
                                "cannot open the database {}: {message}",
                                self.path.display()
                            ))
                        }
                        other => other,
                    }
                }
            })
    }

    fn configure_new_connection(&self) -> Outcome<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // First, so that everything below waits for other processes instead of failing.
        connection.busy_timeout(self.options.busy_timeout)?;
        connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE_CAPACITY);
        let mode = self.switch_to_wal(&connection)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "the database {} cannot use write-ahead logging (journal mode is {mode:?}); \
                 it must be on a local file system",
                self.path.display()
            ))
            .into());
        }
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        let mut connection = connection;
        self.ensure_schema(&mut connection)?;
        Ok(connection)
    }

    /// Sets `journal_mode=WAL` and returns the journal mode now in force.
    ///
    /// Switching a file to WAL needs an exclusive lock, and SQLite answers `SQLITE_BUSY`
    /// at once, without calling the busy handler, when another connection holds a lock
    /// at that moment, as happens when several processes open a new file together. So
    /// this retries, with a short back-off, for up to `busy_timeout`. Once the file is in
    /// WAL mode (whoever switched it), the statement needs no exclusive lock.
    fn switch_to_wal(&self, connection: &Connection) -> Outcome<String> {
        let deadline = Instant::now() + self.options.busy_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match connection
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0))
            {
                Ok(mode) => return Ok(mode),
                Err(error)
                    if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                        && Instant::now() + pause < deadline =>
                {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Creates the schema on a new file, accepts the current one, refuses anything else.
    fn ensure_schema(&self, connection: &mut Connection) -> Outcome<()> {
        let (application_id, version) = header(connection)?;
        if application_id == APPLICATION_ID && version == SCHEMA_VERSION {
            return Ok(());
        }
        self.check_header(application_id, version)?;
        // A new (or foreign-looking empty) file: create the schema. IMMEDIATE serialises
        // processes starting at once; whoever comes second re-reads the header and finds
        // the work done (and the statements are idempotent anyway).
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let (application_id, version) = header(&transaction)?;
        self.check_header(application_id, version)?;
        if version < SCHEMA_VERSION {
            transaction.execute_batch(SCHEMA)?;
            transaction.pragma_update(None, "application_id", APPLICATION_ID)?;
            transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        }
        transaction.commit()?;
        Ok(())
    }

    fn check_header(&self, application_id: i64, version: i64) -> Outcome<()> {
        let foreign = if application_id != 0 {
            application_id != APPLICATION_ID
        } else {
            // Only an empty new file has neither an application id nor a version.
            version != 0
        };
        if foreign {
            return Err(StoreError::Unavailable(format!(
                "{} is not a chat-server database (application id {application_id:#x}, \
                 schema version {version})",
                self.path.display()
            ))
            .into());
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::Unavailable(format!(
                "the database {} has schema version {version}, which is newer than the \
                 version {SCHEMA_VERSION} this chat-server understands; it was written by a \
                 newer release, so upgrade this server or use another file",
                self.path.display()
            ))
            .into());
        }
        Ok(())
    }
}

/// The application id and schema version in the database header, read by one statement
/// (so from one snapshot: another process may be writing them at this very moment).
fn header(connection: &Connection) -> rusqlite::Result<(i64, i64)> {
    connection.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id()),
                (SELECT user_version FROM pragma_user_version())",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// Whether an error may have left the connection unusable, so it must not be reused.
fn breaks_connection(error: &rusqlite::Error) -> bool {
    match error.sqlite_error_code() {
        Some(code) => matches!(
            code,
            ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::NotADatabase
                | ErrorCode::ReadOnly
                | ErrorCode::DiskFull
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::PermissionDenied
                | ErrorCode::OutOfMemory
                | ErrorCode::InternalMalfunction
                | ErrorCode::NoLargeFileSupport
        ),
        None => false,
    }
}

/// Maps an SQLite error that the operation did not handle itself.
fn map_sqlite_error(error: &rusqlite::Error, busy_timeout: Duration) -> StoreError {
    let Some(code) = error.sqlite_error_code() else {
        return StoreError::Internal(format!("sqlite: {error}"));
    };
    let unavailable = |what: &str| StoreError::Unavailable(format!("{what} ({error})"));
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => unavailable(&format!(
            "the database is locked by another connection (busy timeout {busy_timeout:?})"
        )),
        ErrorCode::CannotOpen => unavailable("the database file cannot be opened"),
        ErrorCode::SystemIoFailure => unavailable("disk I/O error"),
        ErrorCode::DiskFull => unavailable("the disk is full"),
        ErrorCode::ReadOnly => unavailable("the database is read-only"),
        ErrorCode::PermissionDenied => unavailable("permission denied"),
        ErrorCode::FileLockingProtocolFailed => unavailable("file locking failed"),
        ErrorCode::NoLargeFileSupport => unavailable("no large file support"),
        ErrorCode::OutOfMemory => unavailable("out of memory"),
        ErrorCode::OperationInterrupted => unavailable("the operation was interrupted"),
        ErrorCode::DatabaseCorrupt => {
            StoreError::Internal(format!("the database is corrupt ({error})"))
        }
        ErrorCode::NotADatabase => {
            StoreError::Internal(format!("the file is not an SQLite database ({error})"))
        }
        ErrorCode::ConstraintViolation => {
            StoreError::Internal(format!("unexpected constraint violation ({error})"))
        }
        _ => StoreError::Internal(format!("sqlite: {error}")),
    }
}

/// Whether `error` is a UNIQUE or PRIMARY KEY violation.
fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

/// Runs `body` in a `BEGIN IMMEDIATE` transaction: committed if it succeeds, rolled
/// back if it fails.
fn write<T>(
    connection: &mut Connection,
    body: impl FnOnce(&Transaction<'_>) -> Outcome<T>,
) -> Outcome<T> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let value = body(&transaction)?;
    transaction.commit()?;
    Ok(value)
}

/// Runs `body` in a read transaction, so that all its queries see one snapshot.
fn read<T>(
    connection: &mut Connection,
    body: impl FnOnce(&Transaction<'_>) -> Outcome<T>,
) -> Outcome<T> {
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let value = body(&transaction)?;
    transaction.commit()?;
    Ok(value)
}

/// The key that usernames are unique by, compared by and sorted by.
fn username_key(username: &str) -> String {
    username.to_lowercase()
}

/// A `u64` as SQLite's `i64`, saturating (no stored value is near `i64::MAX`).
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The error for an account id that names no account.
fn no_such_id(id: AccountId) -> StoreError {
    StoreError::NoSuchAccount(format!("#{id}"))
}

fn message_from_row(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(0)?,
        sequence: row.get(1)?,
        sender: row.get(2)?,
        recipient: row.get(3)?,
        text: row.get(4)?,
        sent_at_unix_ms: row.get(5)?,
    })
}

fn account_from_row(row: &Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        id: row.get(0)?,
        username: row.get(1)?,
        password_hash: row.get(2)?,
    })
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

fn create_account(
    connection: &mut Connection,
    username: &str,
    password_hash: &str,
    created_at: i64,
) -> Outcome<Account> {
    let key = username_key(username);
    write(connection, |tx| {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO accounts (username, username_key, password_hash, created_at)
                 VALUES (?1, ?2, ?3, ?4) RETURNING id",
            )?
            .query_row(params![username, key, password_hash, created_at], |row| {
                row.get(0)
            });
        match inserted {
            Ok(id) => Ok(Account {
                id,
                username: username.to_string(),
                password_hash: password_hash.to_string(),
            }),
            Err(error) if is_unique_violation(&error) => {
                Err(StoreError::UsernameTaken(username.to_string()).into())
            }
            Err(error) => Err(error.into()),
        }
    })
}

fn find_account(connection: &mut Connection, username: &str) -> Outcome<Option<Account>> {
    Ok(connection
        .prepare_cached("SELECT id, username, password_hash FROM accounts WHERE username_key = ?1")?
        .query_row([username_key(username)], account_from_row)
        .optional()?)
}

fn list_accounts(
    connection: &mut Connection,
    pattern: &str,
    prefix: &str,
    after: Option<&str>,
    limit: u32,
) -> Outcome<Vec<String>> {
    // Every match starts with the literal prefix, so the scan of the username_key index
    // can start at the prefix (or just after the cursor, whichever is later) and stop
    // at the first name that no longer starts with the prefix.
    let after = after
        .map(username_key)
        .filter(|after| after.as_str() >= prefix);
    let upper = prefix_upper_bound(prefix);
    let (sql, lower) = match (&after, &upper) {
        (Some(after), Some(_)) => (
            "SELECT username FROM accounts
             WHERE username_key GLOB ?1 AND username_key > ?2 AND username_key < ?4
             ORDER BY username_key LIMIT ?3",
            after.as_str(),
        ),
        (Some(after), None) => (
            "SELECT username FROM accounts
             WHERE username_key GLOB ?1 AND username_key > ?2
             ORDER BY username_key LIMIT ?3",
            after.as_str(),
        ),
        (None, Some(_)) => (
            "SELECT username FROM accounts
             WHERE username_key GLOB ?1 AND username_key >= ?2 AND username_key < ?4
             ORDER BY username_key LIMIT ?3",
            prefix,
        ),
        (None, None) => (
            "SELECT username FROM accounts
             WHERE username_key GLOB ?1 AND username_key >= ?2
             ORDER BY username_key LIMIT ?3",
            prefix,
        ),
    };
    let mut statement = connection.prepare_cached(sql)?;
    let names = match &upper {
        Some(upper) => statement
            .query_map(params![pattern, lower, limit, upper], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>(),
        None => statement
            .query_map(params![pattern, lower, limit], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>(),
    }?;
    Ok(names)
}

fn delete_account(connection: &mut Connection, id: AccountId) -> Outcome<()> {
    write(connection, |tx| {
        tx.prepare_cached("DELETE FROM messages WHERE recipient_id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM accounts WHERE id = ?1")?
            .execute([id])?;
        tx.prepare_cached("DELETE FROM login_failures WHERE account_id = ?1")?
            .execute([id])?;
        Ok(())
    })
}

fn login_failures(connection: &mut Connection, account: AccountId) -> Outcome<LoginFailures> {
    let found = connection
        .prepare_cached("SELECT count, locked_until FROM login_failures WHERE account_id = ?1")?
        .query_row([account], |row| {
            Ok(LoginFailures {
                count: row.get(0)?,
                locked_until_unix_ms: row.get(1)?,
            })
        })
        .optional()?;
    Ok(found.unwrap_or_default())
}

/// See [`Store::replace_login_failures`]: a record of count 0 is the absence of a row.
fn replace_login_failures(
    connection: &mut Connection,
    account: AccountId,
    seen: LoginFailures,
    next: LoginFailures,
) -> Outcome<bool> {
    write(connection, |tx| {
        let changed = match (seen.count, next.count) {
            (0, 0) => {
                let exists: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM login_failures WHERE account_id = ?1")?
                    .query_row([account], |row| row.get(0))
                    .optional()?;
                usize::from(exists.is_none())
            }
            (0, _) => tx
                .prepare_cached(
                    "INSERT INTO login_failures (account_id, count, locked_until)
                     VALUES (?1, ?2, ?3) ON CONFLICT (account_id) DO NOTHING",
                )?
                .execute(params![account, next.count, next.locked_until_unix_ms])?,
            (_, 0) => tx
                .prepare_cached(
                    "DELETE FROM login_failures
                     WHERE account_id = ?1 AND count = ?2 AND locked_until = ?3",
                )?
                .execute(params![account, seen.count, seen.locked_until_unix_ms])?,
            (_, _) => tx
                .prepare_cached(
                    "UPDATE login_failures SET count = ?4, locked_until = ?5
                     WHERE account_id = ?1 AND count = ?2 AND locked_until = ?3",
                )?
                .execute(params![
                    account,
                    seen.count,
                    seen.locked_until_unix_ms,
                    next.count,
                    next.locked_until_unix_ms
                ])?,
        };
        Ok(changed == 1)
    })
}

/// How many messages one retention transaction deletes at most, so that the write lock
/// is never held for long.
const PURGE_BATCH: i64 = 1000;

fn purge_history_batch(connection: &mut Connection, sent_before: i64) -> Outcome<u64> {
    write(connection, |tx| {
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
}

fn clear_login_failures(connection: &mut Connection, account: AccountId) -> Outcome<()> {
    write(connection, |tx| {
        tx.prepare_cached("DELETE FROM login_failures WHERE account_id = ?1")?
            .execute([account])?;
        Ok(())
    })
}

fn create_session(
    connection: &mut Connection,
    token_hash: TokenHash,
    account: AccountId,
    expires_at: i64,
) -> Outcome<()> {
    write(connection, |tx| {
        let inserted = tx
            .prepare_cached(
                "INSERT INTO sessions (token_hash, account_id, expires_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&token_hash[..], account, expires_at]);
        match inserted {
            Ok(_) => Ok(()),
            // Token hashes are SHA-256 of random tokens: a collision means a bug.
            Err(error) if is_unique_violation(&error) => Err(StoreError::Internal(
                "a session with this token hash already exists".to_string(),
            )
            .into()),
            Err(error) => Err(error.into()),
        }
    })
}

fn lookup_session(
    connection: &mut Connection,
    token_hash: TokenHash,
    now: i64,
) -> Outcome<SessionLookup> {
    let found = connection
        .prepare_cached(
            "SELECT s.expires_at, a.id, a.username, a.password_hash
             FROM sessions AS s LEFT JOIN accounts AS a ON a.id = s.account_id
             WHERE s.token_hash = ?1",
        )?
        .query_row([&token_hash[..]], |row| {
            let expires_at: i64 = row.get(0)?;
            let id: Option<AccountId> = row.get(1)?;
            let account = match id {
                Some(id) => Some(Account {
                    id,
                    username: row.get(2)?,
                    password_hash: row.get(3)?,
                }),
                None => None,
            };
            Ok((expires_at, account))
        })
        .optional()?;
    Ok(match found {
        None => SessionLookup::Invalid,
        Some((expires_at, _)) if expires_at <= now => SessionLookup::Invalid,
        Some((_, None)) => SessionLookup::AccountDeleted,
        Some((_, Some(account))) => SessionLookup::Valid(account),
    })
}

fn delete_session(connection: &mut Connection, token_hash: TokenHash) -> Outcome<()> {
    write(connection, |tx| {
        tx.prepare_cached("DELETE FROM sessions WHERE token_hash = ?1")?
            .execute([&token_hash[..]])?;
        Ok(())
    })
}

fn purge_expired_sessions(connection: &mut Connection, now: i64) -> Outcome<u64> {
    write(connection, |tx| {
        let purged = tx
            .prepare_cached("DELETE FROM sessions WHERE expires_at <= ?1")?
            .execute([now])?;
        Ok(purged as u64)
    })
}

/// An owned copy of [`NewMessage`], to move onto a blocking thread.
struct OwnedNewMessage {
    sender_id: AccountId,
    recipient: String,
    text: String,
    idempotency_key: String,
    sent_at: i64,
}

fn send_message(connection: &mut Connection, new: &OwnedNewMessage) -> Outcome<SendOutcome> {
    write(connection, |tx| {
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
            .query_row(params![new.sender_id, new.idempotency_key], |row| {
                let recipient_id: AccountId = row.get(0)?;
                let message = StoredMessage {
                    id: row.get(1)?,
                    sequence: row.get(2)?,
                    sender: row.get(3)?,
                    recipient: row.get(4)?,
                    text: row.get(5)?,
                    sent_at_unix_ms: row.get(6)?,
                };
                Ok((recipient_id, message))
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
                Err(StoreError::IdempotencyKeyReused(new.idempotency_key.clone()).into())
            };
        }

        // A deleted account sends nothing new (its sessions say AccountDeleted, so this
        // only happens when the deletion races with the send).
        let sender: String = tx
            .prepare_cached("SELECT username FROM accounts WHERE id = ?1")?
            .query_row([new.sender_id], |row| row.get(0))
            .optional()?
            .ok_or_else(|| no_such_id(new.sender_id))?;
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
        // never will, if its transaction rolled back). message_feed relies on that.
        let id: u64 = tx
            .prepare_cached(
                "INSERT INTO messages
                     (recipient_id, seq, sender_id, sender, recipient, text, sent_at, idempotency_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
            )?
            .query_row(
                params![
                    recipient_id,
                    saturating_i64(sequence),
                    new.sender_id,
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
                text: new.text.clone(),
                sent_at_unix_ms: new.sent_at,
            },
            duplicate: false,
        })
    })
}

fn fetch_messages(
    connection: &mut Connection,
    recipient: AccountId,
    after_sequence: Option<u64>,
    limit: u32,
) -> Outcome<InboxPage> {
    read(connection, |tx| {
        let acked_sequence: u64 = tx
            .prepare_cached("SELECT acked_seq FROM accounts WHERE id = ?1")?
            .query_row([recipient], |row| row.get(0))
            .optional()?
            .ok_or_else(|| no_such_id(recipient))?;
        let after = after_sequence.unwrap_or(acked_sequence);
        let mut messages = tx
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE recipient_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ))?
            // One more than asked for, to learn whether more follow.
            .query_map(
                params![recipient, saturating_i64(after), i64::from(limit) + 1],
                message_from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Ok(InboxPage {
            messages,
            has_more,
            acked_sequence,
        })
    })
}

fn ack_messages(connection: &mut Connection, recipient: AccountId, up_to: u64) -> Outcome<u64> {
    write(connection, |tx| {
        let latest: u64 = tx
            .prepare_cached("SELECT last_seq FROM accounts WHERE id = ?1")?
            .query_row([recipient], |row| row.get(0))
            .optional()?
            .ok_or_else(|| no_such_id(recipient))?;
        if up_to > latest {
            return Err(StoreError::AckBeyondLatest {
                requested: up_to,
                latest,
            }
            .into());
        }
        let acked = tx
            .prepare_cached(
                "UPDATE accounts SET acked_seq = MAX(acked_seq, ?2) WHERE id = ?1
                 RETURNING acked_seq",
            )?
            .query_row(params![recipient, saturating_i64(up_to)], |row| row.get(0))?;
        Ok(acked)
    })
}

fn message_feed(
    connection: &mut Connection,
    after_id: Option<u64>,
    limit: u32,
) -> Outcome<FeedPage> {
    let Some(after_id) = after_id else {
        let cursor = connection
            .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM messages")?
            .query_row([], |row| row.get(0))?;
        return Ok(FeedPage {
            messages: Vec::new(),
            cursor,
        });
    };
    // Ids become visible in increasing order (see send_message), so nothing with an id
    // at or below the cursor can appear later.
    let messages = connection
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2"
        ))?
        .query_map(params![saturating_i64(after_id), limit], message_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let cursor = messages.last().map_or(after_id, |message| message.id);
    Ok(FeedPage { messages, cursor })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        // Takes the write lock and reads the database header: a store
        // that can be read but not written (a process holding the write lock, a
        // read-only or full file system) cannot accept sends, so it is not healthy. The
        // transaction writes nothing, so committing it costs no sync.
        self.run(|connection| {
            write(connection, |transaction| {
                let version: i64 =
                    transaction.pragma_query_value(None, "user_version", |row| row.get(0))?;
                if version == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(StoreError::Unavailable(format!(
                        "the database schema version changed to {version} under this server \
                         (it understands {SCHEMA_VERSION})"
                    ))
                    .into())
                }
            })
        })
        .await
    }

    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError> {
        let (username, password_hash) = (username.to_string(), password_hash.to_string());
        self.run(move |connection| {
            create_account(connection, &username, &password_hash, created_at_unix_ms)
        })
        .await
    }

    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        let username = username.to_string();
        self.run(move |connection| find_account(connection, &username))
            .await
    }

    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        let pattern = query.pattern.to_sqlite_glob().to_string();
        let prefix = query.pattern.literal_prefix().to_string();
        let after = query.after.map(str::to_string);
        let limit = query.limit;
        self.run(move |connection| {
            list_accounts(connection, &pattern, &prefix, after.as_deref(), limit)
        })
        .await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        self.run(move |connection| delete_account(connection, id))
            .await
    }

    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError> {
        self.run(move |connection| login_failures(connection, account))
            .await
    }

    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError> {
        self.run(move |connection| replace_login_failures(connection, account, seen, next))
            .await
    }

    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError> {
        self.run(move |connection| clear_login_failures(connection, account))
            .await
    }

    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self
                .run(move |connection| purge_history_batch(connection, sent_before_unix_ms))
                .await?;
            total += deleted;
            if deleted < PURGE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let token_hash = *token_hash;
        self.run(move |connection| {
            create_session(connection, token_hash, account, expires_at_unix_ms)
        })
        .await
    }

    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError> {
        let token_hash = *token_hash;
        self.run(move |connection| lookup_session(connection, token_hash, now_unix_ms))
            .await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError> {
        let token_hash = *token_hash;
        self.run(move |connection| delete_session(connection, token_hash))
            .await
    }

    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        self.run(move |connection| purge_expired_sessions(connection, now_unix_ms))
            .await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        let message = OwnedNewMessage {
            sender_id: message.sender_id,
            recipient: message.recipient.to_string(),
            text: message.text.to_string(),
            idempotency_key: message.idempotency_key.to_string(),
            sent_at: message.sent_at_unix_ms,
        };
        self.run(move |connection| send_message(connection, &message))
            .await
    }

    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        self.run(move |connection| fetch_messages(connection, recipient, after_sequence, limit))
            .await
    }

    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError> {
        self.run(move |connection| ack_messages(connection, recipient, up_to_sequence))
            .await
    }

    async fn message_feed(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        self.run(move |connection| message_feed(connection, after_id, limit))
            .await
    }
}

#[cfg(test)]
mod tests {
    //! SQLite-specific behaviour only; the contract itself is tested by the conformance
    //! suite in `tests/`.

    use std::collections::HashSet;
    use std::sync::Barrier;

    use super::*;

    fn open(path: &Path) -> SqliteStore {
        SqliteStore::open(path, SqliteOptions::default()).expect("open store")
    }

    async fn account(store: &SqliteStore, name: &str) -> Account {
        store
            .create_account(name, "$argon2id$test", 1_000)
            .await
            .expect("create account")
    }

    async fn send(store: &SqliteStore, from: AccountId, to: &str, key: &str) -> SendOutcome {
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

    /// The pragmas of a connection: journal_mode, synchronous, foreign_keys, busy_timeout.
    fn pragmas(connection: &Connection) -> (String, i64, i64, i64) {
        let get = |name: &str| -> String {
            connection
                .pragma_query_value(None, name, |row| row.get::<_, rusqlite::types::Value>(0))
                .map(|value| match value {
                    rusqlite::types::Value::Integer(i) => i.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                })
                .expect("pragma")
        };
        (
            get("journal_mode"),
            get("synchronous").parse().expect("integer"),
            get("foreign_keys").parse().expect("integer"),
            get("busy_timeout").parse().expect("integer"),
        )
    }

    #[tokio::test]
    async fn pragmas_are_set_on_every_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = SqliteOptions {
            busy_timeout: Duration::from_millis(1_234),
            pool_size: 2,
        };
        let store = SqliteStore::open(dir.path().join("chat.db"), options).expect("open");
        let expected = ("wal".to_string(), 2, 1, 1_234); // synchronous 2 is FULL
        // The connection opened by `open`...
        let first = store
            .run(|connection| Ok(pragmas(connection)))
            .await
            .expect("pragmas");
        assert_eq!(first, expected);
        // ...and one opened on demand later.
        let later = store.inner.open_connection().expect("new connection");
        assert_eq!(pragmas(&later), expected);
        let (application_id, version) = header(&later).expect("header");
        assert_eq!((application_id, version), (APPLICATION_ID, SCHEMA_VERSION));
    }

    #[test]
    fn wal_mode_is_persistent_in_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        drop(open(&path));
        let raw = Connection::open(&path).expect("raw open");
        let mode: String = raw
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_missing_directory_is_refused_and_a_new_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("a").join("b").join("chat.db");
        let error = match SqliteStore::open(&typo, SqliteOptions::default()) {
            Ok(_) => panic!("a missing directory is an error"),
            Err(error) => error.to_string(),
        };
        assert!(error.contains("does not exist"), "{error}");
        assert!(!dir.path().join("a").exists(), "nothing was created");

        let path = dir.path().join("chat.db");
        let store = open(&path);
        assert_eq!(store.path(), path);
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn concurrent_first_opens_of_a_new_file_all_succeed() {
        const PROCESSES: usize = 8;
        for round in 0..10 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join(format!("new-{round}.db"));
            let barrier = Barrier::new(PROCESSES);
            let results: Vec<Result<SqliteStore, StoreError>> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..PROCESSES)
                    .map(|_| {
                        scope.spawn(|| {
                            barrier.wait();
                            SqliteStore::open(&path, SqliteOptions::default())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|handle| handle.join().expect("opening thread panicked"))
                    .collect()
            });
            for result in &results {
                assert!(result.is_ok(), "round {round}: {result:?}");
            }
            let raw = Connection::open(&path).expect("raw open");
            assert_eq!(
                header(&raw).expect("header"),
                (APPLICATION_ID, SCHEMA_VERSION)
            );
            let tables: i64 = raw
                .query_row(
                    "SELECT count(*) FROM sqlite_schema
                     WHERE type = 'table' AND name IN ('accounts', 'sessions', 'messages')",
                    [],
                    |row| row.get(0),
                )
                .expect("count tables");
            assert_eq!(tables, 3);
        }
    }

    #[tokio::test]
    async fn a_version_1_database_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        {
            // A version-1 file with an account in it: the schema without
            // `login_failures`.
            let raw = Connection::open(&path).expect("raw open");
            let v1 = &SCHEMA[..SCHEMA
                .find("CREATE TABLE IF NOT EXISTS login_failures")
                .expect("v2 table")];
            raw.execute_batch(v1).expect("v1 schema");
            raw.pragma_update(None, "application_id", APPLICATION_ID)
                .expect("application id");
            raw.pragma_update(None, "user_version", 1).expect("version");
            raw.execute(
                "INSERT INTO accounts (username, username_key, password_hash, created_at)
                 VALUES ('Ann', 'ann', 'hash', 0)",
                [],
            )
            .expect("account");
        }
        let store = open(&path);
        let account = store
            .find_account("ann")
            .await
            .expect("find")
            .expect("the account survives the upgrade");
        let next = LoginFailures {
            count: 1,
            locked_until_unix_ms: 5,
        };
        assert!(
            store
                .replace_login_failures(account.id, LoginFailures::default(), next)
                .await
                .expect("claim")
        );
        assert_eq!(store.login_failures(account.id).await.expect("read"), next);
        let raw = Connection::open(&path).expect("raw open");
        assert_eq!(
            header(&raw).expect("header"),
            (APPLICATION_ID, SCHEMA_VERSION)
        );
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        drop(open(&path));
        Connection::open(&path)
            .expect("raw open")
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
        match SqliteStore::open(&path, SqliteOptions::default()) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("newer"), "{message}");
                assert!(
                    message.contains(&format!("version {}", SCHEMA_VERSION + 1)),
                    "{message}"
                );
            }
            other => panic!("expected Unavailable for a newer schema, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_running_store_notices_a_newer_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let store = open(&path);
        store.ping().await.expect("ping");
        Connection::open(&path)
            .expect("raw open")
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
        assert!(matches!(
            store.ping().await,
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn refuses_another_applications_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("other.db");
        {
            let raw = Connection::open(&path).expect("raw open");
            raw.execute_batch("CREATE TABLE things (x); PRAGMA user_version = 1;")
                .expect("foreign schema");
        }
        match SqliteStore::open(&path, SqliteOptions::default()) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("not a chat-server database"), "{message}")
            }
            other => panic!("expected Unavailable for a foreign database, got {other:?}"),
        }
    }

    #[test]
    fn unavailable_when_the_parent_is_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").expect("write file");
        match SqliteStore::open(file.join("chat.db"), SqliteOptions::default()) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("plain-file"), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn unavailable_when_sqlite_cannot_open_the_file() {
        // The path is a directory: the directory step succeeds, SQLite's open fails.
        let dir = tempfile::tempdir().expect("tempdir");
        match SqliteStore::open(dir.path(), SqliteOptions::default()) {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("cannot open"), "{message}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    #[test]
    fn unavailable_when_the_file_is_not_a_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).expect("write garbage");
        assert!(matches!(
            SqliteStore::open(&path, SqliteOptions::default()),
            Err(StoreError::Unavailable(_))
        ));
    }

    #[test]
    fn error_mapping() {
        let failure =
            |code: i32| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let timeout = Duration::from_secs(5);
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_LOCKED,
            rusqlite::ffi::SQLITE_CANTOPEN,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_IOERR_FSYNC,
            rusqlite::ffi::SQLITE_FULL,
            rusqlite::ffi::SQLITE_READONLY,
        ] {
            assert!(
                matches!(
                    map_sqlite_error(&failure(code), timeout),
                    StoreError::Unavailable(_)
                ),
                "code {code}"
            );
        }
        for code in [
            rusqlite::ffi::SQLITE_CORRUPT,
            rusqlite::ffi::SQLITE_CONSTRAINT_CHECK,
        ] {
            assert!(
                matches!(
                    map_sqlite_error(&failure(code), timeout),
                    StoreError::Internal(_)
                ),
                "code {code}"
            );
        }
        assert!(matches!(
            map_sqlite_error(&rusqlite::Error::QueryReturnedNoRows, timeout),
            StoreError::Internal(_)
        ));
        // I/O-type failures discard the connection; lock timeouts do not.
        assert!(breaks_connection(&failure(
            rusqlite::ffi::SQLITE_IOERR_WRITE
        )));
        assert!(breaks_connection(&failure(rusqlite::ffi::SQLITE_CANTOPEN)));
        assert!(!breaks_connection(&failure(rusqlite::ffi::SQLITE_BUSY)));
        assert!(!breaks_connection(&failure(
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
        )));
    }

    #[tokio::test]
    async fn lock_timeout_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let store = SqliteStore::open(
            &path,
            SqliteOptions {
                busy_timeout: Duration::from_millis(50),
                pool_size: 1,
            },
        )
        .expect("open");
        // Another "process" holds the write lock.
        let mut other = Connection::open(&path).expect("raw open");
        let lock = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("take the write lock");
        match store.create_account("blocked", "h", 1).await {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("locked"), "{message}")
            }
            other => panic!("expected Unavailable while locked, got {other:?}"),
        }
        // Reads are not blocked by a writer in WAL mode.
        assert_eq!(store.find_account("blocked").await.expect("read"), None);
        drop(lock);
        // The pooled connection survived the timeout and works again.
        account(&store, "blocked").await;
    }

    #[tokio::test]
    async fn failed_operations_roll_back_and_keep_the_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(
            dir.path().join("chat.db"),
            SqliteOptions {
                pool_size: 1,
                ..SqliteOptions::default()
            },
        )
        .expect("open");
        let alice = account(&store, "alice").await;
        assert!(matches!(
            store.create_account("ALICE", "h", 1).await,
            Err(StoreError::UsernameTaken(_))
        ));
        assert!(matches!(
            store
                .send_message(NewMessage {
                    sender_id: alice.id,
                    recipient: "nobody",
                    text: "x",
                    idempotency_key: "k",
                    sent_at_unix_ms: 1,
                })
                .await,
            Err(StoreError::NoSuchAccount(_))
        ));
        let idle = store.inner.idle.lock().expect("pool lock").len();
        assert_eq!(idle, 1, "the connection went back to the pool");
        let autocommit = store
            .run(|connection| Ok(connection.is_autocommit()))
            .await
            .expect("run");
        assert!(autocommit, "no transaction was left open");
    }

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
