//! How the chat binaries (`chat-server`, `chat-cli`) log: events filtered by `RUST_LOG`,
//! written to stderr in the format `--log-format` names.

#![warn(missing_docs)]

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`, env `CHAT_LOG_FORMAT`).
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

/// Installs the process's global subscriber on stderr in `format`, filtered by
/// `RUST_LOG`; when that is unset or invalid, by `default_filter`, or with none, the
/// process logs nothing.
pub fn init(format: LogFormat, default_filter: Option<&str>) {
    let filter = match (EnvFilter::try_from_default_env(), default_filter) {
        (Ok(filter), _) => filter,
        (Err(_), Some(default)) => EnvFilter::new(default),
        (Err(_), None) => return,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
