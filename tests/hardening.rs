//! Bounded resources and careless input, against real `chat-server` processes: idle
//! connections cannot take every descriptor, a mistyped store is an error that creates
//! nothing, and settings that cannot work are refused in one line.

mod common;

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chat_proto::v1::HealthCheckRequest;
use common::{Replica, SharedStore};
use futures::StreamExt;

/// Raises this process's soft open-file limit to its hard limit (the test holds
/// thousands of sockets); returns the new soft limit.
fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

#[tokio::test]
async fn idle_connections_cannot_take_every_descriptor() {
    const IDLE: usize = 3000;
    assert!(
        raise_own_fd_limit() > IDLE as u64 + 200,
        "the test needs more than {IDLE} descriptors"
    );
    let store = SharedStore::new();
    // 256 descriptors: the default connection limit leaves 64 of them to the process.
    let replica =
        Replica::start_logged_with_fd_limit(&store, &["--handshake-timeout", "1s"], Some(256));
    replica
        .wait_for_log("max_connections=192", 1, Duration::from_secs(5))
        .await;

    // Connections that never send a byte, opened many at a time (a connection whose
    // SYN the kernel dropped while the listener's queue was full waits a second to try
    // again: in parallel, those waits overlap).
    let address = replica.address;
    let idle: Vec<tokio::net::TcpStream> = futures::stream::iter(0..IDLE)
        .map(|_| tokio::net::TcpStream::connect(address))
        .buffer_unordered(500)
        .filter_map(|connected| async move { connected.ok() })
        .collect()
        .await;
    assert!(
        idle.len() > IDLE / 2,
        "only {} connections opened",
        idle.len()
    );
    replica
        .wait_for_log("connection limit reached", 1, Duration::from_secs(10))
        .await;
    // The replica closes every one of them: refused at once beyond the limit, or
    // after the handshake timeout.
    let closed = futures::future::join_all(idle.into_iter().map(|mut stream| async move {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(
                Duration::from_secs(20),
                tokio::io::AsyncReadExt::read(&mut stream, &mut byte)
            )
            .await,
            Ok(Ok(0) | Err(_))
        )
    }))
    .await;
    let open = closed.iter().filter(|closed| !**closed).count();
    assert_eq!(open, 0, "{open} idle connections are still open");
    replica
        .wait_for_log(
            "closed for not completing their handshake in time",
            1,
            Duration::from_secs(10),
        )
        .await;

    // Once the handshake timeout has passed, a fresh client is served at once.
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(1), async {
        let mut client = common::client(&replica).await;
        client.health_check(HealthCheckRequest {}).await
    })
    .await
    .expect("a fresh health check answers within a second")
    .expect("health check");
    assert!(answer.into_inner().store_reachable);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// Runs `chat-server ARGS` in `dir`; it must exit without listening. Returns the exit
/// code and stderr.
fn run_in(dir: &std::path::Path, args: &[&str]) -> (i32, String) {
    let (code, stdout, stderr) = common::run_server_to_exit(Some(dir), args);
    assert!(stdout.is_empty(), "it never listened: {stdout}");
    (code, stderr)
}

#[test]
fn a_mistyped_store_is_a_one_line_error_that_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (store, reason) in [
        ("postgres://x/y", "unknown scheme \"postgres:\""),
        ("mongo://db:27017/chat", "unknown scheme \"mongo:\""),
        ("sqlit:chat.db", "unknown scheme \"sqlit:\""),
        ("sqlite:no/such/dir/chat.db", "does not exist"),
        ("no/such/dir/chat.db", "does not exist"),
    ] {
        let (code, stderr) = run_in(dir.path(), &["--store", store]);
        assert_eq!(code, 1, "{store}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{store}: {stderr}");
        assert!(stderr.contains(reason), "{store}: {stderr}");
        let created: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
        assert!(created.is_empty(), "{store}: created {created:?}");
    }
}

#[test]
fn the_default_store_is_created_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(common::workspace_binary("chat-server"))
        .current_dir(dir.path())
        .args(["--port", "0"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn chat-server");
    let stdout = child.stdout.take().expect("stdout");
    let ready = BufReader::new(stdout).lines().next();
    let _ = child.kill();
    let _ = child.wait();
    let line = ready.expect("a readiness line").expect("readable");
    assert!(line.starts_with("chat-server listening on "), "{line}");
    let database = dir.path().join("chat-data").join("chat.db");
    let mode = std::fs::metadata(&database)
        .expect("the default database exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn settings_that_cannot_work_are_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (flag, value) in [
        ("--session-ttl", "0s"),
        ("--store-check-timeout", "0s"),
        ("--store-check-interval", "0s"),
        ("--feed-poll-interval", "0s"),
        ("--drain-timeout", "0s"),
        ("--handshake-timeout", "0s"),
        ("--max-connections", "0"),
    ] {
        let (code, stderr) = run_in(dir.path(), &[flag, value]);
        assert_eq!(code, 2, "{flag} {value}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{flag}: {stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    let (_, stderr) = run_in(dir.path(), &["--session-ttl", "0s"]);
    assert!(stderr.contains("must be from 1m to 30days"), "{stderr}");
}
