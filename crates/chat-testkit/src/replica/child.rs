//! The replica side of a re-executed example: [`run_if_replica`], called first thing
//! in the example's `main`, turns the child that [`Replica::start_placed`] started
//! into a replica running the server the example hands it (`chat_server::run`).
//!
//! Replicas stop with the example: on SIGINT (Ctrl-C reaches the whole process
//! group), when their [`Replica`] is dropped, and on Linux also when the example dies
//! without cleaning up (`PR_SET_PDEATHSIG`; spawn replicas from a thread that lives as
//! long as they should, such as the thread running `Runtime::block_on`). They are
//! quiet unless `RUST_LOG` is set.
//!
//! [`Replica`]: super::Replica
//! [`Replica::start_placed`]: super::Replica::start_placed

use std::{future::Future, net::SocketAddr, process::ExitCode};

use anyhow::anyhow;
use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use super::{READY_PREFIX, cpus};

/// The first argument that makes the example a replica.
pub const REPLICA_FLAG: &str = "--replica";
/// Launcher flag (before the `chat-server` flags): run this many servers in the one
/// process, each on its own free port, sharing its runtime and CPUs.
const SERVERS_FLAG: &str = "--servers";
/// Launcher flag: pin the replica process to these CPUs (Linux).
const CPUS_FLAG: &str = "--cpus";

/// Completes when the replica process is asked to stop (SIGINT); every server of
/// the process gets a clone.
pub type Stop = Shared<BoxFuture<'static, ()>>;

/// If this process was started by [`super::Replica::start_placed`] (or
/// `start_on_port`), runs the replica until SIGINT and returns its exit code;
/// otherwise returns `None` at once.
///
/// `serve` runs one server (`chat_server::run` fits): it gets the configuration
/// parsed from the `chat-server` flags, a [`Stop`], and the readiness callback, which
/// prints the line [`super::Replica`] waits for.
pub fn run_if_replica<C, S, R, E>(serve: S) -> Option<ExitCode>
where
    C: clap::Parser + Clone,
    S: Fn(C, Stop, fn(SocketAddr)) -> R,
    R: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let mut args = std::env::args();
    let program = args.next().unwrap_or_default();
    if args.next().as_deref() != Some(REPLICA_FLAG) {
        return None;
    }
    die_with_parent();
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    Some(match launch(args, serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program} {REPLICA_FLAG}: {error:#}");
            ExitCode::FAILURE
        }
    })
}

/// The launcher flags for a process of `servers` servers pinned to `cpus`.
pub(super) fn launcher_args(servers: usize, cpus: &[usize]) -> Vec<String> {
    let mut args = Vec::new();
    if servers > 1 {
        args.extend([SERVERS_FLAG.to_owned(), servers.to_string()]);
    }
    if !cpus.is_empty() {
        let cpus: Vec<String> = cpus.iter().map(usize::to_string).collect();
        args.extend([CPUS_FLAG.to_owned(), cpus.join(",")]);
    }
    args
}

/// Parses the launcher's flags (`--servers`, `--cpus`) and the server's, pins the
/// process (before the runtime sizes its worker pool on the CPUs it may use), then
/// runs every server until SIGINT.
fn launch<C, S, R, E>(args: impl Iterator<Item = String>, serve: S) -> anyhow::Result<()>
where
    C: clap::Parser + Clone,
    S: Fn(C, Stop, fn(SocketAddr)) -> R,
    R: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let mut args = args.peekable();
    let (mut servers, mut pin) = (1, Vec::new());
    loop {
        match args.peek().map(String::as_str) {
            Some(SERVERS_FLAG) => {
                args.next();
                servers = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| anyhow!("{SERVERS_FLAG} needs a count of at least 1"))?;
            }
            Some(CPUS_FLAG) => {
                args.next();
                pin = cpus::parse_cpus(&args.next().unwrap_or_default())?;
            }
            _ => break,
        }
    }
    let config = C::try_parse_from(std::iter::once("chat-server".to_owned()).chain(args))?;
    if !pin.is_empty() {
        cpus::pin_to_cpus(&pin)?;
    }
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        }
        .boxed()
        .shared();
        let running = (0..servers).map(|_| serve(config.clone(), stop.clone(), announce));
        futures::future::try_join_all(running)
            .await
            .map_err(Into::into)?;
        Ok(())
    })
}

/// Prints the readiness line of one server.
fn announce(address: SocketAddr) {
    println!("{READY_PREFIX}{address}");
}

/// Asks Linux to SIGKILL this replica when the process that started it dies.
#[cfg(target_os = "linux")]
fn die_with_parent() {
    // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid() only affect this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // The parent may have died before the prctl: then we were re-parented.
        if libc::getppid() == 1 {
            libc::_exit(1);
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent() {}
