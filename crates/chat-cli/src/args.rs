//! Command-line arguments. Global flags work before or after the subcommand.

use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

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

    /// How log lines on stderr are written when `RUST_LOG` turns them on: `text`, or
    /// `json` (one object per line).
    #[arg(long, global = true, env = "CHAT_LOG_FORMAT", value_enum, value_name = "FORMAT",
          default_value_t = chat_log::LogFormat::Text)]
    pub log_format: chat_log::LogFormat,

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
/// Each value must lie in the range its help gives: a value outside it (`0s`
/// would make every call fail) is a usage error naming the flag and the range.
#[derive(Debug, Clone, Args)]
pub struct BalancerArgs {
    /// Overall deadline of each call, retries included (10ms-1h).
    #[arg(long, global = true, default_value = "5s", value_parser = duration_in(TIMEOUT_RANGE))]
    pub timeout: Duration,

    /// How often each replica is health-checked (10ms-1h).
    #[arg(long, global = true, default_value = "500ms", value_parser = duration_in(HEALTH_INTERVAL_RANGE))]
    pub health_interval: Duration,

    /// How long a health check may take (10ms-1m).
    #[arg(long, global = true, default_value = "250ms", value_parser = duration_in(HEALTH_TIMEOUT_RANGE))]
    pub health_timeout: Duration,

    /// Failed health checks in a row before a replica gets no calls (1-100).
    #[arg(
        long,
        global = true,
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(UNHEALTHY_THRESHOLD_RANGE)
    )]
    pub unhealthy_threshold: u32,

    /// How long one attempt of a call may wait for an answer before it is retried
    /// on another replica (10ms-1h).
    #[arg(long, global = true, default_value = "2s", value_parser = duration_in(TRY_TIMEOUT_RANGE))]
    pub try_timeout: Duration,

    /// HTTP/2 keepalive: ping a replica this often while a call or stream is open,
    /// and drop the connection when a ping is not answered within as long again. This
    /// is what moves a `watch` off a frozen replica (100ms-1h).
    #[arg(long, global = true, default_value = "1s", value_parser = duration_in(KEEPALIVE_RANGE))]
    pub keepalive: Duration,

    /// How long to wait to connect to a replica (10ms-5m).
    #[arg(long, global = true, default_value = "1s", value_parser = duration_in(CONNECT_TIMEOUT_RANGE))]
    pub connect_timeout: Duration,
}

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The values `--timeout` accepts.
pub const TIMEOUT_RANGE: RangeInclusive<Duration> = ms(10)..=secs(3600);
/// The values `--try-timeout` accepts.
pub const TRY_TIMEOUT_RANGE: RangeInclusive<Duration> = ms(10)..=secs(3600);
/// The values `--health-interval` accepts.
pub const HEALTH_INTERVAL_RANGE: RangeInclusive<Duration> = ms(10)..=secs(3600);
/// The values `--health-timeout` accepts.
pub const HEALTH_TIMEOUT_RANGE: RangeInclusive<Duration> = ms(10)..=secs(60);
/// The values `--keepalive` accepts.
pub const KEEPALIVE_RANGE: RangeInclusive<Duration> = ms(100)..=secs(3600);
/// The values `--connect-timeout` accepts.
pub const CONNECT_TIMEOUT_RANGE: RangeInclusive<Duration> = ms(10)..=secs(300);
/// The values `--unhealthy-threshold` accepts.
pub const UNHEALTHY_THRESHOLD_RANGE: RangeInclusive<i64> = 1..=100;

/// A clap value parser for a humantime duration within `range`; its errors
/// name the range (clap names the flag).
fn duration_in(
    range: RangeInclusive<Duration>,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |text| {
        let (min, max) = (
            humantime::format_duration(*range.start()),
            humantime::format_duration(*range.end()),
        );
        let value = humantime::parse_duration(text.trim()).map_err(|error| {
            format!("{error} (a duration from {min} to {max}, like 5s or 500ms)")
        })?;
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(format!("must be from {min} to {max}"))
        }
    }
}

/// A clap usage error (unknown flag, missing or bad value, ...) as one line for
/// stderr: `chat-cli: ` and clap's message without its `error: ` prefix, its
/// usage block and its "For more information" hint; clap's further lines (the
/// missing arguments, tips) are joined to it. Control characters the user
/// typed are shown escaped.
///
/// `--help` and `--version` are not errors of this kind
/// ([`clap::Error::use_stderr`] is false for them): print those as clap does.
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut line = String::new();
    let mut in_usage = false;
    for text in rendered.lines() {
        let text = text.trim();
        if text.is_empty() {
            in_usage = false;
            continue;
        }
        if in_usage || text.starts_with("Usage:") {
            in_usage = true;
            continue;
        }
        if text.starts_with("For more information") {
            continue;
        }
        let text = text.strip_prefix("error:").map_or(text, str::trim_start);
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(text);
    }
    if line.is_empty() {
        line = error.kind().to_string();
    }
    format!("chat-cli: {}", crate::output::sanitize(&line))
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
    Status {
        /// Refresh the table every --health-interval until Ctrl-C (then exit 0).
        #[arg(long)]
        watch: bool,
    },
    /// Log in once and keep the session (never the password) for later commands
    /// of this user on this cluster.
    Login,
    /// End the kept session on the server and forget it.
    Logout,
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: CompletionShell,
    },
}

/// The shells `completions` writes scripts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompletionShell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn error_line(args: &[&str]) -> String {
        let error = Cli::try_parse_from(std::iter::once("chat-cli").chain(args.iter().copied()))
            .expect_err("a usage error");
        assert!(error.use_stderr());
        assert_eq!(error.exit_code(), 2);
        usage_error_line(&error)
    }

    #[test]
    fn defaults_are_within_the_ranges() {
        let cli = Cli::try_parse_from(["chat-cli"]).unwrap();
        let b = &cli.global.balancer;
        assert!(TIMEOUT_RANGE.contains(&b.timeout));
        assert!(TRY_TIMEOUT_RANGE.contains(&b.try_timeout));
        assert!(HEALTH_INTERVAL_RANGE.contains(&b.health_interval));
        assert!(HEALTH_TIMEOUT_RANGE.contains(&b.health_timeout));
        assert!(KEEPALIVE_RANGE.contains(&b.keepalive));
        assert!(CONNECT_TIMEOUT_RANGE.contains(&b.connect_timeout));
        assert!(UNHEALTHY_THRESHOLD_RANGE.contains(&i64::from(b.unhealthy_threshold)));
        // The bounds themselves are accepted.
        let cli = Cli::try_parse_from([
            "chat-cli",
            "--timeout",
            "10ms",
            "--keepalive",
            "1h",
            "--health-timeout",
            "1m",
            "--connect-timeout",
            "5m",
            "--unhealthy-threshold",
            "100",
        ])
        .unwrap();
        assert_eq!(cli.global.balancer.timeout, ms(10));
        assert_eq!(cli.global.balancer.keepalive, secs(3600));
    }

    #[test]
    fn degenerate_settings_are_refused_naming_the_flag_and_range() {
        for (args, flag, range) in [
            (&["--timeout", "0s"][..], "--timeout", "from 10ms to 1h"),
            (&["--timeout", "2h"], "--timeout", "from 10ms to 1h"),
            (&["--keepalive", "0s"], "--keepalive", "from 100ms to 1h"),
            (&["--keepalive", "50ms"], "--keepalive", "from 100ms to 1h"),
            (
                &["--try-timeout", "0ms"],
                "--try-timeout",
                "from 10ms to 1h",
            ),
            (
                &["--health-interval", "1ms"],
                "--health-interval",
                "from 10ms to 1h",
            ),
            (
                &["--health-timeout", "0s"],
                "--health-timeout",
                "from 10ms to 1m",
            ),
            (
                &["--health-timeout", "2m"],
                "--health-timeout",
                "from 10ms to 1m",
            ),
            (
                &["--connect-timeout", "0s"],
                "--connect-timeout",
                "from 10ms to 5m",
            ),
            (
                &["status", "--timeout", "soon"],
                "--timeout",
                "from 10ms to 1h",
            ),
            (
                &["--unhealthy-threshold", "0"],
                "--unhealthy-threshold",
                "1..=100",
            ),
            (
                &["--unhealthy-threshold", "101"],
                "--unhealthy-threshold",
                "1..=100",
            ),
        ] {
            let line = error_line(args);
            assert!(
                line.starts_with("chat-cli: invalid value"),
                "{args:?}: {line}"
            );
            assert!(line.contains(flag), "{args:?}: {line}");
            assert!(line.contains(range), "{args:?}: {line}");
            assert!(!line.contains('\n'), "{args:?}: {line}");
        }
    }

    #[test]
    fn usage_errors_are_one_line() {
        assert_eq!(
            error_line(&["--frob"]),
            "chat-cli: unexpected argument '--frob' found"
        );
        assert_eq!(
            error_line(&["send", "bob"]),
            "chat-cli: the following required arguments were not provided: <TEXT>"
        );
        assert_eq!(
            error_line(&["--timeout"]),
            "chat-cli: a value is required for '--timeout <TIMEOUT>' but none was supplied"
        );
        assert_eq!(
            error_line(&["--jsno"]),
            "chat-cli: unexpected argument '--jsno' found; tip: a similar argument exists: '--json'"
        );
        assert_eq!(
            error_line(&["frob\u{202e}x\ty"]),
            r"chat-cli: unrecognized subcommand 'frob\u{202e}x\ty'"
        );
    }
}
