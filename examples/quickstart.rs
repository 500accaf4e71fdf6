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
//! Each replica is this same executable started again with `--replica`, so the example
//! needs nothing but `cargo run`.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use chat_cli::{
    Cli, CliError,
    connect::{self, Session},
    feed::{self, FeedEvent},
};
use chat_proto::v1::{CreateAccountRequest, SendMessageRequest};
use clap::Parser;
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

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quickstart: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = if args.get(1).map(String::as_str) == Some("--replica") {
        runtime.block_on(run_replica(&args[2..]))
    } else {
        runtime.block_on(run_quickstart(Options::parse()))
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Replica mode: exactly what the `chat-server` binary does.
async fn run_replica(args: &[String]) -> Result<(), String> {
    let config = chat_server::ServerConfig::parse_from(
        std::iter::once("chat-server".to_owned()).chain(args.iter().cloned()),
    );
    chat_server::run(
        config,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
        |address| println!("chat-server listening on {address}"),
    )
    .await
    .map_err(|error| error.to_string())
}

/// The replicas this process started; dropping it stops them.
struct Cluster {
    replicas: Vec<(String, Child)>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.replicas {
            // SIGINT: the replica drains and exits like on Ctrl-C. A frozen one is
            // thawed first, then killed if it does not stop.
            let pid = child.id() as i32;
            // SAFETY: signalling our own child process.
            unsafe {
                libc::kill(pid, libc::SIGCONT);
                libc::kill(pid, libc::SIGINT);
            }
        }
        for (_, child) in &mut self.replicas {
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn run_quickstart(options: Options) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find myself: {e}"))?;
    let mut cluster = Cluster {
        replicas: Vec::new(),
    };
    for port in options.base_port..options.base_port + 3 {
        let mut child = Command::new(&exe)
            .args([
                "--replica",
                "--port",
                &port.to_string(),
                "--store",
                &options.store,
            ])
            .env("RUST_LOG", "error")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start a replica: {e}"))?;
        let stdout = child.stdout.take().ok_or("no replica stdout")?;
        let mut ready = String::new();
        BufReader::new(stdout)
            .read_line(&mut ready)
            .map_err(|e| format!("replica on port {port}: {e}"))?;
        let Some(address) = ready.trim().strip_prefix("chat-server listening on ") else {
            return Err(format!(
                "the replica on port {port} did not start (is the port free?)"
            ));
        };
        cluster.replicas.push((address.to_owned(), child));
    }
    let servers = cluster
        .replicas
        .iter()
        .map(|(address, _)| address.clone())
        .collect::<Vec<_>>()
        .join(",");

    println!("A 3-replica chat cluster sharing {}:", options.store);
    for (address, child) in &cluster.replicas {
        println!("  replica {address}  pid {}", child.id());
    }
    let first_pid = cluster.replicas[0].1.id();
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
    drop(cluster);
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
