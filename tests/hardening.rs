//! Bounded resources and careless input, against real `chat-server` processes: idle
//! connections cannot take every descriptor, a mistyped store is an error that creates
//! nothing, and settings that cannot work are refused in one line.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant},
};

use chat_proto::v1::HealthCheckRequest;
use chat_testkit::{Replica, SharedStore, start_up_error};
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
    let address = replica.address();
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
        let mut client = chat_testkit::client(&replica).await;
        client.health_check(HealthCheckRequest {}).await
    })
    .await
    .expect("a fresh health check answers within a second")
    .expect("health check");
    assert!(answer.into_inner().store_reachable);
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// The resident memory of a process, in bytes (Linux).
fn resident_bytes(replica: &Replica) -> u64 {
    chat_testkit::procfs::resident_kib(replica.pid().expect("replica is running")) * 1024
}

#[tokio::test]
async fn a_login_burst_keeps_memory_within_the_hashing_bound() {
    const ACCOUNTS: usize = 16;
    const LOGINS_EACH: usize = 40;
    const HASH_MEMORY: u64 = 19 * 1024 * 1024;
    let store = SharedStore::new();
    let replica = Replica::start_logged(&store, &[]);
    replica
        .wait_for_log("password_hash_threads=", 1, Duration::from_secs(5))
        .await;
    let threads: u64 = replica
        .log_lines()
        .iter()
        .find_map(|line| line.split("password_hash_threads=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("the replica logs its hashing threads");
    let idle = resident_bytes(&replica);

    let client = chat_testkit::client(&replica).await;
    let names: Vec<String> = (0..ACCOUNTS).map(|i| format!("burst{i}")).collect();
    futures::stream::iter(names.iter())
        .for_each_concurrent(ACCOUNTS, |name| {
            let mut client = client.clone();
            async move {
                chat_testkit::register_and_login(&mut client, name, "a long password").await;
            }
        })
        .await;
    // 640 logins, 16 at a time (one account each, so that none waits for its own
    // account's turn).
    futures::stream::iter(names.iter())
        .for_each_concurrent(ACCOUNTS, |name| {
            let mut client = client.clone();
            async move {
                for _ in 0..LOGINS_EACH {
                    chat_testkit::login(&mut client, name, "a long password").await;
                }
            }
        })
        .await;

    let after = resident_bytes(&replica);
    let bound = idle + 2 * threads * HASH_MEMORY;
    eprintln!(
        "RSS: idle {} MiB, after {} logins {} MiB ({threads} hashing threads; bound {} MiB)",
        idle >> 20,
        ACCOUNTS * (LOGINS_EACH + 1),
        after >> 20,
        bound >> 20
    );
    assert!(
        after <= bound,
        "RSS {} MiB after the burst, over {} MiB",
        after >> 20,
        bound >> 20
    );
}

#[test]
fn a_mistyped_store_is_a_one_line_error_that_creates_nothing() {
    // Each store and what its error says.
    let mistyped = [
        ("postgres://x/y", "unknown scheme \"postgres:\""),
        ("mongo://db:27017/chat", "unknown scheme \"mongo:\""),
        ("sqlit:chat.db", "unknown scheme \"sqlit:\""),
        ("sqlite:no/such/dir/chat.db", "does not exist"),
        ("no/such/dir/chat.db", "does not exist"),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    for (store, reason) in mistyped {
        let stderr = start_up_error(Some(dir.path()), &["--store", store], 1);
        assert!(stderr.contains(reason), "{store}: {stderr}");
        let created: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
        assert!(created.is_empty(), "{store}: created {created:?}");
    }
    // A password in the URI is masked in the error (which goes where the logs go).
    let stderr = start_up_error(Some(dir.path()), &["--store", "postgres://u:s3cret@x/y"], 1);
    assert!(stderr.contains("postgres://u:***@x/y"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn the_default_store_is_created_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let line = chat_testkit::binary::first_line_in(dir.path(), &[]);
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
        ("--log-format", "xml"),
    ] {
        let stderr = start_up_error(Some(dir.path()), &[flag, value], 2);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
    let stderr = start_up_error(Some(dir.path()), &["--session-ttl", "0s"], 2);
    assert!(stderr.contains("must be from 1m to 30days"), "{stderr}");
}

#[tokio::test]
async fn a_request_that_is_not_the_rpcs_message_is_invalid_argument() {
    use chat_proto::v1::{AckMessagesRequest, LoginResponse};
    let store = SharedStore::new();
    let replica = Replica::start(&store);
    let channel = tonic::transport::Endpoint::from_shared(replica.url())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    // Field 1 of LoginRequest is a string; AckMessagesRequest's is a number, so the
    // bytes do not decode as a LoginRequest.
    let status = grpc
        .unary(
            tonic::Request::new(AckMessagesRequest { up_to_sequence: 5 }),
            tonic::codegen::http::uri::PathAndQuery::from_static("/chat.v1.ChatService/Login"),
            tonic_prost::ProstCodec::<AckMessagesRequest, LoginResponse>::default(),
        )
        .await
        .expect_err("not a LoginRequest");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("malformed request"), "{status:?}");
}

#[tokio::test]
async fn watching_an_unknown_service_answers_service_unknown_and_stays_open() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let store = SharedStore::new();
    let replica = Replica::start(&store);
    let mut health = HealthClient::new(
        tonic::transport::Channel::from_shared(replica.url())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    let unknown = HealthCheckRequest {
        service: "no.such.Service".into(),
    };
    let check = health.check(unknown.clone()).await.expect_err("unknown");
    assert_eq!(check.code(), tonic::Code::NotFound);
    let mut watch = health.watch(unknown).await.expect("watch").into_inner();
    let first = watch
        .message()
        .await
        .expect("a status")
        .expect("one message");
    assert_eq!(first.status, ServingStatus::ServiceUnknown as i32);
    // The call stays open (the service might appear later): nothing more, no end.
    let next = tokio::time::timeout(Duration::from_millis(300), watch.message()).await;
    assert!(next.is_err(), "the watch ended: {next:?}");
}

#[tokio::test]
async fn subscribing_after_a_sequence_not_reached_is_refused() {
    use chat_proto::v1::SubscribeRequest;
    let store = SharedStore::new();
    let replica = Replica::start(&store);
    let mut client = chat_testkit::client(&replica).await;
    let token = chat_testkit::register_and_login(&mut client, "erin", "a long password").await;
    for i in 0..3 {
        chat_testkit::send(&mut client, &token, "erin", "hi", &format!("k{i}")).await;
    }
    let refused = client
        .subscribe(chat_testkit::authed(
            &token,
            SubscribeRequest { after_sequence: 4 },
        ))
        .await
        .expect_err("beyond the latest message");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    // Resuming at the latest message is fine, and the next message arrives.
    let mut stream = client
        .subscribe(chat_testkit::authed(
            &token,
            SubscribeRequest { after_sequence: 3 },
        ))
        .await
        .expect("at the latest message")
        .into_inner();
    chat_testkit::send(&mut client, &token, "erin", "fourth", "k3").await;
    let message = chat_testkit::next_message(&mut stream, Duration::from_secs(5)).await;
    assert_eq!((message.sequence, message.text.as_str()), (4, "fourth"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_live_subscribers_each_get_a_message_and_their_memory_is_reported() {
    use chat_proto::v1::SubscribeRequest;
    const STREAMS: usize = 5000;
    const CONNECTIONS: usize = 10;
    let store = SharedStore::new();
    let replica = Replica::start(&store);
    let mut client = chat_testkit::client(&replica).await;
    let token = chat_testkit::register_and_login(&mut client, "fan", "a long password").await;
    let before = resident_bytes(&replica);

    // Streams spread over a few connections, as many clients would open them.
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(chat_testkit::client(&replica).await);
    }
    let streams: Vec<tonic::Streaming<chat_proto::v1::Message>> = futures::stream::iter(0..STREAMS)
        .map(|i| {
            let mut client = clients[i % CONNECTIONS].clone();
            let token = token.clone();
            async move {
                client
                    .subscribe(chat_testkit::authed(&token, SubscribeRequest::default()))
                    .await
                    .expect("subscribe")
                    .into_inner()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let during = resident_bytes(&replica);

    chat_testkit::send(&mut client, &token, "fan", "to everyone", "k1").await;
    let received = futures::stream::iter(streams)
        .map(|mut stream| async move {
            tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .map(|message| message.text)
        })
        .buffer_unordered(STREAMS)
        .filter(|text| std::future::ready(text.as_deref() == Some("to everyone")))
        .count()
        .await;
    let per_stream = during.saturating_sub(before) / STREAMS as u64;
    eprintln!(
        "{STREAMS} subscribers: RSS {} MiB before, {} MiB with them open: {} KiB per stream",
        before >> 20,
        during >> 20,
        per_stream >> 10
    );
    assert_eq!(received, STREAMS, "every subscriber got the message");
    assert!(
        per_stream < 64 * 1024,
        "{} KiB per subscriber stream",
        per_stream >> 10
    );
}
