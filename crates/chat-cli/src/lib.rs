//! `chat-cli`: the chat client. Every call goes through [`chat_lb_client::Balancer`],
//! so the client keeps working while replicas die, hang or restart.
//!
//! The binary is a thin wrapper around [`run`]; the library is also used by the
//! workspace's `quickstart` example to open an interactive chat on a local cluster.

pub mod args;
pub mod commands;
pub mod connect;
pub mod error;
pub mod feed;
pub mod interactive;
pub mod output;
pub mod session;
pub mod signin;

pub use args::Cli;
pub use error::{CliError, ErrorKind};

use args::Command;

/// Runs one invocation of the CLI.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let args = &cli.global;
    if let Some(Command::Completions { shell }) = &cli.command {
        commands::completions::run(*shell);
        return Ok(());
    }
    let balancer = connect::balancer(args)?;
    let client = chat_proto::v1::chat_service_client::ChatServiceClient::new(balancer.clone());
    match &cli.command {
        Some(Command::Status { watch }) => {
            let refresh = watch.then_some(args.balancer.health_interval);
            commands::status::run(&balancer, args.json, refresh).await
        }
        Some(Command::Register) => commands::register::run(args, client).await,
        Some(Command::Login) => commands::login::run(args, client).await,
        Some(Command::Logout) => commands::logout::run(args, client).await,
        Some(command) => {
            let session = signin::sign_in(args, client).await?;
            let outcome = run_signed_in(args, command, &session).await;
            // A cluster that could not serve the command would only keep the
            // logout waiting as long again; the session expires on its own.
            if !matches!(&outcome, Err(error) if error.kind == ErrorKind::Unavailable) {
                session.finish().await;
            }
            outcome
        }
        None => {
            let session = signin::sign_in(args, client).await?;
            interactive::run(session).await
        }
    }
}

/// Runs a command that needs a session.
async fn run_signed_in(
    args: &args::GlobalArgs,
    command: &Command,
    session: &connect::Session,
) -> Result<(), CliError> {
    match command {
        Command::Accounts { pattern } => {
            commands::accounts::run(session, pattern.as_deref(), args.json).await
        }
        Command::Send { to, text } => commands::send::run(session, to, text, args.json).await,
        Command::Inbox => commands::inbox::run(session, args.json).await,
        Command::Watch => commands::watch::run(session, args.json).await,
        Command::DeleteAccount => commands::delete_account::run(args, session).await,
        Command::Status { .. }
        | Command::Register
        | Command::Login
        | Command::Logout
        | Command::Completions { .. } => unreachable!("handled by run"),
    }
}
