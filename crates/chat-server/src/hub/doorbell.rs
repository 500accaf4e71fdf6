//! The doorbell: how replicas that share one SQLite file on a host tell each other of new
//! messages at once, at no cost while nothing happens.
//!
//! Beside the database file (`chat.db`) lies an empty-looking file, its doorbell
//! (`chat.db-bell`, created owner-only like the database). Every replica watches it with
//! Linux's inotify, which costs nothing until the file changes: no timer, no thread, one
//! file descriptor. After messages are committed through a replica, its hub *rings*: it
//! writes one byte to the file, and the kernel tells every watcher, which then reads
//! the feed at once instead of at its next poll.
//!
//! The bell is rung only after the store has acknowledged the commit, so a replica that
//! hears it finds the message in the feed. It carries no data and promises nothing: a
//! ring that is lost (a replica that cannot watch, a system without inotify, a file
//! removed under the replicas) costs only the wait for the next poll, which stays the
//! safety net. A replica hears its own rings too; that costs one extra, empty feed read
//! per burst of local sends, coalesced with the rest.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

use tokio_util::sync::CancellationToken;

use super::Hub;

/// A replica's handle on the doorbell of one database file: rings it.
#[derive(Debug)]
pub struct Doorbell {
    file: File,
    path: PathBuf,
}

impl Doorbell {
    /// Opens the doorbell of the database file at `database` (`DATABASE-bell`),
    /// creating it, readable and writable by its owner only, if need be.
    pub fn open(database: &Path) -> io::Result<Self> {
        let mut path = database.as_os_str().to_owned();
        path.push("-bell");
        let path = PathBuf::from(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        Ok(Self { file, path })
    }

    /// The doorbell's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rings: one write of one byte, which every watcher of the file is told of. A
    /// failure is logged and otherwise ignored: the other replicas' polls still find
    /// the messages.
    pub fn ring(&self) {
        if let Err(error) = self.file.write_at(&[1], 0) {
            tracing::debug!(%error, path = %self.path.display(), "cannot ring the doorbell");
        }
    }

    /// Starts watching the doorbell for rings (by any replica, this one included).
    /// Must be called within a Tokio runtime. Fails where inotify is unavailable
    /// (systems other than Linux, or the per-user limit of watches reached).
    pub fn watch(&self) -> io::Result<DoorbellWatch> {
        DoorbellWatch::start(&self.path)
    }
}

/// A watch on a doorbell: hears its rings.
pub struct DoorbellWatch {
    #[cfg(target_os = "linux")]
    events: inotify::EventStream<Vec<u8>>,
}

/// Room for this many inotify events per read (16 bytes each: a watched file's events
/// carry no name). Rings that arrive faster are merged by the kernel anyway.
#[cfg(target_os = "linux")]
const EVENTS_PER_READ: usize = 32;

impl DoorbellWatch {
    #[cfg(target_os = "linux")]
    fn start(path: &Path) -> io::Result<Self> {
        let inotify = inotify::Inotify::init()?;
        inotify.watches().add(path, inotify::WatchMask::MODIFY)?;
        let events = inotify.into_event_stream(vec![0; EVENTS_PER_READ * 16])?;
        Ok(Self { events })
    }

    #[cfg(not(target_os = "linux"))]
    fn start(_path: &Path) -> io::Result<Self> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "watching the doorbell needs Linux's inotify",
        ))
    }

    /// Waits for the next ring (rings that came since the last call count as one or
    /// a few). Fails when the watch breaks.
    pub async fn rung(&mut self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use futures::StreamExt as _;
            match self.events.next().await {
                Some(event) => event.map(drop),
                None => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the inotify event stream ended",
                )),
            }
        }
        #[cfg(not(target_os = "linux"))]
        std::future::pending().await
    }

    /// Wakes `hub` on every ring until `stop` is cancelled. If the watch breaks, the
    /// replica logs it and lives on with the feed poll alone.
    pub async fn wake_on_rings(mut self, hub: Hub, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                rung = self.rung() => match rung {
                    Ok(()) => hub.wake(),
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            "doorbell watch failed; messages from other replicas now wait for the feed poll"
                        );
                        return;
                    }
                },
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Far longer than a ring takes to be heard; reached only if it is not.
    const WITHIN: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_ring_through_one_handle_is_heard_through_another() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let database = dir.path().join("chat.db");
        let (ours, theirs) = (
            Doorbell::open(&database).expect("open"),
            Doorbell::open(&database).expect("open again"),
        );
        assert_eq!(ours.path(), dir.path().join("chat.db-bell"));
        let mode = std::fs::metadata(ours.path()).expect("metadata");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600,
            "owner-only"
        );
        let mut watch = ours.watch().expect("watch");
        theirs.ring();
        tokio::time::timeout(WITHIN, watch.rung())
            .await
            .expect("the ring is heard")
            .expect("the watch works");
    }

    #[tokio::test]
    async fn rings_wake_the_hub() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let bell = Doorbell::open(&dir.path().join("chat.db")).expect("open");
        let hub = Hub::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            bell.watch()
                .expect("watch")
                .wake_on_rings(hub.clone(), stop.clone()),
        );
        bell.ring();
        tokio::time::timeout(WITHIN, hub.wake.notify.notified())
            .await
            .expect("the ring wakes the hub");
        stop.cancel();
        task.await.expect("the watch ends when stopped");
    }
}
