//! Group commit: the one writer of this process, which commits concurrent writes
//! together, and the busy handler it waits for other processes with.
//!
//! # Group commit
//!
//! Every write of the store ([`Pool::write`](super::pool::Pool::write)) is a request
//! to one thread that owns this process's only write connection. The thread takes the
//! first request that arrives, plus whatever else is already queued (at most
//! [`MAX_BATCH`]), and runs them all in one `BEGIN IMMEDIATE ... COMMIT` transaction,
//! each request inside a `SAVEPOINT` of its own:
//!
//! - a request whose body fails is rolled back to its savepoint, and gets its own
//!   error; the requests around it are unaffected and commit;
//! - the requests run one after the other in queue order, each seeing the writes of
//!   those before it, exactly as if each were its own transaction: idempotency keys,
//!   per-recipient sequence numbers and message ids are read and written inside the
//!   transaction, so within a batch they follow the savepoint order, and across
//!   processes the write lock serialises whole batches as it did single transactions;
//! - every caller is answered only after `COMMIT` has returned, and with
//!   `synchronous=FULL` a returned `COMMIT` is on disk: **nothing is acknowledged
//!   before it is durable**. If `BEGIN`, a savepoint or `COMMIT` fails, or SQLite rolls
//!   the whole transaction back on its own (as it does after an I/O error or a full
//!   disk), every request of the batch gets that error, including those whose bodies
//!   succeeded: none of them was stored.
//!
//! While one batch commits (the `fsync` is the slow part), the next one queues, so
//! under load one `fsync` carries many writes instead of one each: that is the gain.
//! With no load a batch is one request and costs what a single transaction did. The
//! queue holds at most [`QUEUE_CAPACITY`] requests (callers wait for room) and a batch
//! at most [`MAX_BATCH`], so memory stays bounded. Reads do not go through the writer:
//! they use the pool's own connections, which WAL mode never blocks.
//!
//! If a caller gives up while its request waits in the queue, the request still runs
//! (or, if it never got into the queue, does not): a write is never half-applied.
//!
//! # Waiting for other processes
//!
//! Processes that share the file contend for its write lock, one writer each. SQLite's
//! default busy handler (behind `busy_timeout`) sleeps in growing steps, up to 100 ms
//! each, so a waiter may sleep on long after the lock was released: those sleeps were
//! the long tails of write latency. The writer's connection uses
//! [`short_step_busy_handler`] instead, which retries every 50-200 µs, so a waiter gets
//! the lock soon after it is released. It gives up after a short slice
//! ([`BUSY_SLICE_ATTEMPTS`]); [`begin_immediate`] then retries until the configured
//! `busy_timeout` has passed, after which the batch fails with
//! [`StoreError::Unavailable`] as before.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};
use tokio::sync::{mpsc, oneshot};

use super::error::{Outcome, breaks_connection, map_sqlite_error};
use crate::store::StoreError;
use crate::store::failure::{Failure, OutcomeExt};

/// The most requests one transaction carries.
const MAX_BATCH: usize = 256;

/// The most requests waiting for the writer; further callers wait for room.
const QUEUE_CAPACITY: usize = 1024;

/// How many times [`short_step_busy_handler`] retries before it lets
/// [`begin_immediate`] look at the clock: about 20 ms of short sleeps.
const BUSY_SLICE_ATTEMPTS: i32 = 100;

/// Opens (and configures) a new write connection.
pub(super) type Open = Box<dyn FnMut() -> Result<Connection, StoreError> + Send>;

/// The handle callers send write requests through. The writer thread ends when the
/// last handle is dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Request>>,
    /// The thread's counters (only tests read them).
    #[cfg(test)]
    counters: Arc<Counters>,
}

/// What the writer thread has done, for tests.
#[derive(Debug)]
struct Counters {
    /// Write connections opened, the first included.
    opened: AtomicU64,
    /// Batches committed.
    committed: AtomicU64,
}

impl Writer {
    /// Starts the writer thread with `connection`; `open` replaces the connection if an
    /// error breaks it.
    pub fn start(
        connection: Connection,
        open: Open,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        connection
            .busy_handler(Some(short_step_busy_handler))
            .map_err(|error| map_sqlite_error(&error, busy_timeout))?;
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters {
            opened: AtomicU64::new(1),
            committed: AtomicU64::new(0),
        });
        let thread = Thread {
            requests,
            connection: Some(connection),
            open,
            busy_timeout,
            counters: Arc::clone(&counters),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || thread.serve())
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the database writer: {error}"))
            })?;
        Ok(Self {
            queue,
            #[cfg(test)]
            counters,
        })
    }

    /// Runs `body` in the next batch; answers once the batch is committed (or failed).
    pub async fn write<T, F>(&self, body: F, busy_timeout: Duration) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Outcome<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let request = Box::new(Pending {
            body: Some(body),
            outcome: None,
            reply,
            busy_timeout,
        });
        self.queue
            .send(request)
            .await
            .map_err(|_| StoreError::Unavailable("the database writer has stopped".into()))?;
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the database writer dropped a request".into(),
            ))
        })
    }

    /// How many write connections this writer has opened (the first included).
    #[cfg(test)]
    pub fn connections_opened(&self) -> u64 {
        self.counters.opened.load(Ordering::Relaxed)
    }

    /// How many batches this writer has committed.
    #[cfg(test)]
    pub fn batches_committed(&self) -> u64 {
        self.counters.committed.load(Ordering::Relaxed)
    }

    /// How many requests wait in the queue (not yet taken into a batch).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// Sleeps 50 µs, then steps growing by half up to 200 µs, for
/// [`BUSY_SLICE_ATTEMPTS`] attempts; SQLite retries the lock after each. See the
/// [module documentation](self).
fn short_step_busy_handler(attempt: i32) -> bool {
    if attempt >= BUSY_SLICE_ATTEMPTS {
        return false;
    }
    let micros = (50.0 * 1.5_f64.powi(attempt.min(4))).min(200.0);
    std::thread::sleep(Duration::from_micros(micros as u64));
    true
}

/// One queued write, type-erased.
trait Request: Send {
    /// Runs the body (once); whether it succeeded.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Whether the body failed with an error that may have broken the connection.
    fn broke_connection(&self) -> bool;
    /// Answers the caller: the body's outcome if the batch committed, else the batch's
    /// error.
    fn answer(self: Box<Self>, batch: Result<(), &BatchError>);
}

/// A write request and, once run, its outcome.
struct Pending<T, F> {
    body: Option<F>,
    outcome: Option<Outcome<T>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    busy_timeout: Duration,
}

impl<T, F> Request for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Outcome<T> + Send,
{
    fn run(&mut self, connection: &Connection) -> bool {
        let Some(body) = self.body.take() else {
            return false;
        };
        // A panicking body must not take the writer (and every later write) with it.
        let outcome = catch_unwind(AssertUnwindSafe(|| body(connection))).unwrap_or_else(|_| {
            Err(StoreError::Internal("a store operation panicked".into()).into())
        });
        let succeeded = outcome.is_ok();
        self.outcome = Some(outcome);
        succeeded
    }

    fn broke_connection(&self) -> bool {
        matches!(&self.outcome, Some(Err(Failure::Database(error))) if breaks_connection(error))
    }

    fn answer(self: Box<Self>, batch: Result<(), &BatchError>) {
        let result = match (batch, self.outcome) {
            (Err(error), _) => Err(error.to_store_error(self.busy_timeout)),
            (Ok(()), Some(outcome)) => outcome.or_store_error(self.busy_timeout),
            (Ok(()), None) => Err(StoreError::Internal("a write request was not run".into())),
        };
        // The caller may have given up; the write stands either way.
        let _ = self.reply.send(result);
    }
}

/// Why a whole batch failed.
#[derive(Debug)]
enum BatchError {
    /// `BEGIN`, a savepoint or `COMMIT` failed.
    Database(rusqlite::Error),
    /// SQLite rolled the transaction back after a request's error.
    RolledBack,
    /// No write connection could be opened.
    Unavailable(String),
}

impl BatchError {
    fn to_store_error(&self, busy_timeout: Duration) -> StoreError {
        match self {
            BatchError::Database(error) => map_sqlite_error(error, busy_timeout),
            BatchError::RolledBack => StoreError::Unavailable(
                "the database rolled the write transaction back after an error; \
                 nothing in it was stored"
                    .into(),
            ),
            BatchError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        }
    }
}

/// The writer thread's state.
struct Thread {
    requests: mpsc::Receiver<Box<dyn Request>>,
    /// `None` after an error broke it; reopened for the next batch.
    connection: Option<Connection>,
    open: Open,
    busy_timeout: Duration,
    counters: Arc<Counters>,
}

impl Thread {
    /// Commits batches until every [`Writer`] handle is gone.
    fn serve(mut self) {
        let mut batch: Vec<Box<dyn Request>> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = self.requests.blocking_recv() {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match self.requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let outcome = self.commit(&mut batch);
            for request in batch.drain(..) {
                request.answer(outcome.as_ref().map(|_| ()));
            }
        }
    }

    /// Runs and commits one batch on the write connection (reopened if need be), and
    /// drops the connection if an error may have broken it.
    fn commit(&mut self, batch: &mut [Box<dyn Request>]) -> Result<(), BatchError> {
        let connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.reopen()?,
        };
        let outcome = run_batch(&connection, batch, self.busy_timeout);
        if outcome.is_ok() {
            self.counters.committed.fetch_add(1, Ordering::Relaxed);
        }
        if !connection.is_autocommit() {
            // Whatever failed, nothing of this batch may stay half-done.
            let _ = connection.execute_batch("ROLLBACK");
        }
        let broken = match &outcome {
            Err(BatchError::Database(error)) => breaks_connection(error),
            _ => false,
        } || batch.iter().any(|request| request.broke_connection());
        if broken || !connection.is_autocommit() {
            tracing::warn!("discarding the database write connection after an error");
        } else {
            self.connection = Some(connection);
        }
        outcome
    }

    fn reopen(&mut self) -> Result<Connection, BatchError> {
        let connection =
            (self.open)().map_err(|error| BatchError::Unavailable(error.to_string()))?;
        connection
            .busy_handler(Some(short_step_busy_handler))
            .map_err(BatchError::Database)?;
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        Ok(connection)
    }
}

/// One transaction with a savepoint per request (see the [module documentation](self)).
/// On error the transaction may still be open: the caller rolls it back.
fn run_batch(
    connection: &Connection,
    batch: &mut [Box<dyn Request>],
    busy_timeout: Duration,
) -> Result<(), BatchError> {
    begin_immediate(connection, busy_timeout).map_err(BatchError::Database)?;
    for request in batch.iter_mut() {
        connection
            .execute_batch("SAVEPOINT request")
            .map_err(BatchError::Database)?;
        let succeeded = request.run(connection);
        if connection.is_autocommit() {
            return Err(BatchError::RolledBack);
        }
        let end = if succeeded {
            "RELEASE request"
        } else {
            "ROLLBACK TO request; RELEASE request"
        };
        connection
            .execute_batch(end)
            .map_err(BatchError::Database)?;
    }
    connection
        .execute_batch("COMMIT")
        .map_err(BatchError::Database)
}

/// `BEGIN IMMEDIATE`, retried while another process holds the write lock, until
/// `busy_timeout` has passed. Each attempt waits a slice in
/// [`short_step_busy_handler`] before it reports `SQLITE_BUSY`.
fn begin_immediate(connection: &Connection, busy_timeout: Duration) -> rusqlite::Result<()> {
    let deadline = Instant::now() + busy_timeout;
    loop {
        match connection.execute_batch("BEGIN IMMEDIATE") {
            Err(error)
                if error.sqlite_error_code() == Some(ErrorCode::DatabaseBusy)
                    && Instant::now() < deadline =>
            {
                continue;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use rusqlite::TransactionBehavior;

    use super::super::SqliteStore;
    use super::super::test_support::{account, open};
    use super::*;
    use crate::store::{NewMessage, SendOutcome, Store};

    /// A send of "hi" from `sender` with `key`, as a future to spawn.
    fn send(
        store: &SqliteStore,
        sender: i64,
        to: &'static str,
        key: &'static str,
    ) -> tokio::task::JoinHandle<Result<SendOutcome, StoreError>> {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .send_message(NewMessage {
                    sender_id: sender,
                    recipient: to,
                    text: "hi",
                    idempotency_key: key,
                    sent_at_unix_ms: 1,
                })
                .await
        })
    }

    /// Holds the writer in a write of its own until the returned sender is dropped, so
    /// that the requests sent meanwhile queue up for one batch.
    async fn hold_writer(
        store: &SqliteStore,
    ) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
        let (started_tx, started) = oneshot::channel();
        let (release, released) = std_mpsc::channel::<()>();
        let pool = store.pool.clone();
        let holder = tokio::spawn(async move {
            pool.write(move |_| {
                let _ = started_tx.send(());
                let _ = released.recv();
                Ok(())
            })
            .await
            .expect("the holding write");
        });
        started.await.expect("the writer runs the holding write");
        (release, holder)
    }

    /// Waits until `n` requests are queued behind the held writer.
    async fn until_queued(store: &SqliteStore, n: usize) {
        while store.pool.writer().queued() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_request_in_a_batch_does_not_fail_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("chat.db"));
        let (alice, bob) = (account(&store, "alice").await, account(&store, "bob").await);
        let (release, holder) = hold_writer(&store).await;
        let before = store.pool.writer().batches_committed();

        let first = send(&store, alice.id, "bob", "k1");
        until_queued(&store, 1).await;
        let unknown = send(&store, alice.id, "nobody", "k2");
        until_queued(&store, 2).await;
        // A request that writes, then fails at the database: its write is undone.
        let pool = store.pool.clone();
        let broken = tokio::spawn(async move {
            pool.write(|connection| {
                connection.execute(
                    "INSERT INTO accounts (username, username_key, password_hash, created_at)
                     VALUES ('carol', 'carol', 'h', 1)",
                    [],
                )?;
                connection.execute("INSERT INTO no_such_table VALUES (1)", [])?;
                Ok(())
            })
            .await
        });
        until_queued(&store, 3).await;
        let second = send(&store, alice.id, "bob", "k3");
        until_queued(&store, 4).await;
        let retry = send(&store, alice.id, "bob", "k1");
        until_queued(&store, 5).await;
        drop(release);
        holder.await.expect("holder");

        let first = first.await.expect("task").expect("first send");
        assert!(matches!(
            unknown.await.expect("task"),
            Err(StoreError::NoSuchAccount(_))
        ));
        assert!(matches!(
            broken.await.expect("task"),
            Err(StoreError::Internal(_))
        ));
        let second = second.await.expect("task").expect("second send");
        let retry = retry.await.expect("task").expect("retried send");
        // The holding write, then the five requests together.
        assert_eq!(store.pool.writer().batches_committed(), before + 2);
        assert!(!first.duplicate && !second.duplicate);
        assert_eq!((first.message.sequence, second.message.sequence), (1, 2));
        assert!(first.message.id < second.message.id);
        assert!(
            retry.duplicate,
            "the key was seen earlier in the same batch"
        );
        assert_eq!(retry.message, first.message);
        let inbox = store.fetch_messages(bob.id, None, 10).await.expect("fetch");
        assert_eq!(inbox.messages, vec![first.message, second.message]);
        assert_eq!(store.find_account("carol").await.expect("find"), None);
        assert_eq!(store.pool.writer().connections_opened(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rolled_back_transaction_fails_every_request_of_its_batch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("chat.db"));
        let alice = account(&store, "alice").await;
        account(&store, "bob").await;
        let (release, holder) = hold_writer(&store).await;
        let lost = send(&store, alice.id, "bob", "k1");
        until_queued(&store, 1).await;
        // Stands for SQLite rolling the whole transaction back (as after an I/O error).
        let pool = store.pool.clone();
        let rollback = tokio::spawn(async move {
            pool.write(|connection| {
                connection.execute_batch("ROLLBACK")?;
                Err(StoreError::Internal("gave up".into()).into())
            })
            .await
        });
        until_queued(&store, 2).await;
        drop(release);
        holder.await.expect("holder");
        for outcome in [
            lost.await.expect("task").map(drop),
            rollback.await.expect("task"),
        ] {
            assert!(
                matches!(outcome, Err(StoreError::Unavailable(_))),
                "{outcome:?}"
            );
        }
        // Nothing of the batch was stored, and the writer goes on.
        let sent = send(&store, alice.id, "bob", "k1")
            .await
            .expect("task")
            .expect("send");
        assert!(!sent.duplicate);
        assert_eq!(sent.message.sequence, 1);
    }

    #[tokio::test]
    async fn a_panicking_request_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(&dir.path().join("chat.db"));
        let outcome: Result<(), StoreError> = store.pool.write(|_| panic!("a bug in a body")).await;
        assert!(
            matches!(outcome, Err(StoreError::Internal(_))),
            "{outcome:?}"
        );
        account(&store, "alice").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_writer_gets_the_lock_soon_after_its_release() {
        // SQLite's default handler retries 228 ms after its first try, then 328 ms:
        // about 80 ms late for a lock held 240 ms.
        const HOLD: Duration = Duration::from_millis(240);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let store = open(&path);
        account(&store, "alice").await;
        let (locked_tx, locked) = std_mpsc::channel();
        let other_process = std::thread::spawn(move || {
            let mut raw = Connection::open(&path).expect("raw open");
            let lock = raw
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .expect("take the write lock");
            locked_tx.send(()).expect("signal");
            std::thread::sleep(HOLD);
            lock.commit().expect("release the lock");
            Instant::now()
        });
        locked.recv().expect("the lock is held");
        let started = Instant::now();
        // When the writer got the lock: its transaction has begun when the body runs
        // (what follows, the commit's fsync, is not waiting for the lock).
        let got_lock = store
            .pool
            .write(|_| Ok(Instant::now()))
            .await
            .expect("the write");
        let released = other_process.join().expect("lock holder");
        assert!(
            got_lock - started >= HOLD / 2,
            "the write waited for the lock"
        );
        let late = got_lock.saturating_duration_since(released);
        assert!(
            late < Duration::from_millis(40),
            "got the lock {late:?} after its release"
        );
        // Installing a busy handler clears `busy_timeout` (SQLite's sleeping handler):
        // the writer's connection has none, the readers' keep theirs.
        assert_eq!(
            store.pool.write(busy_timeout_ms).await.expect("writer's"),
            0
        );
        let reader = store.pool.run(|connection| busy_timeout_ms(connection));
        assert_eq!(reader.await.expect("reader's"), 5_000);
    }

    /// The connection's `busy_timeout` pragma, in ms.
    fn busy_timeout_ms(connection: &Connection) -> Outcome<i64> {
        Ok(connection.pragma_query_value(None, "busy_timeout", |row| row.get(0))?)
    }

    #[test]
    fn the_busy_handler_sleeps_in_short_steps_for_a_bounded_slice() {
        let mut slept = Duration::ZERO;
        let mut attempt = 0;
        loop {
            let start = Instant::now();
            if !short_step_busy_handler(attempt) {
                break;
            }
            slept += start.elapsed();
            attempt += 1;
        }
        assert_eq!(attempt, BUSY_SLICE_ATTEMPTS);
        // 100 sleeps of at most 200 µs, plus the timer's slack.
        assert!(slept >= Duration::from_millis(15), "{slept:?}");
        assert!(slept < Duration::from_millis(200), "{slept:?}");
    }
}
