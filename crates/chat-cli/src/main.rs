//! `chat-cli`: see `chat-cli --help`. Errors are one line on stderr with a non-zero
//! exit code (2 usage, 3 authentication, 4 not found, 5 cluster unavailable,
//! 6 conflict, 7 too many password attempts, 1 anything else).

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    // Quiet unless asked: the balancer's logs would garble the chat.
    if let Ok(filter) = EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = match chat_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version print and exit 0; usage errors exit 2.
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    match chat_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-cli: {error}");
            error.kind.exit_code()
        }
    }
}
