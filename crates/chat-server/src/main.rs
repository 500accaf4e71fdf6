//! `chat-server`: one stateless replica of the chat service.
//!
//! Prints exactly one line on stdout once it accepts calls,
//! `chat-server listening on ADDRESS`, so scripts and tests can wait for readiness and
//! learn the port chosen by `--port 0`. Logs go to stderr (`RUST_LOG`, default `info`;
//! `--log-format text|json`, see [`chat_log`]).
//! `chat-server gen-certs` makes certificates for a TLS cluster instead.

use std::{io::Write, path::PathBuf};

use chat_log::LogFormat;
use clap::{Args, Parser, Subcommand};

/// The command line: the replica's flags, or a subcommand.
#[derive(Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "A stateless chat gRPC server replica"
)]
struct Cli {
    #[command(flatten)]
    config: chat_server::ServerConfig,

    /// How log lines on stderr are written: `text` for people, `json` (one object per
    /// line) for log shippers.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Writes a CA (ca.pem, ca.key; an existing pair in DIR is reused), a server
    /// certificate for the given hosts (server.pem, server.key) and a client certificate
    /// for mutual TLS (client.pem, client.key) into DIR. Private keys get mode 0600.
    GenCerts(GenCertsArgs),
}

#[derive(Debug, Args)]
struct GenCertsArgs {
    /// The folder to write the files into (created if missing).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// A DNS name or IP address the replicas are reached by; repeat it or separate
    /// with commas (e.g. `--host localhost,127.0.0.1 --host chat-1.internal`).
    #[arg(
        long = "host",
        value_name = "NAME_OR_IP",
        value_delimiter = ',',
        required = true
    )]
    hosts: Vec<String>,

    /// Validity of the server and client certificates in days (the CA: ten times it).
    #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,

    /// The common name of the client certificate.
    #[arg(long, default_value = "chat-client")]
    client_name: String,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    chat_log::init(cli.log_format, Some("info"));
    if let Some(Command::GenCerts(args)) = cli.command {
        return gen_certs(args);
    }
    let result = chat_server::run(cli.config, shutdown_signal(), |address| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "chat-server listening on {address}");
        let _ = stdout.flush();
    })
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line on stderr, which is also where the logs go.
            eprintln!("chat-server: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Prints a command-line error as one line (help and version as clap prints them) and
/// returns clap's exit code (2 for a usage error).
fn usage_error(error: clap::Error) -> std::process::ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        let _ = error.print();
        return std::process::ExitCode::SUCCESS;
    }
    let text = error.render().to_string();
    let line = text
        .lines()
        .map(str::trim)
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("Usage:")
                && !line.starts_with("For more information")
        })
        .collect::<Vec<_>>()
        .join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("chat-server: {line} (see chat-server --help)");
    std::process::ExitCode::from(2)
}

/// `chat-server gen-certs`: writes the files and says what each is for.
fn gen_certs(args: GenCertsArgs) -> std::process::ExitCode {
    let request = chat_server::certs::CertRequest {
        out: args.out,
        hosts: args.hosts,
        days: args.days,
        client_name: args.client_name,
    };
    match chat_server::certs::generate(&request) {
        Ok(made) => {
            let ca = if made.ca_reused { "reused" } else { "new" };
            println!("CA ({ca}):          {}", made.ca_cert.display());
            println!(
                "server certificate: --tls-cert {} --tls-key {}",
                made.server_cert.display(),
                made.server_key.display()
            );
            println!(
                "client certificate: --client-cert {} --client-key {}",
                made.client_cert.display(),
                made.client_key.display()
            );
            println!(
                "clients trust:      --ca-cert {} (replicas, for mutual TLS: --tls-client-ca)",
                made.ca_cert.display()
            );
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("chat-server gen-certs: {error}");
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
