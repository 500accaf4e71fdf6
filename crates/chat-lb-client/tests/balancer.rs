//! What only real sockets show, against in-process replicas on 127.0.0.1:
//! connections refused by the operating system, replicas killed under load and
//! mid-stream (connections reset), the `grpc.health.v1` watch and the chat
//! probe over HTTP/2, and host names resolved by DNS. The balancing logic itself
//! is tested in memory, on the paused clock, in `balancing.rs`.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chat_lb_client::{Balancer, Change, EndpointState, GrpcHealthProbe, Policy, RetrySafe};
use chat_proto::v1::{SubscribeRequest, chat_service_client::ChatServiceClient};
use common::{
    Replica, app_call, dead_addr, endpoint, init_tracing, wait_all_healthy, wait_for_state,
    wait_until,
};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(10);

fn grpc_builder() -> chat_lb_client::Builder {
    Balancer::builder()
        .probe(GrpcHealthProbe::new())
        .probe_interval(Duration::from_millis(100))
        .probe_timeout(Duration::from_millis(200))
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
    // Found out by a call that tried it or, if the calls were all done before
    // any went there, by its probes.
    wait_until(&lb, LIMIT, "the dead address is excluded", |endpoints| {
        endpoints
            .iter()
            .any(|e| e.address == dead && !e.state.is_routable() && e.last_error.is_some())
    })
    .await;
}

#[tokio::test]
async fn not_serving_is_seen_through_watch_and_readmitted() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    // Checks are 30s apart: only the Watch stream can notice changes in time.
    // Round-robin, so that readmission shows in the call counts whatever the latency
    // estimates (p2c under sequential calls may keep preferring a); slow start off,
    // so that it shows at once (its ramp is tested in `tests/lb_overload.rs`).
    let lb = Balancer::builder()
        .policy(Policy::RoundRobin)
        .slow_start_window(None)
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
async fn a_shed_call_is_retried_elsewhere_unless_the_pushback_is_negative() {
    init_tracing();
    let a = Replica::start("a");
    let b = Replica::start("b");
    let lb = grpc_builder()
        .policy(Policy::PickFirst)
        .retry_safe(RetrySafe::All)
        .address(a.addr)
        .address(b.addr)
        .build()
        .unwrap();
    wait_all_healthy(&lb, LIMIT).await;
    let mut client = ChatServiceClient::new(lb.clone());

    // "Do not retry": the caller gets the server's answer; b never sees the call.
    *a.knobs.shed_with_pushback.lock().unwrap() = Some("-1");
    let status = app_call(&mut client).await.expect_err("shed, not retried");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(status.message(), "a is overloaded");
    assert_eq!(b.calls(), 0);
    let shedding = endpoint(&lb, a.addr);
    assert_eq!(shedding.overloads, 1);
    assert_eq!(shedding.overloaded_for, None, "no period to honour");

    // A pushback: retried on b at once, and a avoided for the period.
    *a.knobs.shed_with_pushback.lock().unwrap() = Some("60000");
    assert_eq!(app_call(&mut client).await.expect("retried on b"), "b");
    let shedding = endpoint(&lb, a.addr);
    assert_eq!(
        (shedding.overloads, shedding.state, shedding.errors),
        (2, EndpointState::Healthy, 0),
        "shedding is no failure: {shedding:#?}"
    );
    assert!(shedding.overloaded_for.is_some(), "{shedding:#?}");
}

/// Calls name this client in `user-agent` and go over the balancer's own
/// connection; under a `configure_endpoint` hook they go over a tonic channel
/// built from the hooked `Endpoint`, whose settings they carry (its agent
/// follows ours).
#[tokio::test]
async fn a_configure_endpoint_hook_shapes_the_connection_calls_go_over() {
    init_tracing();
    let a = Replica::start("a");
    let user_agent = |lb: Balancer| {
        let knobs = a.knobs.clone();
        async move {
            wait_all_healthy(&lb, LIMIT).await;
            app_call(&mut ChatServiceClient::new(lb)).await.unwrap();
            knobs
                .last_user_agent
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default()
        }
    };

    let own = user_agent(grpc_builder().address(a.addr).build().unwrap()).await;
    assert!(own.starts_with("chat-lb-client/"), "{own}");

    let hooked = grpc_builder()
        .address(a.addr)
        .configure_endpoint(|endpoint| endpoint.user_agent("hooked-app/1").unwrap())
        .build()
        .unwrap();
    let hooked = user_agent(hooked).await;
    assert!(hooked.contains(" hooked-app/1 tonic/"), "{hooked}");
}
