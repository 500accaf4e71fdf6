//! The connections to the database file: how each is set up, how the file is shared
//! between processes, and how blocking work is kept off the async runtime.
//!
//! # Sharing one file between processes
//!
//! Every connection runs in WAL mode (`journal_mode=WAL`), so readers never block the
//! writer and the writer never blocks readers, with `busy_timeout` set so that a process
//! waiting for a lock sleeps and retries instead of failing at once. Every write goes
//! through the process's one writer (`writer.rs`: group commit, and a short-step busy
//! handler instead of `busy_timeout`'s long sleeps), whose transactions start with
//! `BEGIN IMMEDIATE`: it takes the write lock before reading anything, so two processes
//! can never both hold a read snapshot and then deadlock trying to upgrade it (the
//! `SQLITE_BUSY` that no busy timeout can resolve).
//!
//! # Durability
//!
//! A committed transaction is in the write-ahead log before a write returns. In
//! WAL mode that alone makes it survive the process being killed (even `kill -9`), with
//! any `synchronous` setting. This store also sets `synchronous=FULL`, which syncs the
//! log to disk at every commit, so an acknowledged send survives a power loss or an OS
//! crash too, at the cost of one `fsync` per committed batch of writes (`writer.rs`).
//!
//! # Blocking
//!
//! rusqlite is blocking, so every read runs on [`tokio::task::spawn_blocking`] with a
//! connection from a small pool, and every write on the writer's own thread. If the
//! calling future is dropped, the operation still runs to completion (or rolls back) on
//! its thread: it is never half-applied.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};
use tokio::sync::Semaphore;

use super::error::{Outcome, breaks_connection, map_sqlite_error};
use super::schema;
use super::writer::Writer;
use crate::store::StoreError;
use crate::store::failure::{Failure, OutcomeExt};

/// How many distinct prepared statements each connection keeps.
const STATEMENT_CACHE_CAPACITY: usize = 32;

/// Tuning for [`SqliteStore`](super::SqliteStore).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// How long a connection waits for a lock held by another connection (of this or
    /// another process) before the operation fails with [`StoreError::Unavailable`].
    /// Default: 5 seconds.
    pub busy_timeout: Duration,
    /// How many connections for reads, and so how many concurrent blocking reads, this
    /// store keeps at most. Zero is treated as one. Writes use one more connection of
    /// their own (see `writer.rs`). Default: 4.
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

/// The pool: idle read connections plus one semaphore permit per read connection that
/// may exist, and the writer. Cheap to clone: clones share the connections.
#[derive(Clone)]
pub(super) struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    opener: Opener,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    writer: Writer,
}

/// What opening a connection needs (the writer keeps a copy, to reopen its own).
#[derive(Clone)]
struct Opener {
    path: PathBuf,
    options: SqliteOptions,
}

impl Pool {
    /// Opens the pool and its first connection, creating the file (owner-only) and the
    /// schema if need be. See [`SqliteStore::open`](super::SqliteStore::open).
    pub fn open(path: PathBuf, options: SqliteOptions) -> Result<Self, StoreError> {
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
        let opener = Opener { path, options };
        // Open the writer's connection now, so that a bad path or schema fails at
        // startup. Read connections are opened on demand.
        let first = opener.open_connection()?;
        let reopener = opener.clone();
        let writer = Writer::start(
            &opener.path,
            first,
            Box::new(move || reopener.open_connection()),
            opener.options.busy_timeout,
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                opener,
                idle: Mutex::new(Vec::with_capacity(pool_size)),
                permits: Arc::new(Semaphore::new(pool_size)),
                writer,
            }),
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.opener.path
    }

    /// The options the pool was opened with.
    pub fn options(&self) -> &SqliteOptions {
        &self.inner.opener.options
    }

    /// Runs `operation` (a read) on a pooled connection on a blocking thread.
    pub async fn run<T, F>(&self, operation: F) -> Result<T, StoreError>
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

    /// Runs `body` as a write: in a `BEGIN IMMEDIATE` transaction (shared with other
    /// writes, each in its own savepoint; see `writer.rs`), its writes kept if it
    /// succeeds, rolled back if it fails. Answers once they are durable.
    pub async fn write<T: Send + 'static>(&self, body: impl Body<T>) -> Result<T, StoreError> {
        let busy_timeout = self.options().busy_timeout;
        self.inner.writer.write(body, busy_timeout).await
    }

    /// Runs `body` like [`write`](Self::write), but before the queued writes, in a
    /// transaction of its own (for health checks, which write nothing; see `writer.rs`).
    pub async fn write_urgent<T: Send + 'static>(
        &self,
        body: impl Body<T>,
    ) -> Result<T, StoreError> {
        let busy_timeout = self.options().busy_timeout;
        self.inner.writer.write_urgent(body, busy_timeout).await
    }

    /// Runs `body` in a read transaction, so that all its queries see one snapshot.
    pub async fn read<T: Send + 'static>(&self, body: impl Body<T>) -> Result<T, StoreError> {
        self.run(move |connection| {
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = body(&transaction)?;
            transaction.commit()?;
            Ok(value)
        })
        .await
    }

    /// Opens a connection outside the pool (for tests of its settings).
    #[cfg(test)]
    pub fn open_connection(&self) -> Result<Connection, StoreError> {
        self.inner.opener.open_connection()
    }

    /// The writer (for tests of its connection).
    #[cfg(test)]
    pub(super) fn writer(&self) -> &Writer {
        &self.inner.writer
    }
}

/// The body of a transaction: it runs once, on a blocking thread (a write's alongside
/// other writes in one transaction, inside a savepoint of its own).
pub(super) trait Body<T>: FnOnce(&Connection) -> Outcome<T> + Send + 'static {}

impl<T, F> Body<T> for F where F: FnOnce(&Connection) -> Outcome<T> + Send + 'static {}

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
            None => self.opener.open_connection()?,
        };
        let result = operation(&mut connection);
        let broken = match &result {
            Err(Failure::Database(error)) => breaks_connection(error),
            _ => false,
        };
        // A connection still inside a transaction (a failed rollback) is not reusable.
        if broken || !connection.is_autocommit() {
            tracing::warn!(
                path = %self.opener.path.display(),
                "discarding a database connection after an error; a new one will be opened"
            );
        } else {
            self.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
        result.or_store_error(self.opener.options.busy_timeout)
    }
}

impl Opener {
    /// Opens and configures a connection and makes sure the schema exists.
    fn open_connection(&self) -> Result<Connection, StoreError> {
        self.configure_new_connection()
            .map_err(|failure| match failure {
                Failure::Store(error) => error,
                Failure::Database(error) => {
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
        schema::ensure(&mut connection, &self.path)?;
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
}

#[cfg(test)]
mod tests {
    use super::super::SqliteStore;
    use super::super::schema::{APPLICATION_ID, SCHEMA_VERSION, header};
    use super::super::test_support::{account, open, open_error};
    use super::*;
    use crate::store::{NewMessage, Store};

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
            .pool
            .run(|connection| Ok(pragmas(connection)))
            .await
            .expect("pragmas");
        assert_eq!(first, expected);
        // ...and one opened on demand later.
        let later = store.pool.open_connection().expect("new connection");
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
    fn unavailable_when_the_parent_is_a_regular_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"not a directory").expect("write file");
        let message = open_error(&file.join("chat.db"), "a file as the directory");
        assert!(message.contains("plain-file"), "{message}");
    }

    #[test]
    fn unavailable_when_sqlite_cannot_open_the_file() {
        // The path is a directory: the directory step succeeds, SQLite's open fails.
        let dir = tempfile::tempdir().expect("tempdir");
        let message = open_error(dir.path(), "a directory as the file");
        assert!(message.contains("cannot open"), "{message}");
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
        assert_eq!(
            store.pool.writer().connections_opened(),
            1,
            "the writer kept its connection"
        );
        // The write connection is usable: nothing was left open.
        account(&store, "bob").await;
        let autocommit = store
            .pool
            .run(|connection| Ok(connection.is_autocommit()))
            .await
            .expect("run");
        assert!(autocommit, "no transaction was left open");
    }
}
