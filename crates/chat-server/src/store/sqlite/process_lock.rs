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
//! # How many went first: the lock's generation
//!
//! `flock` is not fair: on release the kernel wakes the waiters, but until one of them
//! has been scheduled the lock is free, and a replica that has just committed and has
//! more queued often takes it straight back. To see how much that costs, every process
//! that takes the lock adds one to a generation counter, the first 8 bytes of the side
//! file (read and written while it holds the lock; two system calls), and a writer whose
//! debug report is on reads it before and after its wait, so its [`Guard`] tells how
//! many other processes took the lock meanwhile ([`Guard::others_first`], in the
//! writer's debug report, `writer/report.rs`). The counter changes nothing else.
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
}

/// What the writer and the lock thread share.
struct Shared {
    /// The side file; the lock belongs to this open file description.
    file: File,
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
    lock: &'a ProcessLock,
    locked: bool,
    /// How many times another process took the lock while this one waited for it (see
    /// the [module documentation](self)); 0 unless counted.
    pub others_first: u64,
}

impl ProcessLock {
    /// Opens (creating it, owner-only) the side file of the database at `database`, and
    /// starts the lock thread.
    pub fn open(database: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(side_file(database))?;
        let shared = Arc::new(Shared {
            file,
            state: Mutex::new(State::Idle),
            changed: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sqlite-lock".into())
            .spawn(move || thread_shared.serve())?;
        Ok(Self { shared })
    }

    /// Waits until this process holds the lock, or until `deadline` (then `None`). A free
    /// lock is taken at once, without the lock thread.
    /// If `flock` itself fails, logs it and returns a guard that holds nothing: the
    /// lock only spares polling, SQLite's lock still keeps the writes apart.
    /// `count_others_first`: whether to count the takings of the lock by other
    /// processes during the wait ([`Guard::others_first`]; two more system calls).
    pub fn acquire(&mut self, deadline: Instant, count_others_first: bool) -> Option<Guard<'_>> {
        let before = count_others_first
            .then(|| read_generation(&self.shared.file))
            .flatten();
        let locked = self.shared.wait_for_lock(deadline)?;
        // This process's own taking of the lock counts one.
        let others_first = match before {
            Some(before) if locked => read_generation(&self.shared.file)
                .map_or(0, |now| now.wrapping_sub(before).saturating_sub(1)),
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
        if self.locked {
            unlock(&self.lock.shared.file);
        }
        *self.lock.shared.lock_state() = State::Idle;
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

/// Releases the lock (which cannot fail on a file this process holds it on).
fn unlock(file: &File) {
    if let Err(error) = flock(file, FlockOperation::Unlock) {
        tracing::warn!(%error, "cannot release the replicas' write lock");
    }
}

/// The lock's generation: the first 8 bytes of the side file (0 while it is shorter);
/// `None` if it cannot be read.
fn read_generation(file: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut bytes = [0u8; 8];
    match file.read_exact_at(&mut bytes, 0) {
        Ok(()) => Some(u64::from_le_bytes(bytes)),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Some(0),
        Err(_) => None,
    }
}

/// Counts one more taking of the lock, which this process has just taken.
fn bump_generation(file: &File) {
    use std::os::unix::fs::FileExt;
    let next = read_generation(file).unwrap_or(0).wrapping_add(1);
    if let Err(error) = file.write_all_at(&next.to_le_bytes(), 0) {
        tracing::debug!(%error, "cannot count a taking of the replicas' write lock");
    }
}

/// `chat.db-writer` for `chat.db`.
fn side_file(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-writer");
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    /// The locks of two replicas sharing `chat.db` in `dir`.
    fn two_replicas(dir: &tempfile::TempDir) -> (ProcessLock, ProcessLock) {
        let path = dir.path().join("chat.db");
        (
            ProcessLock::open(&path).expect("one"),
            ProcessLock::open(&path).expect("two"),
        )
    }

    #[test]
    fn the_lock_is_handed_over_when_released_and_waits_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut one, mut two) = two_replicas(&dir);
        assert!(dir.path().join("chat.db-writer").is_file());
        let held = one.acquire(Instant::now() + LONG, true).expect("free lock");
        assert!(held.locked);
        // Held elsewhere: the wait ends at its deadline.
        let started = Instant::now();
        assert!(
            two.acquire(started + Duration::from_millis(50), true)
                .is_none(),
            "taken while held"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        // The abandoned request is taken over by the next one, which gets the lock
        // once it is released.
        let (waiting_tx, waiting) = std::sync::mpsc::channel();
        let shared = two.shared.clone();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                waiting_tx.send(()).expect("signal");
                let guard = two
                    .acquire(Instant::now() + LONG, true)
                    .map(|g| (g.locked, g.others_first));
                (guard, Instant::now())
            });
            waiting.recv().expect("the waiter runs");
            // Released only once the waiter's request has taken over the abandoned
            // one: released earlier, the abandoned `flock` would take the lock and
            // give it up unused, a taking the waiter counts as another's.
            let asked = Instant::now();
            while !matches!(*shared.lock_state(), State::Wanted) {
                assert!(asked.elapsed() < LONG, "the waiter never asked");
                std::thread::sleep(Duration::from_millis(1));
            }
            let released = Instant::now();
            drop(held);
            let (guard, got) = waiter.join().expect("waiter");
            assert_eq!(guard, Some((true, 0)));
            assert!(got >= released);
            assert!(
                got - released < Duration::from_secs(2),
                "{:?}",
                got - released
            );
        });
        // Released again by the waiter's guard: free for the first.
        let again = one.acquire(Instant::now() + LONG, true).expect("free lock");
        assert_eq!(again.others_first, 0);
        drop(again);
        // Every taking of the lock was counted once: `one`, `two` (whose abandoned
        // request's `flock` served the second), `one`.
        assert_eq!(read_generation(&one.shared.file), Some(3));
    }

    #[test]
    fn a_waiter_counts_the_takings_of_the_lock_by_others_during_its_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut one, mut two) = two_replicas(&dir);
        let side_file = Arc::clone(&one.shared);
        let held = one.acquire(Instant::now() + LONG, true).expect("free lock");
        let two_state = Arc::clone(&two.shared);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                two.acquire(Instant::now() + LONG, true)
                    .map(|g| g.others_first)
            });
            // `two` read the generation before it asked for the lock.
            while *two_state.lock_state() != State::Wanted {
                std::thread::yield_now();
            }
            // Two takings by other processes while `two` waits (standing for replicas
            // that barged in), then the release.
            bump_generation(&side_file.file);
            bump_generation(&side_file.file);
            drop(held);
            assert_eq!(waiter.join().expect("waiter"), Some(2));
        });
        // Not counted when not asked for.
        let uncounted = one
            .acquire(Instant::now() + LONG, false)
            .expect("free lock");
        assert_eq!(uncounted.others_first, 0);
    }

    #[test]
    fn an_abandoned_lock_is_released_by_the_lock_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut one, mut two) = two_replicas(&dir);
        let held = one.acquire(Instant::now() + LONG, true).expect("free lock");
        assert!(two.acquire(Instant::now(), true).is_none());
        // `two`'s lock thread gets the lock now, finds nobody waiting, and lets go.
        drop(held);
        let started = Instant::now();
        assert!(one.acquire(Instant::now() + LONG, true).is_some());
        assert!(started.elapsed() < LONG);
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
