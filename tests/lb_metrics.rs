//! chat-lb-client's metrics (see `crates/chat-lb-client/src/metrics.rs`) across a
//! real `chat-server` process SIGKILLed under load: the killed replica's ejection and
//! failure counters move, the others' do not, and its failed calls are retried.
//! Its own test binary: the process-wide test recorder must be installed before the
//! balancer is built, and no other test may share it.

use std::{net::SocketAddr, time::Duration};

use chat_testkit::{PASSWORD, Replica, SendLoad, SharedStore};
use metrics::{SharedString, Unit};
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder},
};

type Values = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// The sum of the counter `name` over every series whose `endpoint` label is `at`
/// (any other label), or over every series when `at` is `None`.
fn total(values: &Values, name: &str, at: Option<SocketAddr>) -> u64 {
    let at = at.map(|address| address.to_string());
    values
        .iter()
        .filter(|(key, ..)| key.key().name() == name)
        .filter(|(key, ..)| {
            at.as_deref().is_none_or(|at| {
                key.key()
                    .labels()
                    .any(|label| label.key() == "endpoint" && label.value() == at)
            })
        })
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

#[tokio::test]
async fn sigkill_under_load_moves_the_victims_ejection_and_retry_counters() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let store = SharedStore::new();
    let mut replicas = Replica::start_several(&store, 3);
    let addresses: Vec<SocketAddr> = replicas.iter().map(Replica::address).collect();
    // Only failed calls tell of the kill: no health watch, no probe check due
    // before the test ends (the first ones run at once).
    let lb = chat_testkit::balancer_builder(addresses.iter().copied())
        .health_watch(false)
        .probe_interval(Duration::from_secs(60))
        .timeout(Duration::from_secs(5))
        .build()
        .expect("balancer");
    let mut client = chat_proto::v1::chat_service_client::ChatServiceClient::new(lb.clone());
    let token = chat_testkit::register_and_login(&mut client, "bob", PASSWORD).await;
    let load = SendLoad::start(&client, &token, "bob", 8, 150);
    load.wait_for(300).await;
    // Drains what came before: the next snapshot counts only what follows.
    let before = snapshotter.snapshot().into_vec();
    let victim = replicas[0].address();
    replicas[0].kill().await.expect("kill the replica");
    // One kill: at most one answer cut mid-way (retried by the load, see `ANSWER_CUT`).
    assert_eq!(load.finish(1).await, 8 * 150, "no send failed");
    let after = snapshotter.snapshot().into_vec();

    let ejections = "chat_lb_endpoint_ejections_total";
    assert_eq!(total(&before, ejections, Some(victim)), 0);
    assert_eq!(
        total(&after, ejections, Some(victim)),
        1,
        "the victim ejected once"
    );
    for other in &addresses[1..] {
        assert_eq!(
            total(&after, ejections, Some(*other)),
            0,
            "{other} not ejected"
        );
    }
    let failures = total(&after, "chat_lb_endpoint_failures_total", Some(victim));
    assert!(
        failures >= 1,
        "the victim's failed calls counted: {failures}"
    );
    let retries = total(&after, "chat_lb_retries_total", None);
    assert!(retries >= 1, "the victim's failed calls retried: {retries}");
}
