//! The transitions after a shed attempt (`RESOURCE_EXHAUSTED` with a retry
//! pushback): retry elsewhere, back off, or pass the answer on.

use super::*;
use crate::classify::Pushback;

/// A shed answer with `grpc-retry-pushback-ms: pushback`.
fn shed(pushback: &str) -> Outcome {
    let mut response = Status::resource_exhausted("replica overloaded").into_http();
    let value = http::HeaderValue::from_str(pushback).unwrap();
    response.headers_mut().insert(Pushback::HEADER, value);
    Outcome::of_response(
        response,
        Duration::ZERO,
        crate::classify::FailureCodes::default(),
    )
}

fn backing_off(cfg: Config) -> Config {
    Config {
        retry: crate::config::RetryConfig {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(50),
            ..cfg.retry
        },
        ..cfg
    }
}

#[tokio::test(start_paused = true)]
async fn a_shed_call_is_retried_elsewhere_at_once_and_its_endpoint_avoided_for_the_pushback() {
    let (a, b) = (endpoint(1), endpoint(2));
    let mut cfg = config();
    cfg.policy = Policy::PowerOfTwoChoices;
    let w = world(cfg, &[a.clone(), b.clone()]);
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let (shedding, other) = if first.endpoint.addr == a.addr {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let second = sent(call.on_attempt(done(&first, shed("100")), false, now));
    assert_eq!((second.n, second.endpoint.addr), (2, other.addr));
    let snapshot = shedding.snapshot();
    assert_eq!(snapshot.overloads, 1);
    assert_eq!(snapshot.overloaded_for, Some(Duration::from_millis(100)));
    assert_eq!(
        (snapshot.state, snapshot.errors),
        (EndpointState::Healthy, 0),
        "a shed call is no failure: not ejected"
    );
    assert!(answered(call.on_attempt(done(&second, headers()), false, now)).is_ok());

    // For the pushback period every new call goes to the other endpoint...
    for ms in [0, 50, 99] {
        tokio::time::advance(Duration::from_millis(ms) - (Instant::now() - now)).await;
        let mut call = Call::new(w.ctx.clone(), request(None), Instant::now());
        let attempt = sent(call.start(Instant::now()));
        assert_eq!(attempt.endpoint.addr, other.addr, "at {ms}ms");
    }
    // ... and then it is over.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(shedding.snapshot().overloaded_for, None);
}

#[tokio::test(start_paused = true)]
async fn a_negative_pushback_is_not_retried_nor_is_a_call_that_is_not_retry_safe() {
    for (cfg, pushback) in [
        (config(), "-1"),
        (
            Config {
                retry: crate::config::RetryConfig {
                    safe: RetrySafe::None,
                    ..config().retry
                },
                ..config()
            },
            "10",
        ),
    ] {
        let (a, b) = (endpoint(1), endpoint(2));
        let w = world(cfg, &[a.clone(), b.clone()]);
        let now = Instant::now();
        let mut call = Call::new(w.ctx.clone(), request(None), now);
        let first = sent(call.start(now));
        let status = answered(call.on_attempt(done(&first, shed(pushback)), false, now))
            .expect_err("the server's answer");
        assert_eq!(
            status.code(),
            Code::ResourceExhausted,
            "pushback {pushback}"
        );
        assert_eq!(a.snapshot().overloads, 1);
        assert_eq!(b.snapshot().overloads, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn with_no_endpoint_free_the_retry_backs_off_exponentially_with_jitter() {
    let a = endpoint(1);
    let mut cfg = backing_off(config());
    cfg.retry.max_attempts = 4;
    let w = world(cfg, std::slice::from_ref(&a));
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(5))), start);
    let mut attempt = sent(call.start(start));
    // The n-th backoff is within [ceiling/2, ceiling]: 20ms, then 40ms, then
    // the 50ms cap; a 1ms pushback is shorter, so the backoff decides.
    for (n, ceiling_ms) in [(2, 20), (3, 40), (4, 50)] {
        let now = Instant::now();
        let action = call.on_attempt(done(&attempt, shed("1")), false, now);
        assert!(
            matches!(action, Action::Wait),
            "backs off before attempt {n}"
        );
        let wait = call.timer().unwrap() - now;
        let ceiling = Duration::from_millis(ceiling_ms);
        assert!(
            wait >= ceiling / 2 && wait <= ceiling,
            "attempt {n}: {wait:?}"
        );
        tokio::time::advance(wait).await;
        // After the backoff the call goes back, even to the endpoint that shed it.
        attempt = sent(call.on_timer(Instant::now()));
        assert_eq!((attempt.n, attempt.endpoint.addr), (n, a.addr));
    }
    // max_attempts used: the server's answer is passed on.
    let status = answered(call.on_attempt(done(&attempt, shed("1")), false, Instant::now()));
    assert_eq!(status.unwrap_err().code(), Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn a_backoff_waits_at_least_the_pushback_and_never_past_the_deadline() {
    let a = endpoint(1);
    let w = world(backing_off(config()), std::slice::from_ref(&a));
    let start = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(Some(Duration::from_secs(1))), start);
    let first = sent(call.start(start));
    assert!(matches!(
        call.on_attempt(done(&first, shed("300")), false, start),
        Action::Wait
    ));
    assert_eq!(call.timer(), Some(start + Duration::from_millis(300)));
    tokio::time::advance(Duration::from_millis(300)).await;
    let second = sent(call.on_timer(Instant::now()));
    assert_eq!(second.request.headers()["grpc-timeout"], "700000u");

    // A pushback that would outlast the deadline: no wait, the answer as it came.
    let status = answered(call.on_attempt(done(&second, shed("700")), false, Instant::now()));
    assert_eq!(status.unwrap_err().code(), Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_under_a_pushback_is_no_immediate_retry_target() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(backing_off(config()), &[a.clone(), b.clone()]);
    let now = Instant::now();
    b.on_overload(Pushback::After(Duration::from_secs(1)), now);
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    assert_eq!(first.endpoint.addr, a.addr, "pick-first");
    // `a` sheds it too: `b` is under a pushback, so the call backs off.
    let action = call.on_attempt(done(&first, shed("5")), false, now);
    assert!(matches!(action, Action::Wait));
    let wait = call.timer().unwrap() - now;
    assert!(
        wait >= Duration::from_millis(10) && wait <= Duration::from_millis(20),
        "{wait:?}"
    );
}

/// The value of the counter `name` (no labels) in `snapshotter`'s recorder.
fn counter(snapshotter: &metrics_util::debugging::Snapshotter, name: &str) -> u64 {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| match value {
            metrics_util::debugging::DebugValue::Counter(n) if key.key().name() == name => Some(n),
            _ => None,
        })
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn an_empty_budget_refuses_a_shed_call_once() {
    // With another endpoint free (the retry elsewhere is refused) and without
    // (the backoff is refused): either way one retry not made, one refusal.
    for endpoints in [2, 1] {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let (a, b) = (endpoint(1), endpoint(2));
        let list = [a.clone(), b][..endpoints].to_vec();
        let mut cfg = backing_off(config());
        cfg.retry.budget_ratio = 0.0;
        cfg.retry.budget_min_per_sec = 0;
        // The balancer-wide metric handles are registered with the context.
        let w = metrics::with_local_recorder(&recorder, || world(cfg, &list));
        let now = Instant::now();
        let mut call = Call::new(w.ctx.clone(), request(None), now);
        let first = sent(call.start(now));
        assert_eq!(first.endpoint.addr, a.addr);
        let status = answered(call.on_attempt(done(&first, shed("10")), false, now));
        assert_eq!(status.unwrap_err().code(), Code::ResourceExhausted);
        assert_eq!(
            counter(&snapshotter, "chat_lb_retry_budget_refusals_total"),
            1,
            "{endpoints} endpoint(s)"
        );
        assert_eq!(counter(&snapshotter, "chat_lb_retry_backoffs_total"), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn pick_first_sends_a_first_attempt_past_an_endpoint_under_a_pushback() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(config(), &[a.clone(), b.clone()]);
    let start = Instant::now();
    a.on_overload(Pushback::After(Duration::from_millis(100)), start);
    let first_pick = |now| {
        let mut call = Call::new(w.ctx.clone(), request(None), now);
        sent(call.start(now)).endpoint.addr
    };
    assert_eq!(first_pick(start), b.addr, "a is under its pushback");
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(first_pick(Instant::now()), b.addr);
    // Both under a pushback: the first in order all the same.
    b.on_overload(Pushback::After(Duration::from_millis(50)), Instant::now());
    assert_eq!(first_pick(Instant::now()), a.addr);
    // a's pushback is over (b's is not): a again.
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(first_pick(Instant::now()), a.addr);
    assert!(b.is_overloaded(Instant::now()));
}
