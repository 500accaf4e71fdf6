//! The client's own log on stderr: off unless `RUST_LOG` asks for it (the balancer's
//! logs would garble the chat), then in the format `--log-format` names.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, coloured only when stderr is a terminal.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (the event's `message`
    /// and its other fields), `target`, and `span`/`spans` inside spans (the shape
    /// `chat-server` writes, see its `logging` module).
    Json,
}

/// Installs the global subscriber on stderr when `RUST_LOG` holds a valid filter; does
/// nothing otherwise.
pub fn init(format: LogFormat) {
    let Ok(filter) = EnvFilter::try_from_default_env() else {
        return;
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
