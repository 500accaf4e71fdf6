//! The whole system in one command:
//!
//! ```sh
//! cargo run --release --example quickstart
//! ```
//!
//! Starts three `chat-server` replicas on 127.0.0.1:8500-8502 sharing one embedded store
//! (`./chat-data/quickstart.db`), an `echo-bot` account that answers every message, and
//! an interactive chat balanced across the replicas by chat-lb-client. It prints the
//! replicas' process ids: `kill -9` one (or `kill -STOP` it) from another terminal and
//! keep chatting. Quitting the chat (Ctrl-D) stops the replicas.
//!
//! Each replica is this same executable started again with `--replica` (see
//! `examples/support/replica.rs`), so the example needs nothing but `cargo run`.

mod support;

use std::{process::ExitCode, time::Duration};

use chat_cli::{
    Cli, CliError,
    connect::{self, Session},
    feed::{self, FeedEvent},
};
use chat_proto::v1::{CreateAccountRequest, SendMessageRequest};
use clap::Parser;
use support::replica::Replica;
use tokio::sync::mpsc;

/// The quickstart's own flags.
#[derive(Debug, Parser)]
#[command(about = "Start a local 3-replica chat cluster and chat on it")]
struct Options {
    /// First port; the replicas listen on it and the next two.
    #[arg(long, default_value_t = 8500)]
    base_port: u16,
    /// Your username (registered on first use).
    #[arg(long, default_value = "me")]
    user: String,
    /// Your password.
    #[arg(long, default_value = "quickstart")]
    password: String,
    /// The shared store.
    #[arg(long, default_value = "sqlite:chat-data/quickstart.db")]
    store: String,
}

const BOT: &str = "echo-bot";
const BOT_PASSWORD: &str = "echo-bot-password";

fn main() -> ExitCode {
    if let Some(code) = support::replica::run_if_replica() {
        return code;
    }
    let options = Options::parse();
    let outcome = tokio::runtime::Runtime::new()
        .map_err(|error| format!("cannot start the async runtime: {error}"))
        .and_then(|runtime| runtime.block_on(run_quickstart(options)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_quickstart(options: Options) -> Result<(), String> {
    let mut replicas = Vec::new();
    for port in options.base_port..options.base_port + 3 {
        let replica = Replica::start_on_port(&options.store, port, &[])
            .await
            .map_err(|error| format!("{error:#} (is port {port} free? try --base-port)"))?;
        replicas.push(replica);
    }
    let servers = replicas
        .iter()
        .map(|replica| replica.address().to_string())
        .collect::<Vec<_>>()
        .join(",");

    println!("A 3-replica chat cluster sharing {}:", options.store);
    for replica in &replicas {
        let pid = replica.pid().map(|pid| pid.to_string()).unwrap_or_default();
        println!("  replica {}  pid {pid}", replica.address());
    }
    let first_pid = replicas[0].pid().unwrap_or_default();
    println!();
    println!(
        "Try failover from another terminal:  kill -9 {first_pid}   (or kill -STOP {first_pid})"
    );
    println!(
        "Chat as someone else:  chat-cli --servers {servers} --user bob --password quickstart register"
    );
    println!(
        "                       chat-cli --servers {servers} --user bob --password quickstart"
    );
    println!("Say something to {BOT} (\"@{BOT} hello\") and it answers through the cluster.");
    println!();

    let cli = Cli::parse_from([
        "chat-cli",
        "--servers",
        &servers,
        "--user",
        &options.user,
        "--password",
        &options.password,
    ]);
    let balancer = connect::balancer(&cli.global).map_err(|e| e.to_string())?;
    let client = chat_proto::v1::chat_service_client::ChatServiceClient::new(balancer);
    let bot = start_echo_bot(client.clone())
        .await
        .map_err(|e| e.to_string())?;
    let me = register_and_login(client, &options.user, &options.password)
        .await
        .map_err(|e| e.to_string())?;
    let outcome = chat_cli::interactive::run(me)
        .await
        .map_err(|e| e.to_string());
    bot.abort();
    for replica in replicas {
        // A frozen replica (kill -STOP) does not drain; it is killed after the grace.
        replica.stop(Duration::from_secs(3)).await;
    }
    outcome
}

async fn register_and_login(
    mut client: connect::ChatClient,
    user: &str,
    password: &str,
) -> Result<Session, CliError> {
    // Creating an existing account with the same password succeeds, so this is
    // idempotent across runs.
    client
        .create_account(CreateAccountRequest {
            username: user.to_owned(),
            password: password.to_owned(),
        })
        .await?;
    connect::login_as(client, user, password).await
}

/// An account that answers every message it receives, through the balancer.
async fn start_echo_bot(
    client: connect::ChatClient,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let session = register_and_login(client, BOT, BOT_PASSWORD).await?;
    Ok(tokio::spawn(async move {
        let (events_tx, mut events) = mpsc::channel(64);
        tokio::spawn(feed::run(session.clone(), 0, events_tx));
        let mut client = session.client.clone();
        while let Some(event) = events.recv().await {
            let FeedEvent::Message(message) = event else {
                continue;
            };
            let reply = SendMessageRequest {
                recipient: message.sender.clone(),
                text: format!("echo: {}", message.text),
                // One reply per message, however often the bot sees it.
                idempotency_key: format!("echo-{}", message.id),
            };
            let _ = client.send_message(session.request(reply)).await;
            let _ = client
                .ack_messages(session.request(chat_proto::v1::AckMessagesRequest {
                    up_to_sequence: message.sequence,
                }))
                .await;
        }
    }))
}
