//! Server configuration: command-line flags with environment fallbacks.

use std::{net::IpAddr, time::Duration};

use clap::Parser;

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
    #[arg(long, env = "CHAT_STORE", default_value = "sqlite:chat-data/chat.db")]
    pub store: String,

    /// How long a session token stays valid after login.
    #[arg(long, env = "CHAT_SESSION_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_ttl: Duration,

    /// The largest message text accepted, in bytes of UTF-8.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub max_message_bytes: u32,

    /// How long in-flight calls may take to finish after SIGTERM or Ctrl-C.
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// How often the replica checks that its store answers (drives health).
    #[arg(long, env = "CHAT_STORE_CHECK_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub store_check_interval: Duration,

    /// How long a store check may take before the store counts as unreachable.
    #[arg(long, env = "CHAT_STORE_CHECK_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub store_check_timeout: Duration,

    /// How often the replica polls the store for messages to push to live subscribers.
    /// One query per interval per replica, however many subscribers it has.
    #[arg(long, env = "CHAT_FEED_POLL_INTERVAL", default_value = "10ms", value_parser = humantime::parse_duration)]
    pub feed_poll_interval: Duration,

    /// History retention: acknowledged messages sent longer ago than this are deleted
    /// (all but each inbox's latest). Unacknowledged messages are always kept. Default:
    /// keep history for as long as the account exists. Keep it far longer than any
    /// client retries a send: a message's idempotency key is forgotten with it.
    #[arg(long, env = "CHAT_HISTORY_RETENTION", value_parser = parse_positive_duration)]
    pub history_retention: Option<Duration>,

    /// How often each replica purges expired sessions (and, with `--history-retention`,
    /// old history). Every replica does it; the purges are idempotent.
    #[arg(long, env = "CHAT_PURGE_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    pub purge_interval: Duration,

    /// Operational drain: while this file exists, the replica reports NOT_SERVING (so
    /// balancers send it no new calls) but still answers calls that reach it. Checked
    /// every store check interval. `touch` it before maintenance, remove it after.
    #[arg(long, env = "CHAT_DRAIN_FILE")]
    pub drain_file: Option<std::path::PathBuf>,

    /// This replica's id in health answers and logs; default `HOST:PORT/PID`.
    #[arg(long, env = "CHAT_REPLICA_ID")]
    pub replica_id: Option<String>,

    /// FAULT INJECTION, for tests and benchmarks only: delay every chat RPC by this long.
    #[arg(long, env = "CHAT_INJECT_DELAY", value_parser = humantime::parse_duration)]
    pub inject_delay: Option<Duration>,
}

/// A humantime duration above zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

impl ServerConfig {
    /// A configuration with every default, for the given store (handy in tests).
    pub fn for_store(store: impl Into<String>) -> Self {
        let mut config = Self::parse_from(["chat-server"]);
        config.store = store.into();
        config
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
    /// How many password hashes may be computed at once (each takes ~19 MiB).
    pub const CONCURRENT_PASSWORD_HASHES: usize = 8;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_and_purge_interval_must_be_positive_durations() {
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
        ] {
            let error = parse(&bad).expect_err("refused").to_string();
            assert!(error.contains(bad[0]), "{error}");
        }
    }
}
