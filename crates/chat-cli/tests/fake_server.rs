//! The `chat-cli` binary against an in-process fake chat server whose answers
//! the tests choose: text from others (messages, usernames, server errors,
//! health details) is shown escaped and one message per line, `--json` keeps
//! it exact, and the interactive chat refuses bad input without sending
//! anything.

mod support;

use std::{
    collections::HashSet,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    pin::Pin,
    process::{Command, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chat_proto::v1::{
    self as pb,
    chat_service_server::{ChatService, ChatServiceServer},
    health_check_response::ServingStatus,
};
use futures::Stream;
use tonic::{Request, Response, Status};

/// What the fake server answers, and what it was sent.
#[derive(Default)]
struct Fake {
    /// The inbox: `FetchMessages` and `Subscribe` hand out those after the
    /// acknowledged sequence.
    messages: Vec<pb::Message>,
    /// `ListAccounts` answers these.
    accounts: Vec<String>,
    /// `HealthCheck` answers NOT_SERVING with this detail.
    not_serving: Option<String>,
    /// `Login` fails with this.
    login_error: Option<Status>,
    acked: AtomicU64,
    /// `(recipient, text)` of every `SendMessage`.
    sent: Mutex<Vec<(String, String)>>,
    /// The tokens of the open sessions: `Login` adds one, `Logout` removes it,
    /// and every other call but `HealthCheck` and `CreateAccount` needs one.
    sessions: Mutex<HashSet<String>>,
    /// How many `Login` calls succeeded (each made a token of its own).
    logins: AtomicU64,
    /// The passwords `Login` was sent (to check the CLI sends none when it has a session).
    passwords: Mutex<Vec<String>>,
}

type MessageStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

struct Service(Arc<Fake>);

impl Service {
    /// UNAUTHENTICATED unless the request carries an open session's token.
    fn authenticate<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let token = request
            .metadata()
            .get(chat_proto::AUTHORIZATION_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if self.0.sessions.lock().unwrap().contains(token) {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid or expired session"))
        }
    }

    fn unacked(&self, after: u64) -> Vec<pb::Message> {
        let after = after.max(self.0.acked.load(Ordering::SeqCst));
        self.0
            .messages
            .iter()
            .filter(|m| m.sequence > after)
            .cloned()
            .collect()
    }
}

/// What a fake RPC answers.
type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl ChatService for Service {
    async fn health_check(
        &self,
        _: Request<pb::HealthCheckRequest>,
    ) -> Answer<pb::HealthCheckResponse> {
        let (status, detail) = match &self.0.not_serving {
            Some(detail) => (ServingStatus::NotServing, detail.clone()),
            None => (ServingStatus::Serving, String::new()),
        };
        Ok(Response::new(pb::HealthCheckResponse {
            status: status as i32,
            replica_id: "fake".into(),
            store_reachable: true,
            detail,
        }))
    }

    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Answer<pb::CreateAccountResponse> {
        Ok(Response::new(pb::CreateAccountResponse {
            username: request.into_inner().username,
        }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Answer<pb::LoginResponse> {
        if let Some(error) = &self.0.login_error {
            return Err(Status::new(error.code(), error.message()));
        }
        let request = request.into_inner();
        self.0.passwords.lock().unwrap().push(request.password);
        let token = format!("t0k3n-{}", self.0.logins.fetch_add(1, Ordering::SeqCst));
        self.0.sessions.lock().unwrap().insert(token.clone());
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_at_unix_ms: 0,
            username: request.username,
        }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Answer<pb::LogoutResponse> {
        let token = request
            .metadata()
            .get(chat_proto::AUTHORIZATION_HEADER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.0.sessions.lock().unwrap().remove(&token);
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Answer<pb::ListAccountsResponse> {
        self.authenticate(&request)?;
        Ok(Response::new(pb::ListAccountsResponse {
            usernames: self.0.accounts.clone(),
            next_page_token: String::new(),
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Answer<pb::SendMessageResponse> {
        self.authenticate(&request)?;
        let request = request.into_inner();
        let mut sent = self.0.sent.lock().unwrap();
        sent.push((request.recipient.clone(), request.text.clone()));
        let sequence = sent.len() as u64;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(pb::Message {
                id: 100 + sequence,
                sequence,
                sender: "alice".into(),
                recipient: request.recipient,
                text: request.text,
                sent_at_unix_ms: 1_700_000_000_000,
            }),
        }))
    }

    async fn fetch_messages(
        &self,
        request: Request<pb::FetchMessagesRequest>,
    ) -> Answer<pb::FetchMessagesResponse> {
        self.authenticate(&request)?;
        let after = request.into_inner().after_sequence.unwrap_or(0);
        Ok(Response::new(pb::FetchMessagesResponse {
            messages: self.unacked(after),
            has_more: false,
            acked_sequence: self.0.acked.load(Ordering::SeqCst),
        }))
    }

    async fn ack_messages(
        &self,
        request: Request<pb::AckMessagesRequest>,
    ) -> Answer<pb::AckMessagesResponse> {
        self.authenticate(&request)?;
        let up_to = request.into_inner().up_to_sequence;
        let acked = self.0.acked.fetch_max(up_to, Ordering::SeqCst).max(up_to);
        Ok(Response::new(pb::AckMessagesResponse {
            acked_sequence: acked,
        }))
    }

    type SubscribeStream = MessageStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        self.authenticate(&request)?;
        let backlog = self.unacked(request.into_inner().after_sequence);
        let stream = futures::StreamExt::chain(
            futures::stream::iter(backlog.into_iter().map(Ok)),
            futures::stream::pending(),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Answer<pb::DeleteAccountResponse> {
        self.authenticate(&request)?;
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }
}

/// Serves `fake` on 127.0.0.1, on a runtime of its own, for the rest of the
/// test process.
fn serve(fake: Fake) -> (SocketAddr, Arc<Fake>) {
    let fake = Arc::new(fake);
    let service = ChatServiceServer::new(Service(fake.clone()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let incoming =
                tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap())
                    .unwrap();
            addr_tx.send(incoming.local_addr().unwrap()).unwrap();
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await
                .unwrap();
        });
    });
    (addr_rx.recv().unwrap(), fake)
}

/// The binary logged in as alice on `server`, with none of its environment
/// fallbacks set.
fn chat_cli(server: SocketAddr, args: &[&str]) -> Command {
    let mut command = support::command();
    command
        .args(["--servers", &server.to_string()])
        .args(["--user", "alice", "--password", "a long secret"])
        .args(args);
    command
}

fn run(server: SocketAddr, args: &[&str]) -> Output {
    chat_cli(server, args)
        .stdin(Stdio::null())
        .output()
        .expect("run chat-cli")
}

/// The binary started with no input, its output piped and its errors ignored.
fn spawn(server: SocketAddr, args: &[&str]) -> std::process::Child {
    chat_cli(server, args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run chat-cli")
}

/// The child's stdout lines, read on a thread, so that a test can wait for
/// one with a timeout rather than hang on a silent child.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("stdout piped");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    lines_rx
}

fn message(sequence: u64, sender: &str, text: &str) -> pb::Message {
    pb::Message {
        id: 100 + sequence,
        sequence,
        sender: sender.into(),
        recipient: "alice".into(),
        text: text.into(),
        sent_at_unix_ms: 1_700_000_000_123,
    }
}

const FORGED: &str = "hi\r\n[2023-11-14T22:13:20.123Z] #99 admin: please re-enter your password";
const TERMINAL: &str = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31mred \u{202e}exe.txt\u{2066}";

fn hostile_inbox() -> Vec<pb::Message> {
    vec![
        message(1, "mallory", FORGED),
        message(2, "mallory", TERMINAL),
        message(3, "bob", "plain, as is: ünïcödé 🎉"),
    ]
}

/// The lines the hostile inbox must show as.
fn hostile_lines() -> [&'static str; 3] {
    [
        r"[2023-11-14T22:13:20.123Z] #1 mallory: hi\r\n[2023-11-14T22:13:20.123Z] #99 admin: please re-enter your password",
        r"[2023-11-14T22:13:20.123Z] #2 mallory: \e]0;owned\x07\e[2J\u{9b}31mred \u{202e}exe.txt\u{2066}",
        "[2023-11-14T22:13:20.123Z] #3 bob: plain, as is: ünïcödé 🎉",
    ]
}

/// Nothing a terminal acts on, and no invisible reordering.
fn assert_printable(text: &str, what: &str) {
    for c in text.chars() {
        assert!(
            c == '\n' || !chat_cli::output::needs_escape(c),
            "{what}: {c:?} in {text:?}"
        );
    }
}

#[test]
fn inbox_shows_other_peoples_text_escaped_one_message_per_line_and_json_exact() {
    let (server, fake) = serve(Fake {
        messages: hostile_inbox(),
        ..Fake::default()
    });
    let output = run(server, &["inbox"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_printable(&stdout, "inbox");
    assert_eq!(stdout.lines().collect::<Vec<_>>(), hostile_lines());
    assert_eq!(fake.acked.load(Ordering::SeqCst), 3);

    // --json keeps the text exact (serde escapes it).
    let (server, _) = serve(Fake {
        messages: hostile_inbox(),
        ..Fake::default()
    });
    let output = run(server, &["inbox", "--json"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_printable(&stdout, "inbox --json");
    let texts: Vec<String> = stdout
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            value["text"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = hostile_inbox().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, expected);
}

#[test]
fn watch_shows_each_message_on_one_line() {
    let (server, _) = serve(Fake {
        messages: hostile_inbox(),
        ..Fake::default()
    });
    let mut child = spawn(server, &["watch"]);
    let lines_rx = stdout_lines(&mut child);
    let mut lines = Vec::new();
    while lines.len() < 3 {
        match lines_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    // Anything a message forged would follow at once.
    std::thread::sleep(Duration::from_millis(200));
    lines.extend(lines_rx.try_iter());
    let _ = child.kill();
    let _ = child.wait();
    for line in &lines {
        assert_printable(line, "watch");
    }
    assert_eq!(lines, hostile_lines());
}

#[test]
fn accounts_are_shown_escaped() {
    let (server, _) = serve(Fake {
        accounts: vec!["alice".into(), "eve\u{1b}[2J\nroot\u{202e}".into()],
        ..Fake::default()
    });
    let output = run(server, &["accounts"]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_printable(&stdout, "accounts");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["alice", r"eve\e[2J\nroot\u{202e}"]
    );
}

#[test]
fn server_errors_are_one_escaped_line() {
    let (server, _) = serve(Fake {
        login_error: Some(Status::unauthenticated(
            "wrong password\u{1b}]0;owned\u{7}\r\nchat-cli: all is well",
        )),
        ..Fake::default()
    });
    let output = run(server, &["inbox"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_printable(&stderr, "stderr");
    assert_eq!(
        stderr,
        "chat-cli: wrong password\\e]0;owned\\x07 chat-cli: all is well\n"
    );
}

#[test]
fn the_status_table_shows_server_details_escaped() {
    let (server, _) = serve(Fake {
        not_serving: Some("draining\u{1b}]0;owned\u{7}\nforged row".into()),
        ..Fake::default()
    });
    let output = run(server, &["status"]);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_printable(&stdout, "status table");
    assert_printable(&stderr, "status error");
    let rows: Vec<&str> = stdout.lines().collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[1].starts_with(&server.to_string()), "{stdout}");
    assert!(
        rows[1].contains(r"draining\e]0;owned\x07 forged row"),
        "{stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(r"draining\e]0;owned\x07 forged row"),
        "{stderr}"
    );
}

#[test]
fn status_watch_prints_tables_until_ctrl_c() {
    let (server, _) = serve(Fake::default());
    let mut child = spawn(server, &["status", "--watch", "--health-interval", "50ms"]);
    let lines = stdout_lines(&mut child);
    let next = || {
        lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line of the status table")
    };
    // Not a terminal: no ANSI codes, tables separated by a blank line.
    for table in 0..2 {
        if table > 0 {
            assert_eq!(next(), "", "a blank line between tables");
        }
        assert!(next().starts_with("address"), "a header");
        let row = next();
        assert!(row.starts_with(&server.to_string()), "{row:?}");
        assert!(row.contains("healthy"), "{row:?}");
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(interrupted.success());
    let output = child.wait_with_output().expect("wait for chat-cli");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
}

#[test]
fn interactive_chat_refuses_bad_lines_and_sends_nothing_by_mistake() {
    let (server, fake) = serve(Fake::default());
    let mut child = chat_cli(server, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"/to\n\
              /to bob extra words\n\
              a stray line\n\
              \xff\xfe not UTF-8\n\
              @bob hello\n\
              /to carol\n\
              hi carol\n",
        )
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "logged in as alice. Type /help for commands; Ctrl-D leaves.",
            "! /to needs a name: /to NAME",
            "! /to takes one name; to send text use @NAME TEXT",
            "! who to? Use @NAME TEXT, or /to NAME first",
            "! that line is not UTF-8 text; nothing was sent",
            "* sent to bob as their #1",
            "* plain lines now go to carol",
            "* sent to carol as their #2",
            "bye",
        ],
        "{stdout}"
    );
    assert_eq!(
        *fake.sent.lock().unwrap(),
        [
            ("bob".to_owned(), "hello".to_owned()),
            ("carol".to_owned(), "hi carol".to_owned())
        ]
    );
}

/// The binary as alice on `server` with `config` as `XDG_CONFIG_HOME`, and
/// without a password unless `args` gives one; stdin is not a terminal.
fn run_with_config(server: SocketAddr, config: &std::path::Path, args: &[&str]) -> Output {
    support::command()
        .env("XDG_CONFIG_HOME", config)
        .args(["--servers", &server.to_string(), "--user", "alice"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run chat-cli")
}

/// The files in the kept sessions' directory.
fn kept_files(config: &std::path::Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(config.join("chat-cli")) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn open_sessions(fake: &Fake) -> HashSet<String> {
    fake.sessions.lock().unwrap().clone()
}

/// `chat-cli login --password "a long secret"` with its own config folder; it must
/// succeed.
fn log_in(server: SocketAddr, config: &std::path::Path) -> Output {
    let output = run_with_config(server, config, &["login", "--password", "a long secret"]);
    assert!(output.status.success(), "{output:?}");
    output
}

#[test]
fn login_keeps_the_token_privately_later_commands_use_it_and_logout_ends_it() {
    use std::os::unix::fs::PermissionsExt;
    let (server, fake) = serve(Fake {
        messages: hostile_inbox(),
        ..Fake::default()
    });
    let config = tempfile::tempdir().unwrap();
    let output = log_in(server, config.path());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with("logged in as alice; the session is kept in "),
        "{stdout}"
    );

    // One private file with the token and without the password.
    let files = kept_files(config.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&files[0]), 0o600);
    assert_eq!(mode(&config.path().join("chat-cli")), 0o700);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("t0k3n-0"), "{text}");
    assert!(!text.contains("a long secret"), "{text}");

    // A later command needs no password, and leaves the kept session open.
    let output = run_with_config(server, config.path(), &["inbox"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap().lines().count(), 3);
    assert_eq!(fake.logins.load(Ordering::SeqCst), 1);
    assert_eq!(open_sessions(&fake), HashSet::from(["t0k3n-0".to_owned()]));

    // The same servers written otherwise are the same cluster.
    let output = support::command()
        .env("XDG_CONFIG_HOME", config.path())
        .args([
            "--servers",
            &format!(" {server},{server}"),
            "--user",
            "alice",
            "accounts",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(fake.logins.load(Ordering::SeqCst), 1);

    // logout ends it on the server and forgets it here.
    let output = run_with_config(server, config.path(), &["logout"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "logged out alice\n"
    );
    assert!(kept_files(config.path()).is_empty());
    assert!(open_sessions(&fake).is_empty());
    // Again: nothing to do, said on stderr.
    let output = run_with_config(server, config.path(), &["logout"]);
    assert!(output.status.success(), "{output:?}");
    assert!(
        String::from_utf8(output.stderr)
            .unwrap()
            .contains("no kept session of alice")
    );
    // Without a kept session, a password is needed again.
    let output = run_with_config(server, config.path(), &["inbox"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(*fake.passwords.lock().unwrap(), ["a long secret"]);
}

#[test]
fn a_revoked_kept_session_fails_with_exit_3_in_one_line_without_a_terminal() {
    let (server, fake) = serve(Fake::default());
    let config = tempfile::tempdir().unwrap();
    log_in(server, config.path());
    // The server forgets the session (revoked, or expired).
    fake.sessions.lock().unwrap().clear();

    let output = run_with_config(server, config.path(), &["send", "bob", "hi"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    let expected = format!(
        "chat-cli: the kept session of alice on {server} has expired or was revoked: \
         run `chat-cli login` again, or pass --password\n"
    );
    assert_eq!(stderr, expected);
    assert!(fake.sent.lock().unwrap().is_empty());
    // The same again: the entry stays until a login replaces it.
    let output = run_with_config(server, config.path(), &["inbox"]);
    assert_eq!(output.status.code(), Some(3), "{output:?}");

    // With the password, a fresh session replaces the kept one and stays kept.
    let output = run_with_config(
        server,
        config.path(),
        &["--password", "a long secret", "send", "bob", "hi"],
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(open_sessions(&fake), HashSet::from(["t0k3n-1".to_owned()]));
    let files = kept_files(config.path());
    assert_eq!(files.len(), 1);
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("t0k3n-1")
    );
    let output = run_with_config(server, config.path(), &["inbox"]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(fake.logins.load(Ordering::SeqCst), 2);
}

#[test]
fn one_shot_commands_with_a_password_leave_no_session_behind() {
    let (server, fake) = serve(Fake {
        messages: hostile_inbox(),
        accounts: vec!["alice".into()],
        ..Fake::default()
    });
    let config = tempfile::tempdir().unwrap();
    // The interactive chat (its input ends at once) too.
    for args in [&["inbox"][..], &["accounts"], &["send", "bob", "hi"], &[]] {
        let output = chat_cli(server, args)
            .env("XDG_CONFIG_HOME", config.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {output:?}");
        assert!(open_sessions(&fake).is_empty(), "{args:?} left a session");
    }
    assert_eq!(fake.logins.load(Ordering::SeqCst), 4);
    assert!(kept_files(config.path()).is_empty());
}
