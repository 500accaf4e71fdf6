//! The balancing logic end to end — tiers, ejection, retries, per-try
//! timeouts, slow endpoints, wait_for_ready, probes — against replicas in
//! memory (see `common::memory`) on tokio's paused clock: no sockets, no
//! wall-clock windows, every timing exact. What only real sockets can show
//! (refused connections, connections broken mid-call, watch streams over
//! HTTP/2, DNS, TLS) is tested in `balancer.rs`, `tls.rs` and `unresolved.rs`.

mod common;

use std::{collections::HashMap, sync::atomic::Ordering, time::Duration};

use chat_lb_client::{Balancer, EndpointState, Policy, ProbeOutcome, RetrySafe, SafeToRetry};
use chat_proto::v1::{ListAccountsRequest, chat_service_client::ChatServiceClient};
use common::{
    app_call, endpoint, init_tracing,
    memory::{MemReplica, Net, addresses, builder},
    wait_all_healthy, wait_for_change, wait_for_state, wait_until,
};
use std::sync::Arc;
use tokio::time::Instant;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(10);

/// Calls start on the first of `replicas` (pick-first), every call is retry-safe,
/// and an attempt without response headers after 300 ms gets a retry beside it.
fn retrying_in_order(net: &Arc<Net>, replicas: &[&Arc<MemReplica>]) -> chat_lb_client::Builder {
    builder(net)
        .policy(Policy::PickFirst)
        .addresses(&addresses(replicas))
        .retry_safe(RetrySafe::All)
        .per_try_timeout(Duration::from_millis(300))
}

/// An app call with a 300ms deadline through `lb` is answered
/// `DEADLINE_EXCEEDED` when the deadline passes, exactly.
async fn answers_deadline_exceeded_at_300ms(lb: Balancer) {
    let mut client = ChatServiceClient::new(lb);
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.list_accounts(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn all_down_answers_unavailable_fast_then_recovers() {
    init_tracing();
    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    let lb = builder(&net)
        .addresses(&addresses(&[&a, &b]))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    app_call(&mut client).await.unwrap();

    a.kill();
    b.kill();
    // Right away (probes may not have noticed yet) and again once they have.
    for round in 0..2 {
        let started = Instant::now();
        let status = app_call(&mut client).await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::ZERO, "slow failure");
        assert_eq!(
            status.code(),
            Code::Unavailable,
            "round {round}: {status:?}"
        );
        for addr in [a.addr, b.addr] {
            assert!(
                status.message().contains(&addr.to_string()),
                "round {round}: {status:?}"
            );
        }
        wait_until(&lb, LIMIT, "both out", |s| {
            s.iter().all(|e| !e.state.is_routable())
        })
        .await;
    }

    a.restart();
    wait_until(&lb, LIMIT, "a back", |_| {
        endpoint(&lb, a.addr).state == EndpointState::Healthy
    })
    .await;
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
}

#[tokio::test(start_paused = true)]
async fn wait_for_ready_waits_for_a_replica_to_come_back() {
    init_tracing();
    let net = Net::new();
    let a = net.start("a");
    let lb = builder(&net)
        .address(a.addr)
        .wait_for_ready(Duration::from_secs(10))
        .build()
        .unwrap();
    wait_until(&lb, LIMIT, "a healthy", |s| {
        s[0].state == EndpointState::Healthy
    })
    .await;
    a.kill();
    wait_until(&lb, LIMIT, "a out", |s| !s[0].state.is_routable()).await;

    let mut client = ChatServiceClient::new(lb.clone());
    let restarter = {
        let a = a.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.restart();
        })
    };
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    // Until the first probe after the restart (100ms ± 10% apart, 1ms each)
    // readmits it.
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(300)..=Duration::from_millis(412)).contains(&waited),
        "it did not wait for the replica: {waited:?}"
    );
    restarter.await.unwrap();

    // A call's own deadline bounds the wait.
    let lb = builder(&net)
        .address(net.dead_addr())
        .wait_for_ready(Duration::from_secs(60))
        .build()
        .unwrap();
    answers_deadline_exceeded_at_300ms(lb).await;
}

/// Runs `tasks` concurrent clients making `calls` app calls each; returns how
/// many calls each replica (by name) answered.
async fn load(lb: &Balancer, tasks: usize, calls: usize) -> HashMap<String, usize> {
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let mut client = ChatServiceClient::new(lb.clone());
        handles.push(tokio::spawn(async move {
            let mut served: HashMap<String, usize> = HashMap::new();
            for _ in 0..calls {
                *served
                    .entry(app_call(&mut client).await.unwrap())
                    .or_default() += 1;
            }
            served
        }));
    }
    let mut served: HashMap<String, usize> = HashMap::new();
    for handle in handles {
        for (name, n) in handle.await.unwrap() {
            *served.entry(name).or_default() += n;
        }
    }
    served
}

#[tokio::test(start_paused = true)]
async fn a_slow_replica_gets_less_traffic_under_p2c() {
    init_tracing();
    let net = Net::new();
    let (fast1, fast2, slow) = (net.start("fast1"), net.start("fast2"), net.start("slow"));
    // The fast ones take 1ms: the balancer measures latency on the paused
    // clock, where an answer without a timer takes no time at all.
    fast1.knobs.delay_ms.store(1, Ordering::SeqCst);
    fast2.knobs.delay_ms.store(1, Ordering::SeqCst);
    slow.knobs.delay_ms.store(40, Ordering::SeqCst);
    let lb = builder(&net)
        .policy(Policy::PowerOfTwoChoices)
        .addresses(&addresses(&[&fast1, &fast2, &slow]))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    load(&lb, 4, 100).await;
    let (f1, f2, s) = (fast1.calls(), fast2.calls(), slow.calls());
    assert_eq!(f1 + f2 + s, 400);
    assert!(
        s < 40,
        "slow replica got {s} of 400 calls (fast: {f1}, {f2})"
    );
    assert!(f1 > 100 && f2 > 100, "fast replicas: {f1}, {f2}");
    let slow_ep = endpoint(&lb, slow.addr);
    assert!(slow_ep.latency_estimate > endpoint(&lb, fast1.addr).latency_estimate);
}

/// Under sequential calls p2c sees no outstanding calls anywhere and picks by
/// latency estimate alone. One slow call must not keep a replica out of
/// rotation until its estimate decays (time constant 10 s): once it is idle and
/// answers its probes quickly, the probe latency becomes its estimate.
#[tokio::test(start_paused = true)]
async fn a_replica_slow_once_is_used_again_under_sequential_calls() {
    init_tracing();
    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    for replica in [&a, &b] {
        replica.knobs.delay_ms.store(1, Ordering::SeqCst);
        replica.knobs.health_delay_ms.store(1, Ordering::SeqCst);
    }
    let lb = builder(&net)
        .policy(Policy::PowerOfTwoChoices)
        .addresses(&addresses(&[&a, &b]))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    // One slow call on b (a drained, so that the call cannot go elsewhere).
    a.set_serving(false);
    wait_for_state(&lb, a.addr, EndpointState::NotServing, LIMIT).await;
    b.knobs.delay_ms.store(60, Ordering::SeqCst);
    assert_eq!(app_call(&mut client).await.unwrap(), "b");
    b.knobs.delay_ms.store(1, Ordering::SeqCst);
    let estimate = endpoint(&lb, b.addr).latency_estimate;
    assert!(
        estimate >= Duration::from_millis(50),
        "the slow call sets b's estimate (peak): {estimate:?}"
    );
    a.set_serving(true);
    wait_for_state(&lb, a.addr, EndpointState::Healthy, LIMIT).await;

    // Sequential calls: b gets some within a few probe intervals (100 ms each),
    // where the decay alone would keep its estimate above a's for half a minute.
    let before = b.calls();
    let started = Instant::now();
    while b.calls() == before && started.elapsed() < Duration::from_secs(3) {
        app_call(&mut client).await.unwrap();
    }
    assert!(
        b.calls() > before,
        "b got no call in 3 s of sequential calls: {:#?}",
        lb.snapshot()
    );
}

/// Two replicas whose latencies differ by less than the tolerance (2 ms and 3 ms,
/// probes included) count as equal: sequential calls split between them. A strict
/// comparison sends them all to the quicker one.
#[tokio::test(start_paused = true)]
async fn costs_within_the_p2c_tolerance_split_the_calls_and_a_strict_choice_does_not() {
    init_tracing();
    let b_share = |tolerance: Option<f64>| async move {
        let net = Net::new();
        let (a, b) = (net.start("a"), net.start("b"));
        for (replica, ms) in [(&a, 2), (&b, 3)] {
            replica.knobs.delay_ms.store(ms, Ordering::SeqCst);
            replica.knobs.health_delay_ms.store(ms, Ordering::SeqCst);
        }
        let mut builder = builder(&net).addresses(&addresses(&[&a, &b]));
        if let Some(tolerance) = tolerance {
            builder = builder.p2c_tolerance(tolerance);
        }
        let lb = builder.build().unwrap();
        wait_all_healthy(&lb, LIMIT).await;
        let served = load(&lb, 1, 200).await;
        served.get("b").copied().unwrap_or(0)
    };
    // The default tolerance, 2: a coin toss each time.
    let b = b_share(None).await;
    assert!((60..=140).contains(&b), "b got {b} of 200 sequential calls");
    // Strict: the quicker one, once the first calls have measured both.
    let b = b_share(Some(1.0)).await;
    assert!(
        b <= 10,
        "b got {b} of 200 sequential calls under a strict choice"
    );
}

#[tokio::test(start_paused = true)]
async fn round_robin_spreads_calls_evenly() {
    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    let lb = builder(&net)
        .policy(Policy::RoundRobin)
        .addresses(&addresses(&[&a, &b]))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    let first = app_call(&mut client).await.unwrap();
    for i in 1..20 {
        let got = app_call(&mut client).await.unwrap();
        assert_eq!(got == first, i % 2 == 0, "call {i} went to {got}");
    }
}

/// A replica that stops answering is avoided within milliseconds, before any
/// per-try timeout, probe or ejection says so: how long its oldest unanswered
/// attempt has waited raises its cost (see `P2cCost`). The default cost does
/// not count calls in flight, so without that bound the frozen replica would
/// keep its third of the picks, and one caller after another would end up
/// waiting on it.
#[tokio::test(start_paused = true)]
async fn a_replica_that_stops_answering_is_avoided_within_milliseconds() {
    init_tracing();
    let net = Net::new();
    let (a, b, c) = (net.start("a"), net.start("b"), net.start("c"));
    for replica in [&a, &b, &c] {
        replica.knobs.delay_ms.store(1, Ordering::SeqCst);
        replica.knobs.health_delay_ms.store(1, Ordering::SeqCst);
    }
    let lb = builder(&net)
        .addresses(&addresses(&[&a, &b, &c]))
        .outlier_detection(false)
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    load(&lb, 4, 50).await; // every estimate at about 1 ms
    assert!(c.calls() > 0, "c took calls before it froze");

    c.freeze();
    // 16 callers, each calling every 11 ms or so, started 0.7 ms apart so that
    // their picks spread evenly over time.
    let callers: Vec<_> = (0..16)
        .map(|i| {
            let mut client = ChatServiceClient::new(lb.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(700 * i)).await;
                loop {
                    app_call(&mut client).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    let before = a.calls() + b.calls();
    // Less than the probes need to find c unhealthy (100 ms apart, 200 ms
    // timeout): only the cost steers calls away from it meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stuck = endpoint(&lb, c.addr).outstanding;
    let served = a.calls() + b.calls() - before;
    for caller in callers {
        caller.abort();
    }
    assert_eq!(endpoint(&lb, c.addr).state, EndpointState::Healthy);
    // c counts as equal to the others (about 1 ms) only until its first stuck
    // attempt has waited 2 ms (the tolerance): a third of the 3 or so picks in
    // those 2 ms go there, and none after (observed: 1-3 callers stuck, 116-134
    // calls answered). Without the bound every caller ends up waiting on c
    // (observed: 15-16 stuck, 17-38 answered).
    assert!(
        stuck <= 6,
        "{stuck} of 16 callers wait on the frozen replica"
    );
    assert!(served >= 80, "a and b answered {served} calls in 100 ms");
}

#[tokio::test(start_paused = true)]
async fn a_frozen_replica_is_bypassed_by_the_per_try_timeout() {
    init_tracing();
    let net = Net::new();
    let (frozen, a) = (net.start("frozen"), net.start("a"));
    frozen.freeze();
    let lb = builder(&net)
        .policy(Policy::PickFirst) // the frozen one is first: every call starts there
        .addresses(&addresses(&[&frozen, &a]))
        .retry_safe(RetrySafe::All)
        .per_try_timeout(Duration::from_millis(150))
        .outlier_detection(false) // show the timeout alone, not the ejection
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    // Until probes mark it unhealthy, calls time out there and move on.
    wait_until(&lb, LIMIT, "frozen unhealthy", |_| {
        endpoint(&lb, frozen.addr).state == EndpointState::Unhealthy
    })
    .await;
    for _ in 0..20 {
        assert_eq!(app_call(&mut client).await.unwrap(), "a");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let f = endpoint(&lb, frozen.addr);
    assert!(f.errors >= 1, "{f:#?}");
    assert!(
        matches!(&f.last_probe.as_ref().unwrap().outcome, ProbeOutcome::Failed { error } if error.contains("timed out")),
        "{f:#?}"
    );

    // Not retry-safe: no per-try timeout, the call's own deadline applies.
    let lb = builder(&net)
        .address(frozen.addr)
        .per_try_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    answers_deadline_exceeded_at_300ms(lb).await;
}

#[tokio::test(start_paused = true)]
async fn unavailable_answers_are_retried_only_for_retry_safe_calls() {
    init_tracing();
    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    b.knobs.unavailable.store(true, Ordering::SeqCst);
    let build = || {
        builder(&net)
            .policy(Policy::PickFirst)
            .addresses(&addresses(&[&b, &a]))
            .build()
            .unwrap()
    };

    // Not retry-safe: the caller sees the UNAVAILABLE, and b is ejected.
    let lb = build();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    let status = app_call(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("b is draining"), "{status:?}");
    assert_eq!(endpoint(&lb, b.addr).state, EndpointState::Ejected);
    assert_eq!(
        app_call(&mut client).await.unwrap(),
        "a",
        "an ejected endpoint gets no call"
    );
    // Its probes still succeed: it is readmitted at the first probe once the
    // ejection time (1s) is over.
    let ejected_at = Instant::now();
    wait_for_state(&lb, b.addr, EndpointState::Healthy, Duration::from_secs(3)).await;
    let readmitted = ejected_at.elapsed();
    assert!(
        (Duration::from_secs(1)..=Duration::from_millis(1001)).contains(&readmitted),
        "{readmitted:?}"
    );
    assert_eq!(endpoint(&lb, b.addr).ejections, 1);

    // Marked safe per call: retried on a.
    let lb = build();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.extensions_mut().insert(SafeToRetry(true));
    let reply = client.list_accounts(request).await.unwrap().into_inner();
    assert_eq!(reply.usernames, ["a"]);
    assert_eq!(endpoint(&lb, b.addr).errors, 1);
}

#[tokio::test(start_paused = true)]
async fn snapshot_reports_probes_and_calls() {
    let net = Net::new();
    let a = net.start("a");
    let lb = builder(&net).address(a.addr).build().unwrap();
    assert!(lb.wait_for_probe_round().await);
    let s = endpoint(&lb, a.addr);
    assert_eq!(s.state, EndpointState::Healthy);
    let probe = s.last_probe.expect("a probe");
    assert!(matches!(probe.outcome, ProbeOutcome::Healthy { .. }));
    let mut client = ChatServiceClient::new(lb.clone());
    for _ in 0..5 {
        app_call(&mut client).await.unwrap();
    }
    let s = endpoint(&lb, a.addr);
    assert_eq!(
        (s.calls, s.errors, s.outstanding, s.ejections),
        (5, 0, 0, 0)
    );
}

/// One app call through b then c (pick-first, retry-safe, 300ms per-try
/// timeout, 5s deadline), both healthy first, then scripted by `script`: the
/// balancer, the replicas, what the call got and how long it took.
async fn one_call_over_b_then_c(
    script: impl FnOnce(&MemReplica, &MemReplica),
) -> (Balancer, [Arc<MemReplica>; 2], String, Duration) {
    let net = Net::new();
    let (b, c) = (net.start("b"), net.start("c"));
    let lb = retrying_in_order(&net, &[&b, &c])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    script(&b, &c);
    let started = Instant::now();
    let result = app_call(&mut client).await;
    let elapsed = started.elapsed();
    let Ok(got) = result else {
        panic!("{result:?} after {elapsed:?}: {:#?}", lb.snapshot());
    };
    assert!(lb.snapshot().iter().all(|e| e.outstanding == 0));
    (lb, [b, c], got, elapsed)
}

/// A retry-safe call must not give up while an attempt that merely exceeded
/// the per-try timeout is still running: b is slow (1s), c answers
/// `UNAVAILABLE`, and nothing else is left to try once both were tried. The
/// call used to fail at once with c's `UNAVAILABLE` although b was about to
/// answer and the deadline was seconds away.
#[tokio::test(start_paused = true)]
async fn a_retry_safe_call_waits_for_its_timed_out_attempt_when_nothing_else_is_left() {
    init_tracing();
    let (lb, [b, c], got, elapsed) = one_call_over_b_then_c(|b, c| {
        b.knobs.delay_ms.store(1000, Ordering::SeqCst);
        c.knobs.unavailable.store(true, Ordering::SeqCst);
    })
    .await;
    assert_eq!((got.as_str(), elapsed), ("b", Duration::from_secs(1)));
    // b's attempt went on: it was not cancelled and sent again.
    let b_ep = endpoint(&lb, b.addr);
    assert_eq!((b.calls(), b_ep.calls), (1, 1), "{b_ep:#?}");
    assert_eq!(b_ep.errors, 1, "the per-try timeout counts once: {b_ep:#?}");
    assert_eq!(endpoint(&lb, c.addr).errors, 1);
}

/// An attempt past its per-try timeout goes on beside the retry, and the first
/// to answer wins: b answers at 500ms, c (the retry) would at 2s.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_that_answers_first_answers_the_call() {
    init_tracing();
    let (lb, [_, c], got, elapsed) = one_call_over_b_then_c(|b, c| {
        b.knobs.delay_ms.store(500, Ordering::SeqCst);
        c.knobs.delay_ms.store(2000, Ordering::SeqCst);
    })
    .await;
    assert_eq!((got.as_str(), elapsed), ("b", Duration::from_millis(500)));
    let c_ep = endpoint(&lb, c.addr);
    assert_eq!(c_ep.calls, 1, "the retry was sent: {c_ep:#?}");
}

/// The chaos test's retry scenario: a was ejected once (taking the only
/// ejection slot of three endpoints) and recovered, b is healthy but slow, c
/// answers `UNAVAILABLE`. Attempts, time and routable endpoints are left, so
/// the call must succeed (on a, the ejected endpoint whose probes pass, or on
/// b) instead of failing with c's `UNAVAILABLE` at the per-try timeout.
#[tokio::test(start_paused = true)]
async fn a_retry_safe_call_does_not_fail_while_attempts_time_and_endpoints_remain() {
    init_tracing();
    let net = Net::new();
    let (a, b, c) = (net.start("a"), net.start("b"), net.start("c"));
    let lb = retrying_in_order(&net, &[&a, &b, &c])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    wait_all_healthy(&lb, LIMIT).await;
    a.knobs.unavailable.store(true, Ordering::SeqCst);
    assert_eq!(app_call(&mut client).await.unwrap(), "b");
    assert_eq!(endpoint(&lb, a.addr).state, EndpointState::Ejected);
    a.knobs.unavailable.store(false, Ordering::SeqCst);
    b.knobs.delay_ms.store(1000, Ordering::SeqCst);
    c.knobs.unavailable.store(true, Ordering::SeqCst);

    let started = Instant::now();
    let result = app_call(&mut client).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result.as_deref(), Ok("a" | "b")),
        "{result:?} after {elapsed:?}: {:#?}",
        lb.snapshot()
    );
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
}

/// An endpoint ejected after a failed call is still used, as a last resort,
/// when no endpoint is healthy or unprobed and its own last probe succeeded.
/// Healthy endpoints still come first, and an endpoint whose probes say it is
/// not serving is never a last resort.
#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_whose_probes_pass_is_a_last_resort() {
    init_tracing();
    let net = Net::new();
    let (a, b) = (net.start("a"), net.start("b"));
    let lb = builder(&net)
        .addresses(&addresses(&[&a, &b]))
        .retry_safe(RetrySafe::All)
        .base_ejection_time(Duration::from_secs(30))
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    wait_all_healthy(&lb, LIMIT).await;
    // One failed call ejects a (for 30s); a is fine again at once.
    a.knobs.unavailable.store(true, Ordering::SeqCst);
    while endpoint(&lb, a.addr).state != EndpointState::Ejected {
        assert_eq!(app_call(&mut client).await.unwrap(), "b");
    }
    a.knobs.unavailable.store(false, Ordering::SeqCst);
    // While b is healthy, the ejected a gets no call.
    let a_before = a.calls();
    for _ in 0..20 {
        assert_eq!(app_call(&mut client).await.unwrap(), "b");
    }
    assert_eq!(a.calls(), a_before);

    // b dies: a, ejected but healthy by its probes, takes the calls.
    b.kill();
    wait_until(&lb, LIMIT, "b unhealthy", |_| {
        endpoint(&lb, b.addr).state == EndpointState::Unhealthy
    })
    .await;
    let a_now = endpoint(&lb, a.addr);
    assert_eq!(a_now.state, EndpointState::Ejected, "{a_now:#?}");
    assert!(
        matches!(
            a_now.last_probe.as_ref().map(|p| &p.outcome),
            Some(ProbeOutcome::Healthy { .. })
        ),
        "{a_now:#?}"
    );
    for _ in 0..5 {
        let result = app_call(&mut client).await;
        assert!(
            matches!(result.as_deref(), Ok("a")),
            "{result:?}: {:#?}",
            lb.snapshot()
        );
    }
    assert_eq!(
        endpoint(&lb, a.addr).state,
        EndpointState::Ejected,
        "being a last resort does not end the ejection"
    );

    // b is back and healthy: it is preferred again.
    b.restart();
    wait_for_state(&lb, b.addr, EndpointState::Healthy, LIMIT).await;
    for _ in 0..5 {
        assert_eq!(app_call(&mut client).await.unwrap(), "b");
    }

    // A not-serving endpoint is no last resort, ejected or not.
    a.set_serving(false);
    wait_for_state(&lb, a.addr, EndpointState::NotServing, LIMIT).await;
    b.kill();
    wait_until(&lb, LIMIT, "b unhealthy again", |_| {
        endpoint(&lb, b.addr).state == EndpointState::Unhealthy
    })
    .await;
    let status = app_call(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no healthy endpoint"),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_slow_probes_is_only_a_fallback_until_it_recovers() {
    init_tracing();
    let net = Net::new();
    let (fast1, fast2, slow) = (net.start("fast1"), net.start("fast2"), net.start("slow"));
    for fast in [&fast1, &fast2] {
        fast.knobs.health_delay_ms.store(1, Ordering::SeqCst);
        fast.knobs.delay_ms.store(1, Ordering::SeqCst);
    }
    // Slow on everything, its health check included.
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    slow.knobs.delay_ms.store(25, Ordering::SeqCst);
    let lb = builder(&net)
        .probe_interval(Duration::from_millis(50))
        .slow_endpoint_min_latency(Duration::from_millis(10))
        .addresses(&addresses(&[&fast1, &fast2, &slow]))
        .build()
        .unwrap();
    wait_for_change(&lb, LIMIT, "the slow replica is marked slow", |s| {
        s.iter().any(|e| e.address == slow.addr && e.slow)
    })
    .await;
    let snapshot = lb.snapshot();
    for e in &snapshot {
        assert_eq!(e.state, EndpointState::Healthy, "{e:#?}");
        assert_eq!(e.slow, e.address == slow.addr, "{e:#?}");
    }
    let calls = |addr| endpoint(&lb, addr).calls;
    let before = calls(slow.addr);

    // Slow but healthy: it takes no calls while the others are healthy.
    let served = load(&lb, 4, 50).await;
    assert_eq!(served.values().sum::<usize>(), 200);
    assert_eq!(served.get("slow"), None, "{served:?}");
    assert_eq!(calls(slow.addr), before, "{:#?}", lb.snapshot());
    let e = endpoint(&lb, slow.addr);
    assert!(e.slow && e.state == EndpointState::Healthy, "{e:#?}");

    // Fast again: its next probe clears the mark, and it takes calls again, in
    // its slow start: at least as cheap as the others, it wins at least half
    // the draws it is in (a third of the calls; more while they are busier by
    // more than the choice's tolerance), and is passed over for the other
    // candidate 9 times in 10 while its weight is at the ramp's 0.1 floor: at
    // least about 1/30 of the 800 calls, 27.
    slow.knobs.health_delay_ms.store(1, Ordering::SeqCst);
    slow.knobs.delay_ms.store(1, Ordering::SeqCst);
    wait_for_change(&lb, LIMIT, "the replica is no longer slow", |s| {
        s.iter().all(|e| !e.slow)
    })
    .await;
    let served = load(&lb, 8, 100).await;
    let recovered = served.get("slow").copied().unwrap_or(0);
    assert!(
        recovered >= 10,
        "the recovered replica got {recovered} of 800 calls: {served:?}"
    );
    assert!(calls(slow.addr) > before);

    // The only healthy replica left, slow or not, takes the calls.
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    wait_for_change(&lb, LIMIT, "slow again", |s| {
        s.iter().any(|e| e.address == slow.addr && e.slow)
    })
    .await;
    fast1.kill();
    fast2.kill();
    wait_until(&lb, LIMIT, "only the slow one healthy", |s| {
        s.iter()
            .all(|e| (e.address == slow.addr) == (e.state == EndpointState::Healthy))
    })
    .await;
    let mut client = ChatServiceClient::new(lb.clone());
    for _ in 0..5 {
        assert_eq!(app_call(&mut client).await.unwrap(), "slow");
    }
    assert!(
        !endpoint(&lb, slow.addr).slow,
        "no other healthy endpoint to compare with: {:#?}",
        lb.snapshot()
    );
}

#[tokio::test(start_paused = true)]
async fn slow_endpoint_detection_can_be_turned_off() {
    init_tracing();
    let net = Net::new();
    let (fast1, fast2, slow) = (net.start("fast1"), net.start("fast2"), net.start("slow"));
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    let lb = builder(&net)
        .probe_interval(Duration::from_millis(50))
        .slow_endpoint_detection(false)
        .policy(Policy::RoundRobin)
        .addresses(&addresses(&[&fast1, &fast2, &slow]))
        .build()
        .unwrap();
    for _ in 0..5 {
        lb.wait_for_probe_round().await;
    }
    assert!(
        lb.snapshot()
            .iter()
            .all(|e| e.state == EndpointState::Healthy && !e.slow)
    );
    let served = load(&lb, 1, 30).await;
    assert_eq!(served.get("slow"), Some(&10), "{served:?}");
}

/// A retry tells the server the time left, not the call's whole timeout.
#[tokio::test(start_paused = true)]
async fn a_retry_sends_the_time_left_as_grpc_timeout() {
    init_tracing();
    let net = Net::new();
    let (b, c) = (net.start("b"), net.start("c"));
    let lb = retrying_in_order(&net, &[&b, &c]).build().unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    b.knobs.delay_ms.store(2000, Ordering::SeqCst);
    let mut client = ChatServiceClient::new(lb.clone());
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.set_timeout(Duration::from_secs(3));
    let reply = client.list_accounts(request).await.unwrap().into_inner();
    assert_eq!(reply.usernames, ["c"]);

    let first = b.knobs.last_grpc_timeout.lock().unwrap().clone().unwrap();
    assert_eq!(first, "3000000u");
    // Sent after the 300ms per-try timeout.
    let retry = c.knobs.last_grpc_timeout.lock().unwrap().clone().unwrap();
    assert_eq!(retry, "2700000u");
}
