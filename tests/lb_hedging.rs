//! Hedging against real `chat-server` processes: a replica that stalls every chat
//! call by 50ms (`--inject-stall 50ms --inject-stall-rate 1`; its health checks are
//! never stalled, so it stays healthy and first in line) is where every call starts,
//! and hedges to a healthy replica answer the calls long before the stall ends.

use std::time::{Duration, Instant};

use chat_lb_client::{HedgeDelay, Policy};
use chat_proto::v1::{LoginRequest, chat_service_client::ChatServiceClient};
use chat_testkit::{Replica, SharedStore};
use tonic::Code;

const STALL: Duration = Duration::from_millis(50);
const CALLS: u32 = 20;

/// A chat call that needs no account and no password hashing: a login of a user
/// that does not exist, answered `NOT_FOUND` at once by a healthy replica.
fn unknown_login() -> LoginRequest {
    LoginRequest {
        username: "nobody".into(),
        password: "not a password".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedges_beat_a_stalled_replica() {
    let store = SharedStore::new();
    let stall = ["--inject-stall", "50ms", "--inject-stall-rate", "1"];
    let stalled = Replica::start_with(&store, &stall);
    let healthy = Replica::start(&store);
    let lb = chat_testkit::balancer_builder([stalled.address(), healthy.address()])
        .policy(Policy::PickFirst) // every call starts on the stalled replica
        .hedge_methods(["/chat.v1.ChatService/Login"])
        .hedge_delay(HedgeDelay::Fixed(Duration::from_millis(5)))
        // Enough budget for every call of this short test to be hedged.
        .hedge_budget(1.0, 100)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("balancer");
    assert!(lb.wait_for_probe_round().await, "{:#?}", lb.snapshot());
    let mut client = ChatServiceClient::new(lb.clone());

    let mut fast = 0;
    for _ in 0..CALLS {
        let started = Instant::now();
        let status = client
            .login(unknown_login())
            .await
            .expect_err("no such user");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        if started.elapsed() < STALL {
            fast += 1;
        }
    }
    let snapshot = lb.snapshot();
    let of = |address| {
        snapshot
            .iter()
            .find(|e| e.address == address)
            .cloned()
            .expect("endpoint")
    };
    let (s, h) = (of(stalled.address()), of(healthy.address()));
    // Without hedging every call would wait out the stall: most must beat it (a busy
    // machine may delay a few hedges past it).
    assert!(
        fast >= CALLS / 2,
        "{fast} of {CALLS} calls beat the stall; {snapshot:#?}"
    );
    assert!(h.hedges_won >= u64::from(fast), "{snapshot:#?}");
    assert_eq!(
        s.calls,
        u64::from(CALLS),
        "every call started there: {snapshot:#?}"
    );
    assert_eq!(s.errors, 0, "being hedged is no failure: {snapshot:#?}");
}
