//! Shared harness for the workspace's process-level tests: start real `chat-server`
//! replicas on loopback, wait for their readiness line, and hit them with real signals.
#![allow(dead_code)] // Each test binary uses a different part of the harness.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use chat_proto::v1::{
    CreateAccountRequest, HealthCheckRequest, LoginRequest, chat_service_client::ChatServiceClient,
    health_check_response::ServingStatus,
};
use tonic::{Request, metadata::MetadataValue, transport::Channel};

/// How long a replica may take to print its readiness line.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The path of a binary built from this workspace (next to the test executable's
/// `deps/` directory), e.g. `chat-server` or `examples/chat-bench`. `scripts/test`
/// builds every workspace binary and example first.
pub fn workspace_binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("test executable path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps layout");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with scripts/test (or `cargo build --workspace --bins --examples` first)",
        path.display()
    );
    path
}

/// A loopback address on which nothing listens (a port bound, then released).
pub fn dead_address() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

#[path = "../../crates/chat-server/tests/support/nx27017.rs"]
pub mod nx27017;

/// A store that replicas can be started on: anything that names one with a `--store`
/// argument.
pub trait StoreFixture {
    /// The `--store` argument naming it.
    fn uri(&self) -> String;
}

/// A temporary embedded store shared by every replica started with it.
pub struct SharedStore {
    dir: tempfile::TempDir,
}

impl StoreFixture for SharedStore {
    fn uri(&self) -> String {
        SharedStore::uri(self)
    }
}

/// A MongoDB store on a private nx-27017 server (a MongoDB wire-protocol server, see
/// `nx27017`), shared by every replica started with it. The server can be killed and
/// restarted (same port, same data) under running replicas.
pub struct MongoFixture {
    server: nx27017::NxServer,
}

impl MongoFixture {
    /// Starts a server, or returns `None` when nx-27017 is not installed (after a loud
    /// banner; under CI this fails instead).
    pub fn start(test: &str) -> Option<Self> {
        let executable = nx27017::nx_executable(test)?;
        Some(Self {
            server: nx27017::NxServer::start(&executable),
        })
    }

    /// SIGKILLs the database server.
    pub fn kill_server(&mut self) {
        self.server.kill();
    }

    /// Starts the database server again, on the same port with the same data.
    pub fn restart_server(&mut self) {
        self.server.restart();
    }

    /// The server's output, for failure messages.
    pub fn server_output(&self) -> String {
        self.server.output()
    }
}

impl StoreFixture for MongoFixture {
    fn uri(&self) -> String {
        self.server.uri("chat")
    }
}

impl SharedStore {
    /// A fresh, empty store in a new temporary directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The `--store` argument naming it.
    pub fn uri(&self) -> String {
        format!("sqlite:{}", self.dir.path().join("chat.db").display())
    }
}

pub mod tls;

/// A running `chat-server` process.
pub struct Replica {
    child: Option<Child>,
    /// Where it listens.
    pub address: SocketAddr,
    store_uri: String,
    extra_args: Vec<String>,
    /// Its log lines (stderr, at `info`), when started with [`Replica::start_logged`].
    log: Option<Arc<Mutex<Vec<String>>>>,
    /// Its open-file limit (`ulimit -n`), when started with one.
    fd_limit: Option<u64>,
}

impl Replica {
    /// Starts a replica on a free port and waits until it accepts calls.
    pub fn start(store: &impl StoreFixture) -> Self {
        Self::start_with(store, &[])
    }

    /// Starts a replica with extra command-line arguments.
    pub fn start_with(store: &impl StoreFixture, extra_args: &[&str]) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let (child, address) = spawn(&store.uri(), 0, &extra_args, None, None);
        Self {
            child: Some(child),
            address,
            store_uri: store.uri(),
            extra_args,
            log: None,
            fd_limit: None,
        }
    }

    /// Like [`Replica::start_with`], keeping the replica's `info` log lines for
    /// [`Replica::wait_for_log`] (they are echoed to the test's stderr too).
    pub fn start_logged(store: &impl StoreFixture, extra_args: &[&str]) -> Self {
        Self::start_logged_with_fd_limit(store, extra_args, None)
    }

    /// Like [`Replica::start_logged`], with the process's open-file limit (`ulimit -n`)
    /// set to `fd_limit`.
    pub fn start_logged_with_fd_limit(
        store: &impl StoreFixture,
        extra_args: &[&str],
        fd_limit: Option<u64>,
    ) -> Self {
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (child, address) = spawn(&store.uri(), 0, &extra_args, Some(log.clone()), fd_limit);
        Self {
            child: Some(child),
            address,
            store_uri: store.uri(),
            extra_args,
            log: Some(log),
            fd_limit,
        }
    }

    /// The log lines so far. Only for replicas started with [`Replica::start_logged`].
    pub fn log_lines(&self) -> Vec<String> {
        let log = self
            .log
            .as_ref()
            .expect("start the replica with start_logged");
        log.lock().expect("log lock").clone()
    }

    /// Waits (bounded) until the replica has logged `count` lines containing `needle`.
    /// Only for replicas started with [`Replica::start_logged`].
    pub async fn wait_for_log(&self, needle: &str, count: usize, within: Duration) {
        let log = self
            .log
            .as_ref()
            .expect("start the replica with start_logged");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = log
                .lock()
                .expect("log lock")
                .iter()
                .filter(|line| line.contains(needle))
                .count();
            if seen >= count {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {} logged {needle:?} {seen} times, not {count}, within {within:?}",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `http://ADDRESS`, for a tonic endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The operating-system process id.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("replica is running")
    }

    /// Sends a signal (SIGKILL, SIGSTOP, SIGCONT, SIGTERM, ...).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own; no memory is shared.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// SIGKILL, then reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the exit status (bounded). Async, so that the test's own
    /// clients keep running (HTTP/2 graceful shutdown waits for the client's answer).
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("replica is running");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for replica") {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("replica did not exit within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the process again on the same port (after `kill` or `terminate`).
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop the replica before restarting it"
        );
        let (child, address) = spawn(
            &self.store_uri,
            self.address.port(),
            &self.extra_args,
            self.log.clone(),
            self.fd_limit,
        );
        assert_eq!(address, self.address);
        self.child = Some(child);
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        // SIGKILL ends a frozen (SIGSTOP) process too.
        self.kill();
    }
}

fn spawn(
    store_uri: &str,
    port: u16,
    extra_args: &[String],
    log: Option<Arc<Mutex<Vec<String>>>>,
    fd_limit: Option<u64>,
) -> (Child, SocketAddr) {
    let level = match &log {
        Some(_) => "info".to_owned(),
        None => std::env::var("CHAT_TEST_LOG").unwrap_or_else(|_| "warn".into()),
    };
    let mut command = Command::new(workspace_binary("chat-server"));
    if let Some(limit) = fd_limit {
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
    let mut child = command
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--store",
            store_uri,
        ])
        .args(extra_args)
        .env("RUST_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(if log.is_some() {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .expect("spawn chat-server");
    if let (Some(log), Some(stderr)) = (log, child.stderr.take()) {
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                log.lock().expect("log lock").push(line);
            }
        });
    }
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        let _ = tx.send(first);
        // Keep draining so the replica never blocks on a full pipe.
        for _ in lines {}
    });
    let line = match rx.recv_timeout(START_TIMEOUT) {
        Ok(Some(Ok(line))) => line,
        other => {
            let _ = child.kill();
            panic!("chat-server did not report readiness: {other:?}");
        }
    };
    let address = line
        .strip_prefix("chat-server listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
    (child, address)
}

/// Runs `chat-server --port 0 ARGS` (in `dir` when given) until it exits by itself;
/// returns its exit code, stdout and stderr.
pub fn run_server_to_exit(dir: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let mut command = Command::new(workspace_binary("chat-server"));
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let output = command
        .args(["--port", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("run chat-server");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A plain tonic client connected to one replica.
pub async fn client(replica: &Replica) -> ChatServiceClient<Channel> {
    ChatServiceClient::connect(replica.url())
        .await
        .expect("connect to replica")
}

/// Wraps a message with a bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Creates an account and logs in; returns the session token. Works over any
/// transport: a plain `Channel` or the balancer.
pub async fn register_and_login<T>(
    client: &mut ChatServiceClient<T>,
    username: &str,
    password: &str,
) -> String
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    client
        .create_account(CreateAccountRequest {
            username: username.into(),
            password: password.into(),
        })
        .await
        .expect("create account");
    login(client, username, password).await
}

/// Logs in; returns the session token.
pub async fn login<T>(client: &mut ChatServiceClient<T>, username: &str, password: &str) -> String
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    client
        .login(LoginRequest {
            username: username.into(),
            password: password.into(),
        })
        .await
        .expect("login")
        .into_inner()
        .token
}

/// Polls the chat `HealthCheck` RPC until it reports `want` (bounded).
pub async fn wait_for_status(replica: &Replica, want: ServingStatus, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = async {
            let mut client = ChatServiceClient::connect(replica.url()).await.ok()?;
            let health = client.health_check(HealthCheckRequest {}).await.ok()?;
            Some(health.into_inner().status())
        }
        .await;
        if seen == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replica {} did not become {want:?} within {within:?} (last seen {seen:?})",
            replica.address
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Every undelivered message of the token's user, oldest first, as (sequence, text),
/// read in small pages so that pagination is exercised too.
pub async fn fetch_inbox(
    client: &mut ChatServiceClient<Channel>,
    token: &str,
) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .fetch_messages(authed(
                token,
                chat_proto::v1::FetchMessagesRequest {
                    after_sequence: after,
                    page_size: 7,
                },
            ))
            .await
            .expect("fetch messages")
            .into_inner();
        for message in &page.messages {
            seen.push((message.sequence, message.text.clone()));
            after = Some(message.sequence);
        }
        if !page.has_more {
            return seen;
        }
    }
}

/// A `SendMessage` request with a bearer token.
pub fn send_request(
    token: &str,
    to: &str,
    text: &str,
    key: &str,
) -> Request<chat_proto::v1::SendMessageRequest> {
    authed(
        token,
        chat_proto::v1::SendMessageRequest {
            recipient: to.into(),
            text: text.into(),
            idempotency_key: key.into(),
        },
    )
}
