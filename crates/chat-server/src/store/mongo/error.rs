//! MongoDB driver errors as [`StoreError`]s.
//!
//! When MongoDB cannot be reached, calls fail with [`StoreError::Unavailable`] after the
//! server selection timeout (default
//! [`DEFAULT_SERVER_SELECTION_TIMEOUT`](super::consistency::DEFAULT_SERVER_SELECTION_TIMEOUT);
//! `serverSelectionTimeoutMS` and `connectTimeoutMS` in the URI override the defaults),
//! `ping` fails so the replica reports NOT_SERVING, and the driver reconnects by itself
//! when the server is back.
//!
//! Operations carry driver errors up with `?`; see [`failure`] for where they are
//! mapped, once per call.

use std::time::Duration;

use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};

use crate::store::StoreError;
use crate::store::failure::{self, DatabaseError};

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;

/// Server error codes that mean "not reachable or not able to serve right now"
/// (network, elections, shutdown, time limits, authentication).
const UNAVAILABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    13,    // Unauthorized
    18,    // AuthenticationFailed
    50,    // MaxTimeMSExpired
    64,    // WriteConcernFailed
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// What an operation returns.
pub(super) type Outcome<T> = failure::Outcome<T, MongoError>;

impl DatabaseError for MongoError {
    fn to_store_error(&self, server_selection_timeout: Duration) -> StoreError {
        map_error(self, server_selection_timeout)
    }
}

/// Whether a driver error is a duplicate key error (E11000), from a write or a command.
pub(super) fn is_duplicate_key(error: &MongoError) -> bool {
    match &*error.kind {
        ErrorKind::Write(WriteFailure::WriteError(e)) => e.code == DUPLICATE_KEY,
        ErrorKind::Command(e) => e.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(e) => e
            .write_errors
            .iter()
            .flatten()
            .any(|e| e.code == DUPLICATE_KEY),
        _ => false,
    }
}

/// A short human-readable description of a driver error.
pub(super) fn describe(error: &MongoError) -> String {
    match &*error.kind {
        ErrorKind::ServerSelection { message, .. } => message.clone(),
        ErrorKind::Io(io) => io.to_string(),
        ErrorKind::Command(e) => format!("{} ({}, code {})", e.message, e.code_name, e.code),
        ErrorKind::Write(WriteFailure::WriteError(e)) => {
            format!("write error {}: {}", e.code, e.message)
        }
        ErrorKind::Write(WriteFailure::WriteConcernError(e)) => {
            format!(
                "write concern error {} ({}): {}",
                e.code, e.code_name, e.message
            )
        }
        ErrorKind::InvalidArgument { message, .. }
        | ErrorKind::Authentication { message, .. }
        | ErrorKind::DnsResolve { message, .. }
        | ErrorKind::Internal { message, .. }
        | ErrorKind::ConnectionPoolCleared { message, .. }
        | ErrorKind::InvalidResponse { message, .. }
        | ErrorKind::InvalidTlsConfig { message, .. }
        | ErrorKind::IncompatibleServer { message, .. } => message.clone(),
        _ => error.to_string(),
    }
}

/// Maps a driver error that the operation did not handle itself: unreachable servers,
/// network errors, elections, time-outs and authentication to
/// [`StoreError::Unavailable`]; everything else (a bug, bad data) to
/// [`StoreError::Internal`].
pub fn map_error(error: &MongoError, server_selection_timeout: Duration) -> StoreError {
    let detail = describe(error);
    let unavailable = |what: &str| StoreError::Unavailable(format!("{what}: {detail}"));
    match &*error.kind {
        ErrorKind::ServerSelection { .. } => unavailable(&format!(
            "cannot reach a MongoDB primary within {}",
            humantime::format_duration(server_selection_timeout)
        )),
        ErrorKind::Io(_) => unavailable("lost the connection to MongoDB"),
        ErrorKind::ConnectionPoolCleared { .. } => {
            unavailable("the connection to MongoDB was reset")
        }
        ErrorKind::DnsResolve { .. } => unavailable("cannot resolve the MongoDB hosts"),
        ErrorKind::Authentication { .. } => unavailable("cannot authenticate to MongoDB"),
        ErrorKind::InvalidTlsConfig { .. } => unavailable("bad TLS configuration for MongoDB"),
        ErrorKind::IncompatibleServer { .. } => unavailable("incompatible MongoDB server"),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => {
            unavailable("MongoDB could not confirm the write on a majority (it may still commit)")
        }
        ErrorKind::Write(WriteFailure::WriteError(e)) if UNAVAILABLE_CODES.contains(&e.code) => {
            unavailable("MongoDB cannot serve the write right now")
        }
        ErrorKind::Command(e) if UNAVAILABLE_CODES.contains(&e.code) => {
            unavailable("MongoDB cannot serve the request right now")
        }
        _ if error.contains_label(mongodb::error::RETRYABLE_WRITE_ERROR)
            || error.contains_label(mongodb::error::RETRYABLE_ERROR)
            || error.contains_label(mongodb::error::SYSTEM_OVERLOADED_ERROR) =>
        {
            unavailable("MongoDB cannot serve the request right now")
        }
        _ => StoreError::Internal(format!("MongoDB: {detail}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let timeout = Duration::from_secs(3);
        let io = MongoError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ));
        match map_error(&io, timeout) {
            StoreError::Unavailable(message) => assert!(message.contains("refused"), "{message}"),
            other => panic!("{other:?}"),
        }
        let custom = MongoError::custom("something odd");
        assert!(matches!(
            map_error(&custom, timeout),
            StoreError::Internal(_)
        ));
        assert!(!is_duplicate_key(&io));
    }
}
