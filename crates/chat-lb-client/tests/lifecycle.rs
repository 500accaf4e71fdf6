//! The prober's schedule and thresholds under tokio's paused clock, and the
//! balancer's background tasks stopping with its last clone. A scripted probe
//! stands in for a server: it never touches the network.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{
    Balancer, BoxError, Change, EndpointState, HealthProbe, ProbeOutcome, ProbeStatus, ProbeTarget,
};
use futures::{FutureExt, future::BoxFuture};
use tokio::time::Instant;

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;
const NOT_SERVING: u8 = 3;

/// A probe whose answer the test sets, recording when each check ran.
#[derive(Default)]
struct Scripted {
    mode: AtomicU8,
    checks: Mutex<Vec<Instant>>,
    dropped: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

impl HealthProbe for Scripted {
    fn check(&self, _: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
        self.checks.lock().unwrap().push(Instant::now());
        let mode = self.mode.load(Ordering::SeqCst);
        async move {
            match mode {
                HEALTHY => Ok(ProbeStatus::Healthy {
                    latency: Duration::from_millis(1),
                    detail: "ok".into(),
                }),
                FAILING => Err("scripted failure".into()),
                NOT_SERVING => Ok(ProbeStatus::NotServing {
                    detail: "scripted".into(),
                }),
                _ => futures::future::pending().await,
            }
        }
        .boxed()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(tx) = self.dropped.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

fn addr() -> SocketAddr {
    // Never connected to: the scripted probe does not use the channel.
    "127.0.0.1:9".parse().unwrap()
}

async fn next_state(lb: &Balancer) -> (EndpointState, Duration) {
    let start = Instant::now();
    let before = lb.snapshot()[0].state;
    loop {
        let changed = lb.changed();
        let now = lb.snapshot()[0].state;
        if now != before {
            return (now, start.elapsed());
        }
        changed.await;
    }
}

#[tokio::test(start_paused = true)]
async fn thresholds_and_the_probe_schedule_under_paused_time() {
    let probe = Arc::new(Scripted::default());
    let lb = Balancer::builder()
        .probe(probe.clone())
        .address(addr())
        .probe_interval(Duration::from_millis(500))
        .probe_jitter(0.2)
        .probe_timeout(Duration::from_millis(250))
        .unhealthy_threshold(3)
        .healthy_threshold(2)
        .build()
        .unwrap();
    let t0 = Instant::now();
    assert_eq!(lb.snapshot()[0].state, EndpointState::Unknown);

    // M = 2 successes: healthy at the second probe, one interval in.
    let (state, _) = next_state(&lb).await;
    assert_eq!(state, EndpointState::Healthy);
    let checks = probe.checks.lock().unwrap().clone();
    assert_eq!(checks.len(), 2, "healthy after exactly two probes");
    assert_eq!(checks[0], t0, "the first probe runs at once");

    // N = 3 failures: unhealthy at the third failed probe.
    probe.mode.store(FAILING, Ordering::SeqCst);
    let before = probe.checks.lock().unwrap().len();
    let (state, _) = next_state(&lb).await;
    assert_eq!(state, EndpointState::Unhealthy);
    assert_eq!(probe.checks.lock().unwrap().len() - before, 3);
    let snap = &lb.snapshot()[0];
    assert_eq!(snap.consecutive_failures, 3);
    assert!(
        matches!(&snap.last_probe.as_ref().unwrap().outcome, ProbeOutcome::Failed { error } if error.contains("scripted"))
    );

    // A probe that never answers fails after the probe timeout, exactly.
    probe.mode.store(HANGING, Ordering::SeqCst);
    let asked = Instant::now();
    assert!(
        lb.wait_for_probe_round().await,
        "the requested probe did not complete"
    );
    assert_eq!(asked.elapsed(), Duration::from_millis(250));
    let last = lb.snapshot()[0].last_probe.clone().unwrap();
    assert_eq!(last.latency, Duration::from_millis(250), "{last:?}");
    assert!(matches!(&last.outcome, ProbeOutcome::Failed { error } if error.contains("timed out")));

    // NOT_SERVING takes effect at the first such answer; M successes bring it back.
    probe.mode.store(HEALTHY, Ordering::SeqCst);
    assert_eq!(next_state(&lb).await.0, EndpointState::Healthy);
    probe.mode.store(NOT_SERVING, Ordering::SeqCst);
    let before = probe.checks.lock().unwrap().len();
    assert_eq!(next_state(&lb).await.0, EndpointState::NotServing);
    assert_eq!(probe.checks.lock().unwrap().len() - before, 1);

    // Left alone (no requested probes), the checks come every interval ± 20%.
    let from = probe.checks.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let checks = probe.checks.lock().unwrap()[from..].to_vec();
    let gaps: Vec<Duration> = checks.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 15, "{gaps:?}");
    for gap in &gaps {
        assert!(
            *gap >= Duration::from_millis(400) && *gap <= Duration::from_millis(600),
            "gap {gap:?} outside interval ± jitter"
        );
    }
    let (min, max) = (gaps.iter().min().unwrap(), gaps.iter().max().unwrap());
    assert!(
        *max - *min >= Duration::from_millis(50),
        "jitter did not vary the interval: {gaps:?}"
    );
}

#[tokio::test]
async fn dropping_the_last_clone_stops_every_background_task() {
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel();
    let probe = Arc::new(Scripted::default());
    *probe.dropped.lock().unwrap() = Some(dropped_tx);
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, SocketAddr>, std::io::Error>>();
    tx.send(Ok(Change::Insert(1, "127.0.0.1:10".parse().unwrap())))
        .unwrap();
    let lb = Balancer::builder()
        .probe(probe.clone())
        .probe_interval(Duration::from_millis(10))
        .address(addr())
        .address("localhost:11") // starts the resolver
        .discover(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .resolve_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let clone = lb.clone();
    assert!(lb.wait_for_probe_round().await);
    assert!(lb.addresses().len() >= 3, "{:?}", lb.addresses());
    assert!(probe.checks.lock().unwrap().len() >= 3);
    drop(probe);

    drop(lb);
    // One clone left: everything still runs.
    assert!(clone.wait_for_probe_round().await);
    assert!(!tx.is_closed());

    drop(clone);
    // The probe is owned by the balancer's membership owner, which only the tasks
    // and the clones hold: it drops once every task is gone.
    tokio::time::timeout(Duration::from_secs(5), dropped_rx)
        .await
        .expect("background tasks still hold the balancer")
        .unwrap();
    assert!(tx.is_closed(), "the discovery task still holds its stream");
}
