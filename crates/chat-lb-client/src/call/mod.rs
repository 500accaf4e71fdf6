//! The balancer as a `tower::Service` — the transport of tonic clients — and
//! the life of a call through it.
//!
//! A call flows: read its deadline and retry-safety → **pick** an endpoint
//! (see `picker`) → **send** the attempt over that endpoint's transport →
//! **classify** the outcome (see `classify`) → update the endpoint's latency
//! estimate or report the failure to outlier detection → **maybe retry** on
//! another endpoint (see `retry`), or answer (see [`answer`]).
//!
//! The decisions are the call's state machine ([`state::Call`]): each event
//! (the call starts, an attempt finished, the timer fired, the endpoints
//! changed while the call waits for one) is one transition that returns what
//! to do next. The driver here, [`run`], only performs those actions: it
//! starts attempts, polls them, the timer and the endpoint list, and hands
//! each event to the state machine.

mod answer;
mod state;
#[cfg(test)]
mod tests;

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{sync::watch, time::Instant};
use tonic::body::Body;
use tower::Service;

use crate::transport::SendError;
use crate::{
    Balancer,
    classify::{FailureCodes, Outcome},
    context::CallContext,
    error::BoxError,
    members::Members,
};
use state::{Action, Attempt, Call, Done, Response};

/// The future of a call through the [`Balancer`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response, BoxError>> + Send>>,
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl Service<http::Request<Body>> for Balancer {
    type Response = Response;
    type Error = BoxError;
    type Future = ResponseFuture;

    /// Always ready: readiness of the endpoints is part of each call (a call
    /// with no endpoint to go to is answered `UNAVAILABLE`, it never blocks
    /// `poll_ready`).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> ResponseFuture {
        ResponseFuture {
            inner: Box::pin(run(self.context.clone(), request)),
        }
    }
}

/// What the driver waits for. A short-lived value on the driver's stack:
/// boxing the large variant would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
enum Event {
    Done(Done),
    Timer,
    EndpointsChanged,
}

/// Drives one call: performs each action its state machine returns and feeds
/// it the next event.
async fn run(ctx: Arc<CallContext>, request: http::Request<Body>) -> Result<Response, BoxError> {
    let tls = ctx.cfg.connect.tls.is_some();
    let codes = ctx.cfg.outlier.failure_codes;
    let mut now = Instant::now();
    let mut call = Call::new(ctx, request, now);
    let mut attempts = Attempts {
        slot: pin!(None),
        more: Vec::new(),
    };
    // Watched only once the call waits for an endpoint (most calls never do).
    let mut members: Option<watch::Receiver<Members>> = None;
    let mut action = call.start(now);
    loop {
        match action {
            Action::Send(attempt) => attempts.push(send(attempt, tls, codes)),
            Action::Wait => {}
            Action::Answer(answer) => {
                let took = now.saturating_duration_since(call.start);
                call.ctx.metrics.call_answered(took);
                return answer;
            }
        }
        if call.waits_for_endpoints() && members.is_none() {
            let mut receiver = call.ctx.members.clone();
            receiver.mark_unchanged();
            members = Some(receiver);
            // Look again, now that no change can slip by unseen.
            now = Instant::now();
            action = call.on_endpoints_changed(now);
            continue;
        }
        let watching = members.as_mut().filter(|_| call.waits_for_endpoints());
        let event = tokio::select! {
            biased;
            done = poll_fn(|cx| attempts.poll_next(cx)) => Event::Done(done),
            () = changed(watching) => Event::EndpointsChanged,
            () = sleep_until(call.timer()) => Event::Timer,
        };
        action = match event {
            Event::Done(done) => {
                now = done.finished;
                call.on_attempt(done, !attempts.is_empty(), now)
            }
            Event::Timer => {
                now = Instant::now();
                call.on_timer(now)
            }
            Event::EndpointsChanged => {
                now = Instant::now();
                call.on_endpoints_changed(now)
            }
        };
    }
}

/// Resolves at the next change of the watched endpoints (never, unwatched).
async fn changed(members: Option<&mut watch::Receiver<Members>>) {
    if let Some(members) = members
        && members.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// Resolves at `at` (never, without).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sends one attempt; the endpoint's outstanding count covers it until the
/// response headers (or the failure), including when the caller gives up on it.
/// `tls`: whether the endpoint's connections use TLS; `codes`: the failure
/// codes (see `classify`).
async fn send(attempt: Attempt, tls: bool, codes: FailureCodes) -> Done {
    let Attempt {
        n,
        endpoint,
        request,
        sent,
    } = attempt;
    let (outcome, finished) = {
        let in_flight = endpoint.start(sent);
        let result = endpoint.transport.send(request).await;
        let finished = Instant::now();
        in_flight.end(finished);
        let outcome = match result {
            Ok(response) => {
                Outcome::of_response(response, finished.saturating_duration_since(sent), codes)
            }
            Err(SendError::NotReady(error)) => Outcome::of_error(error, true, false),
            Err(SendError::Failed(error)) => {
                let closed_unanswered = tls && endpoint.closed_unanswered(&*error);
                Outcome::of_error(error, false, closed_unanswered)
            }
        };
        (outcome, finished)
    };
    Done {
        n,
        endpoint,
        outcome,
        finished,
    }
}

/// The attempts of a call still waiting for response headers.
///
/// Usually there is one, and it lives in `slot`, a pinned place in the call's
/// own future: the common case allocates nothing. Attempts overlap when one
/// exceeded its per-try timeout (see [`state`]); those beyond the slot are
/// boxed.
struct Attempts<'a, F> {
    slot: Pin<&'a mut Option<F>>,
    more: Vec<Pin<Box<F>>>,
}

impl<F: Future<Output = Done>> Attempts<'_, F> {
    fn push(&mut self, attempt: F) {
        if self.slot.is_none() {
            self.slot.set(Some(attempt));
        } else {
            self.more.push(Box::pin(attempt));
        }
    }

    fn is_empty(&self) -> bool {
        self.slot.is_none() && self.more.is_empty()
    }

    /// The next attempt to finish (pending forever while there is none).
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Done> {
        if let Some(attempt) = self.slot.as_mut().as_pin_mut()
            && let Poll::Ready(done) = attempt.poll(cx)
        {
            self.slot.set(None);
            return Poll::Ready(done);
        }
        for i in 0..self.more.len() {
            if let Poll::Ready(done) = self.more[i].as_mut().poll(cx) {
                drop(self.more.swap_remove(i));
                return Poll::Ready(done);
            }
        }
        Poll::Pending
    }
}
