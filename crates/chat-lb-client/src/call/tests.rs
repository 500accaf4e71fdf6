//! Each transition of the call state machine, with fabricated outcomes on
//! tokio's paused clock: no sockets, no attempts actually sent.

mod overload;
mod streams;

use std::{io, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tonic::{Code, Status, body::Body};

mod hedging;

use super::state::{Action, Attempt, Call, Done, Response};
use crate::{
    EjectionReason, EndpointState, ProbeStatus, RetrySafe,
    classify::{CallFailure, FailureCodes, Outcome},
    config::Config,
    context::CallContext,
    endpoint::Endpoint,
    members::Members,
    outlier::EjectionCap,
    picker::Policy,
    transport::{ServiceTransport, Transport},
    update::Update,
};

/// A call's surroundings: the published membership (changeable), and the
/// updates the call reports.
struct World {
    ctx: Arc<CallContext>,
    members: watch::Sender<Members>,
    updates: mpsc::UnboundedReceiver<Update>,
}

fn config() -> Config {
    let mut cfg = Config {
        policy: Policy::PickFirst,
        ..Config::default()
    };
    cfg.retry.safe = RetrySafe::All;
    cfg.retry.per_try_timeout = Some(Duration::from_millis(300));
    cfg
}

/// An endpoint at 127.0.0.1:`port`, healthy by its probes, sending over its
/// own channel. Its transport is never used: the tests fabricate the
/// outcomes of its attempts.
fn endpoint(port: u16) -> Arc<Endpoint> {
    endpoint_over(port, None)
}

/// [`endpoint`], sending over `given` if set.
fn endpoint_over(port: u16, given: Option<Arc<dyn Transport>>) -> Arc<Endpoint> {
    let addr = ([127, 0, 0, 1], port).into();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
        .into();
    let endpoint = Endpoint::new(
        addr,
        channel,
        given,
        Duration::from_millis(1),
        Duration::from_secs(10),
        Duration::from_secs(10),
    );
    let healthy = Ok(ProbeStatus::Healthy {
        latency: Duration::from_millis(1),
        detail: String::new(),
    });
    let cfg = Config::default();
    endpoint.on_probe(
        (&cfg.health, &EjectionCap::default()),
        healthy,
        Duration::ZERO,
        false,
    );
    Arc::new(endpoint)
}

fn world(cfg: Config, endpoints: &[Arc<Endpoint>]) -> World {
    let (members, receiver) = watch::channel(Members {
        endpoints: endpoints.iter().cloned().collect(),
        unresolved: Arc::from(Vec::new()),
        unsettled: false,
    });
    let (tx, updates) = mpsc::unbounded_channel();
    let ctx = CallContext::new(Arc::new(cfg), receiver, tx, Arc::default());
    World {
        ctx: Arc::new(ctx),
        members,
        updates,
    }
}

fn request(timeout: Option<Duration>) -> http::Request<Body> {
    let mut request = http::Request::builder()
        .uri("http://lb/pkg.Service/Method")
        .body(Body::empty())
        .unwrap();
    if let Some(timeout) = timeout {
        crate::deadline::set(request.headers_mut(), timeout);
    }
    request
}

/// The attempt an action sends (panics on any other action).
fn sent(action: Action) -> Attempt {
    match action {
        Action::Send(attempt) => attempt,
        Action::Wait => panic!("waits instead of sending"),
        Action::Answer(answer) => panic!("answers instead of sending: {answer:?}"),
    }
}

/// The answer of an action, as a gRPC status (`Ok` for a plain response).
fn answered(action: Action) -> Result<Response, Status> {
    match action {
        Action::Answer(Ok(response)) => match Status::from_header_map(response.headers()) {
            Some(status) if status.code() != Code::Ok => Err(status),
            _ => Ok(response),
        },
        Action::Answer(Err(error)) => panic!("a service error: {error}"),
        Action::Send(attempt) => panic!("sends attempt {} instead of answering", attempt.n),
        Action::Wait => panic!("waits instead of answering"),
    }
}

fn done(attempt: &Attempt, outcome: Outcome) -> Done {
    Done {
        n: attempt.n,
        endpoint: attempt.endpoint.clone(),
        outcome,
        finished: Instant::now(),
    }
}

fn headers() -> Outcome {
    let response = http::Response::new(Body::empty());
    Outcome::of_response(response, Duration::from_millis(2), FailureCodes::default())
}

/// A trailers-only answer with `status`, classified with the default failure
/// codes.
fn answer(status: Status) -> Outcome {
    Outcome::of_response(status.into_http(), Duration::ZERO, FailureCodes::default())
}

fn unavailable() -> Outcome {
    answer(Status::unavailable("draining"))
}

fn refused() -> Outcome {
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    Outcome::of_error(
        Box::new(tonic::ConnectError(Box::new(refused))),
        false,
        false,
    )
}

fn reset() -> Outcome {
    Outcome::of_error(
        Box::new(io::Error::from(io::ErrorKind::ConnectionReset)),
        false,
        false,
    )
}

/// A request extension a caller might add.
#[derive(Clone)]
struct Marker;

#[tokio::test(start_paused = true)]
async fn an_attempt_carries_the_request_head_and_only_a_given_transport_its_extensions() {
    let answering = tower::service_fn(|_: http::Request<Body>| async {
        Ok::<_, crate::error::BoxError>(http::Response::new(Body::empty()))
    });
    let given: Arc<dyn Transport> = Arc::new(ServiceTransport::new(answering));
    for (endpoint, extensions) in [(endpoint(1), false), (endpoint_over(2, Some(given)), true)] {
        let w = world(config(), std::slice::from_ref(&endpoint));
        let now = Instant::now();
        let mut request = request(Some(Duration::from_secs(1)));
        request
            .headers_mut()
            .insert("x-caller", http::HeaderValue::from_static("c"));
        request.extensions_mut().insert(Marker);
        let mut call = Call::new(w.ctx.clone(), request, now);
        let attempt = sent(call.start(now)).request;
        assert_eq!(attempt.uri(), "http://lb/pkg.Service/Method");
        assert_eq!(attempt.headers()["x-caller"], "c");
        assert!(attempt.headers().contains_key("grpc-timeout"));
        assert_eq!(
            attempt.extensions().get::<Marker>().is_some(),
            extensions,
            "over {:?}",
            endpoint.transport
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_goes_out_with_the_per_try_timer_and_its_headers_answer() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(config(), &[a.clone(), b]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    assert_eq!((first.n, first.endpoint.addr), (1, a.addr));
    assert_eq!(call.timer(), Some(now + Duration::from_millis(300)));

    let answer = call.on_attempt(done(&first, headers()), false, now);
    assert!(answered(answer).is_ok());
    assert_eq!(a.snapshot().state, EndpointState::Healthy);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_never_reached_a_server_is_retried_whatever_its_safety() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.retry.safe = RetrySafe::None;
    let mut w = world(cfg, &[a.clone(), b.clone()]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    assert_eq!(call.timer(), None, "not retry-safe: no per-try timeout");

    let second = sent(call.on_attempt(done(&first, refused()), false, now));
    assert_eq!((second.n, second.endpoint.addr), (2, b.addr));
    assert_eq!(a.snapshot().state, EndpointState::Ejected);
    assert!(matches!(w.updates.try_recv(), Ok(Update::StateChanged)));

    // Each endpoint once: with both refused, the call is answered UNAVAILABLE.
    let status = answered(call.on_attempt(done(&second, refused()), false, now)).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("chat-lb-client: no healthy endpoint for this call after 2 attempt(s); endpoints: 127.0.0.1:1 (ejected: Transport: "),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_transport_failure_is_retried_only_for_retry_safe_calls() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.retry.safe = RetrySafe::None;
    let w = world(cfg, &[a.clone(), b]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let status = answered(call.on_attempt(done(&first, reset()), false, now)).unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .starts_with("chat-lb-client: call to 127.0.0.1:1 failed after 1 attempt(s): "),
        "{status:?}"
    );

    let w = world(config(), &[a, endpoint(2)]);
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let second = sent(call.on_attempt(done(&first, reset()), false, now));
    assert_eq!(second.n, 2);
}

#[tokio::test(start_paused = true)]
async fn unavailable_is_retried_within_max_attempts_then_passed_on() {
    let endpoints = [endpoint(1), endpoint(2), endpoint(3), endpoint(4)];
    let mut cfg = config();
    cfg.outlier.max_ejection_percent = 100;
    let w = world(cfg, &endpoints);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let mut attempt = sent(call.start(now));
    for n in 2..=3 {
        attempt = sent(call.on_attempt(done(&attempt, unavailable()), false, now));
        assert_eq!(
            (attempt.n, attempt.endpoint.addr),
            (n, endpoints[n as usize - 1].addr)
        );
    }
    // max_attempts (3) used: the server's own answer is passed on.
    let status = answered(call.on_attempt(done(&attempt, unavailable()), false, now)).unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "draining")
    );
}

#[tokio::test(start_paused = true)]
async fn the_per_try_timeout_retries_beside_the_attempt_and_the_first_headers_answer() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.outlier.enabled = false;
    let w = world(cfg, &[a.clone(), b.clone()]);
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(1))), start);
    let first = sent(call.start(start));
    assert_eq!(first.request.headers()["grpc-timeout"], "1000000u");

    tokio::time::advance(Duration::from_millis(300)).await;
    let now = Instant::now();
    let second = sent(call.on_timer(now));
    assert_eq!((second.n, second.endpoint.addr), (2, b.addr));
    // The retry carries the time left, and its own per-try timer.
    assert_eq!(second.request.headers()["grpc-timeout"], "700000u");
    assert_eq!(call.timer(), Some(now + Duration::from_millis(300)));
    assert_eq!(
        a.snapshot().errors,
        1,
        "the timeout counts against its endpoint"
    );

    // The first attempt was not cancelled: its late headers answer the call.
    let answer = call.on_attempt(done(&first, headers()), true, now);
    assert!(answered(answer).is_ok());
}

#[tokio::test(start_paused = true)]
async fn with_no_retry_left_the_call_waits_for_its_running_attempt_until_the_deadline() {
    let a = endpoint(1);
    let w = world(config(), std::slice::from_ref(&a));
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(1))), start);
    let first = sent(call.start(start));
    tokio::time::advance(Duration::from_millis(300)).await;
    // No other endpoint: no retry, the attempt goes on until the deadline.
    assert!(matches!(call.on_timer(Instant::now()), Action::Wait));
    assert_eq!(call.timer(), Some(start + Duration::from_secs(1)));

    tokio::time::advance(Duration::from_millis(700)).await;
    let status = answered(call.on_timer(Instant::now())).unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert_eq!(
        status.message(),
        "chat-lb-client: deadline of 1s exceeded waiting for 127.0.0.1:1 (attempt 1)"
    );
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn a_failure_while_an_earlier_attempt_runs_waits_for_that_attempt() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.retry.max_attempts = 2;
    cfg.outlier.enabled = false;
    let w = world(cfg, &[a, b]);
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(5))), start);
    let first = sent(call.start(start));
    tokio::time::advance(Duration::from_millis(300)).await;
    let second = sent(call.on_timer(Instant::now()));
    // The retry fails; no attempt left, but the first still runs.
    let action = call.on_attempt(done(&second, reset()), true, Instant::now());
    assert!(matches!(action, Action::Wait));
    assert_eq!(call.timer(), Some(start + Duration::from_secs(5)));
    // It fails too: now the call gives up, with the last failure.
    let status = answered(call.on_attempt(done(&first, unavailable()), false, Instant::now()));
    assert_eq!(status.unwrap_err().message(), "draining");
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_retry_budget_stops_retries_that_may_have_reached_a_server() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.retry.budget_ratio = 0.0;
    cfg.retry.budget_min_per_sec = 0;
    let w = world(cfg, &[a, b]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let status = answered(call.on_attempt(done(&first, unavailable()), false, now));
    assert_eq!(status.unwrap_err().message(), "draining");

    // A transparent retry needs no budget.
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    assert_eq!(
        sent(call.on_attempt(done(&first, refused()), false, now)).n,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn without_endpoints_a_call_fails_fast_or_waits_for_ready() {
    let w = world(config(), &[]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let status = answered(call.start(now)).unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unavailable, "chat-lb-client: no endpoints configured")
    );

    let mut cfg = config();
    cfg.wait_for_ready = Some(Duration::from_secs(2));
    let w = world(cfg, &[]);
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    assert!(matches!(call.start(now), Action::Wait));
    assert!(call.waits_for_endpoints());
    assert_eq!(call.timer(), Some(now + Duration::from_secs(2)));

    // An endpoint arrives: the call goes there.
    let a = endpoint(1);
    w.members
        .send_modify(|m| m.endpoints = Arc::from(vec![a.clone()]));
    tokio::time::advance(Duration::from_millis(500)).await;
    let first = sent(call.on_endpoints_changed(Instant::now()));
    assert_eq!(first.endpoint.addr, a.addr);
    assert!(!call.waits_for_endpoints());
}

#[tokio::test(start_paused = true)]
async fn a_wait_for_ready_ends_at_the_deadline_or_the_wait_limit() {
    let mut cfg = config();
    cfg.wait_for_ready = Some(Duration::from_secs(2));
    let w = world(cfg, &[]);
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(1))), start);
    assert!(matches!(call.start(start), Action::Wait));
    assert_eq!(
        call.timer(),
        Some(start + Duration::from_secs(1)),
        "the deadline is sooner"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let status = answered(call.on_timer(Instant::now())).unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (
            Code::DeadlineExceeded,
            "chat-lb-client: deadline of 1s exceeded while waiting for a healthy endpoint (attempt 0)"
        )
    );

    let mut call = Call::new(w.ctx.clone(), request(None), start);
    assert!(matches!(call.start(Instant::now()), Action::Wait));
    tokio::time::advance(Duration::from_secs(1)).await;
    let status = answered(call.on_timer(Instant::now())).unwrap_err();
    assert_eq!(status.message(), "chat-lb-client: no endpoints configured");
}

#[tokio::test(start_paused = true)]
async fn the_channels_own_deadline_answers_deadline_exceeded() {
    let a = endpoint(1);
    let w = world(config(), &[a]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(2))), now);
    let first = sent(call.start(now));
    let expired = Outcome::of_error(Box::new(tonic::TimeoutExpired(())), false, false);
    let status = answered(call.on_attempt(done(&first, expired), false, now)).unwrap_err();
    assert_eq!(
        status.message(),
        "chat-lb-client: deadline of 2s exceeded waiting for 127.0.0.1:1 (attempt 1)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_code_is_retried_elsewhere_and_accrues_an_application_code_does_neither() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(config(), &[a.clone(), b.clone()]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    assert_eq!(first.endpoint.addr, a.addr);
    let internal = answer(Status::internal("oops"));
    let second = sent(call.on_attempt(done(&first, internal), false, now));
    assert_eq!(second.endpoint.addr, b.addr, "retried on another endpoint");
    let seen = a.snapshot();
    assert_eq!(
        (seen.state, seen.errors, seen.consecutive_call_failures),
        (EndpointState::Healthy, 1, 1),
        "INTERNAL accrues: no ejection at once"
    );
    assert_eq!((seen.recent_attempts, seen.recent_failures), (1, 1));
    assert!(seen.last_error.unwrap().starts_with("Internal: oops"));
    assert!(answered(call.on_attempt(done(&second, headers()), false, now)).is_ok());

    // NOT_FOUND is the caller's answer: passed on, not retried, a success for
    // the endpoint.
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let not_found = answer(Status::not_found("no such user"));
    let status = answered(call.on_attempt(done(&first, not_found), false, now)).unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let seen = a.snapshot();
    assert_eq!((seen.errors, seen.consecutive_call_failures), (1, 0));
    assert_eq!((seen.recent_attempts, seen.recent_failures), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn failures_in_a_row_eject_for_consecutive_failures() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(config(), &[a.clone(), b.clone()]);
    let internal = CallFailure::Status(Code::Internal);
    for n in 1..=4 {
        w.ctx.count_failure(&a, internal, "oops", Duration::ZERO);
        assert_eq!(a.snapshot().state, EndpointState::Healthy, "after {n}");
    }
    a.on_success(Duration::from_millis(1), Instant::now());
    for _ in 0..4 {
        w.ctx.count_failure(&a, internal, "oops", Duration::ZERO);
    }
    assert_eq!(
        a.snapshot().state,
        EndpointState::Healthy,
        "a success starts over"
    );
    w.ctx.count_failure(&a, internal, "oops", Duration::ZERO);
    let seen = a.snapshot();
    assert_eq!(seen.state, EndpointState::Ejected);
    assert_eq!(
        seen.ejection_reason,
        Some(EjectionReason::ConsecutiveFailures)
    );
    assert_eq!(
        (seen.consecutive_call_failures, seen.recent_attempts),
        (0, 0),
        "an ejection starts the accrual over"
    );
}

#[tokio::test(start_paused = true)]
async fn a_flaky_endpoint_is_ejected_by_failure_percentage_once_enough_endpoints_have_volume() {
    let (a, b, c) = (endpoint(1), endpoint(2), endpoint(3));
    let mut cfg = config();
    cfg.outlier.consecutive_failures = None;
    let w = world(cfg, &[a.clone(), b.clone(), c.clone()]);
    let rtt = Duration::from_millis(1);
    // One failure in five, as a replica with --inject-error-rate 0.2 does.
    let flaky = |attempts: usize| {
        for n in 0..attempts {
            if n % 5 == 4 {
                let internal = CallFailure::Status(Code::Internal);
                w.ctx
                    .count_failure(&a, internal, "injected", Duration::ZERO);
            } else {
                a.on_success(rtt, Instant::now());
            }
        }
    };
    for _ in 0..60 {
        b.on_success(rtt, Instant::now());
    }
    for _ in 0..49 {
        c.on_success(rtt, Instant::now());
    }
    flaky(100);
    assert_eq!(
        a.snapshot().state,
        EndpointState::Healthy,
        "two endpoints with the request volume are fewer than minimum_hosts (3)"
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    for endpoint in [&b, &c] {
        for _ in 0..50 {
            endpoint.on_success(rtt, Instant::now());
        }
    }
    flaky(49);
    assert_eq!(
        a.snapshot().state,
        EndpointState::Healthy,
        "under the volume"
    );
    let internal = CallFailure::Status(Code::Internal);
    w.ctx
        .count_failure(&a, internal, "injected", Duration::ZERO);
    let seen = a.snapshot();
    assert_eq!(
        seen.state,
        EndpointState::Ejected,
        "10 of 50 failed: over 3%"
    );
    assert_eq!(
        seen.ejection_reason,
        Some(EjectionReason::FailurePercentage)
    );
    assert_eq!(
        (b.snapshot().state, c.snapshot().state),
        (EndpointState::Healthy, EndpointState::Healthy)
    );
}

#[tokio::test(start_paused = true)]
async fn a_couple_of_failures_among_the_request_volume_eject_nothing() {
    let (a, b, c) = (endpoint(1), endpoint(2), endpoint(3));
    let mut cfg = config();
    cfg.outlier.consecutive_failures = None;
    let w = world(cfg, &[a.clone(), b.clone(), c.clone()]);
    let rtt = Duration::from_millis(1);
    for endpoint in [&a, &b, &c] {
        for _ in 0..60 {
            endpoint.on_success(rtt, Instant::now());
        }
    }
    // 4 failures of 64 attempts (6%, over the 3% threshold), spread over
    // the window: under the minimum of 5 failures, no ejection.
    let internal = CallFailure::Status(Code::Internal);
    for _ in 0..4 {
        tokio::time::advance(Duration::from_millis(2_000)).await;
        w.ctx
            .count_failure(&a, internal, "transient", Duration::ZERO);
        assert_eq!(a.snapshot().state, EndpointState::Healthy);
    }
    assert_eq!(
        (a.snapshot().recent_attempts, a.snapshot().recent_failures),
        (64, 4)
    );
    // A fifth within the window is evidence enough.
    tokio::time::advance(Duration::from_millis(500)).await;
    w.ctx
        .count_failure(&a, internal, "transient", Duration::ZERO);
    let seen = a.snapshot();
    assert_eq!(seen.state, EndpointState::Ejected);
    assert_eq!(
        seen.ejection_reason,
        Some(EjectionReason::FailurePercentage)
    );
}
