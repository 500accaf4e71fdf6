//! A configured host name that does not resolve is named, with the resolver's
//! reason, when a call finds no endpoint. Names under `.invalid` never resolve
//! (RFC 2606), so no network is needed.

mod common;

use std::time::Duration;

use chat_lb_client::{Balancer, Policy};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use common::{Replica, app_call, dead_addr, init_tracing};
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_name_that_does_not_resolve_is_named_with_the_reason() {
    init_tracing();
    let lb = Balancer::builder()
        .addresses("chat-1.invalid:8500")
        .build()
        .unwrap();
    let mut client = ChatServiceClient::new(lb.clone());
    let status = tokio::time::timeout(LIMIT, app_call(&mut client))
        .await
        .expect("the call waits no longer than the resolution")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(
        message.starts_with("chat-lb-client: no endpoint: chat-1.invalid:8500 (cannot resolve: "),
        "{message}"
    );
    assert!(!message.contains("no endpoints configured"), "{message}");
    // The resolver's own reason follows, in one line.
    let reason = message
        .split_once("(cannot resolve: ")
        .map(|(_, reason)| reason.trim_end_matches(')'))
        .unwrap();
    assert!(!reason.trim().is_empty(), "{message}");
    assert!(!message.contains('\n'), "{message:?}");

    let unresolved = lb.unresolved_names();
    assert_eq!(unresolved.len(), 1, "{unresolved:?}");
    assert_eq!(unresolved[0].0.to_string(), "chat-1.invalid:8500");
    assert!(
        unresolved[0].1.starts_with("cannot resolve: "),
        "{unresolved:?}"
    );

    // Removed, the name is no longer reported.
    assert!(lb.remove_endpoint("chat-1.invalid:8500").unwrap());
    assert!(lb.unresolved_names().is_empty());
    let status = app_call(&mut client).await.unwrap_err();
    assert!(
        status.message().contains("no endpoints configured"),
        "{status:?}"
    );
}

#[tokio::test]
async fn every_unresolved_name_is_listed_beside_the_endpoints() {
    init_tracing();
    let dead = dead_addr();
    let lb = Balancer::builder()
        .policy(Policy::PickFirst)
        .addresses(&format!("{dead},chat-1.invalid:8500,chat-2.invalid:8501"))
        .build()
        .unwrap();
    // The call would not wait for the names: the dead address is an endpoint.
    lb.wait_for_probe_round().await;
    let mut client = ChatServiceClient::new(lb.clone());
    let status = tokio::time::timeout(LIMIT, app_call(&mut client))
        .await
        .expect("the call ends")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let message = status.message();
    assert!(message.contains(&dead.to_string()), "{message}");
    for name in ["chat-1.invalid:8500", "chat-2.invalid:8501"] {
        assert!(
            message.contains(&format!("{name} (cannot resolve: ")),
            "{name} missing from {message}"
        );
    }
    let names: Vec<String> = lb
        .unresolved_names()
        .iter()
        .map(|(target, _)| target.to_string())
        .collect();
    assert_eq!(names, ["chat-1.invalid:8500", "chat-2.invalid:8501"]);
}

#[tokio::test]
async fn a_name_that_resolves_is_not_listed() {
    init_tracing();
    let a = Replica::start("a");
    let lb = Balancer::builder()
        .addresses(&format!("localhost:{}", a.addr.port()))
        .probe_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    // localhost may also resolve to ::1, where nothing listens: not waited for.
    lb.wait_for_probe_round().await;
    let mut client = ChatServiceClient::new(lb.clone());
    assert_eq!(app_call(&mut client).await.unwrap(), "a");
    assert!(
        lb.unresolved_names().is_empty(),
        "{:?}",
        lb.unresolved_names()
    );
}
