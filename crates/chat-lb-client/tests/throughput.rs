//! Overhead of the balancer against a direct tonic `Channel` to the same
//! replica, and its own CPU cost per call with replicas in memory (no sockets,
//! so the figure is the balancer's alone). Ignored by default (they measure,
//! they do not check behaviour); run with
//! `cargo test --release -p chat-lb-client --test throughput -- --ignored --nocapture`.

mod common;

use std::time::Duration;

use chat_lb_client::{Balancer, GrpcHealthProbe};
use chat_proto::v1::{ListAccountsRequest, chat_service_client::ChatServiceClient};
use common::{
    Replica,
    memory::{Net, Wire, addresses, builder},
};

/// CPU time used by this process so far (client and replica run in it), from
/// the per-thread scheduler statistics, so other load on the machine does not
/// skew the comparison the way wall-clock time would.
fn cpu_time() -> Duration {
    let mut total = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    Duration::from_nanos(total)
}

async fn run<T>(client: ChatServiceClient<T>, workers: usize, calls: usize) -> Duration
where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    // `BENCH_DEADLINE=1`: every call has a deadline (a `grpc-timeout` header),
    // as chat-bench's calls do.
    let deadline = std::env::var_os("BENCH_DEADLINE").map(|_| Duration::from_secs(5));
    let start = cpu_time();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                for _ in 0..calls {
                    let mut request = tonic::Request::new(ListAccountsRequest::default());
                    if let Some(deadline) = deadline {
                        request.set_timeout(deadline);
                    }
                    client.list_accounts(request).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    cpu_time().saturating_sub(start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly with --release"]
async fn balancer_overhead_against_a_direct_channel() {
    let replica = Replica::start("a");
    // The same connection settings as the balancer's defaults.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", replica.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let direct = ChatServiceClient::new(endpoint.connect().await.unwrap());
    let lb = Balancer::builder()
        .probe(GrpcHealthProbe::new())
        .address(replica.addr)
        .build()
        .unwrap();
    assert!(lb.wait_for_probe_round().await);
    let balanced = ChatServiceClient::new(lb.clone());

    let (workers, calls) = (16, 1000);
    run(direct.clone(), workers, 200).await;
    run(balanced.clone(), workers, 200).await;
    // Alternate rounds and compare medians: other work on the machine shifts
    // absolute numbers between rounds.
    let (mut d, mut b) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        d.push(run(direct.clone(), workers, calls).await);
        b.push(run(balanced.clone(), workers, calls).await);
    }
    let per_call = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() / (workers * calls) as f64 * 1e6
    };
    let (d, b) = (per_call(d), per_call(b));
    println!(
        "CPU time per call (client + replica), median of 15 rounds: channel {d:.1}µs; balancer {b:.1}µs ({:+.1}%)",
        (b / d - 1.0) * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "for profiling one side: BENCH_SIDE=channel|balance_list|balancer, BENCH_CALLS per task, BENCH_TASKS"]
async fn one_side_for_profiling() {
    let replica = Replica::start("a");
    let side = std::env::var("BENCH_SIDE").unwrap_or_default();
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", replica.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    // `BENCH_TASKS`: callers (default 16).
    let tasks: usize = std::env::var("BENCH_TASKS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let used = if side == "balancer" {
        let lb = Balancer::builder()
            .probe(GrpcHealthProbe::new())
            // Patient probes: under a profiler (valgrind) everything is slow.
            .probe_timeout(Duration::from_secs(10))
            .address(replica.addr)
            .build()
            .unwrap();
        assert!(lb.wait_for_probe_round().await);
        run(ChatServiceClient::new(lb), tasks, calls).await
    } else if side == "balance_list" {
        // tonic's own balancer, the chat-bench contender `tonic-balance`.
        let channel = tonic::transport::Channel::balance_list(std::iter::once(endpoint));
        run(ChatServiceClient::new(channel), tasks, calls).await
    } else {
        run(
            ChatServiceClient::new(endpoint.connect().await.unwrap()),
            tasks,
            calls,
        )
        .await
    };
    println!(
        "{side}: {:.1}µs CPU per call",
        used.as_secs_f64() / (tasks * calls) as f64 * 1e6
    );
}

/// The balancer's own CPU time per call: a client straight on an in-memory
/// replica's service against the same client through the balancer over one and
/// over three such replicas. No sockets and no HTTP/2, so what differs is the
/// balancer's work alone (pick, attempt, replay, classify, observe).
#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement; run explicitly with --release"]
async fn balancer_own_cost_in_memory() {
    let net = Net::new();
    let replicas = [net.start("a"), net.start("b"), net.start("c")];
    let direct = ChatServiceClient::new(Wire::to(&net, replicas[0].addr));
    let one = builder(&net)
        .addresses(&addresses(&[&replicas[0]]))
        .build()
        .unwrap();
    let three = builder(&net)
        .addresses(&addresses(&[&replicas[0], &replicas[1], &replicas[2]]))
        .build()
        .unwrap();
    assert!(one.wait_for_probe_round().await && three.wait_for_probe_round().await);
    let (one, three) = (ChatServiceClient::new(one), ChatServiceClient::new(three));
    let (workers, calls) = (16, 2000);
    let mut rounds = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..15 {
        rounds[0].push(run(direct.clone(), workers, calls).await);
        rounds[1].push(run(one.clone(), workers, calls).await);
        rounds[2].push(run(three.clone(), workers, calls).await);
    }
    let [d, o, t] = rounds.map(|mut v| {
        v.sort();
        v[v.len() / 2].as_secs_f64() / (workers * calls) as f64 * 1e9
    });
    println!(
        "CPU ns per call in memory, median of 15 rounds: direct {d:.0}; balancer over one replica {o:.0} (+{:.0}); over three {t:.0} (+{:.0})",
        o - d,
        t - d
    );
}

/// One side of [`balancer_own_cost_in_memory`] for a profiler:
/// `BENCH_SIDE=direct|balancer`, `BENCH_CALLS` calls per task (16 tasks;
/// default 100,000). Under `valgrind --tool=callgrind`, instruction counts
/// compare the two sides without the machine's noise.
#[tokio::test(flavor = "current_thread")]
#[ignore = "for profiling one side: BENCH_SIDE=direct|balancer"]
async fn one_side_in_memory_for_profiling() {
    let net = Net::new();
    let replicas = [net.start("a"), net.start("b"), net.start("c")];
    let calls: usize = std::env::var("BENCH_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let used = if std::env::var("BENCH_SIDE").as_deref() == Ok("balancer") {
        let lb = builder(&net)
            .addresses(&addresses(&[&replicas[0], &replicas[1], &replicas[2]]))
            .build()
            .unwrap();
        assert!(lb.wait_for_probe_round().await);
        run(ChatServiceClient::new(lb), 16, calls).await
    } else {
        run(
            ChatServiceClient::new(Wire::to(&net, replicas[0].addr)),
            16,
            calls,
        )
        .await
    };
    let per_call = used.as_secs_f64() / (16 * calls) as f64;
    println!("{:.0} ns CPU per call", per_call * 1e9);
}
