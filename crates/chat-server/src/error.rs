//! Statuses that mean what they say: how store failures become gRPC statuses, and the
//! relabelling of tonic's answer to a request that is not valid protobuf.

use tonic::Status;

use crate::store::StoreError;

/// How prost describes a message it cannot decode (tonic answers it as INTERNAL).
const DECODE_ERROR: &str = "failed to decode Protobuf message";

/// Rewrites tonic's `INTERNAL` answer to a request body that does not decode as the
/// RPC's protobuf message into `INVALID_ARGUMENT`: the caller sent it, the server is
/// fine, and a client must not retry it elsewhere. Applied to every response as a
/// tower layer (`tower::util::MapResponseLayer`); only trailers-only error responses,
/// which is how tonic answers a request it could not decode, are looked at.
pub fn relabel_decode_errors(
    mut response: http::Response<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    let internal = response
        .headers()
        .get("grpc-status")
        .is_some_and(|code| code.as_bytes() == b"13");
    if !internal {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else {
        return response;
    };
    if status.message().starts_with(DECODE_ERROR) {
        let relabelled =
            Status::invalid_argument(format!("malformed request: {}", status.message()));
        if relabelled.add_header(response.headers_mut()).is_err() {
            tracing::debug!("cannot relabel a decode error");
        }
    }
    response
}

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
