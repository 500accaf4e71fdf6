//! The load: callers in a closed loop, and the calls they make.
//!
//! Each caller is a task in a closed loop: one call, then the next. A call is a
//! `SendMessage` (to one recipient account, with a unique idempotency key) with
//! probability `--send-percent`, else a `HealthCheck`; every call carries a 5s
//! deadline. One sender account logs in once per caller slot (one session per
//! concurrent caller) before anything is measured.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use chat_proto::v1::{
    CreateAccountRequest, HealthCheckRequest, LoginRequest, SendMessageRequest,
    chat_service_client::ChatServiceClient,
};
use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;
use tonic::{
    Request,
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::{
    contender::{Transport, endpoint},
    plan::Plan,
    stats::Samples,
};

/// The deadline of every benchmark call.
pub const CALL_DEADLINE: Duration = Duration::from_secs(5);

const SENDER: &str = "bench-sender";
const RECIPIENT: &str = "bench-recipient";
const PASSWORD: &str = "bench-password";

/// What the callers send.
pub struct Workload {
    send_percent: u8,
    /// One `authorization` value per caller slot.
    sessions: Vec<MetadataValue<Ascii>>,
    recipient: String,
}

impl Workload {
    /// Creates the two accounts and logs in once per caller slot, over a direct
    /// channel to the reference replica (password hashing is slow on purpose).
    pub async fn prepare(plan: &Plan, reference: SocketAddr) -> anyhow::Result<Self> {
        let mut client =
            ChatServiceClient::new(endpoint(reference, plan.tls.as_ref())?.connect().await?);
        for username in [SENDER, RECIPIENT] {
            client
                .create_account(CreateAccountRequest {
                    username: username.to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .with_context(|| format!("cannot create the account {username}"))?;
        }
        let slots = plan.concurrency.iter().copied().max().unwrap_or(1) as usize;
        let sessions = futures::stream::iter(0..slots)
            .map(|_| login(client.clone()))
            .buffer_unordered(4)
            .try_collect()
            .await?;
        Ok(Self {
            send_percent: plan.send_percent,
            sessions,
            recipient: RECIPIENT.to_owned(),
        })
    }
}

/// Logs the sender in; returns its `authorization` value.
async fn login(mut client: ChatServiceClient<Channel>) -> anyhow::Result<MetadataValue<Ascii>> {
    let token = client
        .login(LoginRequest {
            username: SENDER.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .context("cannot log in")?
        .into_inner()
        .token;
    Ok(format!("Bearer {token}").parse()?)
}

/// Which RPC a call was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    HealthCheck,
    SendMessage,
}

/// One caller's instructions.
pub struct Caller {
    pub workload: Arc<Workload>,
    pub slot: usize,
    /// Seeds the call mix; the same for every contender in a round.
    pub seed: u64,
    /// Makes idempotency keys unique across the run.
    pub key_prefix: String,
    pub stop_at: Instant,
}

/// A closed loop of calls until `stop_at`.
async fn run_caller<T>(mut client: ChatServiceClient<T>, caller: Caller) -> Samples
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut rng = StdRng::seed_from_u64(caller.seed);
    let mut samples = Samples::default();
    let session = &caller.workload.sessions[caller.slot % caller.workload.sessions.len()];
    let mut sent = 0u64;
    while Instant::now() < caller.stop_at {
        let rpc = if rng.random_range(0..100u8) < caller.workload.send_percent {
            Rpc::SendMessage
        } else {
            Rpc::HealthCheck
        };
        let started = Instant::now();
        let outcome = match rpc {
            Rpc::HealthCheck => client
                .health_check(with_deadline(HealthCheckRequest {}))
                .await
                .map(drop),
            Rpc::SendMessage => {
                sent += 1;
                let mut request = with_deadline(SendMessageRequest {
                    recipient: caller.workload.recipient.clone(),
                    text: "a benchmark message".to_owned(),
                    idempotency_key: format!("{}-{sent}", caller.key_prefix),
                });
                request
                    .metadata_mut()
                    .insert("authorization", session.clone());
                client.send_message(request).await.map(drop)
            }
        };
        samples.record(rpc, outcome, started.elapsed());
    }
    samples
}

/// A request with the benchmark's deadline.
fn with_deadline<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    request
}

/// Starts one caller's loop on `transport`.
pub fn spawn_caller(transport: &Transport, caller: Caller) -> tokio::task::JoinHandle<Samples> {
    match transport {
        Transport::Channel(channel) => {
            tokio::spawn(run_caller(ChatServiceClient::new(channel.clone()), caller))
        }
        Transport::Balancer(balancer) => {
            tokio::spawn(run_caller(ChatServiceClient::new(balancer.clone()), caller))
        }
    }
}
