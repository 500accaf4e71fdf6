//! `chat-server` replicas as child processes of an example, with no binary but the
//! example's own: the example re-executes itself with `--replica` followed by ordinary
//! `chat-server` flags, and [`run_if_replica`], called first thing in `main`, turns that
//! child into a replica running [`chat_server::run`]. So `cargo run --example NAME` is
//! all a user needs.
//!
//! A replica prints `chat-server listening on ADDRESS` on stdout once it accepts calls;
//! [`Replica::start`] waits for that line. Replicas are quiet unless `RUST_LOG` is set.
//! They stop with the example: on SIGINT (Ctrl-C reaches the whole process group), when
//! their [`Replica`] is dropped, and on Linux also when the example dies without
//! cleaning up (`PR_SET_PDEATHSIG`; spawn replicas from a thread that lives as long as
//! they should, such as the thread running `Runtime::block_on`).

use std::{
    net::SocketAddr,
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The first argument that makes the example a replica.
pub const REPLICA_FLAG: &str = "--replica";

/// How long a replica may take to print its readiness line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// If this process was started by [`Replica::start`], runs the replica until SIGINT and
/// returns its exit code; otherwise returns `None` at once.
pub fn run_if_replica() -> Option<ExitCode> {
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
    let config = match <chat_server::ServerConfig as clap::Parser>::try_parse_from(
        std::iter::once("chat-server".to_owned()).chain(args),
    ) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program} {REPLICA_FLAG}: {error}");
            return Some(ExitCode::FAILURE);
        }
    };
    let outcome = tokio::runtime::Runtime::new()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime
                .block_on(chat_server::run(
                    config,
                    async {
                        let _ = tokio::signal::ctrl_c().await;
                    },
                    |address| println!("chat-server listening on {address}"),
                ))
                .map_err(anyhow::Error::from)
        });
    Some(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program} {REPLICA_FLAG}: {error:#}");
            ExitCode::FAILURE
        }
    })
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

/// A replica process started from this executable, on 127.0.0.1.
pub struct Replica {
    child: Option<Child>,
    address: SocketAddr,
    store: String,
    extra_args: Vec<String>,
}

impl Replica {
    /// Starts a replica on a free loopback port, sharing the store `store` (a
    /// `--store` value), with extra `chat-server` flags; returns once it accepts calls.
    pub async fn start(store: &str, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::start_on_port(store, 0, extra_args).await
    }

    /// Like [`Replica::start`], on a given port (0 picks a free one).
    pub async fn start_on_port(
        store: &str,
        port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        let extra_args: Vec<String> = extra_args.iter().map(|&a| a.to_owned()).collect();
        let (child, address) = spawn(store, port, &extra_args).await?;
        Ok(Self {
            child: Some(child),
            address,
            store: store.to_owned(),
            extra_args,
        })
    }

    /// Where it listens (the same across restarts).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, then reaps the process.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child
                .kill()
                .await
                .with_context(|| format!("cannot kill the replica on {}", self.address))?;
        }
        Ok(())
    }

    /// Starts it again on the same port (after [`Replica::kill`]), with the same flags.
    /// Binding may briefly fail while the kernel releases the old socket, so this
    /// tries a few times.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the replica on {} is still running", self.address);
        }
        let mut last_error = None;
        for _ in 0..5 {
            match spawn(&self.store, self.address.port(), &self.extra_args).await {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no attempt made")))
            .with_context(|| format!("cannot restart the replica on {}", self.address))
    }

    /// SIGINT (the replica drains and exits), SIGKILL if it is still running after
    /// `grace`; then reaps it.
    pub async fn stop(mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGINT);
            }
        }
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Starts `this-executable --replica ...` and waits for its readiness line.
async fn spawn(
    store: &str,
    port: u16,
    extra_args: &[String],
) -> anyhow::Result<(Child, SocketAddr)> {
    let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
    let mut child = Command::new(exe)
        .arg(REPLICA_FLAG)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--store",
            store,
        ])
        .args(extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a replica process")?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("the replica's stdout is not piped"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => bail!("the replica (port {port}) exited before it was ready"),
        Ok(Err(error)) => bail!("cannot read the replica's stdout: {error}"),
        Err(_) => bail!("the replica (port {port}) was not ready within {START_TIMEOUT:?}"),
    };
    let address = line
        .strip_prefix("chat-server listening on ")
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| anyhow!("unexpected readiness line from a replica: {line:?}"))?;
    // Keep draining, so the replica can never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, address))
}
