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
//! With `--tls`, the whole cluster runs over TLS: a CA and certificates for `localhost`
//! and `127.0.0.1` are made (once) in `chat-data/quickstart-certs/`, as
//! `chat-server gen-certs` makes them, the replicas serve only TLS, and every client
//! (the chat, the bot, the `chat-cli` lines it prints) trusts that CA.
//!
//! Each replica is this same executable started again with `--replica` (see
//! `chat_testkit::replica`), so the example needs nothing but `cargo run`.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use chat_cli::{
    Cli, CliError,
    connect::{self, Session},
    feed::{self, FeedEvent},
};
use chat_proto::v1::{CreateAccountRequest, SendMessageRequest};
use chat_testkit::Replica;
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
    /// Run the cluster over TLS, with certificates made in `--certs`.
    #[arg(long)]
    tls: bool,
    /// Where `--tls` keeps its CA and certificates (made on first use, then reused).
    #[arg(long, default_value = "chat-data/quickstart-certs")]
    certs: PathBuf,
}

const BOT: &str = "echo-bot";
const BOT_PASSWORD: &str = "echo-bot-password";

fn main() -> ExitCode {
    if let Some(code) = chat_testkit::replica::run_if_replica(chat_server::run) {
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

/// The TLS flags of the replicas and of the clients.
struct TlsFlags {
    server: Vec<String>,
    client: Vec<String>,
}

/// Makes (or renews, under the same CA) certificates for the local cluster.
fn make_certificates(dir: &std::path::Path) -> Result<TlsFlags, String> {
    let made = chat_server::certs::generate(&chat_server::certs::CertRequest {
        out: dir.to_owned(),
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        days: 30,
        client_name: "quickstart".into(),
    })
    .map_err(|error| error.to_string())?;
    let path = |p: &std::path::Path| p.display().to_string();
    Ok(TlsFlags {
        server: vec![
            "--tls-cert".into(),
            path(&made.server_cert),
            "--tls-key".into(),
            path(&made.server_key),
        ],
        client: vec!["--ca-cert".into(), path(&made.ca_cert)],
    })
}

async fn run_quickstart(options: Options) -> Result<(), String> {
    let tls = match options.tls {
        true => Some(make_certificates(&options.certs)?),
        false => None,
    };
    let server_flags: Vec<&str> = tls
        .iter()
        .flat_map(|tls| tls.server.iter().map(String::as_str))
        .collect();
    if let Some(path) = options.store.strip_prefix("sqlite:") {
        // The embedded store's folder must exist; making it here is the quickstart's
        // deliberate choice (chat-server creates only its default store's folder).
        if let Some(dir) = std::path::Path::new(path).parent() {
            std::fs::create_dir_all(dir)
                .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        }
    }
    let mut replicas = Vec::new();
    for port in options.base_port..options.base_port + 3 {
        let replica = Replica::start_on_port(&options.store, port, &server_flags)
            .await
            .map_err(|error| format!("{error:#} (is port {port} free? try --base-port)"))?;
        replicas.push(replica);
    }
    let scheme = if tls.is_some() { "https://" } else { "" };
    let servers = replicas
        .iter()
        .map(|replica| format!("{scheme}{}", replica.address()))
        .collect::<Vec<_>>()
        .join(",");
    let client_flags = tls.map(|tls| tls.client).unwrap_or_default();
    let cli_flags = client_flags
        .iter()
        .map(|flag| format!("{flag} "))
        .collect::<String>();

    let over = if options.tls { " over TLS" } else { "" };
    println!("A 3-replica chat cluster{over} sharing {}:", options.store);
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
        "Chat as someone else:  chat-cli --servers {servers} {cli_flags}--user bob --password quickstart register"
    );
    println!(
        "                       chat-cli --servers {servers} {cli_flags}--user bob --password quickstart"
    );
    println!("Say something to {BOT} (\"@{BOT} hello\") and it answers through the cluster.");
    println!();

    let cli = Cli::parse_from(
        [
            "chat-cli",
            "--servers",
            &servers,
            "--user",
            &options.user,
            "--password",
            &options.password,
        ]
        .into_iter()
        .chain(client_flags.iter().map(String::as_str)),
    );
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
