//! The balancer's metrics (see `src/metrics.rs`), captured with a test
//! recorder: failures, ejections and retries counted against the endpoint
//! that failed, in memory on the paused clock and across a replica killed
//! under load.
//!
//! The recorder must be in place before the balancer is built (its handles
//! are registered then). The in-memory test installs its own on its thread
//! (the paused-clock runtime runs every task there); the test with real
//! sockets runs on two worker threads, so it installs the process-wide one.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, EndpointState, GrpcHealthProbe, Policy, RetrySafe};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use common::{
    Replica, app_call, endpoint, init_tracing,
    memory::{Net, addresses, builder},
    wait_all_healthy, wait_for_change,
};
use metrics::{SharedString, Unit};
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};

const LIMIT: Duration = Duration::from_secs(10);

/// The values of one snapshot (each snapshot drains what it reads: a later
/// one counts only what happened since, and gauges not set since read 0).
struct Values(Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>);

impl Values {
    /// The counter `name` with exactly these labels (0 when never counted).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(name, labels)
            .map(|value| match value {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .unwrap_or(0)
    }

    /// The gauge `name` with exactly these labels.
    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        match self.find(name, labels) {
            Some(DebugValue::Gauge(value)) => value.into_inner(),
            other => panic!("{name} {labels:?} is not a gauge: {other:?}"),
        }
    }

    /// How many values the histogram `name` with these labels recorded.
    fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        match self.find(name, labels) {
            Some(DebugValue::Histogram(values)) => values.len(),
            _ => 0,
        }
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut wanted = labels.to_vec();
        wanted.sort();
        self.0.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let mut found: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
            found.sort();
            (key.name() == name && found == wanted).then_some(value)
        })
    }
}

fn take(snapshotter: &Snapshotter) -> Values {
    Values(snapshotter.snapshot().into_vec())
}

fn ep(addr: SocketAddr) -> String {
    addr.to_string()
}

#[tokio::test(start_paused = true)]
async fn a_failed_replica_is_counted_by_endpoint_in_memory() {
    init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    // b first, and it answers UNAVAILABLE: the call fails there, is retried on a.
    b.knobs
        .unavailable
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let lb = builder(&net)
        .policy(Policy::PickFirst)
        .addresses(&addresses(&[&b, &a]))
        .retry_safe(RetrySafe::All)
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    assert_eq!(endpoint(&lb, b.addr).state, EndpointState::Ejected);

    let (a_ep, b_ep) = (ep(a.addr), ep(b.addr));
    let (a_ep, b_ep) = (a_ep.as_str(), b_ep.as_str());
    let values = take(&snapshotter);
    let failures = "chat_lb_endpoint_failures_total";
    let ejections = "chat_lb_endpoint_ejections_total";
    for kind in ["refused", "transport", "timeout"] {
        assert_eq!(
            values.counter(failures, &[("endpoint", b_ep), ("kind", kind)]),
            0
        );
    }
    assert_eq!(
        values.counter(failures, &[("endpoint", b_ep), ("kind", "unavailable")]),
        1
    );
    assert_eq!(
        values.counter(ejections, &[("endpoint", b_ep), ("reason", "unavailable")]),
        1
    );
    assert_eq!(
        values.counter(ejections, &[("endpoint", a_ep), ("reason", "unavailable")]),
        0
    );
    assert_eq!(values.counter("chat_lb_retries_total", &[]), 1);
    assert_eq!(
        values.counter("chat_lb_retry_budget_refusals_total", &[]),
        0
    );
    let attempts = "chat_lb_endpoint_attempts_total";
    assert_eq!(values.counter(attempts, &[("endpoint", b_ep)]), 1);
    assert_eq!(values.counter(attempts, &[("endpoint", a_ep)]), 1);
    let calls = "chat_lb_endpoint_calls_total";
    assert_eq!(values.counter(calls, &[("endpoint", a_ep)]), 1);
    assert_eq!(values.counter(calls, &[("endpoint", b_ep)]), 0);
    // 2 = ejected, 1 = healthy; nothing outstanding.
    assert_eq!(
        values.gauge("chat_lb_endpoint_state", &[("endpoint", b_ep)]),
        2.0
    );
    assert_eq!(
        values.gauge("chat_lb_endpoint_state", &[("endpoint", a_ep)]),
        1.0
    );
    assert_eq!(
        values.gauge("chat_lb_endpoint_outstanding", &[("endpoint", b_ep)]),
        0.0
    );
    assert_eq!(
        values.histogram_count("chat_lb_call_duration_seconds", &[]),
        1
    );
    let probes = values.counter(
        "chat_lb_probes_total",
        &[("endpoint", a_ep), ("result", "serving")],
    );
    assert!(probes >= 1, "{probes}");
    assert!(values.histogram_count("chat_lb_probe_duration_seconds", &[("endpoint", a_ep)]) >= 1);

    // Every replica down: the next call is refused by a, then by b (a last
    // resort: its last probe passed), then fails fast with no endpoint left.
    a.kill();
    b.kill();
    let status = app_call(&mut client).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let values = take(&snapshotter);
    assert_eq!(values.counter("chat_lb_no_endpoint_total", &[]), 1);
    assert_eq!(
        values.counter(failures, &[("endpoint", a_ep), ("kind", "refused")]),
        1
    );
    assert_eq!(
        values.counter(failures, &[("endpoint", b_ep), ("kind", "refused")]),
        1
    );
}

/// 8 workers, each making calls until it made 100 and `stop` is set;
/// `quarter` is notified after 200 calls in all. Each worker returns how many
/// of its calls failed.
fn start_load(
    lb: &Balancer,
    stop: &Arc<AtomicBool>,
    quarter: &Arc<tokio::sync::Notify>,
) -> Vec<tokio::task::JoinHandle<u32>> {
    let done = Arc::new(AtomicUsize::new(0));
    (0..8)
        .map(|_| {
            let mut client = ChatServiceClient::new(lb.clone());
            let (done, stop, quarter) = (done.clone(), stop.clone(), quarter.clone());
            tokio::spawn(async move {
                let (mut failures, mut calls) = (0, 0);
                while calls < 100 || !stop.load(Ordering::SeqCst) {
                    if app_call(&mut client).await.is_err() {
                        failures += 1;
                    }
                    calls += 1;
                    if done.fetch_add(1, Ordering::SeqCst) + 1 == 200 {
                        quarter.notify_one();
                    }
                }
                failures
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_moves_its_ejection_and_retry_counters() {
    init_tracing();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let a = Replica::start("a");
    let mut b = Replica::start("b");
    let c = Replica::start("c");
    // Only failed calls tell of the kill: no health watch, and no probe
    // check before the test ends (those it needs, it asks for).
    let lb = Balancer::builder()
        .probe(GrpcHealthProbe::new())
        .health_watch(false)
        .probe_interval(Duration::from_secs(60))
        .addresses(
            &[a.addr, b.addr, c.addr]
                .map(|addr| addr.to_string())
                .join(","),
        )
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
        // Every replica takes its share of calls, however their latencies
        // compare: a replica that answered one call slowly just before the
        // kill would otherwise lose every draw, and only a call sent to the
        // killed replica tells of the kill.
        .p2c_tolerance(1e6)
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;

    let stop = Arc::new(AtomicBool::new(false));
    let quarter = Arc::new(tokio::sync::Notify::new());
    let workers = start_load(&lb, &stop, &quarter);
    quarter.notified().await;
    // What happened before the kill is drained here: the next snapshot
    // counts only what happened since.
    let before = take(&snapshotter);
    b.kill();
    // The load goes on until a call has found b gone.
    wait_for_change(&lb, LIMIT, "b is ejected", |endpoints| {
        endpoints
            .iter()
            .any(|e| e.address == b.addr && e.state != EndpointState::Healthy)
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let mut failures = 0;
    for w in workers {
        failures += w.await.unwrap();
    }
    assert_eq!(failures, 0, "retry-safe calls fail no call across the kill");
    let after = take(&snapshotter);

    let ejections = |values: &Values, addr: SocketAddr| -> u64 {
        ["refused", "transport", "unavailable", "timeout"]
            .iter()
            .map(|reason| {
                values.counter(
                    "chat_lb_endpoint_ejections_total",
                    &[("endpoint", &ep(addr)), ("reason", reason)],
                )
            })
            .sum()
    };
    let attempts = "chat_lb_endpoint_attempts_total";
    assert!(before.counter(attempts, &[("endpoint", &ep(b.addr))]) > 0);
    assert_eq!(ejections(&before, b.addr), 0, "no ejection before the kill");
    assert_eq!(
        ejections(&after, b.addr),
        1,
        "b ejected once, after the kill"
    );
    for other in [a.addr, c.addr] {
        assert_eq!(ejections(&after, other), 0, "{other} not ejected");
    }
    let b_failures: u64 = ["refused", "transport"]
        .iter()
        .map(|kind| {
            after.counter(
                "chat_lb_endpoint_failures_total",
                &[("endpoint", &ep(b.addr)), ("kind", kind)],
            )
        })
        .sum();
    assert!(b_failures >= 1, "b's failures counted: {b_failures}");
    let retries = after.counter("chat_lb_retries_total", &[]);
    assert!(
        retries >= 1,
        "the failed attempts on b were retried: {retries}"
    );
    let b_state = after.gauge("chat_lb_endpoint_state", &[("endpoint", &ep(b.addr))]);
    assert!(b_state >= 2.0, "b ejected (2) or unhealthy (3): {b_state}");
}
