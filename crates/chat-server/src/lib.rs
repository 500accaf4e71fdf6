//! A stateless chat gRPC server replica.
//!
//! Every byte of state (accounts, password hashes, sessions, messages) lives in a shared
//! [`store::Store`], so any replica can serve any call and any replica can die. A replica
//! serves three gRPC services on one port:
//!
//! - `chat.v1.ChatService` ([`service::ChatService`]), including its `HealthCheck` RPC;
//! - the standard `grpc.health.v1.Health`, reporting the same status ([`health`]);
//! - server reflection (`grpc.reflection.v1` and `grpc.reflection.v1alpha`), so tools
//!   such as grpcurl, grpcui and Python grpcio's reflection client work.
//!
//! With `--tls-cert`/`--tls-key` the port serves TLS only ([`tls`], certificates
//! reloaded on SIGHUP); [`certs`] makes a CA and certificates for a small cluster
//! (`chat-server gen-certs`).
//!
//! How a call flows: tonic decodes the request (bounded by
//! [`config::limits::MAX_REQUEST_BYTES`]), the RPC's module in [`service`] validates every
//! field ([`validate`]), resolves the bearer token to an account ([`auth`]) or checks a
//! password under throttling ([`throttle`]), and makes one atomic store call. Live messages reach subscribers through the replica's [`hub`].
//!
//! No log line carries a password, a session token or a message's text, at any level:
//! the services log user names, ids and outcomes only, and the store's URI is logged
//! with its password masked ([`store::redacted_uri`]).
//!
//! With `--metrics-addr` the replica serves Prometheus metrics ([`metrics`]).
//! For tests and benchmarks, [`fault`] injects errors and stalls into chat calls.
//!
//! Beyond `--max-concurrent-rpcs` chat calls in flight, the replica answers further
//! ones at once with `RESOURCE_EXHAUSTED` and a retry pushback ([`shed`]).
//!
//! [`server::run`] puts it together; the `chat-server` binary is a thin wrapper.

pub mod auth;
pub mod certs;
pub mod config;
mod error;
pub mod fault;
pub mod health;
pub mod hub;
pub mod listener;
pub mod metrics;
pub mod password;
pub mod paths;
pub mod server;
pub mod service;
pub mod shed;
pub mod store;
pub mod throttle;
pub mod tls;
pub mod validate;
pub mod wildcard;

pub use config::ServerConfig;
pub use server::{ServerError, run};

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
