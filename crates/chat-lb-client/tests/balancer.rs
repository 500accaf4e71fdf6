//! End-to-end behaviour of the balancer against in-process replicas on
//! 127.0.0.1.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{
    Balancer, Change, EndpointState, GrpcHealthProbe, Policy, RetrySafe, SafeToRetry,
};
use chat_proto::v1::{
    ListAccountsRequest, SubscribeRequest, chat_service_client::ChatServiceClient,
};
use common::{
    Frozen, Replica, app_call, dead_addr, endpoint, init_tracing, wait_all_healthy,
    wait_for_change, wait_for_state, wait_until,
};
use tokio::time::Instant;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(10);

fn grpc_builder() -> chat_lb_client::Builder {
    Balancer::builder()
        .probe(GrpcHealthProbe::new())
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(200))
}

/// Calls start on the first of `replicas` (pick-first), every call is retry-safe,
/// and an attempt without response headers after 300 ms gets a retry beside it.
fn retrying_in_order(replicas: &[&Replica]) -> chat_lb_client::Builder {
    let addresses: Vec<String> = replicas.iter().map(|r| r.addr.to_string()).collect();
    grpc_builder()
        .policy(Policy::PickFirst)
        .addresses(&addresses.join(","))
        .retry_safe(RetrySafe::All)
        .per_try_timeout(Duration::from_millis(300))
}

#[tokio::test]
async fn a_listed_address_where_nothing_listens_fails_no_call() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    let dead = dead_addr();
    // Calls start at once, before any probe has answered.
    let lb = grpc_builder()
        .addresses(&format!("{dead},{},{}", a.addr, b.addr))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    for i in 0..200 {
        if let Err(status) = app_call(&mut client).await {
            panic!("call {i} failed: {status:?}");
        }
    }
    assert_eq!(a.calls() + b.calls(), 200);
    let dead_ep = endpoint(&lb, dead);
    assert!(!dead_ep.state.is_routable(), "{dead_ep:#?}");
    assert!(dead_ep.last_error.is_some(), "{dead_ep:#?}");
}

#[tokio::test]
async fn not_serving_is_seen_through_watch_and_readmitted() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    // Checks are 30s apart: only the Watch stream can notice changes in time.
    // Round-robin, so that readmission shows in the call counts whatever the latency
    // estimates (p2c under sequential calls may keep preferring a).
    let lb = Balancer::builder()
        .policy(Policy::RoundRobin)
        .probe(GrpcHealthProbe::new())
        .probe_interval(Duration::from_secs(30))
        .probe_jitter(0.0)
        .address(a.addr)
        .address(b.addr)
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    b.set_serving(false).await;
    wait_for_state(
        &lb,
        b.addr,
        EndpointState::NotServing,
        Duration::from_secs(2),
    )
    .await;
    let before = b.calls();
    for _ in 0..100 {
        assert_eq!(app_call(&mut client).await.unwrap(), "a");
    }
    assert_eq!(b.calls(), before, "a NOT_SERVING replica got calls");

    b.set_serving(true).await;
    wait_for_state(&lb, b.addr, EndpointState::Healthy, Duration::from_secs(2)).await;
    for _ in 0..100 {
        app_call(&mut client).await.unwrap();
    }
    assert!(
        b.calls() > before + 10,
        "b was not readmitted: {}: {:#?}",
        b.calls() - before,
        endpoint(&lb, b.addr)
    );
}

#[tokio::test]
async fn chat_probe_polls_not_serving_and_readmits() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    let lb = Balancer::builder() // default probe: chat HealthCheck
        .probe_interval(Duration::from_millis(50))
        .addresses(&format!("{},{}", a.addr, b.addr))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    b.knobs.chat_not_serving.store(true, Ordering::SeqCst);
    wait_until(&lb, LIMIT, "b not serving", |_| {
        endpoint(&lb, b.addr).state == EndpointState::NotServing
    })
    .await;
    let probe = endpoint(&lb, b.addr).last_probe.unwrap();
    assert!(
        matches!(probe.outcome, chat_lb_client::ProbeOutcome::NotServing { ref detail } if detail == "draining")
    );

    let mut client = ChatServiceClient::new(lb.clone());
    let before = b.calls();
    for _ in 0..50 {
        assert_eq!(app_call(&mut client).await.unwrap(), "a");
    }
    assert_eq!(b.calls(), before);
    b.knobs.chat_not_serving.store(false, Ordering::SeqCst);
    wait_until(&lb, LIMIT, "b healthy", |_| {
        endpoint(&lb, b.addr).state == EndpointState::Healthy
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_under_load_fails_no_retry_safe_call() {
    init_tracing();
    let a = Replica::start("a");
    let mut b = Replica::start("b");
    let c = Replica::start("c");
    let lb = grpc_builder()
        .addresses(&format!("{},{},{}", a.addr, b.addr, c.addr))
        .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;

    let done = Arc::new(AtomicUsize::new(0));
    let quarter = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mut client = ChatServiceClient::new(lb.clone());
        let (done, quarter) = (done.clone(), quarter.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..150 {
                if let Err(status) = app_call(&mut client).await {
                    failures.push(status);
                }
                if done.fetch_add(1, Ordering::SeqCst) + 1 == 300 {
                    quarter.notify_one();
                }
            }
            failures
        }));
    }
    // Kill b once a quarter of the calls are done.
    quarter.notified().await;
    let b_before_kill = b.calls();
    b.kill();
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed calls: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert!(b_before_kill > 0, "b took no load before it was killed");
    // b may have served calls whose answers died with it; those were retried.
    assert!(a.calls() + b.calls() + c.calls() >= 1200);
    let b_ep = endpoint(&lb, b.addr);
    assert!(!b_ep.state.is_routable(), "{b_ep:#?}");
}

#[tokio::test]
async fn all_down_answers_unavailable_fast_then_recovers() {
    init_tracing();
    let mut a = Replica::start("a");
    let mut b = Replica::start("b");
    let lb = grpc_builder()
        .addresses(&format!("{},{}", a.addr, b.addr))
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
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "slow failure: {:?}",
            started.elapsed()
        );
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

    let _a2 = a.restart();
    wait_until(&lb, LIMIT, "a back", |_| {
        endpoint(&lb, a.addr).state == EndpointState::Healthy
    })
    .await;
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
}

#[tokio::test]
async fn wait_for_ready_waits_for_a_replica_to_come_back() {
    init_tracing();
    let mut a = Replica::start("a");
    let lb = grpc_builder()
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
        let a = std::mem::replace(&mut a, Replica::start("unused"));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let back = a.restart();
            (a, back)
        })
    };
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "it did not wait"
    );
    drop(restarter.await.unwrap());

    // A call's own deadline bounds the wait.
    let lb = grpc_builder()
        .address(dead_addr())
        .wait_for_ready(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb);
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.list_accounts(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_slow_replica_gets_less_traffic_under_p2c() {
    init_tracing();
    let fast1 = Replica::start("fast1");
    let fast2 = Replica::start("fast2");
    let slow = Replica::start("slow");
    slow.knobs.delay_ms.store(40, Ordering::SeqCst);
    let lb = grpc_builder()
        .policy(Policy::PowerOfTwoChoices)
        .addresses(&format!("{},{},{}", fast1.addr, fast2.addr, slow.addr))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = ChatServiceClient::new(lb.clone());
        tasks.push(tokio::spawn(async move {
            let mut served: HashMap<String, usize> = HashMap::new();
            for _ in 0..100 {
                *served
                    .entry(app_call(&mut client).await.unwrap())
                    .or_default() += 1;
            }
            served
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
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
#[tokio::test]
async fn a_replica_slow_once_is_used_again_under_sequential_calls() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    let lb = grpc_builder()
        .policy(Policy::PowerOfTwoChoices)
        .addresses(&format!("{},{}", a.addr, b.addr))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    // One slow call on b (a drained, so that the call cannot go elsewhere).
    a.set_serving(false).await;
    wait_for_state(&lb, a.addr, EndpointState::NotServing, LIMIT).await;
    b.knobs.delay_ms.store(60, Ordering::SeqCst);
    assert_eq!(app_call(&mut client).await.unwrap(), "b");
    b.knobs.delay_ms.store(0, Ordering::SeqCst);
    let estimate = endpoint(&lb, b.addr).latency_estimate;
    assert!(
        estimate >= Duration::from_millis(50),
        "the slow call sets b's estimate (peak): {estimate:?}"
    );
    a.set_serving(true).await;
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

#[tokio::test]
async fn round_robin_spreads_calls_evenly() {
    let a = Replica::start("a");
    let b = Replica::start("b");
    let lb = grpc_builder()
        .policy(Policy::RoundRobin)
        .addresses(&format!("{},{}", a.addr, b.addr))
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

#[tokio::test]
async fn a_frozen_replica_is_bypassed_by_the_per_try_timeout() {
    init_tracing();
    let frozen = Frozen::start().await;
    let a = Replica::start("a");
    let lb = grpc_builder()
        .policy(Policy::PickFirst) // the frozen one is first: every call starts there
        .addresses(&format!("{},{}", frozen.addr, a.addr))
        .retry_safe(RetrySafe::All)
        .per_try_timeout(Duration::from_millis(150))
        .outlier_detection(false) // show the timeout alone, not the ejection
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    let started = Instant::now();
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
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
        matches!(&f.last_probe.as_ref().unwrap().outcome, chat_lb_client::ProbeOutcome::Failed { error } if error.contains("timed out")),
        "{f:#?}"
    );

    // Not retry-safe: no per-try timeout, the call's own deadline applies.
    let lb = grpc_builder()
        .address(frozen.addr)
        .per_try_timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb);
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.set_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let status = client.list_accounts(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(290),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn unavailable_answers_are_retried_only_for_retry_safe_calls() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    b.knobs.unavailable.store(true, Ordering::SeqCst);
    let build = || {
        grpc_builder()
            .policy(Policy::PickFirst)
            .addresses(&format!("{},{}", b.addr, a.addr))
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
    // Its probes still succeed: it is readmitted once the ejection time (1s) is over.
    let ejected_at = Instant::now();
    wait_for_state(&lb, b.addr, EndpointState::Healthy, Duration::from_secs(3)).await;
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(900),
        "{:?}",
        ejected_at.elapsed()
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

#[tokio::test]
async fn endpoints_follow_discovery_and_runtime_changes() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<
        Result<Change<&str, std::net::SocketAddr>, std::io::Error>,
    >();
    let lb = grpc_builder()
        .discover(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());

    tx.send(Ok(Change::Insert("a", a.addr))).unwrap();
    // The first call waits for the discovery stream's first item.
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    tx.send(Ok(Change::Remove("a"))).unwrap();
    wait_until(&lb, LIMIT, "a removed", |s| s.is_empty()).await;
    let status = app_call(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("no endpoints configured"),
        "{status:?}"
    );

    lb.add_endpoint(b.addr).unwrap();
    assert_eq!(lb.addresses(), [b.addr]);
    assert_eq!(app_call(&mut client).await.unwrap(), "b");
    assert!(lb.remove_endpoint(b.addr.to_string()).unwrap());
    assert!(lb.addresses().is_empty());
    assert!(lb.add_endpoint("no port").is_err());

    // A host name is resolved (localhost → 127.0.0.1, maybe also ::1 where
    // nothing listens: that one is simply never healthy).
    lb.add_endpoint(format!("localhost:{}", a.addr.port()))
        .unwrap();
    for _ in 0..20 {
        assert_eq!(app_call(&mut client).await.unwrap(), "a");
    }
    assert!(lb.addresses().contains(&a.addr));
}

#[tokio::test]
async fn a_stream_breaks_with_its_replica_and_resumes_elsewhere() {
    init_tracing();
    let mut a = Replica::start("a");
    let b = Replica::start("b");
    let lb = grpc_builder()
        .policy(Policy::PickFirst)
        .addresses(&format!("{},{}", a.addr, b.addr))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    let mut stream = client
        .subscribe(SubscribeRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let mut last = 0;
    for _ in 0..3 {
        let m = stream.message().await.unwrap().unwrap();
        assert_eq!(m.sender, "a");
        last = m.sequence;
    }
    a.kill();
    // The stream ends with UNAVAILABLE (the balancer's word for a broken
    // connection; tonic alone would say UNKNOWN)...
    let status = loop {
        match stream.message().await {
            Ok(Some(m)) => last = m.sequence,
            Ok(None) => panic!("stream ended cleanly"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&a.addr.to_string()), "{status:?}");
    // ...the balancer has taken a out already, and resubscribing at once from
    // the last sequence lands on b.
    assert!(!endpoint(&lb, a.addr).state.is_routable());
    let mut stream = client
        .subscribe(SubscribeRequest {
            after_sequence: last,
        })
        .await
        .unwrap()
        .into_inner();
    let m = stream.message().await.unwrap().unwrap();
    assert_eq!((m.sender.as_str(), m.sequence), ("b", last + 1));
}

#[tokio::test]
async fn snapshot_reports_probes_and_calls() {
    let a = Replica::start("a");
    let lb = grpc_builder().address(a.addr).build().unwrap();
    assert!(lb.wait_for_probe_round().await);
    let s = endpoint(&lb, a.addr);
    assert_eq!(s.state, EndpointState::Healthy);
    let probe = s.last_probe.expect("a probe");
    assert!(matches!(
        probe.outcome,
        chat_lb_client::ProbeOutcome::Healthy { .. }
    ));
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

/// A retry-safe call must not give up while an attempt that merely exceeded
/// the per-try timeout is still running: b is slow (1s), c answers
/// `UNAVAILABLE`, and nothing else is left to try once both were tried. The
/// call used to fail at once with c's `UNAVAILABLE` although b was about to
/// answer and the deadline was seconds away.
#[tokio::test]
async fn a_retry_safe_call_waits_for_its_timed_out_attempt_when_nothing_else_is_left() {
    init_tracing();
    let b = Replica::start("b");
    let c = Replica::start("c");
    let lb = retrying_in_order(&[&b, &c])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    b.knobs.delay_ms.store(1000, Ordering::SeqCst);
    c.knobs.unavailable.store(true, Ordering::SeqCst);

    let started = Instant::now();
    let result = app_call(&mut client).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result.as_deref(), Ok("b")),
        "{result:?} after {elapsed:?}: {:#?}",
        lb.snapshot()
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(4)).contains(&elapsed),
        "{elapsed:?}"
    );
    // b's attempt went on: it was not cancelled and sent again.
    let b_ep = endpoint(&lb, b.addr);
    assert_eq!((b.calls(), b_ep.calls), (1, 1), "{b_ep:#?}");
    assert_eq!(b_ep.errors, 1, "the per-try timeout counts once: {b_ep:#?}");
    assert_eq!(endpoint(&lb, c.addr).errors, 1);
    assert!(lb.snapshot().iter().all(|e| e.outstanding == 0));
}

/// An attempt past its per-try timeout goes on beside the retry, and the first
/// to answer wins: b answers at 500ms, c (the retry) would at 2s.
#[tokio::test]
async fn a_timed_out_attempt_that_answers_first_answers_the_call() {
    init_tracing();
    let b = Replica::start("b");
    let c = Replica::start("c");
    let lb = retrying_in_order(&[&b, &c])
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());
    b.knobs.delay_ms.store(500, Ordering::SeqCst);
    c.knobs.delay_ms.store(2000, Ordering::SeqCst);

    let started = Instant::now();
    let result = app_call(&mut client).await;
    let elapsed = started.elapsed();
    assert!(
        matches!(result.as_deref(), Ok("b")),
        "{result:?} after {elapsed:?}: {:#?}",
        lb.snapshot()
    );
    assert!(
        (Duration::from_millis(450)..Duration::from_millis(1500)).contains(&elapsed),
        "{elapsed:?}"
    );
    let c_ep = endpoint(&lb, c.addr);
    assert_eq!(c_ep.calls, 1, "the retry was sent: {c_ep:#?}");
    assert!(lb.snapshot().iter().all(|e| e.outstanding == 0));
}

/// The chaos test's retry scenario: a was ejected once (taking the only
/// ejection slot of three endpoints) and recovered, b is healthy but slow, c
/// answers `UNAVAILABLE`. Attempts, time and routable endpoints are left, so
/// the call must succeed (on a, the ejected endpoint whose probes pass, or on
/// b) instead of failing with c's `UNAVAILABLE` at the per-try timeout.
#[tokio::test]
async fn a_retry_safe_call_does_not_fail_while_attempts_time_and_endpoints_remain() {
    init_tracing();
    let (a, b, c) = (
        Replica::start("a"),
        Replica::start("b"),
        Replica::start("c"),
    );
    let lb = retrying_in_order(&[&a, &b, &c])
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
#[tokio::test]
async fn an_ejected_endpoint_whose_probes_pass_is_a_last_resort() {
    init_tracing();
    let (a, mut b) = (Replica::start("a"), Replica::start("b"));
    let lb = grpc_builder()
        .addresses(&format!("{},{}", a.addr, b.addr))
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
            Some(chat_lb_client::ProbeOutcome::Healthy { .. })
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
    let _b2 = b.restart();
    wait_for_state(&lb, b.addr, EndpointState::Healthy, LIMIT).await;
    for _ in 0..5 {
        assert_eq!(app_call(&mut client).await.unwrap(), "b");
    }

    // A not-serving endpoint is no last resort, ejected or not.
    a.set_serving(false).await;
    wait_for_state(&lb, a.addr, EndpointState::NotServing, LIMIT).await;
    drop(_b2);
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

#[tokio::test]
async fn a_replica_with_slow_probes_is_only_a_fallback_until_it_recovers() {
    init_tracing();
    let fast1 = Replica::start("fast1");
    let fast2 = Replica::start("fast2");
    let slow = Replica::start("slow");
    // Slow on everything, its health check included.
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    slow.knobs.delay_ms.store(25, Ordering::SeqCst);
    let lb = Balancer::builder() // default probe: chat HealthCheck
        .probe_interval(Duration::from_millis(50))
        // Above the few ms a busy test machine adds to a loaded replica's
        // probes (which would mark it slow for a while), well under 25ms.
        .slow_endpoint_min_latency(Duration::from_millis(10))
        .addresses(&format!("{},{},{}", fast1.addr, fast2.addr, slow.addr))
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

    // Fast again: its next probe clears the mark, and it takes calls again.
    slow.knobs.health_delay_ms.store(0, Ordering::SeqCst);
    slow.knobs.delay_ms.store(0, Ordering::SeqCst);
    wait_for_change(&lb, LIMIT, "the replica is no longer slow", |s| {
        s.iter().all(|e| !e.slow)
    })
    .await;
    let served = load(&lb, 8, 100).await;
    let recovered = served.get("slow").copied().unwrap_or(0);
    assert!(
        recovered > 40,
        "the recovered replica got {recovered} of 800 calls: {served:?}"
    );
    assert!(calls(slow.addr) > before);

    // The only healthy replica left, slow or not, takes the calls.
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    wait_for_change(&lb, LIMIT, "slow again", |s| {
        s.iter().any(|e| e.address == slow.addr && e.slow)
    })
    .await;
    let (mut fast1, mut fast2) = (fast1, fast2);
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

#[tokio::test]
async fn slow_endpoint_detection_can_be_turned_off() {
    init_tracing();
    let fast1 = Replica::start("fast1");
    let fast2 = Replica::start("fast2");
    let slow = Replica::start("slow");
    slow.knobs.health_delay_ms.store(25, Ordering::SeqCst);
    let lb = Balancer::builder()
        .probe_interval(Duration::from_millis(50))
        .slow_endpoint_detection(false)
        .policy(Policy::RoundRobin)
        .addresses(&format!("{},{},{}", fast1.addr, fast2.addr, slow.addr))
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

/// A `grpc-timeout` header value (`TimeoutValue TimeoutUnit`) as a duration.
fn grpc_timeout(value: &str) -> Duration {
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().unwrap();
    match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => panic!("bad grpc-timeout {value}"),
    }
}

/// A retry tells the server the time left, not the call's whole timeout.
#[tokio::test]
async fn a_retry_sends_the_time_left_as_grpc_timeout() {
    init_tracing();
    let b = Replica::start("b");
    let c = Replica::start("c");
    let lb = retrying_in_order(&[&b, &c]).build().unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    b.knobs.delay_ms.store(2000, Ordering::SeqCst);
    let mut client = ChatServiceClient::new(lb.clone());
    let mut request = tonic::Request::new(ListAccountsRequest::default());
    request.set_timeout(Duration::from_secs(3));
    let reply = client.list_accounts(request).await.unwrap().into_inner();
    assert_eq!(reply.usernames, ["c"]);

    let first = b.knobs.last_grpc_timeout.lock().unwrap().clone().unwrap();
    assert_eq!(grpc_timeout(&first), Duration::from_secs(3), "{first}");
    let retry = c.knobs.last_grpc_timeout.lock().unwrap().clone().unwrap();
    let left = grpc_timeout(&retry);
    // Sent after the 300ms per-try timeout.
    assert!(
        (Duration::from_millis(1500)..=Duration::from_millis(2700)).contains(&left),
        "the retry sent grpc-timeout {retry} ({left:?})"
    );
}
