//! The tables, and the header that says whose database a file is and which schema it
//! has.
//!
//! The schema is created on first start inside a `BEGIN IMMEDIATE` transaction, with
//! `CREATE ... IF NOT EXISTS`, so several processes that start at once on a new file all
//! succeed: the write lock serialises them, and whoever comes second re-reads the header
//! and finds the work done.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::error::Outcome;
use crate::store::StoreError;

/// The schema version this build creates and understands (kept in `PRAGMA user_version`).
/// A database with a higher version was written by a newer release and is refused; one
/// with a lower version is upgraded in place (version 2 only added `login_failures` and
/// the `messages_by_time` index).
pub const SCHEMA_VERSION: i64 = 2;

/// Marks the file as a chat-server database (`PRAGMA application_id`, ASCII "CHAT"), so
/// that a database belonging to something else is refused rather than written into.
pub(super) const APPLICATION_ID: i64 = 0x4348_4154;

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

/// Creates the schema on a new file (or upgrades an older one), accepts the current
/// one, refuses anything else. `path` is the file's, for error messages.
pub(super) fn ensure(connection: &mut Connection, path: &Path) -> Outcome<()> {
    let (application_id, version) = header(connection)?;
    if application_id == APPLICATION_ID && version == SCHEMA_VERSION {
        return Ok(());
    }
    check_header(path, application_id, version)?;
    // A new (or foreign-looking empty) file: create the schema. IMMEDIATE serialises
    // processes starting at once; whoever comes second re-reads the header and finds
    // the work done (and the statements are idempotent anyway).
    let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (application_id, version) = header(&transaction)?;
    check_header(path, application_id, version)?;
    if version < SCHEMA_VERSION {
        transaction.execute_batch(SCHEMA)?;
        transaction.pragma_update(None, "application_id", APPLICATION_ID)?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    transaction.commit()?;
    Ok(())
}

/// Refuses a file of another application, and one written by a newer release.
fn check_header(path: &Path, application_id: i64, version: i64) -> Outcome<()> {
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
            path.display()
        ))
        .into());
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::Unavailable(format!(
            "the database {} has schema version {version}, which is newer than the \
             version {SCHEMA_VERSION} this chat-server understands; it was written by a \
             newer release, so upgrade this server or use another file",
            path.display()
        ))
        .into());
    }
    Ok(())
}

/// The application id and schema version in the database header, read by one statement
/// (so from one snapshot: another process may be writing them at this very moment).
pub(super) fn header(connection: &Connection) -> rusqlite::Result<(i64, i64)> {
    connection.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id()),
                (SELECT user_version FROM pragma_user_version())",
        [],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )
}

/// The health check (`ping`), run as a write: it takes the write lock and
/// reads the database header. A store that can be read but not written (a process
/// holding the write lock, a read-only or full file system) cannot accept sends, so it
/// is not healthy. The transaction writes nothing, so committing it costs no sync.
pub(super) fn check_writable_and_current(connection: &Connection) -> Outcome<()> {
    let version: i64 = connection.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "the database schema version changed to {version} under this server \
             (it understands {SCHEMA_VERSION})"
        ))
        .into())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;

    use super::super::test_support::{open, open_error};
    use super::super::{SqliteOptions, SqliteStore};
    use super::*;
    use crate::store::{LoginFailures, Store};

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
        let message = open_error(&path, "a newer schema");
        assert!(message.contains("newer"), "{message}");
        assert!(
            message.contains(&format!("version {}", SCHEMA_VERSION + 1)),
            "{message}"
        );
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
        let message = open_error(&path, "a foreign database");
        assert!(message.contains("not a chat-server database"), "{message}");
    }
}
