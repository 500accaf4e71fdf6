//! Prometheus metrics: every metric's name, defined once here, and the `/metrics`
//! endpoint that `--metrics-addr` turns on.
//!
//! Metrics are recorded through the `metrics` facade. With `--metrics-addr` the replica
//! installs the Prometheus recorder ([`install`]) and serves its text format on a port of
//! its own ([`endpoint`]); without it no recorder is installed, the gRPC layer and the
//! store wrapper are left out, and every other recording point is a no-op.
//!
//! # The metrics
//!
//! gRPC server metrics use the names and labels of the gRPC ecosystem's Prometheus
//! middleware (go-grpc-prometheus), so its dashboards and alerts work unchanged. Every one
//! is labelled `grpc_service`, `grpc_method` and `grpc_type` (`unary`, `client_stream`,
//! `server_stream`, `bidi_stream`); calls to methods the server does not serve are
//! labelled `unknown` (so callers cannot create series). Health and reflection calls
//! count too. Recorded by [`grpc::GrpcMetricsLayer`].
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `grpc_server_started_total` | counter | calls started |
//! | `grpc_server_handled_total` | counter | calls finished, by `grpc_code` (`OK`, `NotFound`, `Unauthenticated`, ...; `Canceled` when the client went away first) |
//! | `grpc_server_handling_seconds` | histogram | time from a call's start to its final status |
//! | `grpc_server_msg_received_total` | counter | request messages received (gRPC length-prefixed messages) |
//! | `grpc_server_msg_sent_total` | counter | response messages sent (gRPC length-prefixed messages) |
//!
//! Chat metrics:
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `chat_store_operation_seconds` | histogram | store operation latency, by `operation` (the [`Store`](crate::store::Store) method) and `outcome` (`ok`, `unavailable`, `conflict`, `not_found`, `invalid`, `internal`) |
//! | `chat_health_serving` | gauge | 1 while the replica reports SERVING, 0 while NOT_SERVING |
//! | `chat_store_reachable` | gauge | 1 while the last store check succeeded, 0 otherwise |
//! | `chat_subscribers` | gauge | live `Subscribe` streams on this replica |
//! | `chat_deliveries_total` | counter | messages handed to local subscribers' queues |
//! | `chat_delivery_delay_seconds` | histogram | from a message's commit (its send time) to its hand-off to a local subscriber |
//! | `chat_subscriber_lags_total` | counter | times a subscriber fell behind and re-read from the store |
//! | `chat_login_throttled_total` | counter | password checks refused because the account is throttled |
//! | `chat_password_hash_wait_seconds` | histogram | time an argon2 hash or verification waited for a hashing thread |
//! | `chat_purge_runs_total` | counter | purge runs, by `kind` (`sessions`, `history`) and `outcome` (`ok`, `error`) |
//! | `chat_purged_rows_total` | counter | rows deleted by purges, by `kind` |
//! | `chat_shed_calls_total` | counter | chat calls answered `RESOURCE_EXHAUSTED` at once because `--max-concurrent-rpcs` were in flight ([`crate::shed`]) |
//!
//! Process metrics, read from `/proc` at each scrape (Linux only; [`process`]):
//! `process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds`,
//! `process_max_fds`, `process_start_time_seconds`.

pub mod endpoint;
pub mod grpc;
pub mod process;
pub mod store;

use std::sync::{Mutex, PoisonError};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Calls started (go-grpc-prometheus).
pub const GRPC_SERVER_STARTED: &str = "grpc_server_started_total";
/// Calls finished, by `grpc_code` (go-grpc-prometheus).
pub const GRPC_SERVER_HANDLED: &str = "grpc_server_handled_total";
/// Time from a call's start to its final status (go-grpc-prometheus).
pub const GRPC_SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";
/// Request messages received (go-grpc-prometheus).
pub const GRPC_SERVER_MSG_RECEIVED: &str = "grpc_server_msg_received_total";
/// Response messages sent (go-grpc-prometheus).
pub const GRPC_SERVER_MSG_SENT: &str = "grpc_server_msg_sent_total";

/// Store operation latency by `operation` and `outcome`.
pub const STORE_OPERATION_SECONDS: &str = "chat_store_operation_seconds";
/// 1 while the replica reports SERVING.
pub const HEALTH_SERVING: &str = "chat_health_serving";
/// 1 while the store answers its checks.
pub const STORE_REACHABLE: &str = "chat_store_reachable";
/// Live `Subscribe` streams.
pub const SUBSCRIBERS: &str = "chat_subscribers";
/// Messages handed to local subscribers.
pub const DELIVERIES: &str = "chat_deliveries_total";
/// Commit-to-hand-off delay of live deliveries.
pub const DELIVERY_DELAY_SECONDS: &str = "chat_delivery_delay_seconds";
/// Subscribers that fell behind and re-read from the store.
pub const SUBSCRIBER_LAGS: &str = "chat_subscriber_lags_total";
/// Password checks refused by login throttling.
pub const LOGIN_THROTTLED: &str = "chat_login_throttled_total";
/// Time a password hash waited for a hashing thread.
pub const PASSWORD_HASH_WAIT_SECONDS: &str = "chat_password_hash_wait_seconds";
/// Purge runs by `kind` and `outcome`.
pub const PURGE_RUNS: &str = "chat_purge_runs_total";
/// Rows deleted by purges, by `kind`.
pub const PURGED_ROWS: &str = "chat_purged_rows_total";

/// Chat calls shed by `--max-concurrent-rpcs`.
pub const SHED_CALLS: &str = "chat_shed_calls_total";

/// Histogram buckets (seconds) for call and store latencies: 1 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Histogram buckets (seconds) for the live-delivery delay, which the feed poll interval
/// (10 ms by default) dominates.
const DELIVERY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder as the process's global `metrics` recorder (once per
/// process: replicas that share a process share it) and returns its handle. Every
/// histogram gets explicit buckets, so Prometheus histograms, not summaries, are
/// exported.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full(DELIVERY_DELAY_SECONDS.to_owned()),
            DELIVERY_BUCKETS,
        )?
        .install_recorder()?;
    describe();
    Ok(installed.insert(handle).clone())
}

/// The `# HELP` text of every metric.
fn describe() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        GRPC_SERVER_STARTED,
        "Total number of RPCs started on the server."
    );
    describe_counter!(
        GRPC_SERVER_HANDLED,
        "Total number of RPCs completed on the server, regardless of success or failure."
    );
    describe_histogram!(
        GRPC_SERVER_HANDLING_SECONDS,
        Unit::Seconds,
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server."
    );
    describe_counter!(
        GRPC_SERVER_MSG_RECEIVED,
        "Total number of RPC stream messages received on the server."
    );
    describe_counter!(
        GRPC_SERVER_MSG_SENT,
        "Total number of gRPC stream messages sent by the server."
    );
    describe_histogram!(
        STORE_OPERATION_SECONDS,
        Unit::Seconds,
        "Store operation latency by operation and outcome."
    );
    describe_gauge!(
        HEALTH_SERVING,
        "1 while the replica reports SERVING, 0 while NOT_SERVING."
    );
    describe_gauge!(
        STORE_REACHABLE,
        "1 while the last store check succeeded, 0 otherwise."
    );
    describe_gauge!(SUBSCRIBERS, "Live Subscribe streams on this replica.");
    describe_counter!(DELIVERIES, "Messages handed to local subscribers.");
    describe_histogram!(
        DELIVERY_DELAY_SECONDS,
        Unit::Seconds,
        "Delay from a message's commit to its hand-off to a local subscriber."
    );
    describe_counter!(
        SUBSCRIBER_LAGS,
        "Times a subscriber fell behind and re-read from the store."
    );
    describe_counter!(
        LOGIN_THROTTLED,
        "Password checks refused by login throttling."
    );
    describe_histogram!(
        PASSWORD_HASH_WAIT_SECONDS,
        Unit::Seconds,
        "Time a password hash waited for a hashing thread."
    );
    describe_counter!(PURGE_RUNS, "Purge runs by kind and outcome.");
    describe_counter!(PURGED_ROWS, "Rows deleted by purges, by kind.");
    describe_counter!(
        SHED_CALLS,
        "Chat calls answered RESOURCE_EXHAUSTED at once: --max-concurrent-rpcs were in flight."
    );
}

/// Records one call shed by the concurrency limit ([`SHED_CALLS`]).
pub fn record_shed() {
    ::metrics::counter!(SHED_CALLS).increment(1);
}

/// Records one purge run of `kind` and the rows it deleted.
pub fn record_purge<E>(kind: &'static str, result: &Result<u64, E>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ::metrics::counter!(PURGE_RUNS, "kind" => kind, "outcome" => outcome).increment(1);
    if let Ok(rows) = result {
        ::metrics::counter!(PURGED_ROWS, "kind" => kind).increment(*rows);
    }
}

/// Records the health the replica publishes: [`HEALTH_SERVING`] and [`STORE_REACHABLE`].
pub fn record_health(serving: bool, store_reachable: bool) {
    ::metrics::gauge!(HEALTH_SERVING).set(f64::from(u8::from(serving)));
    ::metrics::gauge!(STORE_REACHABLE).set(f64::from(u8::from(store_reachable)));
}

/// One message's hand-off to local subscribers: each [`Delivered::record`] counts a
/// delivery ([`DELIVERIES`]) and its delay since the message's commit
/// ([`DELIVERY_DELAY_SECONDS`], from the store's send time, so across hosts it includes
/// their clock difference; never negative).
#[derive(Debug, Clone, Copy)]
pub struct Delivered {
    delay_seconds: f64,
}

impl Delivered {
    /// A hand-off now of a message committed at `sent_at_unix_ms`.
    pub fn now(sent_at_unix_ms: i64) -> Self {
        let delay_ms = crate::now_unix_ms().saturating_sub(sent_at_unix_ms).max(0);
        Self {
            delay_seconds: delay_ms as f64 / 1000.0,
        }
    }

    /// Records one delivery.
    pub fn record(self) {
        ::metrics::counter!(DELIVERIES).increment(1);
        ::metrics::histogram!(DELIVERY_DELAY_SECONDS).record(self.delay_seconds);
    }
}
