//! The `chat-cli` binary against real replicas: every subcommand, `--json` output,
//! errors and exit codes, `watch` across a SIGKILL, and the interactive mode over stdin.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use chat_proto::v1::{FetchMessagesRequest, LogoutRequest, SendMessageRequest};
use chat_testkit::{PASSWORD, Replica, SharedStore, authed, client, login};
use serde_json::Value;

const LINE_TIMEOUT: Duration = Duration::from_secs(20);

/// A `chat-cli` command against `servers`, with fast health checks.
fn cli(servers: &str) -> Command {
    let mut command = Command::new(chat_testkit::workspace_binary("chat-cli"));
    command
        .env_remove("CHAT_USER")
        .env_remove("CHAT_PASSWORD")
        .env("CHAT_SERVERS", servers)
        .env("XDG_CONFIG_HOME", no_config_dir())
        .args(["--health-interval", "100ms", "--health-timeout", "250ms"])
        .stdin(Stdio::null());
    command
}

/// A config directory of a command's own that does not exist, so that no
/// session the user keeps is used (a test of kept sessions sets it again).
fn no_config_dir() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("chat-cli-no-config")
        .join(format!("{}-{n}", std::process::id()))
}

/// Runs a `chat-cli` command to completion (bounded by the CLI's own timeouts).
fn run(command: &mut Command) -> Output {
    command.output().expect("run chat-cli")
}

fn as_user<'a>(command: &'a mut Command, user: &str) -> &'a mut Command {
    command.args(["--user", user, "--password", PASSWORD])
}

fn stdout_json(output: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts a failed run: the exit code, one line on stderr mentioning `needle`.
fn assert_error(output: &Output, code: i32, needle: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("chat-cli: "), "{err:?}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err:?}");
}

/// A child process whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    errors: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(command: &mut Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn chat-cli");
        let lines = forward_lines(child.stdout.take().expect("stdout"));
        let errors = forward_lines(child.stderr.take().expect("stderr"));
        Self {
            child,
            lines,
            errors,
        }
    }

    /// The next stdout line (bounded).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(LINE_TIMEOUT)
            .unwrap_or_else(|_| panic!("no output within {LINE_TIMEOUT:?}"))
    }

    /// The next stderr line containing `needle` (bounded).
    fn stderr_line_containing(&self, needle: &str) -> String {
        loop {
            let line = self
                .errors
                .recv_timeout(LINE_TIMEOUT)
                .unwrap_or_else(|_| panic!("no stderr line with {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines(pipe: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn every_subcommand_with_json_output() {
    let store = SharedStore::new();
    let (a, b) = (Replica::start(&store), Replica::start(&store));
    let dead = chat_testkit::dead_address().to_string();
    let servers = format!("{},{},{dead}", a.address(), b.address());

    for user in ["alice", "bob"] {
        let output = run(as_user(cli(&servers).args(["register", "--json"]), user));
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout_json(&output)[0]["username"], user);
    }

    // Global flags after the subcommand work too.
    let sent = run(as_user(
        cli(&servers).args(["send", "bob", "hello bob", "--json"]),
        "alice",
    ));
    assert!(sent.status.success(), "{}", stderr(&sent));
    let sent = &stdout_json(&sent)[0];
    assert_eq!(
        (sent["sender"].as_str(), sent["sequence"].as_u64()),
        (Some("alice"), Some(1))
    );

    let mut from_stdin = as_user(cli(&servers).args(["--json", "send", "bob", "-"]), "alice")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    from_stdin
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"line one\nline two\n")
        .expect("write");
    let from_stdin = from_stdin.wait_with_output().expect("wait");
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    assert_eq!(stdout_json(&from_stdin)[0]["text"], "line one\nline two");

    let accounts = run(as_user(
        cli(&servers).args(["accounts", "b*", "--json"]),
        "alice",
    ));
    assert!(accounts.status.success(), "{}", stderr(&accounts));
    assert_eq!(stdout_json(&accounts).len(), 1);
    assert_eq!(stdout_json(&accounts)[0]["username"], "bob");

    let inbox = run(as_user(cli(&servers).args(["inbox", "--json"]), "bob"));
    assert!(inbox.status.success(), "{}", stderr(&inbox));
    let messages = stdout_json(&inbox);
    assert_eq!(messages.len(), 2);
    for (message, (sequence, text)) in messages
        .iter()
        .zip([(1, "hello bob"), (2, "line one\nline two")])
    {
        assert_eq!(message["sequence"], sequence);
        assert_eq!(message["text"], text);
        assert_eq!(message["sender"], "alice");
        assert_eq!(message["recipient"], "bob");
        assert!(message["id"].as_u64().is_some());
        assert!(message["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let again = run(as_user(cli(&servers).args(["inbox", "--json"]), "bob"));
    assert!(again.status.success());
    assert!(
        stdout_json(&again).is_empty(),
        "inbox acknowledged what it printed"
    );

    let status = run(cli(&servers).args(["status", "--json"]));
    assert!(status.status.success(), "{}", stderr(&status));
    let rows = stdout_json(&status);
    assert_eq!(rows.len(), 3);
    let health_of = |address: &str| {
        rows.iter()
            .find(|row| row["address"] == address)
            .map(|row| row["health"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(
        health_of(&a.address().to_string()).as_deref(),
        Some("healthy")
    );
    assert_eq!(
        health_of(&b.address().to_string()).as_deref(),
        Some("healthy")
    );
    assert_ne!(health_of(&dead).as_deref(), Some("healthy"));

    let deleted = run(as_user(cli(&servers).args(["delete-account"]), "bob"));
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_error(
        &run(as_user(cli(&servers).arg("inbox"), "bob")),
        4,
        "no account named",
    );
}

#[tokio::test]
async fn errors_are_one_readable_line_with_distinct_exit_codes() {
    let store = SharedStore::new();
    let a = Replica::start(&store);
    let servers = a.address().to_string();
    assert!(
        run(as_user(cli(&servers).arg("register"), "alice"))
            .status
            .success()
    );

    assert_error(
        &run(cli(&format!("{servers},not-an-address")).arg("status")),
        2,
        "not-an-address",
    );
    assert_error(
        &run(cli(&servers).args(["inbox", "--user", "alice", "--password", "wrong password"])),
        3,
        "wrong password",
    );
    assert_error(
        &run(as_user(cli(&servers).arg("inbox"), "nobody")),
        4,
        "nobody",
    );
    assert_error(
        &run(cli(&servers).args(["inbox", "--user", "alice"])),
        2,
        "--password",
    );
    assert_error(
        &run(as_user(cli(&servers).args(["send", "alice", ""]), "alice")),
        2,
        "empty",
    );
    // Registering again with the same password is a harmless retry; another is a clash.
    assert!(
        run(as_user(cli(&servers).arg("register"), "alice"))
            .status
            .success()
    );
    assert_error(
        &run(cli(&servers).args(["register", "--user", "ALICE", "--password", "another one"])),
        6,
        "taken",
    );
    // Password guesses are throttled: after five wrong ones, even the right one waits.
    let guess = ["inbox", "--user", "alice", "--password", "wrong password"];
    for _ in 0..5 {
        assert_error(&run(cli(&servers).args(guess)), 3, "wrong password");
    }
    assert_error(
        &run(as_user(cli(&servers).arg("inbox"), "alice")),
        7,
        "try again in",
    );

    let (dead1, dead2) = (
        chat_testkit::dead_address().to_string(),
        chat_testkit::dead_address().to_string(),
    );
    let unreachable = run(as_user(
        cli(&format!("{dead1},{dead2}")).arg("inbox"),
        "alice",
    ));
    assert_error(&unreachable, 5, &dead1);
    assert!(stderr(&unreachable).contains(&dead2), "names every server");
    assert_error(
        &run(cli(&format!("{dead1},{dead2}")).arg("status")),
        5,
        "healthy",
    );
}

#[tokio::test]
async fn watch_prints_live_messages_and_survives_the_kill_of_its_replica() {
    let store = SharedStore::new();
    let mut replicas = Replica::start_several(&store, 3);
    let servers = replicas
        .iter()
        .map(|r| r.address().to_string())
        .collect::<Vec<_>>()
        .join(",");
    for user in ["alice", "bob"] {
        assert!(
            run(as_user(cli(&servers).arg("register"), user))
                .status
                .success()
        );
    }
    let watch = Running::spawn(as_user(cli(&servers).args(["watch", "--json"]), "bob"));
    let via = watch.stderr_line_containing("watching via");

    let mut sender = client(&replicas[0]).await;
    let alice = login(&mut sender, "alice", PASSWORD).await;
    let send = async |sender: &mut chat_proto::v1::chat_service_client::ChatServiceClient<
        tonic::transport::Channel,
    >,
                      i: u32| {
        sender
            .send_message(authed(
                &alice,
                SendMessageRequest {
                    recipient: "bob".into(),
                    text: format!("message {i}"),
                    idempotency_key: format!("watch-{i}"),
                },
            ))
            .await
            .expect("send");
    };
    let mut received = Vec::new();
    for i in 1..=5 {
        send(&mut sender, i).await;
        let line: Value = serde_json::from_str(&watch.next_line()).expect("json");
        received.push((
            line["sequence"].as_u64().unwrap(),
            line["text"].as_str().unwrap().to_owned(),
        ));
    }

    // Kill the replica that serves the stream (the notice names it).
    let victim = replicas
        .iter()
        .position(|r| via.contains(&r.address().to_string()))
        .unwrap_or_else(|| panic!("{via:?} names none of the replicas"));
    replicas[victim].kill().await.expect("kill the replica");
    let survivor = &replicas[(victim + 1) % 3];
    let mut sender = client(survivor).await;
    for i in 6..=10 {
        send(&mut sender, i).await;
    }
    for _ in 6..=10 {
        let line: Value = serde_json::from_str(&watch.next_line()).expect("json");
        received.push((
            line["sequence"].as_u64().unwrap(),
            line["text"].as_str().unwrap().to_owned(),
        ));
    }
    let expected: Vec<(u64, String)> = (1..=10)
        .map(|i| (i as u64, format!("message {i}")))
        .collect();
    assert_eq!(
        received, expected,
        "every message once, in order, across the failover"
    );
    watch.stderr_line_containing("failover");

    // What watch printed, it acknowledged.
    let mut reader = client(survivor).await;
    let bob = login(&mut reader, "bob", PASSWORD).await;
    let unread = chat_testkit::fetch_inbox(&mut reader, &bob).await;
    assert!(unread.is_empty(), "{unread:?}");
}

#[tokio::test]
async fn interactive_mode_sends_receives_live_and_quits_on_end_of_input() {
    let store = SharedStore::new();
    let (a, b) = (Replica::start(&store), Replica::start(&store));
    let servers = format!("{},{}", a.address(), b.address());
    for user in ["alice", "bob"] {
        assert!(
            run(as_user(cli(&servers).arg("register"), user))
                .status
                .success()
        );
    }
    let mut chat = Running::spawn(as_user(cli(&servers).stdin(Stdio::piped()), "alice"));
    let mut input = chat.child.stdin.take().expect("stdin");
    assert!(chat.next_line().contains("logged in as alice"));

    writeln!(input, "@bob hello from the prompt").expect("write");
    assert!(chat.next_line().contains("sent to bob"));
    let mut on_b = client(&b).await;
    let bob = login(&mut on_b, "bob", PASSWORD).await;
    let inbox = chat_testkit::fetch_inbox(&mut on_b, &bob).await;
    assert_eq!(inbox[0].1, "hello from the prompt");

    // A message from bob shows up without alice asking.
    on_b.send_message(authed(
        &bob,
        SendMessageRequest {
            recipient: "alice".into(),
            text: "hi alice, live".into(),
            idempotency_key: "live-1".into(),
        },
    ))
    .await
    .expect("send");
    let live = chat.next_line();
    assert!(live.contains("bob: hi alice, live"), "{live:?}");

    writeln!(input, "/inbox 5").expect("write");
    assert!(
        chat.next_line().contains("#1 bob: hi alice, live"),
        "history shows it"
    );

    writeln!(input, "/accounts b*").expect("write");
    assert_eq!(chat.next_line(), "bob");
    writeln!(input, "/nonsense").expect("write");
    assert!(chat.next_line().contains("unknown command"));

    drop(input); // Ctrl-D
    assert_eq!(chat.next_line(), "bye");
    let status = chat.child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
}

/// How many sessions the store holds, expired ones included.
fn session_count(store: &SharedStore) -> i64 {
    rusqlite::Connection::open(store.path())
        .expect("open the shared database")
        .query_row("SELECT COUNT(*) FROM sessions", [], |row| row.get(0))
        .expect("count sessions")
}

/// The token of the one session kept under `config`.
fn kept_token(config: &std::path::Path) -> String {
    let files: Vec<_> = std::fs::read_dir(config.join("chat-cli"))
        .expect("the kept sessions' directory")
        .map(|entry| entry.expect("an entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("read the kept session");
    assert!(!text.contains(PASSWORD), "the password is kept: {text}");
    let value: Value = serde_json::from_str(&text).expect("a JSON entry");
    value["token"].as_str().expect("a token").to_owned()
}

#[tokio::test]
async fn login_keeps_a_session_for_later_commands_and_logout_ends_it() {
    let store = SharedStore::new();
    let (a, b) = (Replica::start(&store), Replica::start(&store));
    let servers = format!("{},{}", a.address(), b.address());
    let config = tempfile::tempdir().expect("a temporary config directory");
    let alice = |args: &[&str]| {
        let mut command = cli(&servers);
        command
            .env("XDG_CONFIG_HOME", config.path())
            .args(["--user", "alice"])
            .args(args);
        run(&mut command)
    };
    let register = alice(&["--password", PASSWORD, "register"]);
    assert!(register.status.success(), "{}", stderr(&register));
    // A command run with the password and no kept session leaves no session.
    let inbox = alice(&["--password", PASSWORD, "inbox"]);
    assert!(inbox.status.success(), "{}", stderr(&inbox));
    assert_eq!(session_count(&store), 0);

    let login = alice(&["--password", PASSWORD, "login", "--json"]);
    assert!(login.status.success(), "{}", stderr(&login));
    assert_eq!(stdout_json(&login)[0]["username"], "alice");
    assert_eq!(session_count(&store), 1);
    let token = kept_token(config.path());
    // Later commands need no password, and leave the session open.
    let sent = alice(&["send", "alice", "a note to self"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    let inbox = alice(&["inbox"]);
    assert!(inbox.status.success(), "{}", stderr(&inbox));
    assert!(String::from_utf8_lossy(&inbox.stdout).contains("alice: a note to self"));
    assert_eq!(session_count(&store), 1);

    // Revoked on the server: exit 3, one line.
    let mut direct = client(&a).await;
    direct
        .logout(authed(&token, LogoutRequest {}))
        .await
        .expect("revoke");
    assert_error(&alice(&["inbox"]), 3, "has expired or was revoked");

    // A fresh login replaces it; logout ends it on the server and forgets it.
    let login = alice(&["--password", PASSWORD, "login"]);
    assert!(login.status.success(), "{}", stderr(&login));
    let token = kept_token(config.path());
    let logout = alice(&["logout"]);
    assert!(logout.status.success(), "{}", stderr(&logout));
    assert_eq!(session_count(&store), 0);
    let gone = direct
        .fetch_messages(authed(&token, FetchMessagesRequest::default()))
        .await
        .expect_err("the session is gone");
    assert_eq!(gone.code(), tonic::Code::Unauthenticated);
    assert_eq!(
        std::fs::read_dir(config.path().join("chat-cli"))
            .expect("the directory stays")
            .count(),
        0
    );
}
