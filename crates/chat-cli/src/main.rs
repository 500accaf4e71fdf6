//! `chat-cli`: see `chat-cli --help`. Errors are one line on stderr with a non-zero
//! exit code (2 usage, 3 authentication, 4 not found, 5 cluster unavailable,
//! 6 conflict, 7 too many password attempts, 1 anything else).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match chat_cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print as clap does and exit 0.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
        // Usage errors: one line, exit code 2.
        Err(error) => {
            eprintln!("{}", chat_cli::args::usage_error_line(&error));
            return chat_cli::ErrorKind::Usage.exit_code();
        }
    };
    // Quiet unless asked: the balancer's logs would garble the chat.
    chat_log::init(cli.global.log_format, None);
    match chat_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat-cli: {error}");
            error.kind.exit_code()
        }
    }
}
