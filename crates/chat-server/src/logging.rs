//! The replica's log on stderr (`RUST_LOG` filters it, default `info`), in the format
//! `--log-format` names.
//!
//! No log line carries a password, a session token or a message's text, at any level:
//! the services log user names, ids and outcomes only, and the store's URI is logged
//! with its password masked ([`crate::store::redacted_uri`]).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event, coloured only when stderr is a terminal (log
    /// files and collectors get plain text).
    #[default]
    Text,
    /// One JSON object per line, for log shippers: `timestamp` (RFC 3339, UTC), `level`
    /// (`TRACE` to `ERROR`), `fields` (the event's `message` and its other fields),
    /// `target` (the Rust module), and `span`/`spans` when the event happened inside
    /// spans. The fields stay in their own object, so that a field named like a key of
    /// the record (the balancer logs a `target`) cannot clash with it.
    Json,
}

/// Installs the process's global subscriber, writing to stderr in `format`, filtered by
/// `RUST_LOG` (or `default_filter` when it is unset or invalid).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
