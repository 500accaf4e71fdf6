//! SQLite errors as [`StoreError`]s.
//!
//! An operation returns an [`Outcome`]: `?` carries an SQLite error up unchanged (so the
//! pool can still tell whether it broke the connection), while the operation decides
//! store-level outcomes itself (such as [`StoreError::UsernameTaken`] from a unique
//! violation). The pool maps what is left once, with [`OutcomeExt::or_store_error`].

use std::time::Duration;

use rusqlite::ErrorCode;

use crate::store::StoreError;

/// Why an operation on a connection failed: SQLite itself, or a store-level outcome
/// (such as [`StoreError::UsernameTaken`]) decided by the operation.
#[derive(Debug)]
pub(super) enum Failure {
    /// An error that SQLite reported and the operation did not handle.
    Sqlite(rusqlite::Error),
    /// The operation's own answer.
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

/// What an operation on a connection returns.
pub(super) type Outcome<T> = Result<T, Failure>;

/// Maps an operation's failure to the store's error.
pub(super) trait OutcomeExt<T> {
    /// The value, or the failure as a [`StoreError`]: an SQLite error through
    /// [`map_sqlite_error`] (`busy_timeout` is named when a lock was not released in
    /// time), the operation's own answer as it is.
    fn or_store_error(self, busy_timeout: Duration) -> Result<T, StoreError>;
}

impl<T> OutcomeExt<T> for Outcome<T> {
    fn or_store_error(self, busy_timeout: Duration) -> Result<T, StoreError> {
        self.map_err(|failure| match failure {
            Failure::Store(error) => error,
            Failure::Sqlite(error) => map_sqlite_error(&error, busy_timeout),
        })
    }
}

/// Whether an error may have left the connection unusable, so it must not be reused.
pub(super) fn breaks_connection(error: &rusqlite::Error) -> bool {
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
pub(super) fn map_sqlite_error(error: &rusqlite::Error, busy_timeout: Duration) -> StoreError {
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
pub(super) fn is_unique_violation(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _)
            if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
