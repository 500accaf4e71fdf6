//! How store failures become gRPC statuses that mean what they say.

use tonic::Status;

use crate::store::StoreError;

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => {
                tracing::warn!(%error, "store unavailable");
                Status::unavailable(error.to_string())
            }
            StoreError::UsernameTaken(_) | StoreError::IdempotencyKeyReused(_) => {
                Status::already_exists(error.to_string())
            }
            StoreError::NoSuchAccount(_) => Status::not_found(error.to_string()),
            StoreError::AckBeyondLatest { .. } => Status::invalid_argument(error.to_string()),
            StoreError::Internal(_) => {
                tracing::error!(%error, "store failure");
                Status::internal("internal store error; see the server log")
            }
        }
    }
}
