//! SQLite errors as [`StoreError`]s (see [`failure`] for where they are mapped): the
//! pool looks at an operation's SQLite error first, to tell whether it broke the
//! connection.

use std::time::Duration;

use rusqlite::ErrorCode;

use crate::store::StoreError;
use crate::store::failure::{self, DatabaseError};

/// What an operation on a connection returns.
pub(super) type Outcome<T> = failure::Outcome<T, rusqlite::Error>;

impl DatabaseError for rusqlite::Error {
    fn to_store_error(&self, busy_timeout: Duration) -> StoreError {
        map_sqlite_error(self, busy_timeout)
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
        let kind = |error: &rusqlite::Error| match map_sqlite_error(error, timeout) {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Internal(_) => "internal",
            other => panic!("{other:?}"),
        };
        for (code, expected) in [
            (rusqlite::ffi::SQLITE_BUSY, "unavailable"),
            (rusqlite::ffi::SQLITE_LOCKED, "unavailable"),
            (rusqlite::ffi::SQLITE_CANTOPEN, "unavailable"),
            (rusqlite::ffi::SQLITE_IOERR, "unavailable"),
            (rusqlite::ffi::SQLITE_IOERR_FSYNC, "unavailable"),
            (rusqlite::ffi::SQLITE_FULL, "unavailable"),
            (rusqlite::ffi::SQLITE_READONLY, "unavailable"),
            (rusqlite::ffi::SQLITE_CORRUPT, "internal"),
            (rusqlite::ffi::SQLITE_CONSTRAINT_CHECK, "internal"),
        ] {
            assert_eq!(kind(&failure(code)), expected, "code {code}");
        }
        assert_eq!(kind(&rusqlite::Error::QueryReturnedNoRows), "internal");
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
