//! chat-lb-client against real `chat-server` processes under overload and restarts:
//! a replica that sheds load (`--max-concurrent-rpcs`) costs the callers nothing, and
//! a restarted replica's share of calls ramps up (slow start) instead of jumping to a
//! full share. (A negative pushback, which chat-server never sends, is tested against
//! an in-process server in crates/chat-lb-client/tests/balancer.rs.)

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chat_lb_client::{Balancer, EndpointSnapshot, EndpointState};
use chat_proto::v1::{HealthCheckRequest, chat_service_client::ChatServiceClient};
use chat_testkit::{PASSWORD, Replica, SendLoad, SharedStore};

/// A balancer over `addresses` with fast LAN settings (and the rest as given).
fn builder(addresses: &[SocketAddr]) -> chat_lb_client::Builder {
    chat_testkit::balancer_builder(addresses.iter().copied())
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(200))
        .per_try_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(5))
}

fn snapshot_of(lb: &Balancer, address: SocketAddr) -> EndpointSnapshot {
    lb.snapshot()
        .into_iter()
        .find(|e| e.address == address)
        .expect("endpoint listed")
}

/// Waits on the balancer's change notifications until `condition` holds for the
/// endpoint at `address`; panics after `within`.
async fn wait_for(
    lb: &Balancer,
    address: SocketAddr,
    what: &str,
    condition: impl Fn(&EndpointSnapshot) -> bool,
) {
    let within = Duration::from_secs(10);
    let started = Instant::now();
    loop {
        let changed = lb.changed();
        if condition(&snapshot_of(lb, address)) {
            return;
        }
        let left = within.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, changed).await.is_err() {
            panic!("{what}: not within {within:?}; {:#?}", lb.snapshot());
        }
    }
}

#[tokio::test]
async fn a_replica_shedding_load_costs_the_callers_nothing() {
    let store = SharedStore::new();
    let (a, b) = (Replica::start(&store), Replica::start(&store));
    let shedding = Replica::start_with(&store, &["--max-concurrent-rpcs", "1"]);
    let addresses = [a.address(), b.address(), shedding.address()];
    // No per-try timeout: on a busy machine a slow answer would count against
    // the replica too, and this test is about shed calls only.
    let lb = builder(&addresses)
        .per_try_timeout(None)
        .build()
        .expect("balancer");
    let mut client = ChatServiceClient::new(lb.clone());
    let token = chat_testkit::register_and_login(&mut client, "dora", PASSWORD).await;

    // Twelve concurrent senders: the shedding replica gets several calls at once.
    let load = SendLoad::start(&client, &token, "dora", 12, 60);
    assert_eq!(load.finish(0).await, 12 * 60, "every send acknowledged");

    let o = snapshot_of(&lb, shedding.address());
    assert!(o.overloads > 0, "the replica shed calls: {o:#?}");
    assert_eq!(
        (o.state, o.errors, o.ejections),
        (EndpointState::Healthy, 0, 0),
        "shedding is no failure: never ejected: {o:#?}"
    );
    assert!(
        o.calls > o.overloads,
        "it still served calls between its pushbacks: {o:#?}"
    );
}

/// Health checks in a loop on `tasks` tasks until `stop`; counts failures.
fn health_load(
    client: &ChatServiceClient<Balancer>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..tasks)
        .map(|_| {
            let (mut client, stop, failed) = (client.clone(), stop.clone(), failed.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if client.health_check(HealthCheckRequest {}).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect()
}

/// The share of the attempts between two snapshots' counts that went to `address`.
fn share(before: &[EndpointSnapshot], after: &[EndpointSnapshot], address: SocketAddr) -> f64 {
    let calls = |list: &[EndpointSnapshot], a: SocketAddr| {
        list.iter().find(|e| e.address == a).map_or(0, |e| e.calls)
    };
    let total: u64 = after
        .iter()
        .map(|e| e.calls - calls(before, e.address))
        .sum();
    (calls(after, address) - calls(before, address)) as f64 / total.max(1) as f64
}

#[tokio::test]
async fn slow_start_ramps_up_a_restarted_replicas_share() {
    let store = SharedStore::new();
    let mut replicas = Replica::start_several(&store, 3);
    let addresses: Vec<SocketAddr> = replicas.iter().map(Replica::address).collect();
    // Round-robin, so that the shares show the weights alone (not latency
    // estimates), and nothing but probes takes an endpoint out (no per-try
    // timeout, outlier or slow-endpoint detection), so that a busy machine does
    // not restart the ramp.
    let lb = builder(&addresses)
        .policy(chat_lb_client::Policy::RoundRobin)
        .probe_timeout(Duration::from_secs(1))
        .per_try_timeout(None)
        .outlier_detection(false)
        .slow_endpoint_detection(false)
        .slow_start_window(Duration::from_secs(3))
        .slow_start_min_weight(0.02)
        .build()
        .expect("balancer");
    let client = ChatServiceClient::new(lb.clone());
    let victim = addresses[2];
    let (stop, failed) = (Arc::new(AtomicBool::new(false)), Arc::default());
    let load = health_load(&client, 4, &stop, &failed);
    for address in &addresses {
        wait_for(&lb, *address, "healthy", |e| {
            e.state == EndpointState::Healthy
        })
        .await;
    }

    replicas[2].kill().await.expect("kill");
    wait_for(&lb, victim, "victim out", |e| !e.state.is_routable()).await;
    replicas[2].restart().await.expect("restart");
    wait_for(&lb, victim, "victim readmitted", |e| {
        e.state == EndpointState::Healthy
    })
    .await;
    let readmitted = Instant::now();
    let at_readmission = lb.snapshot();
    let weight = snapshot_of(&lb, victim).slow_start_weight;
    assert!(weight.is_some_and(|w| w < 0.3), "ramping: {weight:?}");

    // Its share over the first 300ms of the 3s window (weight at most 0.1), then
    // after the window.
    tokio::time::sleep_until((readmitted + Duration::from_millis(300)).into()).await;
    let early_end = lb.snapshot();
    tokio::time::sleep_until((readmitted + Duration::from_millis(3200)).into()).await;
    let late_start = lb.snapshot();
    assert_eq!(
        snapshot_of(&lb, victim).slow_start_weight,
        None,
        "ramp over"
    );
    tokio::time::sleep_until((readmitted + Duration::from_millis(3800)).into()).await;
    let late_end = lb.snapshot();
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.expect("load task");
    }

    let early = share(&at_readmission, &early_end, victim);
    let late = share(&late_start, &late_end, victim);
    // A full share is a third; the early weight averages about 0.06.
    assert!(
        early < 0.1 && late > 0.25,
        "the restarted replica's share: {early:.3} early, {late:.3} after the window"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no failed health check");
}
