//! The hedging transitions and `grpc-previous-rpc-attempts`, on tokio's paused
//! clock (the helpers are the parent module's).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::body::Body;

use super::{
    Action, Attempt, Call, World, answered, config, done, endpoint, headers, request, sent,
    unavailable, world,
};
use crate::{HedgeDelay, SafeToRetry, config::Config, endpoint::Endpoint, hedge::MIN_SAMPLES};

const METHOD: &str = "/pkg.Service/Method";
const MS: Duration = Duration::from_millis(1);

/// `config()` with `METHOD` hedged after `delay`, and budgets that never run
/// dry (unless a test says otherwise).
fn hedging(delay: HedgeDelay) -> Config {
    let mut cfg = config();
    cfg.hedge.methods = vec![METHOD.to_owned()];
    cfg.hedge.delay = delay;
    cfg.hedge.budget_min_per_sec = 1000;
    cfg
}

fn fixed(ms: u64) -> HedgeDelay {
    HedgeDelay::Fixed(MS * ms as u32)
}

fn previous_attempts(attempt: &Attempt) -> Option<&str> {
    let value = attempt
        .request
        .headers()
        .get("grpc-previous-rpc-attempts")?;
    value.to_str().ok()
}

fn two() -> (Arc<Endpoint>, Arc<Endpoint>) {
    (endpoint(1), endpoint(2))
}

/// A call to `METHOD` with a 1s deadline, started at `start`.
fn call(w: &World, start: Instant) -> Call {
    Call::new(w.ctx.clone(), request(Some(Duration::from_secs(1))), start)
}

#[tokio::test(start_paused = true)]
async fn after_a_fixed_delay_a_hedge_goes_elsewhere_and_the_first_headers_answer() {
    let (a, b) = two();
    let w = world(hedging(fixed(20)), &[a.clone(), b.clone()]);
    let start = Instant::now();
    let mut call = call(&w, start);
    let first = sent(call.start(start));
    assert_eq!(first.endpoint.addr, a.addr);
    assert_eq!(previous_attempts(&first), None, "a first attempt has none");
    assert_eq!(call.timer(), Some(start + MS * 20), "the hedging delay");

    tokio::time::advance(MS * 20).await;
    let now = Instant::now();
    let hedge = sent(call.on_timer(now));
    assert_eq!((hedge.n, hedge.endpoint.addr), (2, b.addr));
    assert_eq!(previous_attempts(&hedge), Some("1"));
    assert_eq!(hedge.request.headers()["grpc-timeout"], "980000u");
    // With max_attempts 3 a second hedge may follow, after another delay.
    assert_eq!(call.timer(), Some(now + MS * 20));
    assert_eq!(a.snapshot().errors, 0, "being hedged is no failure");

    // The hedged-over attempt's latency is at least the delay: its
    // endpoint's estimate (1ms before) rises to it, so power of two choices
    // now prefers the other.
    assert_eq!(a.snapshot().latency_estimate, MS * 20);

    // The hedge answers first: the call is answered (the driver then drops
    // the first attempt), and the hedge counted as sent and won.
    assert!(answered(call.on_attempt(done(&hedge, headers()), true, now)).is_ok());
    let b_now = b.snapshot();
    assert_eq!((b_now.hedges, b_now.hedges_won), (1, 1));
    assert_eq!(a.snapshot().hedges, 0);
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn the_hedged_attempt_may_still_win() {
    let (a, b) = two();
    let w = world(hedging(fixed(20)), &[a.clone(), b.clone()]);
    let start = Instant::now();
    let mut call = call(&w, start);
    let first = sent(call.start(start));
    tokio::time::advance(MS * 20).await;
    let hedge = sent(call.on_timer(Instant::now()));
    assert!(answered(call.on_attempt(done(&first, headers()), true, Instant::now())).is_ok());
    let b_now = b.snapshot();
    assert_eq!((b_now.hedges, b_now.hedges_won), (1, 0), "sent, not won");
    drop(hedge);
}

#[tokio::test(start_paused = true)]
async fn hedges_stop_at_max_attempts_and_each_carries_the_attempts_before_it() {
    let endpoints = [endpoint(1), endpoint(2), endpoint(3), endpoint(4)];
    let w = world(hedging(fixed(20)), &endpoints);
    let start = Instant::now();
    let mut call = call(&w, start);
    let mut running = vec![sent(call.start(start))];
    for n in 2..=3 {
        tokio::time::advance(MS * 20).await;
        let hedge = sent(call.on_timer(Instant::now()));
        assert_eq!(hedge.n, n);
        assert_eq!(
            previous_attempts(&hedge),
            Some((n - 1).to_string().as_str())
        );
        running.push(hedge);
    }
    // Three attempts run: no more hedges, only the per-try timeout (300ms
    // after the newest) is left before the deadline.
    assert_eq!(call.timer(), Some(Instant::now() + MS * 300));
    let addrs: Vec<_> = running.iter().map(|a| a.endpoint.addr).collect();
    assert_eq!(
        addrs,
        [endpoints[0].addr, endpoints[1].addr, endpoints[2].addr]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_carries_previous_attempts_too() {
    let (a, b) = two();
    let w = world(config(), &[a, b]);
    let now = Instant::now();
    let mut call = call(&w, now);
    let first = sent(call.start(now));
    let retry = sent(call.on_attempt(done(&first, unavailable()), false, now));
    assert_eq!(previous_attempts(&retry), Some("1"));
}

#[tokio::test(start_paused = true)]
async fn the_adaptive_delay_is_the_methods_recent_p95() {
    let (a, b) = two();
    let w = world(hedging(HedgeDelay::Percentile(95.0)), &[a, b]);
    let start = Instant::now();
    // Until enough calls answered, no delay is known: no hedge is planned.
    let mut first_call = call(&w, start);
    sent(first_call.start(start));
    assert_eq!(first_call.timer(), Some(start + MS * 300), "per-try only");

    // Calls answered after 1..=32ms: p95 (nearest rank) is 31ms.
    for ms in 1..=MIN_SAMPLES as u32 {
        let mut c = call(&w, start);
        let attempt = sent(c.start(start));
        assert!(answered(c.on_attempt(done(&attempt, headers()), false, start + MS * ms)).is_ok());
    }
    let mut c = call(&w, start);
    sent(c.start(start));
    assert_eq!(c.timer(), Some(start + MS * 31));

    // Another method is never hedged, nor a call marked not retry-safe.
    let other = http::Request::builder()
        .uri("http://lb/pkg.Service/Other")
        .body(Body::empty())
        .unwrap();
    let mut c = Call::new(w.ctx.clone(), other, start);
    sent(c.start(start));
    assert_eq!(c.timer(), Some(start + MS * 300));
    let mut unsafe_call = request(None);
    unsafe_call.extensions_mut().insert(SafeToRetry(false));
    let mut c = Call::new(w.ctx.clone(), unsafe_call, start);
    sent(c.start(start));
    assert_eq!(c.timer(), None, "neither per-try timeout nor hedge");
}

#[tokio::test(start_paused = true)]
async fn an_empty_hedge_budget_refuses_the_hedge_and_the_call_waits_on() {
    let (a, b) = two();
    let mut cfg = hedging(fixed(20));
    cfg.hedge.budget_ratio = 0.0;
    cfg.hedge.budget_min_per_sec = 0;
    let w = world(cfg, &[a, b]);
    let start = Instant::now();
    let mut call = call(&w, start);
    let first = sent(call.start(start));
    tokio::time::advance(MS * 20).await;
    assert!(matches!(call.on_timer(Instant::now()), Action::Wait));
    assert_eq!(call.timer(), Some(start + MS * 300), "the per-try timeout");
    // The per-try timeout still retries (on the retry budget alone).
    tokio::time::advance(MS * 280).await;
    assert_eq!(sent(call.on_timer(Instant::now())).n, 2);
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_also_needs_the_retry_budget() {
    let (a, b) = two();
    let mut cfg = hedging(fixed(20));
    cfg.retry.budget_ratio = 0.0;
    cfg.retry.budget_min_per_sec = 0;
    let w = world(cfg, &[a, b]);
    let start = Instant::now();
    let mut call = call(&w, start);
    sent(call.start(start));
    tokio::time::advance(MS * 20).await;
    assert!(matches!(call.on_timer(Instant::now()), Action::Wait));
}

#[tokio::test(start_paused = true)]
async fn a_failure_of_the_hedged_attempt_counts_and_the_call_waits_for_the_hedge() {
    let (a, b) = two();
    let mut cfg = hedging(fixed(20));
    cfg.outlier.enabled = false;
    let w = world(cfg, &[a.clone(), b]);
    let start = Instant::now();
    let mut call = call(&w, start);
    let first = sent(call.start(start));
    tokio::time::advance(MS * 20).await;
    let hedge = sent(call.on_timer(Instant::now()));
    let action = call.on_attempt(done(&first, unavailable()), true, Instant::now());
    assert!(matches!(action, Action::Wait), "the hedge is live");
    assert_eq!(a.snapshot().errors, 1);
    assert!(answered(call.on_attempt(done(&hedge, headers()), false, Instant::now())).is_ok());
}
