//! WAL checkpoints outside the replicas' lock.
//!
//! SQLite copies the WAL back into the database file (a checkpoint) on its own, inside
//! the `COMMIT` that takes the WAL past 1,000 pages. The writer holds the replicas'
//! lock (`process_lock.rs`) until `COMMIT` returns, so every few hundred batches one
//! `COMMIT` also wrote and synced about 4 MB of database pages, and every replica
//! waited for it: under load that was a large part of the commits' tail.
//!
//! So the writer's connection has a WAL hook of its own ([`record_wal_pages`];
//! installing it turns SQLite's automatic checkpoint off on that connection): it notes
//! the WAL's size at each commit. Once the WAL has reached [`CHECKPOINT_PAGES`], the
//! writer asks a checkpoint thread of its own, with a connection of its own, for a
//! `PRAGMA wal_checkpoint(PASSIVE)` ([`Checkpointer::request`]); a passive checkpoint
//! takes no write lock, so every replica commits meanwhile, and the writer does not
//! wait for it either.
//!
//! A checkpoint that runs while others commit copies the WAL up to where it was when
//! it started; SQLite starts the WAL over from its beginning only when a transaction
//! begins with every frame copied. So that the WAL stays bounded under steady load,
//! once it has reached [`FORCE_PAGES`] (those checkpoints did not catch up) the writer
//! checkpoints itself right after its `COMMIT`, before it releases the replicas' lock,
//! as SQLite did: nobody writes meanwhile, so it copies what is left (little, the
//! checkpoint thread having copied the rest) and the WAL starts over at the next
//! transaction. The same happens if the checkpoint thread could not be started.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::mpsc::{self, TrySendError};
use std::time::Instant;

use rusqlite::Connection;
use rusqlite::hooks::Wal;

/// The WAL size, in pages, from which the writer asks for a checkpoint: SQLite's
/// default for its automatic checkpoint.
pub(super) const CHECKPOINT_PAGES: c_int = 1000;

/// The WAL size, in pages, from which the writer checkpoints itself, inside the lock.
pub(super) const FORCE_PAGES: c_int = 4 * CHECKPOINT_PAGES;

/// How many pages the WAL grows by, past [`CHECKPOINT_PAGES`], between two requests
/// to the checkpoint thread.
const REQUEST_EVERY_PAGES: c_int = 100;

thread_local! {
    /// Pages in the WAL after the last commit on this thread (the writer's), as the WAL
    /// hook reported them.
    static WAL_PAGES: Cell<c_int> = const { Cell::new(0) };
}

/// Installs the WAL hook (which replaces SQLite's automatic checkpoint) on the
/// writer's connection.
pub(super) fn install(connection: &Connection) {
    connection.wal_hook(Some(record_wal_pages));
}

/// The WAL hook: notes the WAL's size after a commit.
fn record_wal_pages(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(pages);
    Ok(())
}

/// What the writer should do about the WAL after a commit on this thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// Nothing: the WAL is small.
    Nothing,
    /// Ask the checkpoint thread.
    Request,
    /// Checkpoint now, inside the lock.
    Force,
}

/// When the writer last asked for a checkpoint.
#[derive(Debug, Default)]
pub(super) struct Requests {
    /// The WAL's size then, in pages (0: not since it started over).
    asked_at: c_int,
}

impl Requests {
    /// What is due after the last commit on this thread, given whether a checkpoint
    /// thread runs: a request at [`CHECKPOINT_PAGES`], then every
    /// [`REQUEST_EVERY_PAGES`] more, up to [`FORCE_PAGES`].
    pub fn due(&mut self, threaded: bool) -> Due {
        // Read once: a batch that commits nothing (a health check) does not call the hook.
        let pages = WAL_PAGES.replace(0);
        if pages == 0 {
            return Due::Nothing;
        }
        if pages < self.asked_at {
            // The WAL started over.
            self.asked_at = 0;
        }
        if pages >= FORCE_PAGES || (!threaded && pages >= CHECKPOINT_PAGES) {
            self.asked_at = 0;
            Due::Force
        } else if pages >= CHECKPOINT_PAGES.max(self.asked_at + REQUEST_EVERY_PAGES) {
            self.asked_at = pages;
            Due::Request
        } else {
            Due::Nothing
        }
    }
}

/// Runs a passive checkpoint on `connection`; logs the outcome at debug level.
pub(super) fn run(connection: &Connection, place: &'static str) {
    let started = Instant::now();
    let frames = connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
        Ok((row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
    });
    match frames {
        Ok((wal, copied)) => tracing::debug!(
            wal,
            copied,
            place,
            micros = started.elapsed().as_micros() as u64,
            "checkpointed the WAL"
        ),
        Err(error) => tracing::debug!(%error, place, "cannot checkpoint the WAL now"),
    }
}

/// The checkpoint thread's handle; the thread ends when it is dropped.
pub(super) struct Checkpointer {
    wake: mpsc::SyncSender<()>,
}

impl Checkpointer {
    /// Starts the checkpoint thread with its own `connection`.
    pub fn start(connection: Connection) -> std::io::Result<Self> {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    run(&connection, "on its thread");
                }
            })?;
        Ok(Self { wake })
    }

    /// Asks for a checkpoint; if one is already asked for, this one is the same.
    pub fn request(&self) {
        match self.wake.try_send(()) {
            Ok(()) | Err(TrySendError::Full(())) => {}
            Err(TrySendError::Disconnected(())) => {
                tracing::warn!("the WAL checkpoint thread has stopped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is due after a commit that left `pages` in the WAL.
    fn after_commit(requests: &mut Requests, pages: c_int, threaded: bool) -> Due {
        WAL_PAGES.set(pages);
        requests.due(threaded)
    }

    #[test]
    fn checkpoints_are_asked_for_from_the_threshold_and_forced_at_the_bound() {
        let mut requests = Requests::default();
        assert_eq!(after_commit(&mut requests, 999, true), Due::Nothing);
        assert_eq!(after_commit(&mut requests, 1_000, true), Due::Request);
        // Not again until the WAL has grown by REQUEST_EVERY_PAGES.
        assert_eq!(after_commit(&mut requests, 1_050, true), Due::Nothing);
        assert_eq!(after_commit(&mut requests, 1_100, true), Due::Request);
        // The checkpoints did not catch up: the writer checkpoints inside the lock.
        assert_eq!(after_commit(&mut requests, FORCE_PAGES, true), Due::Force);
        // The WAL started over.
        assert_eq!(after_commit(&mut requests, 10, true), Due::Nothing);
        assert_eq!(after_commit(&mut requests, 1_000, true), Due::Request);
        // A batch that committed nothing did not run the hook: nothing is due.
        assert_eq!(requests.due(true), Due::Nothing);
        // Without a checkpoint thread, the writer checkpoints from the threshold on.
        let mut alone = Requests::default();
        assert_eq!(after_commit(&mut alone, 999, false), Due::Nothing);
        assert_eq!(after_commit(&mut alone, 1_000, false), Due::Force);
    }
}
