//! `chat-server --metrics-addr`: after known traffic against a real replica, `/metrics`
//! (fetched over plain HTTP and parsed as the Prometheus text format) counts exactly the
//! calls made, by method and code, with the gRPC ecosystem's names; without the flag
//! nothing listens; a port that cannot be bound is a one-line start-up error.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use chat_proto::v1::{CreateAccountRequest, LoginRequest, SubscribeRequest};
use chat_testkit::{PASSWORD, Replica, SharedStore, authed, eventually, next_message, send};
use prometheus_parse::{Scrape, Value};
use tonic::Code;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

const WAIT: Duration = Duration::from_secs(20);
const CHAT: &str = "chat.v1.ChatService";

/// Starts a replica with metrics on a free port; returns it and the metrics address,
/// read from its start-up log line.
async fn replica_with_metrics(store: &SharedStore) -> (Replica, SocketAddr) {
    let replica = Replica::start_logged(store, &["--metrics-addr", "127.0.0.1:0"]);
    replica.wait_for_log("metrics serving", 1, WAIT).await;
    let line = replica
        .log_lines()
        .into_iter()
        .find(|line| line.contains("metrics serving"))
        .expect("the metrics line");
    let address = line
        .split_whitespace()
        .find_map(|field| field.strip_prefix("metrics_address="))
        .expect("the metrics address in the line")
        .parse()
        .expect("a socket address");
    (replica, address)
}

/// `GET /metrics` over plain HTTP/1.1; the parsed samples.
fn scrape(address: SocketAddr) -> Scrape {
    let mut stream = TcpStream::connect(address).expect("connect to the metrics port");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers and body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|line| Ok(line.to_owned()))).expect("Prometheus text format")
}

/// The value of the one sample of `metric` whose labels include `labels` (a histogram's
/// value is its count); 0 when there is none.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == metric)
        .filter(|sample| labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v)))
        .map(|sample| match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|bucket| bucket.less_than.is_infinite())
                .map_or(0.0, |bucket| bucket.count),
            Value::Summary(_) => panic!("{metric} is a summary, not a histogram"),
        })
        .collect();
    assert!(matching.len() <= 1, "{metric} {labels:?}: {matching:?}");
    matching.first().copied().unwrap_or(0.0)
}

/// The chat method's counts: started, handled by code, handling-time count, messages.
struct Method<'a> {
    scrape: &'a Scrape,
    method: &'a str,
}

impl Method<'_> {
    fn labels(&self) -> [(&str, &str); 2] {
        [("grpc_service", CHAT), ("grpc_method", self.method)]
    }

    fn get(&self, metric: &str) -> f64 {
        value(self.scrape, metric, &self.labels())
    }

    fn handled(&self, code: &str) -> f64 {
        let [service, method] = self.labels();
        value(
            self.scrape,
            "grpc_server_handled_total",
            &[service, method, ("grpc_code", code)],
        )
    }

    /// Asserts every count of the method: `codes` are all its handled calls.
    fn assert_calls(&self, kind: &str, codes: &[(&str, f64)], sent: f64) {
        let total: f64 = codes.iter().map(|(_, n)| n).sum();
        let name = self.method;
        assert_eq!(
            self.get("grpc_server_started_total"),
            total,
            "{name} started"
        );
        for (code, count) in codes {
            assert_eq!(self.handled(code), *count, "{name} {code}");
        }
        let handled: f64 = self
            .scrape
            .samples
            .iter()
            .filter(|s| s.metric == "grpc_server_handled_total")
            .filter(|s| s.labels.get("grpc_method") == Some(name))
            .map(|s| match s.value {
                Value::Counter(v) => v,
                _ => panic!("handled is a counter"),
            })
            .sum();
        assert_eq!(handled, total, "{name}: no other codes");
        let seconds = "grpc_server_handling_seconds";
        assert_eq!(self.get(seconds), total, "{name} histogram");
        assert_eq!(
            self.get(&format!("{seconds}_count")),
            total,
            "{name} _count"
        );
        assert_eq!(
            self.get("grpc_server_msg_received_total"),
            total,
            "{name} received"
        );
        assert_eq!(self.get("grpc_server_msg_sent_total"), sent, "{name} sent");
        let [service, method] = self.labels();
        let typed = [service, method, ("grpc_type", kind)];
        assert_eq!(
            value(self.scrape, "grpc_server_started_total", &typed),
            total,
            "{name} {kind}"
        );
    }
}

async fn create(
    client: &mut chat_proto::v1::chat_service_client::ChatServiceClient<tonic::transport::Channel>,
    username: &str,
    password: &str,
) -> Result<(), Code> {
    let request = CreateAccountRequest {
        username: username.into(),
        password: password.into(),
    };
    client
        .create_account(request)
        .await
        .map(drop)
        .map_err(|s| s.code())
}

async fn login(
    client: &mut chat_proto::v1::chat_service_client::ChatServiceClient<tonic::transport::Channel>,
    username: &str,
    password: &str,
) -> Result<String, Code> {
    let request = LoginRequest {
        username: username.into(),
        password: password.into(),
    };
    match client.login(request).await {
        Ok(response) => Ok(response.into_inner().token),
        Err(status) => Err(status.code()),
    }
}

/// 4 CreateAccount (3 OK, 1 AlreadyExists) and 8 Login (2 OK, 5 Unauthenticated, 1
/// ResourceExhausted: the throttle); returns the tokens of alice and bob.
async fn account_traffic(
    client: &mut chat_proto::v1::chat_service_client::ChatServiceClient<tonic::transport::Channel>,
) -> (String, String) {
    for user in ["alice", "bob", "dave"] {
        create(client, user, PASSWORD).await.expect("created");
    }
    let taken = create(client, "alice", "another password").await;
    assert_eq!(taken, Err(Code::AlreadyExists));
    let alice = login(client, "alice", PASSWORD).await.expect("alice");
    let bob = login(client, "bob", PASSWORD).await.expect("bob");
    // Five wrong passwords are free; the sixth check is throttled.
    for _ in 0..5 {
        let wrong = login(client, "dave", "not the password").await;
        assert_eq!(wrong, Err(Code::Unauthenticated));
    }
    let throttled = login(client, "dave", PASSWORD).await;
    assert_eq!(throttled, Err(Code::ResourceExhausted));
    (alice, bob)
}

#[tokio::test]
async fn known_traffic_is_counted_by_method_and_code() {
    const STREAMED: usize = 3;
    let store = SharedStore::new();
    let (replica, metrics) = replica_with_metrics(&store).await;
    let mut client = chat_testkit::client(&replica).await;
    let (alice, bob) = account_traffic(&mut client).await;

    let mut stream = client
        .subscribe(authed(&bob, SubscribeRequest { after_sequence: 0 }))
        .await
        .expect("subscribe")
        .into_inner();
    for n in 1..=STREAMED {
        let (text, key) = (format!("message {n}"), format!("key-{n}"));
        send(&mut client, &alice, "bob", &text, &key).await;
        next_message(&mut stream, WAIT).await;
    }

    let open = scrape(metrics);
    let method = |method| Method {
        scrape: &open,
        method,
    };
    method("CreateAccount").assert_calls("unary", &[("OK", 3.0), ("AlreadyExists", 1.0)], 3.0);
    method("Login").assert_calls(
        "unary",
        &[
            ("OK", 2.0),
            ("Unauthenticated", 5.0),
            ("ResourceExhausted", 1.0),
        ],
        2.0,
    );
    method("SendMessage").assert_calls("unary", &[("OK", STREAMED as f64)], STREAMED as f64);
    let subscribe = method("Subscribe");
    assert_eq!(subscribe.get("grpc_server_started_total"), 1.0);
    assert_eq!(subscribe.get("grpc_server_msg_sent_total"), STREAMED as f64);
    assert_eq!(
        subscribe.get("grpc_server_handling_seconds"),
        0.0,
        "still open"
    );

    assert_chat_metrics(&open, STREAMED as f64);

    // The client goes away: the stream finishes as Canceled and its subscriber is gone.
    drop(stream);
    eventually(WAIT, Duration::from_millis(20), || async {
        let closed = scrape(metrics);
        let subscribe = Method {
            scrape: &closed,
            method: "Subscribe",
        };
        let subscribers = value(&closed, "chat_subscribers", &[]);
        if subscribe.handled("Canceled") == 1.0 && subscribers == 0.0 {
            subscribe.assert_calls("server_stream", &[("Canceled", 1.0)], STREAMED as f64);
            Ok(())
        } else {
            Err(format!(
                "Subscribe not yet Canceled, {subscribers} subscribers"
            ))
        }
    })
    .await;
}

/// The chat metrics after [`account_traffic`] and `streamed` messages to a live
/// subscriber that is still connected.
fn assert_chat_metrics(open: &Scrape, streamed: f64) {
    let chat = |metric, labels: &[(&str, &str)]| value(open, metric, labels);
    assert_eq!(chat("chat_subscribers", &[]), 1.0);
    assert_eq!(chat("chat_deliveries_total", &[]), streamed);
    assert_eq!(chat("chat_delivery_delay_seconds", &[]), streamed);
    assert_eq!(chat("chat_login_throttled_total", &[]), 1.0);
    assert_eq!(chat("chat_health_serving", &[]), 1.0);
    assert_eq!(chat("chat_store_reachable", &[]), 1.0);
    let store_op = |operation, outcome| {
        chat(
            "chat_store_operation_seconds",
            &[("operation", operation), ("outcome", outcome)],
        )
    };
    assert_eq!(store_op("create_account", "ok"), 3.0);
    // The first purge runs at start; the next only after `--purge-interval` (10m).
    let sessions = [("kind", "sessions")];
    assert_eq!(chat("chat_purged_rows_total", &sessions), 0.0);
    let purged = [("kind", "sessions"), ("outcome", "ok")];
    assert_eq!(chat("chat_purge_runs_total", &purged), 1.0);
    assert_eq!(store_op("send_message", "ok"), streamed);
    assert!(
        store_op("message_feed", "ok") >= 1.0,
        "the hub polls the feed"
    );
    assert!(
        chat("chat_password_hash_wait_seconds", &[]) >= 10.0,
        "3 hashes, 7 verifications"
    );
    assert!(chat("process_resident_memory_bytes", &[]) > 0.0);
    assert!(chat("process_open_fds", &[]) > 0.0);
    assert!(chat("process_cpu_seconds_total", &[]) >= 0.0);
}

#[tokio::test]
async fn health_and_reflection_calls_count_too_and_unknown_methods_share_one_label() {
    let store = SharedStore::new();
    let (replica, metrics) = replica_with_metrics(&store).await;
    let channel = replica.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let before = value(
        &scrape(metrics),
        "grpc_server_handled_total",
        &[
            ("grpc_service", "grpc.health.v1.Health"),
            ("grpc_method", "Check"),
        ],
    );
    for _ in 0..2 {
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health check");
    }
    let unknown = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), Code::NotFound);
    let after = scrape(metrics);
    let check = |code| {
        value(
            &after,
            "grpc_server_handled_total",
            &[
                ("grpc_service", "grpc.health.v1.Health"),
                ("grpc_method", "Check"),
                ("grpc_type", "unary"),
                ("grpc_code", code),
            ],
        )
    };
    assert_eq!(check("OK") - before, 2.0);
    assert_eq!(check("NotFound"), 1.0);

    let answers = reflect_once(channel.clone()).await;
    let reflected = scrape(metrics);
    let labels = [
        ("grpc_service", "grpc.reflection.v1.ServerReflection"),
        ("grpc_method", "ServerReflectionInfo"),
        ("grpc_type", "bidi_stream"),
    ];
    let mut ok = labels.to_vec();
    ok.push(("grpc_code", "OK"));
    assert_eq!(value(&reflected, "grpc_server_handled_total", &ok), 1.0);
    assert_eq!(
        value(&reflected, "grpc_server_msg_received_total", &labels),
        1.0
    );
    assert_eq!(
        value(&reflected, "grpc_server_msg_sent_total", &labels),
        answers
    );

    // A method no service has: Unimplemented, labelled `unknown` whatever its path.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/chat.v1.ChatService/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let status = grpc
        .unary(tonic::Request::new(()), path, codec)
        .await
        .expect_err("no such method");
    assert_eq!(status.code(), Code::Unimplemented);
    let scraped = scrape(metrics);
    let unknown_labels = [("grpc_service", "unknown"), ("grpc_method", "unknown")];
    let mut unimplemented = unknown_labels.to_vec();
    unimplemented.push(("grpc_code", "Unimplemented"));
    assert_eq!(
        value(&scraped, "grpc_server_handled_total", &unimplemented),
        1.0
    );
    let names: HashMap<&str, usize> = scraped
        .samples
        .iter()
        .filter_map(|s| s.labels.get("grpc_method"))
        .fold(HashMap::new(), |mut seen, name| {
            *seen.entry(name).or_default() += 1;
            seen
        });
    assert!(!names.contains_key("NoSuchMethod"), "{names:?}");
}

/// One reflection exchange (ListServices), the client then closing its side; returns
/// how many answers came.
async fn reflect_once(channel: tonic::transport::Channel) -> f64 {
    let list_services = MessageRequest::ListServices("*".into());
    let requests = tokio_stream::once(ServerReflectionRequest {
        host: "metrics-test".into(),
        message_request: Some(list_services),
    });
    let mut reflection = ServerReflectionClient::new(channel);
    let answered = reflection.server_reflection_info(requests).await;
    let mut responses = answered.expect("reflection").into_inner();
    let mut answers = 0.0;
    while let Some(answer) = responses.message().await.expect("reflection answer") {
        assert!(answer.message_response.is_some());
        answers += 1.0;
    }
    answers
}

#[tokio::test]
async fn without_the_flag_no_second_port_listens_and_nothing_is_logged() {
    let store = SharedStore::new();
    let replica = Replica::start_logged(&store, &[]);
    replica.wait_for_log("replica serving", 1, WAIT).await;
    let lines = replica.log_lines();
    assert!(
        !lines.iter().any(|line| line.contains("metrics")),
        "{lines:?}"
    );
    let pid = replica.pid().expect("a process");
    let grpc_only = BTreeSet::from([replica.address().port()]);
    assert_eq!(listening_ports(pid), grpc_only);

    let (with_metrics, metrics) = replica_with_metrics(&store).await;
    let pid = with_metrics.pid().expect("a process");
    let both = BTreeSet::from([with_metrics.address().port(), metrics.port()]);
    assert_eq!(listening_ports(pid), both);
}

/// The TCP ports a process listens on: its sockets (`/proc/PID/fd`) that
/// `/proc/net/tcp` or `tcp6` lists as listening.
fn listening_ports(pid: u32) -> BTreeSet<u16> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the replica's descriptors")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode: `st` 0A is LISTEN.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(3) == Some(&"0A");
            if listening && fields.get(9).is_some_and(|inode| inodes.contains(*inode)) {
                let port = fields[1].rsplit_once(':').map(|(_, hex)| hex);
                ports.extend(port.and_then(|hex| u16::from_str_radix(hex, 16).ok()));
            }
        }
    }
    ports
}

#[test]
fn a_metrics_port_that_cannot_be_bound_is_a_one_line_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = taken.local_addr().expect("address").to_string();
    let store = tempfile::tempdir().expect("temporary directory");
    let path = format!("sqlite:{}", store.path().join("chat.db").display());
    let error =
        chat_testkit::start_up_error(None, &["--store", &path, "--metrics-addr", &address], 1);
    assert!(error.contains("--metrics-addr"), "{error}");
    assert!(error.contains(&address), "{error}");
    let error = chat_testkit::start_up_error(None, &["--metrics-addr", "nowhere"], 2);
    assert!(error.contains("--metrics-addr"), "{error}");
}
