//! Waiting for the write lock that processes sharing the file contend for: a lock of
//! the chat replicas' own that hands the write lock over without polling, and the
//! short-step busy handler for every other writer.
//!
//! # The replicas' lock: `flock` on a side file
//!
//! SQLite has no way to wait for its write lock other than polling (its busy handler
//! sleeps and retries). With three replicas committing by turns, two of them poll every
//! 50-200 µs for as long as the third holds the lock: on a two-core machine that burns
//! CPU the replicas need, and a waiter still notices the release up to a step late.
//!
//! So each writer (`writer.rs`) first takes an exclusive advisory lock
//! (`flock(LOCK_EX)`) on a side file next to the database (`chat.db-writer` for
//! `chat.db`), and holds it around its whole `BEGIN IMMEDIATE ... COMMIT`. Waiters sleep
//! in the kernel and wake when it is released; SQLite's own lock is then uncontended
//! among chat replicas. The advisory lock adds no correctness of its own: SQLite's lock
//! still serialises the writes, so a process that does not take it (an admin command of
//! `chat-server`, `sqlite3`, another program) is still safe, and waited for with the
//! short-step busy handler below. The kernel releases the lock when its holder dies,
//! even by `kill -9`.
//!
//! A blocking `flock` cannot be given a timeout, yet a replica stopped with SIGSTOP
//! while it holds the lock must not hang the others for longer than `busy_timeout`. So
//! each process has a lock thread that makes the blocking call, and the writer waits for
//! that thread with a timeout ([`ProcessLock::acquire`]): a condition variable over a
//! small state machine ([`State`]). If the writer gives up, the request stays with the
//! lock thread, marked abandoned: when the lock comes, the lock thread releases it at
//! once, unless the writer has asked again meanwhile, in which case it is handed over.
//!
//! # Taking turns: a waiter goes first
//!
//! `flock` is not fair: on release the kernel wakes the waiters, but until one of them
//! has been scheduled the lock is free, and a replica that has just committed and has
//! more queued usually takes it straight back. Measured with three replicas under
//! load, a waiting batch then let up to 14 batches of the others go first (4-5 at the
//! 99th percentile), and waiting for the lock made most of the slowest writes' time.
//! So a releasing replica lets one waiter go first:
//!
//! - while its `flock` is pending, a lock thread holds a shared `flock` on a second
//!   side file, `chat.db-writer-waiting` (taken without blocking; if that fails, this
//!   one wait goes unsignalled). A writer that releases the lock probes that file with
//!   a non-blocking exclusive `flock`: if that fails, another process waits;
//! - every process that takes the lock adds one to a generation counter, the first 8
//!   bytes of `chat.db-writer` (written while it holds the lock);
//! - a writer that released the lock while another process waited notes the
//!   generation, and its next [`ProcessLock::acquire`] first sleeps, in
//!   [`YIELD_STEP`]s, until the generation has changed: one other replica has taken the
//!   lock. Then it competes for the lock as usual (and, the lock being held, sleeps in
//!   `flock` until it is released).
//!
//! With nobody waiting (one replica) nothing changes: no yield, no sleep. The yield is
//! bounded: it ends [`YIELD_MAX`] after the release (or at the writer's deadline), even
//! if the waiter never takes the lock (a replica stopped with SIGSTOP while it waits, or
//! one the CPUs are too busy to run), and then the writer does not yield again for
//! [`YIELD_BACKOFF`]: a stopped waiter costs the others at most one [`YIELD_MAX`] per
//! [`YIELD_BACKOFF`]. The kernel drops the shared lock of a process that dies, so there
//! is no stale signal to clean up. The writer logs, at debug level, how many batches of
//! other processes went first while each of its batches waited (`others_first` in
//! `writer/report.rs`): with the yield, at most 2 at the 99th percentile.
//!
//! # Everyone else: the short-step busy handler
//!
//! SQLite's default busy handler (behind `busy_timeout`) sleeps in growing steps, up to
//! 100 ms each, so a waiter may sleep on long after the lock was released: those sleeps
//! were the long tails of write latency. The writer's connection uses
//! [`short_step_busy_handler`] instead, which retries every 50-200 µs, so a waiter gets
//! the lock soon after it is released. It gives up after a short slice
//! ([`BUSY_SLICE_ATTEMPTS`]); [`begin_immediate`] then retries until the deadline has
//! passed, after which the batch fails with [`StoreError::Unavailable`] as before.
//!
//! [`StoreError::Unavailable`]: crate::store::StoreError::Unavailable

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};
use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

/// The longest a writer that has just released the lock, with another replica
/// waiting, waits for that replica to take it (see the [module documentation](self)).
pub(super) const YIELD_MAX: Duration = Duration::from_millis(2);

/// How long a writer whose yield ran out (the waiter did not take the lock in time)
/// goes without yielding.
pub(super) const YIELD_BACKOFF: Duration = Duration::from_millis(100);

/// How long a yielding writer sleeps between looks at the lock's generation.
const YIELD_STEP: Duration = Duration::from_micros(100);

/// How many times [`short_step_busy_handler`] retries before it lets
/// [`begin_immediate`] look at the clock: about 20 ms of short sleeps.
pub(super) const BUSY_SLICE_ATTEMPTS: i32 = 100;

/// Sleeps 50 µs, then steps growing by half up to 200 µs, for
/// [`BUSY_SLICE_ATTEMPTS`] attempts; SQLite retries the lock after each. See the
/// [module documentation](self).
pub(super) fn short_step_busy_handler(attempt: i32) -> bool {
    if attempt >= BUSY_SLICE_ATTEMPTS {
        return false;
    }
    let micros = (50.0 * 1.5_f64.powi(attempt.min(4))).min(200.0);
    std::thread::sleep(Duration::from_micros(micros as u64));
    true
}

/// `BEGIN IMMEDIATE`, retried while another connection holds the write lock, until
/// `deadline`. Each attempt waits a slice in [`short_step_busy_handler`] before it
/// reports `SQLITE_BUSY`.
pub(super) fn begin_immediate(connection: &Connection, deadline: Instant) -> rusqlite::Result<()> {
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

/// The error a writer that waited in vain for [`ProcessLock`] reports: `SQLITE_BUSY`,
/// as if SQLite's own lock had timed out.
pub(super) fn lock_timeout() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
        Some("another chat replica holds the write lock".into()),
    )
}

/// This process's side of the replicas' write lock (see the [module
/// documentation](self)). One per writer; dropping it ends its lock thread once that
/// thread's pending `flock`, if any, returns.
pub(super) struct ProcessLock {
    shared: Arc<Shared>,
    /// The waiting file again, opened separately (a lock belongs to its open file
    /// description), to probe whether other processes wait.
    probe: File,
    /// Set when this writer released the lock while another process waited: the
    /// lock's generation then, and when. The next [`acquire`](Self::acquire) waits
    /// for the generation to change.
    turn: Option<(u64, Instant)>,
    /// No yield before this instant, after a yield that ran out.
    no_yield_until: Option<Instant>,
    /// The longest yield: [`YIELD_MAX`] (tests set it longer).
    yield_max: Duration,
}

/// What the writer and the lock thread share.
struct Shared {
    /// The side file; the lock belongs to this open file description. Its first 8
    /// bytes are the lock's generation.
    file: File,
    /// The waiting file: the lock thread holds a shared lock on it while it waits.
    waiting: File,
    state: Mutex<State>,
    changed: Condvar,
}

/// Where a lock request stands. The writer moves `Idle`/`Abandoned` to `Wanted`,
/// `Wanted` to `Abandoned` (it gave up) and `Granted` to `Held` (it took the lock), and
/// back to `Idle` when it releases it; the lock thread moves `Wanted` to `Granted` and
/// `Abandoned` to `Idle` once its `flock` returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nobody wants the lock.
    Idle,
    /// The writer waits for the lock; the lock thread is (about to be) in `flock`.
    Wanted,
    /// The writer gave up waiting; the lock thread is still in `flock`.
    Abandoned,
    /// The lock thread got the lock (`true`) or `flock` failed (`false`), for the writer
    /// to take.
    Granted(bool),
    /// The writer holds the lock (`true`), or goes on without it (`false`).
    Held(bool),
    /// The writer is gone: the lock thread ends.
    Closed,
}

/// The writer's hold on the lock: released when dropped.
pub(super) struct Guard<'a> {
    lock: &'a mut ProcessLock,
    locked: bool,
    /// How many times another process took the lock while this one waited for it.
    pub others_first: u64,
}

impl ProcessLock {
    /// Opens (creating it, owner-only) the side file of the database at `database`, and
    /// starts the lock thread.
    pub fn open(database: &Path) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            file: open_side_file(database, "-writer")?,
            waiting: open_side_file(database, "-writer-waiting")?,
            state: Mutex::new(State::Idle),
            changed: Condvar::new(),
        });
        let probe = open_side_file(database, "-writer-waiting")?;
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sqlite-lock".into())
            .spawn(move || thread_shared.serve())?;
        Ok(Self {
            shared,
            probe,
            turn: None,
            no_yield_until: None,
            yield_max: YIELD_MAX,
        })
    }

    /// If this writer released the lock while another process waited, waits until a
    /// process has taken it since (its generation changed), at most until [`YIELD_MAX`]
    /// after the release, and not past `deadline`; if that runs out, yields no more for
    /// [`YIELD_BACKOFF`] (see the [module documentation](self)).
    fn let_a_waiter_go_first(&mut self, deadline: Instant) {
        let Some((generation, released)) = self.turn.take() else {
            return;
        };
        if self
            .no_yield_until
            .is_some_and(|until| Instant::now() < until)
        {
            return;
        }
        let until = deadline.min(released + self.yield_max);
        while read_generation(&self.shared.file) == Some(generation) {
            if Instant::now() >= until {
                self.no_yield_until = Some(Instant::now() + YIELD_BACKOFF);
                tracing::debug!("a waiting replica did not take the write lock in time");
                return;
            }
            std::thread::sleep(YIELD_STEP);
        }
    }

    /// Waits until this process holds the lock, or until `deadline` (then `None`). A free
    /// lock is taken at once, without the lock thread.
    /// If `flock` itself fails, logs it and returns a guard that holds nothing: the
    /// lock only spares polling, SQLite's lock still keeps the writes apart.
    pub fn acquire(&mut self, deadline: Instant) -> Option<Guard<'_>> {
        let before = read_generation(&self.shared.file);
        self.let_a_waiter_go_first(deadline);
        let locked = self.shared.wait_for_lock(deadline)?;
        // This process's own hand-over counts one.
        let others_first = match (before, read_generation(&self.shared.file)) {
            (Some(before), Some(now)) if locked => now.wrapping_sub(before).saturating_sub(1),
            _ => 0,
        };
        Some(Guard {
            lock: self,
            locked,
            others_first,
        })
    }
}

impl Shared {
    /// The writer's wait for the lock (see [`ProcessLock::acquire`]): whether it holds
    /// it (`false`: `flock` failed), or `None` at `deadline`.
    fn wait_for_lock(&self, deadline: Instant) -> Option<bool> {
        let mut state = self.lock_state();
        match *state {
            // Free (the common case with little contention): no hand-over needed.
            State::Idle if try_lock(&self.file) => {
                *state = State::Held(true);
                bump_generation(&self.file);
                return Some(true);
            }
            State::Idle => {
                *state = State::Wanted;
                self.changed.notify_all();
            }
            // The lock thread's `flock` is still pending: it serves this request.
            State::Abandoned => *state = State::Wanted,
            other => unreachable!("one writer asks for the lock at a time ({other:?})"),
        }
        loop {
            if let State::Granted(locked) = *state {
                *state = State::Held(locked);
                return Some(locked);
            }
            let now = Instant::now();
            if now >= deadline {
                *state = State::Abandoned;
                return None;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Drop for ProcessLock {
    fn drop(&mut self) {
        *self.shared.lock_state() = State::Closed;
        self.shared.changed.notify_all();
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let lock = &mut *self.lock;
        if self.locked {
            // Before the release: a waiter takes the lock (and stops signalling) at once.
            let waited = others_waiting(&lock.probe);
            let generation = read_generation(&lock.shared.file).filter(|_| waited);
            unlock(&lock.shared.file);
            lock.turn = generation.map(|generation| (generation, Instant::now()));
        }
        *lock.shared.lock_state() = State::Idle;
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock thread: takes the lock whenever the writer wants it.
    fn serve(&self) {
        loop {
            {
                let mut state = self.lock_state();
                // Nothing to do until the writer wants the lock (again).
                while matches!(*state, State::Idle | State::Granted(_) | State::Held(_)) {
                    state = self
                        .changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if *state == State::Closed {
                    return;
                }
            }
            // Tells releasing writers that this process waits (see the module docs).
            let signalled = try_lock_shared(&self.waiting);
            let locked = match lock_blocking(&self.file) {
                Ok(()) => {
                    bump_generation(&self.file);
                    true
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot take the replicas' write lock; waiting for SQLite's lock only");
                    false
                }
            };
            if signalled {
                unlock(&self.waiting);
            }
            let mut state = self.lock_state();
            match *state {
                State::Wanted => {
                    *state = State::Granted(locked);
                    self.changed.notify_all();
                }
                State::Closed => {
                    if locked {
                        unlock(&self.file);
                    }
                    return;
                }
                // Abandoned: nobody waits for it any more. (Nothing else moves the
                // state on while this thread is in `flock`.)
                _ => {
                    if locked {
                        unlock(&self.file);
                    }
                    *state = State::Idle;
                }
            }
        }
    }
}

/// `flock(LOCK_EX)`, blocking, retried when a signal interrupts it.
fn lock_blocking(file: &File) -> std::io::Result<()> {
    loop {
        match flock(file, FlockOperation::LockExclusive) {
            Err(Errno::INTR) => continue,
            other => return other.map_err(std::io::Error::from),
        }
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: whether it got the lock at once.
fn try_lock(file: &File) -> bool {
    flock(file, FlockOperation::NonBlockingLockExclusive).is_ok()
}

/// `flock(LOCK_SH | LOCK_NB)`: whether it got the shared lock at once.
fn try_lock_shared(file: &File) -> bool {
    flock(file, FlockOperation::NonBlockingLockShared).is_ok()
}

/// Whether another open file description holds a lock on the waiting file `probe`:
/// another process waits for the replicas' lock. Takes and at once releases an
/// exclusive lock if it is free.
fn others_waiting(probe: &File) -> bool {
    match flock(probe, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            unlock(probe);
            false
        }
        Err(error) => error == Errno::WOULDBLOCK,
    }
}

/// Releases a lock (which cannot fail on a file this process holds it on).
fn unlock(file: &File) {
    if let Err(error) = flock(file, FlockOperation::Unlock) {
        tracing::warn!(%error, "cannot release a lock on the replicas' side file");
    }
}

/// The lock's generation: the first 8 bytes of the side file (0 while it is shorter);
/// `None` if it cannot be read.
fn read_generation(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; 8];
    let mut read = 0;
    while read < bytes.len() {
        match file.read_at(&mut bytes[read..], read as u64) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
    Some(if read == bytes.len() {
        u64::from_le_bytes(bytes)
    } else {
        0
    })
}

/// Counts one more hand-over of the lock, which this process has just taken.
fn bump_generation(file: &File) {
    use std::os::unix::fs::FileExt;
    let next = read_generation(file).unwrap_or(0).wrapping_add(1);
    if let Err(error) = file.write_all_at(&next.to_le_bytes(), 0) {
        tracing::debug!(%error, "cannot count a hand-over of the replicas' write lock");
    }
}

/// Opens (creating it, owner-only) the side file `chat.db{suffix}` of `chat.db`.
fn open_side_file(database: &Path, suffix: &str) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    #[test]
    fn the_lock_is_handed_over_when_released_and_waits_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let (mut one, mut two) = (
            ProcessLock::open(&path).expect("one"),
            ProcessLock::open(&path).expect("two"),
        );
        assert!(dir.path().join("chat.db-writer").is_file());
        let held = one.acquire(Instant::now() + LONG).expect("free lock");
        assert!(held.locked);
        // Held elsewhere: the wait ends at its deadline.
        let started = Instant::now();
        assert!(
            two.acquire(started + Duration::from_millis(50)).is_none(),
            "taken while held"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        // The abandoned request is taken over by the next one, which gets the lock
        // once it is released.
        let (waiting_tx, waiting) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                waiting_tx.send(()).expect("signal");
                let guard = two.acquire(Instant::now() + LONG).map(|g| g.locked);
                (guard, Instant::now())
            });
            waiting.recv().expect("the waiter runs");
            let released = Instant::now();
            drop(held);
            let (guard, got) = waiter.join().expect("waiter");
            assert_eq!(guard, Some(true));
            assert!(got >= released);
            assert!(
                got - released < Duration::from_secs(2),
                "{:?}",
                got - released
            );
        });
        // Released again by the waiter's guard: free for the first.
        assert!(one.acquire(Instant::now() + LONG).is_some());
    }

    #[test]
    fn an_abandoned_lock_is_released_by_the_lock_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let (mut one, mut two) = (
            ProcessLock::open(&path).expect("one"),
            ProcessLock::open(&path).expect("two"),
        );
        let held = one.acquire(Instant::now() + LONG).expect("free lock");
        assert!(two.acquire(Instant::now()).is_none());
        // `two`'s lock thread gets the lock now, finds nobody waiting, and lets go.
        drop(held);
        let started = Instant::now();
        assert!(one.acquire(Instant::now() + LONG).is_some());
        assert!(started.elapsed() < LONG);
    }

    /// Waits until a process waits for the lock (its lock thread is in `flock`), as
    /// `probe`, the waiting file, shows: there is no other signal to wait on.
    fn until_others_wait(probe: &File) {
        let deadline = Instant::now() + LONG;
        while !others_waiting(probe) {
            assert!(Instant::now() < deadline, "nobody waits");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_releasing_writer_lets_a_waiting_one_go_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let (mut one, mut two) = (
            ProcessLock::open(&path).expect("one"),
            ProcessLock::open(&path).expect("two"),
        );
        // Long enough that only the waiter taking the lock ends the yield.
        one.yield_max = LONG;
        // Nobody waits: no yield (the one-replica path).
        drop(one.acquire(Instant::now() + LONG).expect("free lock"));
        assert!(one.turn.is_none());
        let probe = open_side_file(&path, "-writer-waiting").expect("waiting file");
        let order = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            let held = one.acquire(Instant::now() + LONG).expect("free lock");
            let order = &order;
            scope.spawn(move || {
                let guard = two.acquire(Instant::now() + LONG).expect("lock");
                order
                    .lock()
                    .expect("order")
                    .push(("two", guard.others_first));
                // A batch's commit, long enough for `one` to try to barge in.
                std::thread::sleep(Duration::from_millis(20));
            });
            until_others_wait(&probe);
            drop(held);
            assert!(one.turn.is_some(), "the waiter was not seen");
            let guard = one.acquire(Instant::now() + LONG).expect("lock");
            order
                .lock()
                .expect("order")
                .push(("one", guard.others_first));
        });
        // `one` took the lock again only after `two` had had it. (`two` took it before
        // `one` asked again, or while it waited: then `one` counts it.)
        let order = order.into_inner().expect("order");
        assert!(
            order == [("two", 0), ("one", 0)] || order == [("two", 0), ("one", 1)],
            "{order:?}"
        );
    }

    #[test]
    fn a_waiter_that_never_takes_the_lock_delays_the_releaser_boundedly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.db");
        let mut lock = ProcessLock::open(&path).expect("lock");
        // A replica stopped while it waits: its lock thread's shared lock stays.
        let stopped = open_side_file(&path, "-writer-waiting").expect("waiting file");
        assert!(try_lock_shared(&stopped));
        drop(lock.acquire(Instant::now() + LONG).expect("free lock"));
        assert!(lock.turn.is_some(), "the waiter was not seen");
        let started = Instant::now();
        drop(lock.acquire(Instant::now() + LONG).expect("free lock"));
        let waited = started.elapsed();
        assert!(waited >= YIELD_MAX, "{waited:?}");
        assert!(waited < LONG, "{waited:?}");
        let backoff = lock.no_yield_until.expect("a yield that ran out backs off");
        assert!(backoff >= started + YIELD_BACKOFF, "{backoff:?}");
        // Within the back-off, no yield: the back-off is not pushed on.
        assert!(lock.turn.is_some());
        drop(lock.acquire(Instant::now() + LONG).expect("free lock"));
        assert_eq!(lock.no_yield_until, Some(backoff));
        // A yield also ends at the writer's deadline.
        lock.no_yield_until = None;
        lock.yield_max = LONG;
        let started = Instant::now();
        assert!(lock.acquire(started + Duration::from_millis(20)).is_some());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(20), "{waited:?}");
        assert!(waited < LONG, "{waited:?}");
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
