//! Group commit: the one writer of this process, which commits concurrent writes
//! together, serves health checks before them, and waits for other processes with
//! the replicas' lock (`process_lock.rs`).
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
//! # Health checks go first
//!
//! A health check ([`Writer::write_urgent`]) must not wait behind up to
//! [`QUEUE_CAPACITY`] queued writes, yet should still find out whether the store can be
//! written. So it goes into a lane of its own that the writer empties before it takes
//! the next batch from the queue, in a batch of its own: it waits at most for the batch
//! being committed, then for the write lock, and costs no `fsync` (it writes nothing).
//! If the queue is full when a check arrives, its wake-up is not needed: the writer is
//! busy and looks at the lane before every batch.
//!
//! # Waiting for other processes
//!
//! Before each batch the writer takes the chat replicas' own lock on a side file
//! (`process_lock.rs`: a blocking `flock`, so that waiters sleep until it is released
//! instead of polling, bounded by `busy_timeout`), and only then `BEGIN IMMEDIATE` with
//! a short-step busy handler for writers outside the replicas. While it waits for the
//! lock, more requests queue: once it has the lock, it tops the batch up with them (to
//! [`MAX_BATCH`]), so the longer the other processes hold the lock, the more one commit
//! carries. If the lock does not come within `busy_timeout`, the batch fails with
//! [`StoreError::Unavailable`], as when SQLite's own lock times out; the requests that
//! queued meanwhile stay queued for the next batch. The lock is released only after
//! `COMMIT` (or the rollback) has returned, so the next replica's batch starts from
//! this one's durable state, and numbering stays gap-free across replicas.
//!
//! Every few seconds of activity, the writer logs at debug level where the time of its
//! writes went, stage by stage (`report.rs`;
//! `RUST_LOG=chat_server::store::sqlite::writer=debug`).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;

use super::error::{Outcome, breaks_connection, map_sqlite_error};
use super::process_lock::{ProcessLock, begin_immediate, lock_timeout, short_step_busy_handler};
use crate::store::StoreError;
use crate::store::failure::{Failure, OutcomeExt};
use report::{Marks, Report};

/// The most requests one transaction carries.
const MAX_BATCH: usize = 256;

/// The most requests waiting for the writer; further callers wait for room.
const QUEUE_CAPACITY: usize = 1024;

/// Opens (and configures) a new write connection.
pub(super) type Open = Box<dyn FnMut() -> Result<Connection, StoreError> + Send>;

/// Requests that go before the queue (health checks), shared with the writer thread.
type Lane = Arc<Mutex<Vec<Box<dyn Request>>>>;

/// The handle callers send write requests through. The writer thread ends when the
/// last handle is dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Item>,
    urgent: Lane,
    /// The thread's counters (only tests read them).
    #[cfg(test)]
    counters: Arc<Counters>,
}

/// What the queue carries.
enum Item {
    /// A write.
    Request(Box<dyn Request>),
    /// Wakes the writer to look at the urgent lane.
    Wake,
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
    /// Starts the writer thread with `connection` to the database at `path`; `open`
    /// replaces the connection if an error breaks it.
    pub fn start(
        path: &Path,
        connection: Connection,
        open: Open,
        busy_timeout: Duration,
    ) -> Result<Self, StoreError> {
        connection
            .busy_handler(Some(short_step_busy_handler))
            .map_err(|error| map_sqlite_error(&error, busy_timeout))?;
        // Only spares polling (see `process_lock.rs`): without it, writes stay correct.
        let lock = ProcessLock::open(path)
            .inspect_err(|error| {
                tracing::warn!(%error, "cannot open the replicas' write lock file; waiting for SQLite's lock only");
            })
            .ok();
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let urgent = Lane::default();
        let counters = Arc::new(Counters {
            opened: AtomicU64::new(1),
            committed: AtomicU64::new(0),
        });
        let thread = Thread {
            requests,
            urgent: Arc::clone(&urgent),
            connection: Some(connection),
            open,
            lock,
            busy_timeout,
            counters: Arc::clone(&counters),
            report: Report::new(),
        };
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || thread.serve())
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the database writer: {error}"))
            })?;
        Ok(Self {
            queue,
            urgent,
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
        let (request, answer) = Pending::boxed(body, busy_timeout);
        self.queue
            .send(Item::Request(request))
            .await
            .map_err(|_| stopped())?;
        Pending::<T, F>::answer_of(answer).await
    }

    /// Runs `body` before the queued writes, in a batch of its own (see the [module
    /// documentation](self)); for health checks, which should write nothing.
    pub async fn write_urgent<T, F>(&self, body: F, busy_timeout: Duration) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Outcome<T> + Send + 'static,
    {
        let (request, answer) = Pending::boxed(body, busy_timeout);
        self.urgent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request);
        // Full: the writer is busy and looks at the lane before its next batch anyway.
        if let Err(TrySendError::Closed(_)) = self.queue.try_send(Item::Wake) {
            return Err(stopped());
        }
        Pending::<T, F>::answer_of(answer).await
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

    /// How many urgent requests wait for the writer.
    #[cfg(test)]
    pub fn urgent_waiting(&self) -> usize {
        self.urgent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// How many requests wait in the queue (not yet taken into a batch).
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// The error of a write when the writer thread is gone.
fn stopped() -> StoreError {
    StoreError::Unavailable("the database writer has stopped".into())
}

/// One queued write, type-erased.
trait Request: Send {
    /// Runs the body (once); whether it succeeded.
    fn run(&mut self, connection: &Connection) -> bool;
    /// Whether the body failed with an error that may have broken the connection.
    fn broke_connection(&self) -> bool;
    /// When the request was queued.
    fn queued_at(&self) -> Instant;
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
    queued: Instant,
}

impl<T, F> Pending<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Outcome<T> + Send + 'static,
{
    /// A request to run `body`, and where its answer will come.
    #[allow(clippy::type_complexity)]
    fn boxed(
        body: F,
        busy_timeout: Duration,
    ) -> (Box<dyn Request>, oneshot::Receiver<Result<T, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        let request = Box::new(Self {
            body: Some(body),
            outcome: None,
            reply,
            busy_timeout,
            queued: Instant::now(),
        });
        (request, answer)
    }

    /// The answer, once the writer has sent it.
    async fn answer_of(answer: oneshot::Receiver<Result<T, StoreError>>) -> Result<T, StoreError> {
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Internal(
                "the database writer dropped a request".into(),
            ))
        })
    }
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

    fn queued_at(&self) -> Instant {
        self.queued
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
    requests: mpsc::Receiver<Item>,
    urgent: Lane,
    /// `None` after an error broke it; reopened for the next batch.
    connection: Option<Connection>,
    open: Open,
    /// `None` if the side file could not be opened.
    lock: Option<ProcessLock>,
    busy_timeout: Duration,
    counters: Arc<Counters>,
    report: Report,
}

impl Thread {
    /// Commits batches until every [`Writer`] handle is gone, urgent requests first.
    fn serve(mut self) {
        let mut batch: Vec<Box<dyn Request>> = Vec::with_capacity(MAX_BATCH);
        loop {
            batch.extend(
                self.urgent
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .drain(..),
            );
            if !batch.is_empty() {
                self.commit_and_answer(&mut batch, false);
            }
            let Some(item) = self.requests.blocking_recv() else {
                return;
            };
            if let Item::Request(first) = item {
                batch.push(first);
                take_queued(&mut self.requests, &mut batch);
                self.commit_and_answer(&mut batch, true);
            }
        }
    }

    /// Commits `batch` (topped up with what queued while it waited for the lock, if
    /// `top_up`) and answers its requests.
    fn commit_and_answer(&mut self, batch: &mut Vec<Box<dyn Request>>, top_up: bool) {
        // Recorded only while the report is logged (debug level); otherwise the stages'
        // marks are all it costs.
        let reporting = self.report.enabled();
        let mut marks = Marks::new(Instant::now());
        let outcome = self.commit(batch, top_up, reporting, &mut marks);
        let queued: Vec<Instant> = if reporting {
            batch.iter().map(|request| request.queued_at()).collect()
        } else {
            Vec::new()
        };
        for request in batch.drain(..) {
            request.answer(outcome.as_ref().map(|_| ()));
        }
        if reporting {
            self.report
                .record(&marks, queued.into_iter(), Instant::now());
        }
    }

    /// Takes the replicas' lock, then runs and commits one batch on the write
    /// connection (reopened if need be), and drops the connection if an error may have
    /// broken it. `reporting`: whether to count the other replicas that took the lock
    /// first, for the report.
    fn commit(
        &mut self,
        batch: &mut Vec<Box<dyn Request>>,
        top_up: bool,
        reporting: bool,
        marks: &mut Marks,
    ) -> Result<(), BatchError> {
        let deadline = marks.started + self.busy_timeout;
        let Thread {
            requests,
            connection: slot,
            open,
            lock,
            counters,
            ..
        } = self;
        let guard = match lock.as_mut().map(|lock| lock.acquire(deadline, reporting)) {
            Some(None) => return Err(BatchError::Database(lock_timeout())),
            Some(Some(guard)) => Some(guard),
            None => None,
        };
        if top_up {
            take_queued(requests, batch);
        }
        marks.locked = Instant::now();
        marks.others_first = guard.as_ref().map_or(0, |guard| guard.others_first);
        let connection = match slot.take() {
            Some(connection) => connection,
            None => reopen(open, counters)?,
        };
        let outcome = run_batch(&connection, batch, deadline, marks);
        if outcome.is_ok() {
            counters.committed.fetch_add(1, Ordering::Relaxed);
        }
        if !connection.is_autocommit() {
            // Whatever failed, nothing of this batch may stay half-done.
            let _ = connection.execute_batch("ROLLBACK");
        }
        drop(guard);
        let broken = match &outcome {
            Err(BatchError::Database(error)) => breaks_connection(error),
            _ => false,
        } || batch.iter().any(|request| request.broke_connection());
        if broken || !connection.is_autocommit() {
            tracing::warn!("discarding the database write connection after an error");
        } else {
            *slot = Some(connection);
        }
        outcome
    }
}

/// Moves queued requests into `batch`, up to [`MAX_BATCH`]. Wake-ups are dropped: the
/// writer looks at the urgent lane before its next batch anyway.
fn take_queued(requests: &mut mpsc::Receiver<Item>, batch: &mut Vec<Box<dyn Request>>) {
    while batch.len() < MAX_BATCH {
        match requests.try_recv() {
            Ok(Item::Request(request)) => batch.push(request),
            Ok(Item::Wake) => {}
            Err(_) => break,
        }
    }
}

/// A new write connection, with the short-step busy handler.
fn reopen(open: &mut Open, counters: &Counters) -> Result<Connection, BatchError> {
    let connection = open().map_err(|error| BatchError::Unavailable(error.to_string()))?;
    connection
        .busy_handler(Some(short_step_busy_handler))
        .map_err(BatchError::Database)?;
    counters.opened.fetch_add(1, Ordering::Relaxed);
    Ok(connection)
}

/// One transaction with a savepoint per request (see the [module documentation](self)).
/// On error the transaction may still be open: the caller rolls it back.
fn run_batch(
    connection: &Connection,
    batch: &mut [Box<dyn Request>],
    deadline: Instant,
    marks: &mut Marks,
) -> Result<(), BatchError> {
    begin_immediate(connection, deadline).map_err(BatchError::Database)?;
    marks.begun = Instant::now();
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
    marks.ran = Instant::now();
    connection
        .execute_batch("COMMIT")
        .map_err(BatchError::Database)?;
    marks.committed = Instant::now();
    Ok(())
}

mod report;
#[cfg(test)]
mod tests;
