//! Server configuration: command-line flags with environment fallbacks.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::Parser;

/// The default store: the embedded store in `chat-data/` under the working directory.
pub const DEFAULT_STORE: &str = "sqlite:chat-data/chat.db";

/// The directory of [`DEFAULT_STORE`]'s database file (`chat-data`).
pub fn default_store_directory() -> &'static std::path::Path {
    let file = DEFAULT_STORE
        .strip_prefix("sqlite:")
        .unwrap_or(DEFAULT_STORE);
    std::path::Path::new(file)
        .parent()
        .unwrap_or(std::path::Path::new("."))
}

/// How a `chat-server` process is configured. Every flag has an environment fallback
/// (`CHAT_*`) and every duration is a humantime value such as `500ms`, `10s` or `24h`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "A stateless chat gRPC server replica"
)]
pub struct ServerConfig {
    /// Address to listen on.
    #[arg(long, env = "CHAT_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one (the chosen address is printed on stdout).
    #[arg(long, env = "CHAT_PORT", default_value_t = 8500)]
    pub port: u16,

    /// The shared store: `sqlite:PATH` (or a plain path) for the embedded store, or a
    /// MongoDB connection string (`mongodb://h1,h2,h3/chat?replicaSet=rs0`,
    /// `mongodb+srv://...`). Every replica of one cluster must name the same store.
    /// `sqlite:PATH`'s directory must exist, except the default's (`chat-data/`), which
    /// is created. Anything else with a scheme is refused.
    #[arg(long, env = "CHAT_STORE", default_value = DEFAULT_STORE)]
    pub store: String,

    /// How long a session token stays valid after login.
    /// 1m to 30days.
    #[arg(long, env = "CHAT_SESSION_TTL", default_value = "24h", value_parser = duration_in(Duration::from_secs(60), Duration::from_secs(30 * 24 * 3600)))]
    pub session_ttl: Duration,

    /// The largest message text accepted, in bytes of UTF-8.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_message_bytes: u32,

    /// How long in-flight calls may take to finish after SIGTERM or Ctrl-C.
    /// 100ms to 1h.
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT", default_value = "10s", value_parser = duration_in(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub drain_timeout: Duration,

    /// How often the replica checks that its store answers (drives health).
    /// 10ms to 1h.
    #[arg(long, env = "CHAT_STORE_CHECK_INTERVAL", default_value = "500ms", value_parser = duration_in(Duration::from_millis(10), Duration::from_secs(3600)))]
    pub store_check_interval: Duration,

    /// How long a store check may take before the store counts as unreachable.
    /// 50ms to 5m.
    #[arg(long, env = "CHAT_STORE_CHECK_TIMEOUT", default_value = "2s", value_parser = duration_in(Duration::from_millis(50), Duration::from_secs(300)))]
    pub store_check_timeout: Duration,

    /// How often the replica polls the store for messages to push to live subscribers.
    /// One query per interval per replica, however many subscribers it has. Messages
    /// sent through this replica (and, with the embedded store, through the others on
    /// this host) are pushed at once; the poll is the safety net, and all there is for
    /// MongoDB. 2ms to 1m.
    #[arg(long, env = "CHAT_FEED_POLL_INTERVAL", default_value = "10ms", value_parser = duration_in(Duration::from_millis(2), Duration::from_secs(60)))]
    pub feed_poll_interval: Duration,

    /// History retention: acknowledged messages sent longer ago than this are deleted
    /// (all but each inbox's latest). Unacknowledged messages are always kept. Default:
    /// keep history for as long as the account exists. Keep it far longer than any
    /// client retries a send: a message's idempotency key is forgotten with it.
    /// 1s to 100years.
    #[arg(long, env = "CHAT_HISTORY_RETENTION", value_parser = duration_in(Duration::from_secs(1), Duration::from_secs(36_525 * 24 * 3600)))]
    pub history_retention: Option<Duration>,

    /// How often each replica purges expired sessions (and, with `--history-retention`,
    /// old history). Every replica does it; the purges are idempotent.
    /// 10ms to 7days.
    #[arg(long, env = "CHAT_PURGE_INTERVAL", default_value = "10m", value_parser = duration_in(Duration::from_millis(10), Duration::from_secs(7 * 24 * 3600)))]
    pub purge_interval: Duration,

    /// Operational drain: while this file exists, the replica reports NOT_SERVING (so
    /// balancers send it no new calls) but still answers calls that reach it. Checked
    /// every store check interval. `touch` it before maintenance, remove it after.
    #[arg(long, env = "CHAT_DRAIN_FILE")]
    pub drain_file: Option<std::path::PathBuf>,

    /// This replica's id in health answers and logs; default `HOST:PORT/PID`.
    #[arg(long, env = "CHAT_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// Serve TLS only (HTTP/2 over TLS, ALPN `h2`) with this certificate chain (PEM,
    /// the replica's certificate first). Needs `--tls-key`. SIGHUP re-reads the files.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM). Needs `--tls-cert`.
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Mutual TLS: every client must present a certificate signed by this CA (PEM);
    /// others are refused in the handshake. Needs `--tls-cert` and `--tls-key`.
    #[arg(
        long,
        env = "CHAT_TLS_CLIENT_CA",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Most client connections open at once; beyond it new connections are closed at
    /// once (and a warning logged). Default: the descriptor limit (`ulimit -n`) less a
    /// tenth of it (at least 64) for the store and the process.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,

    /// Most unary chat calls in flight at once; beyond it a call is answered at once
    /// with RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` trailer (health checks,
    /// reflection and Subscribe streams are never counted nor shed). Default: 64 per
    /// CPU (see `chat_server::shed`).
    #[arg(long, env = "CHAT_MAX_CONCURRENT_RPCS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_concurrent_rpcs: Option<u32>,

    /// How long a new connection may take to complete its TLS handshake (or, without
    /// TLS, to send its first bytes) before it is closed. 100ms to 5m.
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = duration_in(Duration::from_millis(100), Duration::from_secs(300)))]
    pub handshake_timeout: Duration,

    /// Serve Prometheus metrics as plain HTTP `GET /metrics` on this address (`IP:PORT`;
    /// port 0 picks a free one, logged at start). Off by default. Unauthenticated: keep
    /// the port inside the cluster.
    #[arg(long, env = "CHAT_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// FAULT INJECTION, for tests and benchmarks only: delay every chat RPC by this long.
    #[arg(long, env = "CHAT_INJECT_DELAY", value_parser = humantime::parse_duration)]
    pub inject_delay: Option<Duration>,

    /// FAULT INJECTION, for tests and benchmarks only: answer `INTERNAL` to this share
    /// (0 to 1) of chat calls, drawn at random per call. Health checks and reflection
    /// are never affected.
    #[arg(long, env = "CHAT_INJECT_ERROR_RATE", value_name = "P", default_value_t = 0.0,
          value_parser = crate::fault::parse_rate)]
    pub inject_error_rate: f64,

    /// FAULT INJECTION, for tests and benchmarks only: stall this long before handling a
    /// share (`--inject-stall-rate`) of chat calls. Health checks and reflection are
    /// never affected.
    #[arg(long, env = "CHAT_INJECT_STALL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub inject_stall: Option<Duration>,

    /// FAULT INJECTION: the share (0 to 1) of chat calls stalled by `--inject-stall`,
    /// drawn at random per call.
    #[arg(long, env = "CHAT_INJECT_STALL_RATE", value_name = "P", default_value_t = 1.0,
          value_parser = crate::fault::parse_rate)]
    pub inject_stall_rate: f64,
}

/// A parser of humantime durations within `min..=max`; the error names the range.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
        if duration < min || duration > max {
            return Err(format!(
                "must be from {} to {}",
                humantime::format_duration(min),
                humantime::format_duration(max)
            ));
        }
        Ok(duration)
    }
}

impl ServerConfig {
    /// A configuration with every default, for the given store (handy in tests).
    pub fn for_store(store: impl Into<String>) -> Self {
        let mut config = Self::parse_from(["chat-server"]);
        config.store = store.into();
        config
    }

    /// The limits on client connections, with the default connection limit filled in.
    pub fn connection_limits(&self) -> crate::listener::ConnectionLimits {
        crate::listener::ConnectionLimits {
            max_connections: self
                .max_connections
                .map_or_else(crate::listener::default_max_connections, |n| n as usize),
            handshake_timeout: self.handshake_timeout,
        }
    }

    /// The faults injected into chat calls (`--inject-error-rate`, `--inject-stall`,
    /// `--inject-stall-rate`); tests and benchmarks only.
    pub fn fault_injection(&self) -> crate::fault::FaultInjection {
        crate::fault::FaultInjection {
            error_rate: self.inject_error_rate,
            stall: self.inject_stall,
            stall_rate: self.inject_stall_rate,
        }
    }

    /// The most chat calls in flight (`--max-concurrent-rpcs`, or its default).
    pub fn max_concurrent_rpcs(&self) -> usize {
        self.max_concurrent_rpcs
            .map_or_else(crate::shed::default_max_concurrent_rpcs, |n| n as usize)
    }

    /// The TLS files, when the replica serves TLS (`--tls-cert` and `--tls-key`).
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }
}

/// Limits on request sizes that are not configurable.
pub mod limits {
    /// The largest encoded request accepted by the gRPC layer, in bytes.
    pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
    /// Username length bounds, in characters.
    pub const USERNAME_LEN: std::ops::RangeInclusive<usize> = 1..=32;
    /// Password length bounds, in bytes.
    pub const PASSWORD_LEN: std::ops::RangeInclusive<usize> = 8..=1024;
    /// Idempotency key length bounds, in characters.
    pub const IDEMPOTENCY_KEY_LEN: std::ops::RangeInclusive<usize> = 1..=64;
    /// Default and largest page of `ListAccounts`.
    pub const LIST_PAGE: (u32, u32) = (50, 200);
    /// Default and largest page of `FetchMessages`.
    pub const FETCH_PAGE: (u32, u32) = (100, 500);
    /// The longest session token accepted before it is even looked up.
    pub const MAX_TOKEN_LEN: usize = 128;
    /// The most password hashes computed at once, whatever the CPU count (each holds
    /// 19 MiB; see [`crate::password`]).
    pub const CONCURRENT_PASSWORD_HASHES: usize = 8;
    /// Most concurrent calls and streams on one HTTP/2 connection; a client opening
    /// more waits for one to end (the balancer spreads calls over replicas anyway).
    pub const MAX_STREAMS_PER_CONNECTION: u32 = 4096;
    /// The largest block of request headers accepted, in bytes.
    pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
    /// The server pings a connection idle this long, to find clients that vanished.
    pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
    /// A connection whose ping is not answered within this long is closed.
    pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_outside_their_range_are_refused_naming_flag_and_range() {
        let parse = |args: &[&str]| {
            ServerConfig::try_parse_from(std::iter::once("chat-server").chain(args.iter().copied()))
        };
        let config = parse(&["--history-retention", "30days"]).expect("valid");
        assert_eq!(
            config.history_retention,
            Some(Duration::from_secs(30 * 24 * 3600))
        );
        assert_eq!(config.purge_interval, Duration::from_secs(600));
        assert_eq!(parse(&[]).expect("defaults").history_retention, None);
        for bad in [
            ["--history-retention", "0s"],
            ["--purge-interval", "0ms"],
            ["--history-retention", "soon"],
            ["--session-ttl", "0s"],
            ["--store-check-timeout", "0s"],
            ["--store-check-interval", "0s"],
            ["--feed-poll-interval", "0s"],
            ["--drain-timeout", "0s"],
            ["--handshake-timeout", "0s"],
            ["--session-ttl", "400days"],
        ] {
            let error = parse(&bad).expect_err("refused").to_string();
            assert!(error.contains(bad[0]), "{error}");
            if bad[1] != "soon" {
                assert!(error.contains("must be from"), "names the range: {error}");
            }
        }
    }
}
