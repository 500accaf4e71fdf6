//! How a store operation fails, and where the database's errors become [`StoreError`]s.
//!
//! An operation returns an [`Outcome`]: `?` carries a database error up unchanged (so
//! that the caller can still look at it, for example to tell whether it broke a
//! connection), while the operation decides store-level outcomes itself (such as
//! [`StoreError::UsernameTaken`] from a unique-key violation). What is left is mapped
//! once, at the end of the call, with [`OutcomeExt::or_store_error`].

use std::time::Duration;

use super::StoreError;

/// Why an operation failed: the database, or a store-level outcome decided by the
/// operation.
#[derive(Debug)]
pub(super) enum Failure<E> {
    /// An error that the database reported and the operation did not handle.
    Database(E),
    /// The operation's own answer.
    Store(StoreError),
}

impl<E: DatabaseError> From<E> for Failure<E> {
    fn from(error: E) -> Self {
        Self::Database(error)
    }
}

impl<E> From<StoreError> for Failure<E> {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

/// What an operation on a database with errors of type `E` returns.
pub(super) type Outcome<T, E> = Result<T, Failure<E>>;

/// A database's error type, which a store maps to a [`StoreError`].
pub(super) trait DatabaseError {
    /// The error as the store reports it. `timeout` is the wait after which the store
    /// gives up on an unavailable database (SQLite's busy timeout, MongoDB's server
    /// selection timeout), which the message names.
    fn to_store_error(&self, timeout: Duration) -> StoreError;
}

/// Maps an operation's failure to the store's error.
pub(super) trait OutcomeExt<T> {
    /// The value, or the failure as a [`StoreError`]: a database error through
    /// [`DatabaseError::to_store_error`], the operation's own answer as it is.
    fn or_store_error(self, timeout: Duration) -> Result<T, StoreError>;
}

impl<T, E: DatabaseError> OutcomeExt<T> for Outcome<T, E> {
    fn or_store_error(self, timeout: Duration) -> Result<T, StoreError> {
        self.map_err(|failure| match failure {
            Failure::Store(error) => error,
            Failure::Database(error) => error.to_store_error(timeout),
        })
    }
}
