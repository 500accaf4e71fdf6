//! The chat service's gRPC contract, `chat.v1`, and the tonic/prost code generated from it.
//!
//! The contract itself, with the retry semantics of every RPC, is in
//! `proto/chat/v1/chat.proto`; this crate only compiles it.
//!
//! ```no_run
//! use chat_proto::v1::{chat_service_client::ChatServiceClient, HealthCheckRequest};
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut client = ChatServiceClient::connect("http://127.0.0.1:8500").await?;
//! let health = client.health_check(HealthCheckRequest {}).await?.into_inner();
//! println!("replica {} is {:?}", health.replica_id, health.status());
//! # Ok(()) }
//! ```

/// Version 1 of the chat protocol (`package chat.v1`).
pub mod v1 {
    #![allow(missing_docs)]
    tonic::include_proto!("chat.v1");
}

/// The encoded `FileDescriptorSet` of `chat.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("chat_v1_descriptor");

/// The fully qualified gRPC service name, as used by `grpc.health.v1`.
pub const CHAT_SERVICE_NAME: &str = "chat.v1.ChatService";

/// The request header that carries the session token, as `Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// The response header in which a replica names itself on `Subscribe` (its
/// `HealthCheck` replica id), so clients can report which replica serves a stream.
pub const REPLICA_ID_HEADER: &str = "x-chat-replica";
