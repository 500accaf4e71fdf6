//! What a real `chat-server` logs at `RUST_LOG=trace`, in both `--log-format`s: a
//! non-trivial log with never a password, a session token or a message's text in it,
//! and, in `json`, one JSON object per line.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chat_proto::v1::{
    CreateAccountRequest, FetchMessagesRequest, LoginRequest, LogoutRequest, SubscribeRequest,
    chat_service_client::ChatServiceClient,
};
use chat_testkit::{
    SharedStore, StoreFixture, authed, login, next_message, refused, register_and_login, send,
    workspace_binary,
};
use tonic::Code;

/// The account's password, distinctive enough that any occurrence is a leak.
const PASSWORD: &str = "pw-Zebra-Quokka-7731";
/// A wrong password tried for the same account.
const WRONG_PASSWORD: &str = "pw-Narwhal-Gecko-4410";
/// A message's text.
const TEXT: &str = "text-Heliotrope-Kumquat-5525";
/// A token the server never issued.
const BOGUS_TOKEN: &str = "token-Bogus-Marmot-9902";

/// A `chat-server` process whose stderr goes to a file.
struct LoggedServer {
    child: Child,
    address: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl LoggedServer {
    /// Starts `chat-server` on `store` at `RUST_LOG=trace` in `format`; returns once it
    /// printed its readiness line.
    fn start(store: &SharedStore, format: &str) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = Command::new(workspace_binary("chat-server"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--store",
                &store.uri(),
            ])
            .args(["--log-format", format])
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log.reopen().expect("log file"))
            .spawn()
            .expect("start chat-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("readiness line");
        let address = line
            .trim()
            .strip_prefix(chat_testkit::replica::READY_PREFIX)
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("not a readiness line: {line:?}"));
        Self {
            child,
            address,
            log,
        }
    }

    /// SIGTERM, waits for the exit; returns the whole log.
    async fn stop(self) -> String {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM");
        let mut child = self.child;
        let status = tokio::time::timeout(
            Duration::from_secs(20),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await
        .expect("exits after SIGTERM")
        .expect("wait task")
        .expect("wait");
        assert!(status.success(), "{status:?}");
        std::fs::read_to_string(self.log.path()).expect("read the log")
    }
}

/// Every call that carries a secret: accounts created and logged in with a password,
/// a failed login, a message sent and received live and fetched, a bogus token, a
/// logout. Returns the secrets that crossed the wire.
async fn calls_with_secrets(address: SocketAddr) -> Vec<String> {
    let mut chat = ChatServiceClient::connect(format!("http://{address}"))
        .await
        .expect("connect");
    let alice = register_and_login(&mut chat, "alice", PASSWORD).await;
    let bob = register_and_login(&mut chat, "bob", PASSWORD).await;
    let subscribe = authed(&bob, SubscribeRequest::default());
    let mut live = chat
        .subscribe(subscribe)
        .await
        .expect("subscribe")
        .into_inner();
    send(&mut chat, &alice, "bob", TEXT, "key-1").await;
    assert_eq!(
        next_message(&mut live, Duration::from_secs(10)).await.text,
        TEXT
    );
    let fetched = chat
        .fetch_messages(authed(&bob, FetchMessagesRequest::default()))
        .await
        .expect("fetch")
        .into_inner();
    assert_eq!(fetched.messages[0].text, TEXT);
    let wrong = LoginRequest {
        username: "alice".into(),
        password: WRONG_PASSWORD.into(),
    };
    refused(chat.login(wrong), Code::Unauthenticated).await;
    refused(
        chat.fetch_messages(authed(BOGUS_TOKEN, FetchMessagesRequest::default())),
        Code::Unauthenticated,
    )
    .await;
    let again = CreateAccountRequest {
        username: "alice".into(),
        password: WRONG_PASSWORD.into(),
    };
    refused(chat.create_account(again), Code::AlreadyExists).await;
    let carol = login(&mut chat, "alice", PASSWORD).await;
    chat.logout(authed(&carol, LogoutRequest {}))
        .await
        .expect("logout");
    let hex = |text: &str| text.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let mut secrets = vec![PASSWORD.into(), WRONG_PASSWORD.into(), TEXT.into()];
    secrets.extend([BOGUS_TOKEN.into(), hex(PASSWORD), hex(TEXT)]);
    for token in [alice, bob, carol] {
        secrets.push(token.to_ascii_uppercase());
        secrets.push(token);
    }
    secrets
}

/// Runs the calls against a replica logging at trace in `format`; returns the log,
/// after checking that it holds no secret and is not trivially short.
async fn trace_log_without_secrets(format: &str) -> String {
    let store = SharedStore::new();
    let server = LoggedServer::start(&store, format);
    let secrets = calls_with_secrets(server.address).await;
    let log = server.stop().await;
    for secret in &secrets {
        let leaks: Vec<&str> = log.lines().filter(|line| line.contains(secret)).collect();
        assert!(leaks.is_empty(), "{secret:?} logged: {leaks:#?}");
    }
    // The log is worth checking: it has the replica's events and trace-level ones.
    for event in [
        "account created",
        "logged in",
        "subscribed",
        "replica stopped",
    ] {
        assert!(log.contains(event), "{event:?} not logged:\n{log}");
    }
    assert!(log.lines().count() > 50, "a trace log: {log}");
    log
}

#[tokio::test]
async fn no_secret_in_the_text_log_at_trace() {
    let log = trace_log_without_secrets("text").await;
    assert!(log.contains(" TRACE "), "trace events: {log}");
    assert!(!log.contains('\u{1b}'), "no ANSI escapes off a terminal");
}

#[tokio::test]
async fn no_secret_in_the_json_log_at_trace_and_every_line_is_an_object() {
    let log = trace_log_without_secrets("json").await;
    let mut levels = std::collections::BTreeSet::new();
    for line in log.lines() {
        let record: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        for key in ["timestamp", "level", "target"] {
            assert!(record[key].is_string(), "{key} in {line}");
        }
        assert!(record["fields"].is_object(), "fields in {line}");
        levels.insert(record["level"].as_str().unwrap_or_default().to_owned());
    }
    assert!(
        levels.contains("TRACE") && levels.contains("INFO"),
        "{levels:?}"
    );
    assert!(
        log.lines()
            .any(|line| line.contains(r#""message":"account created""#)
                && line.contains(r#""user":"alice""#)),
        "fields beside the message: {log}"
    );
}
