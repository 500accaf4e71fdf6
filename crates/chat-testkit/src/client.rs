//! Chat clients for tests: plain connections to one replica, balancers over several,
//! accounts and sessions, and the inbox read back page by page.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, RetrySafe};
use chat_proto::v1::{
    CreateAccountRequest, FetchMessagesRequest, HealthCheckRequest, LoginRequest, Message,
    SendMessageRequest, chat_service_client::ChatServiceClient,
    health_check_response::ServingStatus,
};
use tonic::{
    Request,
    client::GrpcService,
    codegen::{Body, Bytes, StdError},
    metadata::MetadataValue,
    transport::Channel,
};

use crate::{replica::Replica, store::StoreFixture};

/// A transport a [`ChatServiceClient`] can call through: a plain `Channel` or the
/// balancer.
pub trait ChatTransport:
    GrpcService<tonic::body::Body, Error: Into<StdError>, ResponseBody: ChatResponseBody>
{
}

impl<T> ChatTransport for T where
    T: GrpcService<tonic::body::Body, Error: Into<StdError>, ResponseBody: ChatResponseBody>
{
}

/// A response body a [`ChatServiceClient`] can decode.
pub trait ChatResponseBody:
    Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static
{
}

impl<B> ChatResponseBody for B where
    B: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static
{
}

/// A plain tonic client connected to one replica.
pub async fn client(replica: &Replica) -> ChatServiceClient<Channel> {
    ChatServiceClient::new(replica.channel().await)
}

/// A balancer builder over `addresses` that may retry any chat call (they are all
/// idempotent or keyed); the caller adds its timings and builds.
pub fn balancer_builder(
    addresses: impl IntoIterator<Item = SocketAddr>,
) -> chat_lb_client::Builder {
    let list = addresses
        .into_iter()
        .map(|address| address.to_string())
        .collect::<Vec<_>>()
        .join(",");
    Balancer::builder()
        .addresses(&list)
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
}

/// How the balancer reports a call whose connection broke after the server's answer
/// had begun (response headers received): the call is committed then, so the balancer
/// does not retry it (gRPC's retry rules), and the README's "Failure behaviour" tells
/// callers to retry it themselves. A kill -9 can land in that window, rarely.
pub const ANSWER_CUT: &str = "broke during the call";

/// Concurrent sends through one balanced client: worker tasks each sending messages
/// (key and text `w{worker}-{i}`) from the token's user to one recipient. A send
/// whose answer a kill cut ([`ANSWER_CUT`]) is retried once with the same key, as
/// callers are told to, and counted; any other failed call ends its worker with an
/// error.
pub struct SendLoad {
    completed: Arc<AtomicU64>,
    cut: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Result<(), String>>>,
}

impl SendLoad {
    /// Starts `workers` tasks sending `per_worker` messages each to `to`.
    pub fn start(
        client: &ChatServiceClient<Balancer>,
        token: &str,
        to: &str,
        workers: usize,
        per_worker: usize,
    ) -> Self {
        let completed = Arc::new(AtomicU64::new(0));
        let cut = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|worker| {
                let (mut client, completed, cut) = (client.clone(), completed.clone(), cut.clone());
                let (token, to) = (token.to_owned(), to.to_owned());
                tokio::spawn(async move {
                    for i in 0..per_worker {
                        let key = format!("w{worker}-{i}");
                        let mut retried = false;
                        loop {
                            match client
                                .send_message(send_request(&token, &to, &key, &key))
                                .await
                            {
                                Err(status)
                                    if !retried && status.message().contains(ANSWER_CUT) =>
                                {
                                    cut.fetch_add(1, Ordering::Relaxed);
                                    retried = true;
                                }
                                result => {
                                    result.map_err(|status| {
                                        format!("worker {worker} call {i}: {status:?}")
                                    })?;
                                    break;
                                }
                            }
                        }
                        completed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        Self {
            completed,
            cut,
            workers,
        }
    }

    /// Waits until at least `count` sends were acknowledged (to fault the cluster
    /// once the load is well under way).
    pub async fn wait_for(&self, count: u64) {
        while self.completed.load(Ordering::Relaxed) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for every worker; returns how many sends were acknowledged. Panics on a
    /// failed call, and on more than `cut_allowed` sends whose answer a kill cut (the
    /// tests allow one per kill: a cut is rare, see [`ANSWER_CUT`]).
    pub async fn finish(self, cut_allowed: u64) -> u64 {
        for worker in self.workers {
            worker.await.expect("worker").expect("no failed call");
        }
        let cut = self.cut.load(Ordering::Relaxed);
        assert!(
            cut <= cut_allowed,
            "{cut} sends had their answer cut by a kill (at most {cut_allowed} allowed)"
        );
        self.completed.load(Ordering::Relaxed)
    }
}

/// Wraps a message with a bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}").parse().expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Creates an account and logs in; returns the session token.
pub async fn register_and_login<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    username: &str,
    password: &str,
) -> String {
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
pub async fn login<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    username: &str,
    password: &str,
) -> String {
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

/// Sends `text` to `to` with idempotency key `key`; returns the stored message.
pub async fn send<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    token: &str,
    to: &str,
    text: &str,
    key: &str,
) -> Message {
    client
        .send_message(send_request(token, to, text, key))
        .await
        .unwrap_or_else(|status| panic!("send {key}: {status:?}"))
        .into_inner()
        .message
        .expect("the stored message")
}

/// A password good enough for any test account.
pub const PASSWORD: &str = "correct horse battery";

/// The next message of a live `Subscribe` stream, within `within`.
pub async fn next_message(stream: &mut tonic::Streaming<Message>, within: Duration) -> Message {
    tokio::time::timeout(within, stream.message())
        .await
        .unwrap_or_else(|_| panic!("no message within {within:?}"))
        .expect("the stream is open")
        .expect("a message")
}

/// Two replicas on one store, each with a plain client, and two users signed up with
/// [`PASSWORD`]: `alice` through the first replica, `bob` through the second.
pub type AliceAndBob = (
    Replica,
    Replica,
    ChatServiceClient<Channel>,
    ChatServiceClient<Channel>,
    String,
    String,
);

/// Two replicas on `store`, each with a plain client: `(a, b, on_a, on_b)`.
pub async fn two_replicas(
    store: &(impl StoreFixture + ?Sized),
) -> (
    Replica,
    Replica,
    ChatServiceClient<Channel>,
    ChatServiceClient<Channel>,
) {
    let (a, b) = (Replica::start(store), Replica::start(store));
    let (on_a, on_b) = (client(&a).await, client(&b).await);
    (a, b, on_a, on_b)
}

/// Starts [`AliceAndBob`]: `(a, b, on_a, on_b, alice's token, bob's token)`.
pub async fn alice_and_bob(store: &(impl StoreFixture + ?Sized)) -> AliceAndBob {
    let (a, b, mut on_a, mut on_b) = two_replicas(store).await;
    let alice = register_and_login(&mut on_a, "alice", PASSWORD).await;
    let bob = register_and_login(&mut on_b, "bob", PASSWORD).await;
    (a, b, on_a, on_b, alice, bob)
}

/// The status of a call that must fail with `code` (panics, showing what came back,
/// when it did not).
pub async fn refused<T: std::fmt::Debug>(
    call: impl Future<Output = Result<T, tonic::Status>>,
    code: tonic::Code,
) -> tonic::Status {
    match call.await {
        Err(status) if status.code() == code => status,
        other => panic!("expected a {code:?} status, got {other:?}"),
    }
}

/// SIGKILLs `replica` and checks that `client`, connected to it, gets no answer any
/// more.
pub async fn kill_for_good(replica: &mut Replica, client: &mut ChatServiceClient<Channel>) {
    replica.kill().await.expect("kill the replica");
    assert!(
        client.health_check(HealthCheckRequest {}).await.is_err(),
        "the killed replica is really gone"
    );
}

/// Polls the chat `HealthCheck` RPC until it reports `want` (bounded).
pub async fn wait_for_status(replica: &Replica, want: ServingStatus, within: Duration) {
    crate::wait::eventually(within, Duration::from_millis(25), || async move {
        let seen = async {
            let mut client = ChatServiceClient::connect(replica.url()).await.ok()?;
            let health = client.health_check(HealthCheckRequest {}).await.ok()?;
            Some(health.into_inner().status())
        }
        .await;
        match seen {
            Some(status) if status == want => Ok(()),
            _ => Err(format!(
                "replica {} did not become {want:?} (last seen {seen:?})",
                replica.address()
            )),
        }
    })
    .await
}

/// Every undelivered message of the token's user, oldest first, as (sequence, text),
/// read in small pages so that pagination is exercised too.
pub async fn fetch_inbox<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    token: &str,
) -> Vec<(u64, String)> {
    let messages = fetch_all(client, token, None, 7).await;
    messages.into_iter().map(|m| (m.sequence, m.text)).collect()
}

/// Every message of the token's user after `after` (`None`: after the acknowledged
/// ones; `Some(0)`: the whole history), oldest first, read `page_size` at a time.
pub async fn fetch_all<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    token: &str,
    mut after: Option<u64>,
    page_size: u32,
) -> Vec<Message> {
    let mut seen = Vec::new();
    loop {
        let request = FetchMessagesRequest {
            after_sequence: after,
            page_size,
        };
        let page = client.fetch_messages(authed(token, request)).await;
        let page = page.expect("fetch messages").into_inner();
        after = page.messages.last().map(|m| m.sequence).or(after);
        seen.extend(page.messages);
        if !page.has_more {
            return seen;
        }
    }
}

/// The texts of [`fetch_inbox`], oldest first.
pub async fn inbox_texts<T: ChatTransport>(
    client: &mut ChatServiceClient<T>,
    token: &str,
) -> Vec<String> {
    let inbox = fetch_inbox(client, token).await;
    inbox.into_iter().map(|(_, text)| text).collect()
}

/// A `SendMessage` request with a bearer token.
pub fn send_request(token: &str, to: &str, text: &str, key: &str) -> Request<SendMessageRequest> {
    authed(
        token,
        SendMessageRequest {
            recipient: to.into(),
            text: text.into(),
            idempotency_key: key.into(),
        },
    )
}
