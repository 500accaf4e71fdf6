//! Hedging end to end, against replicas in memory (see `common::memory`) on
//! tokio's paused clock: a hedge beats a slow replica and the attempt it beat
//! is cancelled; the delay adapts to the method's recent latency; methods not
//! named are never hedged. The transitions themselves (budget refusal,
//! `max_attempts`, headers) are tested in `src/call/tests/hedging.rs`; a
//! hedge beating a stalled chat-server process, in the workspace's
//! `tests/lb_hedging.rs`.

mod common;

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use chat_lb_client::{Builder, HedgeDelay, Policy, RetrySafe};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use common::{
    app_call, endpoint, init_tracing,
    memory::{MemReplica, Net, addresses, builder},
    wait_all_healthy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(10);
const LIST_ACCOUNTS: &str = "/chat.v1.ChatService/ListAccounts";

/// Calls start on `slow` (pick-first) and `ListAccounts` is hedged.
fn hedged(net: &Arc<Net>, slow: &Arc<MemReplica>, fast: &Arc<MemReplica>) -> Builder {
    builder(net)
        .policy(Policy::PickFirst)
        .addresses(&addresses(&[slow, fast]))
        .retry_safe(RetrySafe::All)
        .hedge_methods([LIST_ACCOUNTS])
}

#[tokio::test(start_paused = true)]
async fn a_hedge_beats_a_slow_replica_and_the_attempt_it_beat_is_cancelled() {
    init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let net = Net::new();
    let (slow, fast) = (net.start("slow"), net.start("fast"));
    slow.knobs.delay_ms.store(100, Ordering::SeqCst);
    let lb = hedged(&net, &slow, &fast)
        .hedge_delay(HedgeDelay::Fixed(Duration::from_millis(10)))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "fast");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(10),
        "the hedging delay"
    );

    // The slow replica's attempt was dropped: its handler never finishes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!((slow.calls(), fast.calls()), (0, 1));
    let (s, f) = (endpoint(&lb, slow.addr), endpoint(&lb, fast.addr));
    assert_eq!((s.calls, s.outstanding, s.errors, s.hedges), (1, 0, 0, 0));
    assert_eq!((f.calls, f.hedges, f.hedges_won), (1, 1, 1));

    let counters: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) if key.key().labels().next().is_none() => {
                Some((key.key().name().to_owned(), n))
            }
            _ => None,
        })
        .collect();
    let counter = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v)
    };
    assert_eq!(counter("chat_lb_hedges_total"), 1);
    assert_eq!(counter("chat_lb_hedges_won_total"), 1);
    assert_eq!(counter("chat_lb_retries_total"), 0, "a hedge is no retry");
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_delay_follows_the_methods_recent_latency() {
    init_tracing();
    let net = Net::new();
    let (first, other) = (net.start("first"), net.start("other"));
    let lb = hedged(&net, &first, &other).build().unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    // 40 calls at 2ms each: the p95 is 2ms (before 32, no hedge at all).
    first.knobs.delay_ms.store(2, Ordering::SeqCst);
    for _ in 0..40 {
        assert_eq!(app_call(&mut client).await.unwrap(), "first");
    }
    assert_eq!(endpoint(&lb, other.addr).hedges, 0);

    first.knobs.delay_ms.store(100, Ordering::SeqCst);
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "other");
    assert_eq!(started.elapsed(), Duration::from_millis(2));
    assert_eq!(endpoint(&lb, other.addr).hedges_won, 1);
}

#[tokio::test(start_paused = true)]
async fn methods_not_named_are_never_hedged() {
    init_tracing();
    let net = Net::new();
    let (slow, fast) = (net.start("slow"), net.start("fast"));
    slow.knobs.delay_ms.store(100, Ordering::SeqCst);
    let lb = builder(&net)
        .policy(Policy::PickFirst)
        .addresses(&addresses(&[&slow, &fast]))
        .retry_safe(RetrySafe::All)
        .hedge_methods(["/chat.v1.ChatService/HealthCheck"])
        .hedge_delay(HedgeDelay::Fixed(Duration::from_millis(10)))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "slow");
    assert_eq!(started.elapsed(), Duration::from_millis(100));
    assert_eq!(endpoint(&lb, fast.addr).calls, 0);

    // Naming a method that is not retry-safe fails the build.
    let error = builder(&net)
        .address(slow.addr)
        .hedge_methods([LIST_ACCOUNTS])
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains("only retry-safe methods"),
        "{error}"
    );
}
