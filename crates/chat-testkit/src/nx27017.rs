//! A MongoDB-compatible server for tests: nx-27017 (a MongoDB wire-protocol server on
//! SQLite, from PyPI), started on a free loopback port with a temporary data directory.
//!
//! `scripts/test` installs it into `target/test-deps/nx-27017-venv` and exports
//! `CHAT_TEST_NX27017` with the path of its executable. Without that variable the
//! MongoDB tests are skipped with a loud banner, except under CI (`CI` set), where they
//! fail, so that a CI run can never pass without them.
//!
//! The server runs under a tiny bash watchdog that holds the read end of a pipe from
//! this process: when this process exits, however it exits, the pipe closes and the
//! watchdog SIGKILLs the server, so no server outlives its test run, even one kept in a
//! `static`. Closing the pipe on purpose is how [`NxServer::kill`] kills it.
//!
//! Known gaps of nx-27017 (the store never relies on them for correctness): it is never
//! a replica set, has no usable change streams, does not isolate transactions, accepts
//! majority read and write concerns without meaning, returns small Int64 values as
//! Int32, swallows errors of `findAndModify`, and serialises all commands on one
//! database.

use std::{
    io::Read,
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

/// The environment variable naming the nx-27017 executable.
pub const NX_ENV: &str = "CHAT_TEST_NX27017";

/// How long nx-27017 may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The watchdog: runs the server (arguments after `$0`) and SIGKILLs it when its own
/// stdin (a pipe from the test process) reaches end of file; exits when the server
/// exits. fd 3 keeps the pipe, because a background job's stdin is /dev/null.
const WATCHDOG: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
server=$!
{ read -r _ <&3; kill -9 "$server" 2>/dev/null; } &
wait "$server"
"#;

/// The nx-27017 executable, or `None` (after a loud banner on stderr) when it is not
/// installed. Under CI (`CI` set) a missing executable fails the test instead.
pub fn nx_executable(what: &str) -> Option<PathBuf> {
    match std::env::var_os(NX_ENV).filter(|value| !value.is_empty()) {
        Some(path) => {
            let path = PathBuf::from(path);
            assert!(
                path.is_file(),
                "{NX_ENV}={} does not name a file; run the tests with scripts/test, which \
                 installs nx-27017 into target/test-deps/nx-27017-venv",
                path.display()
            );
            Some(path)
        }
        None if std::env::var_os("CI").is_some_and(|value| !value.is_empty()) => panic!(
            "MONGODB STORE TESTS CANNOT RUN under CI: {NX_ENV} is not set. Run the tests \
             with scripts/test, which installs nx-27017 (pinned, from PyPI) into \
             target/test-deps/nx-27017-venv and sets {NX_ENV}; or install it yourself \
             (python3 -m venv DIR && DIR/bin/pip install nx-27017==0.8.1 neosqlite==1.17.2 \
             pymongo==4.20.0 dnspython==2.9.2) and set {NX_ENV}=DIR/bin/nx-27017"
        ),
        None => {
            loud(&format!(
                "\n\
                 ************************************************************************\n\
                 MONGODB STORE TESTS SKIPPED: {what}\n\
                 {NX_ENV} is not set, so there is no MongoDB-compatible server to test\n\
                 against. Run the tests with scripts/test, which installs nx-27017 into\n\
                 target/test-deps/nx-27017-venv and sets {NX_ENV}.\n\
                 ************************************************************************\n"
            ));
            None
        }
    }
}

/// Writes to the process's stderr directly: the test harness captures `eprintln!` of
/// passing tests, and a skip must be seen.
pub fn loud(text: &str) {
    use std::io::Write;
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{text}");
    let _ = stderr.flush();
}

/// A running nx-27017 server with its own data directory; killed on drop.
pub struct NxServer {
    executable: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    watchdog: Option<Child>,
    /// The write end of the watchdog's pipe: closing it kills the server.
    lifeline: Option<ChildStdin>,
}

impl NxServer {
    /// Starts a server on a free loopback port and waits until it accepts connections.
    pub fn start(executable: &Path) -> Self {
        let mut server = Self {
            executable: executable.to_path_buf(),
            dir: tempfile::tempdir().expect("temporary directory for nx-27017"),
            port: 0,
            watchdog: None,
            lifeline: None,
        };
        // Another process may take the free port between our probe and the server's
        // bind: try a few ports.
        for attempt in 1..=3 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(error) if attempt < 3 => {
                    eprintln!("nx-27017 did not start ({error}); retrying")
                }
                Err(error) => panic!("{error}"),
            }
        }
        unreachable!()
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection string for database `database` on this server. Selection and
    /// connection time-outs are short, so that tests of an unreachable server are quick.
    pub fn uri(&self, database: &str) -> String {
        format!(
            "mongodb://127.0.0.1:{}/{database}?directConnection=true\
             &serverSelectionTimeoutMS=2000&connectTimeoutMS=2000",
            self.port
        )
    }

    /// SIGKILLs the server and waits until it is gone (its port is then closed).
    pub fn kill(&mut self) {
        drop(self.lifeline.take());
        if let Some(mut watchdog) = self.watchdog.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match watchdog.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = watchdog.kill();
                        let _ = watchdog.wait();
                        panic!("nx-27017 did not die within 10 s of SIGKILL");
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// Starts the server again on the same port with the same data directory.
    pub fn restart(&mut self) {
        assert!(
            self.watchdog.is_none(),
            "kill the server before restarting it"
        );
        if let Err(error) = self.spawn_and_wait() {
            panic!("{error}");
        }
    }

    /// The server's output so far (for failure messages).
    pub fn output(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(self.output_path()) {
            let _ = file.read_to_string(&mut text);
        }
        const TAIL: usize = 4000;
        if text.len() > TAIL {
            let cut = text.len() - TAIL;
            let cut = (cut..text.len())
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(cut);
            text = format!("...{}", &text[cut..]);
        }
        text
    }

    fn output_path(&self) -> PathBuf {
        self.dir.path().join("server-output.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.output_path())
            .map_err(|e| format!("cannot create the nx-27017 output file: {e}"))?;
        let data = self.dir.path().join("data");
        let mut watchdog = Command::new("bash")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("nx-27017-watchdog")
            .arg(&self.executable)
            .arg("--data-dir")
            .arg(&data)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--log-file")
            .arg(self.dir.path().join("nx-27017.log"))
            .arg("--pid-file")
            .arg(self.dir.path().join("nx-27017.pid"))
            .stdin(Stdio::piped())
            .stdout(output.try_clone().map_err(|e| e.to_string())?)
            .stderr(output)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.executable.display()))?;
        self.lifeline = watchdog.stdin.take();
        self.watchdog = Some(watchdog);

        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let exited = self
                .watchdog
                .as_mut()
                .and_then(|w| w.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.watchdog = None;
                self.lifeline = None;
                return Err(format!(
                    "nx-27017 ({}) exited with {status} before accepting connections on \
                     {address}; its output:\n{}",
                    self.executable.display(),
                    self.output()
                ));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(format!(
                    "nx-27017 ({}) did not accept connections on {address} within \
                     {START_TIMEOUT:?}; its output:\n{}",
                    self.executable.display(),
                    self.output()
                ));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for NxServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}
