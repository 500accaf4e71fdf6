//! The chat client over chat-lb-client with hand-picked settings:
//!
//! ```sh
//! cargo run --example chat_custom_balancer
//! ```
//!
//! Starts three replicas (one slowed by 30 ms of injected delay) and lists a fourth
//! address where nothing listens, then balances chat calls across them with: the
//! standard `grpc.health.v1` probe (Check plus Watch) instead of the chat `HealthCheck`,
//! fast probes, a tight per-try timeout, a larger retry budget and an overall deadline.
//! It prints the balancer's snapshot after a burst of calls (the dead address gets none,
//! the slowed replica fewer than the others), kills a replica, sends more, and prints it again. It runs to
//! completion by itself.

use std::{process::ExitCode, time::Duration};

use anyhow::Context;
use chat_lb_client::{Balancer, GrpcHealthProbe, Policy, RetrySafe};
use chat_proto::v1::{
    CreateAccountRequest, LoginRequest, SendMessageRequest, chat_service_client::ChatServiceClient,
};
use chat_testkit::Replica;
use tonic::Request;

fn main() -> ExitCode {
    if let Some(code) = chat_testkit::replica::run_if_replica(chat_server::run) {
        return code;
    }
    let outcome = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|runtime| runtime.block_on(run()));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat_custom_balancer: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let store_dir = tempfile::tempdir().context("temporary directory")?;
    let store = format!("sqlite:{}", store_dir.path().join("chat.db").display());
    let mut replicas = vec![
        Replica::start_on_port(&store, 0, &[]).await?,
        Replica::start_on_port(&store, 0, &[]).await?,
        Replica::start_on_port(&store, 0, &["--inject-delay", "30ms"]).await?,
    ];
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let list = replicas
        .iter()
        .map(|replica| replica.address().to_string())
        .chain([dead.to_string()])
        .collect::<Vec<_>>()
        .join(",");

    let lb = Balancer::builder()
        .addresses(&list)
        .policy(Policy::PowerOfTwoChoices)
        // The standard health service every replica also serves; Watch pushes
        // NOT_SERVING the moment a replica starts to drain.
        .probe(GrpcHealthProbe::new().service(chat_proto::CHAT_SERVICE_NAME))
        .probe_interval(Duration::from_millis(200))
        .probe_timeout(Duration::from_millis(150))
        .unhealthy_threshold(2)
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
        .per_try_timeout(Duration::from_millis(300))
        .retry_budget(0.5, 20)
        .timeout(Duration::from_secs(3))
        .build()?;
    let mut client = ChatServiceClient::new(lb.clone());

    client
        .create_account(CreateAccountRequest {
            username: "demo".into(),
            password: "demo-password".into(),
        })
        .await?;
    let token = client
        .login(LoginRequest {
            username: "demo".into(),
            password: "demo-password".into(),
        })
        .await?
        .into_inner()
        .token;
    let send = |key: String| {
        let mut request = Request::new(SendMessageRequest {
            recipient: "demo".into(),
            text: format!("note to self {key}"),
            idempotency_key: key,
        });
        let bearer = format!("Bearer {token}").parse().expect("a token is ASCII");
        request.metadata_mut().insert("authorization", bearer);
        request
    };

    burst(&client, &send, "a", 200).await?;
    println!("after 200 sends (slow replica: {}):", replicas[2].address());
    print_snapshot(&lb);

    let victim = replicas[0].address();
    replicas[0].kill().await?;
    burst(&client, &send, "b", 200).await?;
    println!("\nafter killing {victim} and 200 more sends (none failed):");
    print_snapshot(&lb);

    for replica in replicas {
        replica.stop(Duration::from_secs(3)).await;
    }
    Ok(())
}

/// Sends `count` messages from 8 concurrent tasks; any failed call is an error.
async fn burst(
    client: &ChatServiceClient<Balancer>,
    send: &impl Fn(String) -> Request<SendMessageRequest>,
    tag: &str,
    count: usize,
) -> anyhow::Result<()> {
    const TASKS: usize = 8;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let mut client = client.clone();
        let requests: Vec<_> = (task..count)
            .step_by(TASKS)
            .map(|i| send(format!("{tag}-{i}")))
            .collect();
        tasks.spawn(async move {
            for request in requests {
                client.send_message(request).await?;
            }
            Ok::<(), tonic::Status>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result
            .context("a sending task panicked")?
            .context("a send failed")?;
    }
    Ok(())
}

fn print_snapshot(lb: &Balancer) {
    println!(
        "  {:<22} {:<12} {:>9} {:>7} {:>7}  last error",
        "endpoint", "state", "latency", "calls", "errors"
    );
    for endpoint in lb.snapshot() {
        println!(
            "  {:<22} {:<12} {:>7.1}ms {:>7} {:>7}  {}",
            endpoint.address.to_string(),
            endpoint.state.to_string(),
            endpoint.latency_estimate.as_secs_f64() * 1000.0,
            endpoint.calls,
            endpoint.errors,
            endpoint.last_error.unwrap_or_default()
        );
    }
}
