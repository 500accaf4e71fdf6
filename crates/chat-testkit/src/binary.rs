//! The workspace's built binaries, and loopback addresses for tests.

use std::{
    io::{BufRead, BufReader},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

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
pub fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// The first of `count` consecutive loopback ports that were all free a moment ago,
/// for a program that takes a base port (the quickstart). They are drawn below
/// Linux's ephemeral range (32768 and up), where no other test's `port 0` server or
/// outgoing connection can take one between the check and its use.
pub fn free_port_run(count: u16) -> u16 {
    const FIRST: u16 = 10_000;
    const END: u16 = 32_768;
    // A different start in each process, so that test processes running at once do
    // not race through the same candidates.
    let start = FIRST + (std::process::id() % 2_000) as u16 * 10;
    let candidates = (start..END - count)
        .chain(FIRST..start)
        .step_by(count.into());
    for base in candidates {
        if (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port)).is_ok()) {
            return base;
        }
    }
    panic!("no {count} consecutive free ports between {FIRST} and {END}");
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

/// Starts `chat-server --port 0 ARGS` in `dir` (with its defaults: no `--store`
/// unless in `ARGS`), reads the first line it prints (the readiness line, once it
/// listens), kills it; returns the line.
pub fn first_line_in(dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(workspace_binary("chat-server"))
        .current_dir(dir)
        .args(["--port", "0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn chat-server");
    let stdout = child.stdout.take().expect("piped stdout");
    let first = BufReader::new(stdout).lines().next();
    let _ = child.kill();
    let _ = child.wait();
    first.expect("a first line").expect("readable")
}

/// Runs `chat-server --port 0 ARGS` (in `dir` when given), which must refuse to start:
/// exit with `code`, print nothing on stdout (it never listened) and one line on
/// stderr, which is returned.
pub fn start_up_error(dir: Option<&Path>, args: &[&str], code: i32) -> String {
    let (exit, stdout, stderr) = run_server_to_exit(dir, args);
    assert_eq!(exit, code, "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "{args:?}: it never listened: {stdout}");
    let lines = stderr.trim_end().lines().count();
    assert_eq!(lines, 1, "{args:?}: one line: {stderr}");
    stderr
}
