//! A streaming answer that fails after its response headers: its failure code
//! in the trailers counts against the endpoint (see `observe`).

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame};

use super::*;

/// A response body of ready frames.
struct Frames(VecDeque<Frame<Bytes>>);

impl HttpBody for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

/// Response headers (status `OK` still to come), then two messages, then
/// trailers with `status`.
fn stream_ending_with(status: &Status) -> Outcome {
    let mut trailers = http::HeaderMap::new();
    status.add_header(&mut trailers).unwrap();
    let frames = VecDeque::from([
        Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
        Frame::data(Bytes::from_static(b"\0\0\0\0\0")),
        Frame::trailers(trailers),
    ]);
    let response = http::Response::new(Body::new(Frames(frames)));
    Outcome::of_response(response, Duration::from_millis(1), FailureCodes::default())
}

/// Runs one call on `w`, answered by the stream ending with `status`, and
/// reads the stream to its end; returns the endpoint it went to.
async fn streamed(w: &World, status: &Status) -> Arc<Endpoint> {
    let now = Instant::now();
    let mut call = Call::new(w.ctx.clone(), request(None), now);
    let first = sent(call.start(now));
    let endpoint = first.endpoint.clone();
    let response = answered(call.on_attempt(done(&first, stream_ending_with(status)), false, now))
        .expect("the headers answer the call");
    let mut body = response.into_body();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        frame.expect("the stream itself does not break");
    }
    endpoint
}

#[tokio::test(start_paused = true)]
async fn a_failure_code_in_a_streams_trailers_accrues_against_its_endpoint() {
    let (a, b, c) = (endpoint(1), endpoint(2), endpoint(3));
    let w = world(config(), &[a.clone(), b.clone(), c.clone()]);

    // An application outcome in the trailers is a success.
    assert_eq!(
        streamed(&w, &Status::not_found("no such user")).await.addr,
        a.addr
    );
    let seen = a.snapshot();
    assert_eq!((seen.recent_attempts, seen.recent_failures), (1, 0));
    assert_eq!(seen.errors, 0);

    // INTERNAL accrues: the attempt, a success at its headers, is now a
    // failure (one attempt, not two), and there is no ejection at once.
    streamed(&w, &Status::internal("boom")).await;
    let seen = a.snapshot();
    assert_eq!((seen.recent_attempts, seen.recent_failures), (2, 1));
    assert_eq!((seen.errors, seen.consecutive_call_failures), (1, 1));
    assert!(
        seen.last_error
            .unwrap()
            .starts_with("Internal: stream ended Internal: boom"),
        "{:?}",
        a.snapshot().last_error
    );
    assert_eq!(seen.state, EndpointState::Healthy);

    // Each stream's headers were a success, so failing streams alone never
    // make failures in a row; the window judges them. One in five failing
    // (as a replica with `--inject-error-rate 0.2` would), beside two peers
    // with the request volume: ejected for its failure percentage.
    for _ in 0..60 {
        b.on_success(Duration::from_millis(1), Instant::now());
        c.on_success(Duration::from_millis(1), Instant::now());
    }
    for n in 0..60 {
        let status = if n % 5 == 4 {
            Status::internal("boom")
        } else {
            Status::ok("")
        };
        streamed(&w, &status).await;
        if a.snapshot().state == EndpointState::Ejected {
            break;
        }
    }
    let seen = a.snapshot();
    assert_eq!(seen.state, EndpointState::Ejected);
    assert_eq!(
        seen.ejection_reason,
        Some(EjectionReason::FailurePercentage)
    );
    assert!(seen.errors >= 5, "at least the minimum failures: {seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_stream_ending_unavailable_ejects_at_once() {
    let (a, b) = (endpoint(1), endpoint(2));
    let w = world(config(), &[a.clone(), b.clone()]);
    streamed(&w, &Status::unavailable("shutting down")).await;
    let seen = a.snapshot();
    assert_eq!(seen.state, EndpointState::Ejected);
    assert_eq!(seen.ejection_reason, Some(EjectionReason::Unavailable));
    // The next call goes elsewhere.
    assert_eq!(streamed(&w, &Status::ok("")).await.addr, b.addr);
    assert_eq!(b.snapshot().errors, 0);
}
