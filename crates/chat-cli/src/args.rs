//! Command-line arguments. Global flags work before or after the subcommand.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// `chat-cli`: chat with a cluster of replicas, balanced and failed over client-side.
#[derive(Debug, Parser)]
#[command(name = "chat-cli", version, about, long_about = None)]
pub struct Cli {
    /// Connection, identity and output flags.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// What to do; without one, an interactive chat starts.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Flags accepted before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The replicas, as a comma-separated list of HOST:PORT; `https://HOST:PORT`
    /// turns TLS on (trusting the system's roots unless --ca-cert is given).
    #[arg(
        long,
        global = true,
        env = "CHAT_SERVERS",
        default_value = "127.0.0.1:8500"
    )]
    pub servers: String,

    /// Your username.
    #[arg(long, short = 'u', global = true, env = "CHAT_USER")]
    pub user: Option<String>,

    /// Your password; prompted for (without echo) when missing and stdin is a terminal.
    #[arg(long, global = true, env = "CHAT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,

    /// Balancer settings.
    #[command(flatten)]
    pub balancer: BalancerArgs,

    /// Transport security.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Transport security. Any of these flags, or `https://` in `--servers`, turns TLS
/// on for every server; trusted are the `--ca-cert` CA, else (and with `--tls`
/// also) the system's roots.
#[derive(Debug, Clone, Default, Args)]
pub struct TlsArgs {
    /// Use TLS, trusting the system's roots.
    #[arg(long, global = true)]
    pub tls: bool,

    /// Use TLS, trusting the CA certificate(s) in this PEM file.
    #[arg(long, global = true, env = "CHAT_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// Mutual TLS: present this certificate (PEM); needs --client-key.
    #[arg(long, global = true, env = "CHAT_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,

    /// Mutual TLS: the private key (PEM) of --client-cert.
    #[arg(long, global = true, env = "CHAT_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,

    /// Verify every server's certificate against this name (and send it as SNI),
    /// instead of the host written in --servers: for servers addressed by IP.
    #[arg(long, global = true, env = "CHAT_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

/// How the client balances and health-checks (humantime durations: `500ms`, `5s`).
#[derive(Debug, Clone, Args)]
pub struct BalancerArgs {
    /// Overall deadline of each call, retries included.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// How often each replica is health-checked.
    #[arg(long, global = true, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub health_interval: Duration,

    /// How long a health check may take.
    #[arg(long, global = true, default_value = "250ms", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,

    /// Failed health checks in a row before a replica gets no calls.
    #[arg(long, global = true, default_value_t = 2)]
    pub unhealthy_threshold: u32,

    /// How long one attempt of a call may wait for an answer before it is retried
    /// on another replica.
    #[arg(long, global = true, default_value = "2s", value_parser = humantime::parse_duration)]
    pub try_timeout: Duration,

    /// HTTP/2 keepalive: ping a replica this often while a call or stream is open,
    /// and drop the connection when a ping is not answered within as long again. This
    /// is what moves a `watch` off a frozen replica.
    #[arg(long, global = true, default_value = "1s", value_parser = humantime::parse_duration)]
    pub keepalive: Duration,

    /// How long to wait to connect to a replica.
    #[arg(long, global = true, default_value = "1s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// The subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create the account named by --user with --password.
    Register,
    /// List accounts whose names match PATTERN (`*` any run, `?` one character).
    Accounts {
        /// The wildcard pattern; all accounts when omitted.
        pattern: Option<String>,
    },
    /// Send a message.
    Send {
        /// The recipient's username.
        to: String,
        /// The text; `-` reads it from stdin.
        text: String,
    },
    /// Print your undelivered messages, oldest first, and acknowledge them.
    Inbox,
    /// Print messages live as they arrive, across replica failures, until Ctrl-C.
    Watch,
    /// Delete your account (asks for nothing more: --password is checked again).
    DeleteAccount,
    /// Show every server's health; exits non-zero when none is healthy.
    Status,
}
