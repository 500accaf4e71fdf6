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

pub use args::Cli;
pub use error::{CliError, ErrorKind};

use args::Command;

/// Runs one invocation of the CLI.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let args = &cli.global;
    let balancer = connect::balancer(args)?;
    let client = chat_proto::v1::chat_service_client::ChatServiceClient::new(balancer.clone());
    match &cli.command {
        Some(Command::Status { watch }) => {
            let refresh = watch.then_some(args.balancer.health_interval);
            commands::status::run(&balancer, args.json, refresh).await
        }
        Some(Command::Register) => commands::register::run(args, client).await,
        Some(command) => {
            let session = connect::login(args, client).await?;
            match command {
                Command::Accounts { pattern } => {
                    commands::accounts::run(&session, pattern.as_deref(), args.json).await
                }
                Command::Send { to, text } => {
                    commands::send::run(&session, to, text, args.json).await
                }
                Command::Inbox => commands::inbox::run(&session, args.json).await,
                Command::Watch => commands::watch::run(&session, args.json).await,
                Command::DeleteAccount => commands::delete_account::run(args, &session).await,
                Command::Status { .. } | Command::Register => unreachable!("handled above"),
            }
        }
        None => {
            let session = connect::login(args, client).await?;
            interactive::run(session).await
        }
    }
}
