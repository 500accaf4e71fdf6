//! chat-server's fault-injection flags (tests and benchmarks only), against real
//! processes: `--inject-error-rate` fails about that share of chat calls with
//! `INTERNAL`, `--inject-stall` stalls them, and health checks are never affected.

use std::time::{Duration, Instant};

use chat_proto::v1::{HealthCheckRequest, LoginRequest, health_check_response::ServingStatus};
use chat_testkit::{Replica, SharedStore, client};
use tonic::Code;

/// A chat call that needs no account and no password hashing: a login of a user that
/// does not exist, answered `NOT_FOUND` at once by a healthy replica.
fn unknown_login() -> LoginRequest {
    LoginRequest {
        username: "nobody".into(),
        password: "not a password".into(),
    }
}

#[tokio::test]
async fn an_error_rate_fails_about_that_share_of_chat_calls_with_internal() {
    const CALLS: usize = 400;
    let store = SharedStore::new();
    let replica = Replica::start_logged(&store, &["--inject-error-rate", "0.2"]);
    replica
        .wait_for_log("FAULT INJECTION", 1, Duration::from_secs(5))
        .await;
    let mut chat = client(&replica).await;
    let mut internal = 0;
    for _ in 0..CALLS {
        let error = chat.login(unknown_login()).await.expect_err("no such user");
        match error.code() {
            Code::Internal => internal += 1,
            Code::NotFound => {}
            other => panic!("unexpected {other:?}: {error:?}"),
        }
    }
    // 80 expected; the bounds are more than six standard deviations (8) away.
    assert!((30..=130).contains(&internal), "{internal} of {CALLS}");

    // Health checks always answer truthfully.
    let mut health = tonic_health::pb::health_client::HealthClient::new(replica.channel().await);
    for _ in 0..50 {
        let answer = chat
            .health_check(HealthCheckRequest {})
            .await
            .expect("chat health check never fails");
        assert_eq!(answer.into_inner().status(), ServingStatus::Serving);
        health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("grpc.health.v1 never fails");
    }
}

#[tokio::test]
async fn a_stall_delays_chat_calls_but_not_health_checks() {
    const STALL: Duration = Duration::from_secs(2);
    let store = SharedStore::new();
    let replica = Replica::start_with(
        &store,
        &["--inject-stall", "2s", "--inject-stall-rate", "1"],
    );
    let mut chat = client(&replica).await;

    let start = Instant::now();
    let answer = chat.health_check(HealthCheckRequest {}).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(start.elapsed() < STALL, "health took {:?}", start.elapsed());

    let start = Instant::now();
    let error = chat.login(unknown_login()).await.expect_err("no such user");
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    assert!(start.elapsed() >= STALL, "login took {:?}", start.elapsed());
}
