//! `chat-server` replicas as child processes, on 127.0.0.1.
//!
//! A replica process is either the workspace's `chat-server` binary (what the process
//! tests start: [`Replica::start`] and its variants) or the calling executable
//! re-executed with `--replica` (what the examples start, so that `cargo run --example
//! NAME` is all a user needs: [`Replica::start_placed`], [`Replica::start_on_port`];
//! the example calls [`run_if_replica`] first thing in `main`).
//!
//! Either way the readiness protocol is the same: the process prints
//! `chat-server listening on ADDRESS` on stdout once each of its servers accepts calls
//! ([`READY_PREFIX`]), and starting a replica waits (bounded) for those lines. Stdout is
//! drained afterwards, so a replica never blocks on a full pipe. A replica is SIGKILLed
//! when its [`Replica`] is dropped.

mod child;
mod cpus;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};

pub use child::{REPLICA_FLAG, Stop, run_if_replica};
pub use cpus::{allowed_cpus, pin_to_cpus};

use crate::{binary::workspace_binary, store::StoreFixture};

/// What a replica prints on stdout, followed by its address, once it accepts calls.
pub const READY_PREFIX: &str = "chat-server listening on ";

/// How long a replica may take to print its readiness lines.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a replica process runs, beyond the defaults (processes started from the
/// example itself only).
#[derive(Debug, Clone, Default)]
pub struct Placement {
    /// Servers in the one process, each on its own free port, sharing its runtime
    /// (0 or 1: one). The benchmark uses this to offer several endpoints while
    /// holding the server side's processes and CPU equal.
    pub servers: usize,
    /// CPUs to pin the process to (Linux); empty: wherever the parent may run.
    pub cpus: Vec<usize>,
}

/// Which executable runs as the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    /// The workspace's `chat-server` binary.
    ServerBinary,
    /// This executable, re-executed with [`REPLICA_FLAG`] (see [`run_if_replica`]).
    ThisExecutable,
}

/// How to (re)start a replica process.
#[derive(Debug, Clone)]
struct Spec {
    program: Program,
    store: String,
    /// Launcher flags (this executable only), then `chat-server` flags (no `--port`).
    args: Vec<String>,
    servers: usize,
    /// Where its `info` log lines go (stderr is inherited when `None`).
    log: Option<Arc<Mutex<Vec<String>>>>,
    /// Its open-file limit (`ulimit -n`).
    fd_limit: Option<u64>,
}

/// A running replica process: usually one server, or several in one process (see
/// [`Placement`]).
pub struct Replica {
    child: Option<Child>,
    addresses: Vec<SocketAddr>,
    spec: Spec,
}

impl Replica {
    /// Starts a `chat-server` replica on a free port and waits until it accepts calls.
    pub fn start(store: &(impl StoreFixture + ?Sized)) -> Self {
        Self::start_with(store, &[])
    }

    /// Starts `count` replicas on `store`, as [`Replica::start`] does.
    pub fn start_several(store: &(impl StoreFixture + ?Sized), count: usize) -> Vec<Self> {
        (0..count).map(|_| Self::start(store)).collect()
    }

    /// Like [`Replica::start`], with extra `chat-server` flags.
    pub fn start_with(store: &(impl StoreFixture + ?Sized), extra_args: &[&str]) -> Self {
        Self::start_binary(store, extra_args, false, None)
    }

    /// Like [`Replica::start_with`], keeping the replica's `info` log lines for
    /// [`Replica::wait_for_log`] (they are echoed to the test's stderr too).
    pub fn start_logged(store: &(impl StoreFixture + ?Sized), extra_args: &[&str]) -> Self {
        Self::start_binary(store, extra_args, true, None)
    }

    /// Like [`Replica::start_logged`], with the process's open-file limit (`ulimit -n`)
    /// set to `fd_limit`.
    pub fn start_logged_with_fd_limit(
        store: &(impl StoreFixture + ?Sized),
        extra_args: &[&str],
        fd_limit: Option<u64>,
    ) -> Self {
        Self::start_binary(store, extra_args, true, fd_limit)
    }

    fn start_binary(
        store: &(impl StoreFixture + ?Sized),
        extra_args: &[&str],
        logged: bool,
        fd_limit: Option<u64>,
    ) -> Self {
        let spec = Spec {
            program: Program::ServerBinary,
            store: store.uri(),
            args: extra_args.iter().map(|&a| a.to_owned()).collect(),
            servers: 1,
            log: logged.then(Default::default),
            fd_limit,
        };
        let (mut child, ready) = spec.spawn(0).expect("start chat-server");
        match ready.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addresses)) => Self {
                child: Some(child),
                addresses,
                spec,
            },
            other => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chat-server did not report readiness: {other:?}");
            }
        }
    }

    /// Starts this executable as a replica (see [`run_if_replica`]) on a free loopback
    /// port, sharing the store `store` (a `--store` value), with extra `chat-server`
    /// flags; returns once it accepts calls.
    pub async fn start_placed(
        store: &str,
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        Self::launch(store, 0, extra_args, placement).await
    }

    /// Like [`Replica::start_placed`], on a given port (0 picks a free one).
    pub async fn start_on_port(
        store: &str,
        port: u16,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::launch(store, port, extra_args, &Placement::default()).await
    }

    async fn launch(
        store: &str,
        port: u16,
        extra_args: &[&str],
        placement: &Placement,
    ) -> anyhow::Result<Self> {
        let servers = placement.servers.max(1);
        let mut args = child::launcher_args(servers, &placement.cpus);
        args.extend(extra_args.iter().map(|&a| a.to_owned()));
        let spec = Spec {
            program: Program::ThisExecutable,
            store: store.to_owned(),
            args,
            servers,
            log: None,
            fd_limit: None,
        };
        let (child, addresses) = spec.start(port).await?;
        Ok(Self {
            child: Some(child),
            addresses,
            spec,
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

    /// `http://ADDRESS`, for a tonic endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.address())
    }

    /// A plain (unbalanced) channel to it, connected.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let endpoint = tonic::transport::Endpoint::from_shared(self.url()).expect("endpoint");
        endpoint.connect().await.expect("connect to replica")
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM, SIGHUP, ...) to the running
    /// process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("replica is running");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid as i32, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// SIGKILL (which ends a frozen process too), then reaps the process.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.kill_now()
            .with_context(|| format!("cannot kill the replica on {}", self.address()))
    }

    fn kill_now(&mut self) -> std::io::Result<()> {
        match self.child.take() {
            Some(mut child) => {
                child.kill()?;
                child.wait().map(drop)
            }
            None => Ok(()),
        }
    }

    /// SIGTERM, then waits for the exit status (bounded; panics past `within`). Async,
    /// so that the caller's own clients keep running (HTTP/2 graceful shutdown waits
    /// for the client's answer).
    pub async fn terminate(&mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("replica is running");
        match wait_exit(&mut child, within).await {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("replica did not exit within {within:?} of SIGTERM");
            }
        }
    }

    /// SIGINT (the replica drains and exits), SIGKILL if it is still running after
    /// `grace`; then reaps it.
    pub async fn stop(mut self, grace: Duration) {
        if self.pid().is_none() {
            return;
        }
        self.signal(libc::SIGINT);
        if let Some(mut child) = self.child.take()
            && wait_exit(&mut child, grace).await.is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (after [`Replica::kill`] or
    /// [`Replica::terminate`]), with the same flags, log and limits. Binding may
    /// briefly fail while the kernel releases the old socket, so this tries a few
    /// times.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the replica on {} is still running", self.address());
        }
        if self.addresses.len() > 1 {
            bail!("a process of several servers cannot be restarted on the same ports");
        }
        let mut last_error = None;
        for _ in 0..5 {
            match self.spec.start(self.address().port()).await {
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

    /// The log lines so far. Only for replicas started with [`Replica::start_logged`].
    pub fn log_lines(&self) -> Vec<String> {
        self.log().lock().expect("log lock").clone()
    }

    /// Waits (bounded) until the replica has logged `count` lines containing `needle`.
    /// Only for replicas started with [`Replica::start_logged`].
    pub async fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        crate::wait::eventually(within, Duration::from_millis(20), || async move {
            let lines = self.log_lines();
            let seen = lines.iter().filter(|line| line.contains(needle)).count();
            if seen >= count {
                Ok(())
            } else {
                let address = self.address();
                Err(format!(
                    "replica {address} logged {needle:?} {seen} times, not {count}"
                ))
            }
        })
        .await
    }

    fn log(&self) -> &Mutex<Vec<String>> {
        self.spec
            .log
            .as_ref()
            .expect("start the replica with start_logged")
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.kill_now();
    }
}

/// Polls for the child's exit (the caller's runtime keeps running meanwhile); `None`
/// when it is still running after `within`.
async fn wait_exit(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The addresses a replica reported ready on, or why it did not.
type Readiness = mpsc::Receiver<anyhow::Result<Vec<SocketAddr>>>;

impl Spec {
    /// Spawns the process and waits off the caller's thread for its readiness. The
    /// process itself is spawned on the calling thread, which a re-executed replica
    /// outlives only until that thread ends (see [`run_if_replica`]).
    async fn start(&self, port: u16) -> anyhow::Result<(Child, Vec<SocketAddr>)> {
        let (mut child, ready) = self.spawn(port)?;
        let waited = tokio::task::spawn_blocking(move || ready.recv_timeout(START_TIMEOUT)).await;
        match waited {
            Ok(Ok(Ok(addresses))) => Ok((child, addresses)),
            outcome => {
                let _ = child.kill();
                let _ = child.wait();
                match outcome {
                    Ok(Ok(Err(error))) => Err(error),
                    _ => bail!("the replica (port {port}) was not ready within {START_TIMEOUT:?}"),
                }
            }
        }
    }

    /// Spawns the process on `port` (0: a free one); the readiness of its servers
    /// arrives on the returned channel.
    fn spawn(&self, port: u16) -> anyhow::Result<(Child, Readiness)> {
        let mut command = self.command()?;
        command.args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--store",
            &self.store,
        ]);
        let mut child = command.spawn().context("cannot start a replica process")?;
        if let (Some(log), Some(stderr)) = (self.log.clone(), child.stderr.take()) {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("{line}");
                    log.lock().expect("log lock").push(line);
                }
            });
        }
        let stdout = child
            .stdout
            .take()
            .context("the replica's stdout is not piped")?;
        let (tx, rx) = mpsc::channel();
        let servers = self.servers;
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(read_ready(&mut lines, servers, port));
            // Keep draining, so the replica can never block on a full pipe.
            for _ in lines {}
        });
        Ok((child, rx))
    }

    /// The command, without `--host`, `--port` and `--store`.
    fn command(&self) -> anyhow::Result<Command> {
        let mut command = match self.program {
            Program::ServerBinary => Command::new(workspace_binary("chat-server")),
            Program::ThisExecutable => {
                let exe: PathBuf =
                    std::env::current_exe().context("cannot find this executable to re-run it")?;
                let mut command = Command::new(exe);
                command.arg(REPLICA_FLAG);
                command
            }
        };
        command.args(&self.args);
        // Tests keep replicas quiet (or at `info` when capturing); an example's replicas
        // follow the example's own RUST_LOG.
        if self.log.is_some() {
            command.env("RUST_LOG", "info");
        } else if self.program == Program::ServerBinary {
            let level = std::env::var("CHAT_TEST_LOG").unwrap_or_else(|_| "warn".into());
            command.env("RUST_LOG", level);
        }
        if let Some(limit) = self.fd_limit {
            limit_open_files(&mut command, limit);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if self.log.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        Ok(command)
    }
}

/// Reads one readiness line per server.
fn read_ready(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    servers: usize,
    port: u16,
) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addresses = Vec::with_capacity(servers);
    while addresses.len() < servers {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            Some(Err(error)) => bail!("cannot read the replica's stdout: {error}"),
            None => bail!("the replica (port {port}) exited before it was ready"),
        };
        let address = line
            .strip_prefix(READY_PREFIX)
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| anyhow!("unexpected readiness line from a replica: {line:?}"))?;
        addresses.push(address);
    }
    Ok(addresses)
}

/// Sets the open-file limit (`ulimit -n`) of the process `command` starts.
fn limit_open_files(command: &mut Command, limit: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setrlimit is async-signal-safe; the closure touches no shared memory.
    unsafe {
        command.pre_exec(move || {
            let rlimit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}
