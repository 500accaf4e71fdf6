//! `chat-server`: one stateless replica of the chat service.
//!
//! Prints exactly one line on stdout once it accepts calls,
//! `chat-server listening on ADDRESS`, so scripts and tests can wait for readiness and
//! learn the port chosen by `--port 0`. Logs go to stderr (`RUST_LOG`, default `info`).

use std::io::Write;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = chat_server::ServerConfig::parse();
    let result = chat_server::run(config, shutdown_signal(), |address| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "chat-server listening on {address}");
        let _ = stdout.flush();
    })
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("chat-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}
