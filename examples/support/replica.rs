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
//!
//! [`Placement`] runs several servers in one replica process, or pins the process to
//! some CPUs (the benchmark uses both; [`pin_to_cpus`] and [`allowed_cpus`] serve the
//! example itself).

use std::{
    net::SocketAddr,
    process::{ExitCode, Stdio},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use futures::FutureExt;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// The first argument that makes the example a replica.
pub const REPLICA_FLAG: &str = "--replica";
/// Launcher flag (before the `chat-server` flags): run this many servers in the one
/// process, each on its own free port, sharing its runtime and CPUs.
const SERVERS_FLAG: &str = "--servers";
/// Launcher flag: pin the replica process to these CPUs (Linux).
const CPUS_FLAG: &str = "--cpus";

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
    let outcome = Launch::parse(args).and_then(Launch::run);
    Some(match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program} {REPLICA_FLAG}: {error:#}");
            ExitCode::FAILURE
        }
    })
}

/// What a replica process was asked to run: the launcher's own flags (`--servers`,
/// `--cpus`), then ordinary `chat-server` flags.
struct Launch {
    config: chat_server::ServerConfig,
    servers: usize,
    cpus: Vec<usize>,
}

impl Launch {
    fn parse(args: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.peekable();
        let (mut servers, mut cpus) = (1, Vec::new());
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
                    cpus = parse_cpus(&args.next().unwrap_or_default())?;
                }
                _ => break,
            }
        }
        let config = <chat_server::ServerConfig as clap::Parser>::try_parse_from(
            std::iter::once("chat-server".to_owned()).chain(args),
        )?;
        if servers > 1 && config.port != 0 {
            bail!("{SERVERS_FLAG} {servers} needs --port 0 (each server takes a free port)");
        }
        Ok(Self {
            config,
            servers,
            cpus,
        })
    }

    /// Pins the process (before the runtime sizes its worker pool on the CPUs it may
    /// use), then runs every server until SIGINT.
    fn run(self) -> anyhow::Result<()> {
        if !self.cpus.is_empty() {
            pin_to_cpus(&self.cpus)?;
        }
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            }
            .boxed()
            .shared();
            let servers = (0..self.servers).map(|_| {
                chat_server::run(self.config.clone(), stop.clone(), |address| {
                    println!("chat-server listening on {address}")
                })
            });
            futures::future::try_join_all(servers).await?;
            Ok(())
        })
    }
}

/// Parses a CPU list such as `1`, `0,2` or `1-3`.
fn parse_cpus(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let parsed = match part.split_once('-') {
            Some((first, last)) => first
                .parse::<usize>()
                .and_then(|f| last.parse::<usize>().map(|l| (f..=l).collect::<Vec<_>>())),
            None => part.parse::<usize>().map(|cpu| vec![cpu]),
        };
        match parsed {
            Ok(list) if !list.is_empty() => cpus.extend(list),
            _ => bail!("not a CPU list (like 1, 0,2 or 1-3): {text:?}"),
        }
    }
    Ok(cpus)
}

/// The CPUs this process may run on.
#[cfg(target_os = "linux")]
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    // SAFETY: sched_getaffinity fills the zeroed set we own; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            bail!("sched_getaffinity: {}", std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect())
    }
}

/// Restricts the calling thread (and the threads and processes it starts from now
/// on) to `cpus`.
#[cfg(target_os = "linux")]
pub fn pin_to_cpus(cpus: &[usize]) -> anyhow::Result<()> {
    // SAFETY: CPU_SET writes into the zeroed set we own (indexes are checked first);
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            if cpu >= libc::CPU_SETSIZE as usize {
                bail!("CPU {cpu} is out of range");
            }
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!(
                "cannot pin to CPUs {cpus:?}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
pub fn allowed_cpus() -> anyhow::Result<Vec<usize>> {
    bail!("CPU pinning is only supported on Linux")
}

#[cfg(not(target_os = "linux"))]
pub fn pin_to_cpus(_cpus: &[usize]) -> anyhow::Result<()> {
    bail!("CPU pinning is only supported on Linux")
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

/// A replica process started from this executable, on 127.0.0.1: usually one
/// `chat-server`, or several in one process (see [`Placement`]).
pub struct Replica {
    child: Option<Child>,
    addresses: Vec<SocketAddr>,
    store: String,
    /// Launcher flags, then `chat-server` flags (without `--port`).
    args: Vec<String>,
}

/// Where a replica process runs, beyond the defaults.
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Servers in the one process, each on its own free port, sharing its runtime
    /// (0 or 1: one). The benchmark uses this to offer several endpoints while
    /// holding the server side's processes and CPU equal.
    pub servers: usize,
    /// CPUs to pin the process to (Linux); empty: wherever the parent may run.
    pub cpus: Vec<usize>,
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
        Self::launch(store, port, extra_args, &Placement::default()).await
    }

    /// Like [`Replica::start`], placed as `placement` says.
    pub async fn start_placed(
        store: &str,
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        Self::launch(store, 0, extra_args, placement).await
    }

    async fn launch(
        store: &str,
        port: u16,
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        let servers = placement.servers.max(1);
        let mut args = Vec::new();
        if servers > 1 {
            args.extend([SERVERS_FLAG.to_owned(), servers.to_string()]);
        }
        if !placement.cpus.is_empty() {
            let cpus: Vec<String> = placement.cpus.iter().map(usize::to_string).collect();
            args.extend([CPUS_FLAG.to_owned(), cpus.join(",")]);
        }
        args.extend(extra_args.iter().map(|&a| a.to_owned()));
        let (child, addresses) = spawn(store, port, &args, servers).await?;
        Ok(Self {
            child: Some(child),
            addresses,
            store: store.to_owned(),
            args,
        })
    }

    /// Where it listens (the same across restarts); the first server's address
    /// when the process runs several.
    pub fn address(&self) -> SocketAddr {
        self.addresses[0]
    }

    /// Where each of its servers listens.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
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
                .with_context(|| format!("cannot kill the replica on {}", self.address()))?;
        }
        Ok(())
    }

    /// Starts it again on the same port (after [`Replica::kill`]), with the same flags.
    /// Binding may briefly fail while the kernel releases the old socket, so this
    /// tries a few times.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the replica on {} is still running", self.address());
        }
        if self.addresses.len() > 1 {
            bail!("a process of several servers cannot be restarted on the same ports");
        }
        let mut last_error = None;
        for _ in 0..5 {
            match spawn(&self.store, self.address().port(), &self.args, 1).await {
                Ok((child, _)) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(error) => last_error = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last_error.unwrap_or_else(|| anyhow!("no attempt made")))
            .with_context(|| format!("cannot restart the replica on {}", self.address()))
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

/// Starts `this-executable --replica ARGS --port PORT --store STORE` and waits for
/// the readiness line of each of its `servers`.
async fn spawn(
    store: &str,
    port: u16,
    args: &[String],
    servers: usize,
) -> anyhow::Result<(Child, Vec<SocketAddr>)> {
    let exe = std::env::current_exe().context("cannot find this executable to re-run it")?;
    let mut child = Command::new(exe)
        .arg(REPLICA_FLAG)
        .args(args)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--store",
            store,
        ])
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
    let mut addresses = Vec::with_capacity(servers);
    while addresses.len() < servers {
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
        addresses.push(address);
    }
    // Keep draining, so the replica can never block on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, addresses))
}
