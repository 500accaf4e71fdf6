//! The balancer as a `tower::Service` — the transport of tonic clients.
//!
//! A call flows: read its deadline and retry-safety → **pick** an endpoint →
//! **send** the attempt over that endpoint's channel → **classify** the outcome
//! (response headers, `UNAVAILABLE`, transport error that did or did not reach a
//! server, per-try timeout) → update the endpoint's latency estimate or report
//! the failure to outlier detection → **maybe retry** on another endpoint, or
//! answer.
//!
//! An attempt past its per-try timeout is not cancelled when a retry starts:
//! it keeps running beside it, and the first attempt with response headers
//! answers. A call gives up only when its deadline passes, or when no attempt
//! is running any more and no retry is possible.
//!
//! Failures the balancer itself decides (no endpoint can take the call, the
//! deadline passed) are answered as proper gRPC *trailers-only* responses
//! (`UNAVAILABLE`, `DEADLINE_EXCEEDED`), which tonic clients surface as a
//! `tonic::Status` with that code and message.

use std::{
    future::{Future, poll_fn},
    net::SocketAddr,
    pin::{Pin, pin},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep, sleep_until, timeout_at};
use tonic::{Status, body::Body};
use tower::{Service, ServiceExt};

use crate::{
    Balancer,
    body::Replay,
    context::CallContext,
    deadline,
    endpoint::{CallFailure, Endpoint},
    error::BoxError,
    members::EndpointList,
    observe::Observed,
    picker::pick,
    retry::{SafeToRetry, is_timeout, never_sent, unavailable},
};

type Response = http::Response<Body>;

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
        let list = self.context.endpoints();
        ResponseFuture {
            inner: Box::pin(run(self.context.clone(), list, request)),
        }
    }
}

/// What became of one attempt.
enum Outcome {
    /// Response headers arrived.
    Response(Response, Duration),
    /// The request provably never reached the server.
    NotSent(BoxError),
    /// A transport error after the request may have reached the server.
    Failed(BoxError),
    /// The channel's own enforcement of the `grpc-timeout` deadline fired.
    Expired,
}

/// A finished attempt: which one (its number in the call), where it went and
/// what became of it.
struct Done {
    n: u32,
    endpoint: Arc<Endpoint>,
    outcome: Outcome,
}

/// Endpoints a call already tried, with the routable epoch they had then.
#[derive(Default)]
struct Tried(Vec<(SocketAddr, u64)>);

impl Tried {
    fn add(&mut self, endpoint: &Endpoint) {
        self.0.push((endpoint.addr, endpoint.epoch()));
    }

    fn contains(&self, endpoint: &Endpoint) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .any(|(addr, epoch)| *addr == endpoint.addr && *epoch == endpoint.epoch())
    }
}

/// The attempts of a call still waiting for response headers.
///
/// Usually there is one, and it lives in `slot`, a pinned place in the call's
/// own future: the common case allocates nothing. An attempt that exceeded the
/// per-try timeout is not cancelled when a retry starts (it may still be the
/// first to answer), so attempts can overlap; those beyond the slot are boxed.
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

/// What a call waits for next.
enum Event {
    /// An attempt finished.
    Done(Done),
    /// The timer: the newest attempt's per-try timeout, or the deadline.
    Timer,
}

struct Call {
    shared: Arc<CallContext>,
    list: EndpointList,
    start: Instant,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    tried: Tried,
    /// Attempts started; the newest one is number `attempts`.
    attempts: u32,
}

/// Runs a call: at most one *live* attempt at a time (the newest, while it is
/// within its per-try timeout), plus any earlier attempts that exceeded the
/// per-try timeout and go on in the background. A failure of the live attempt
/// (or, while none is live, of any attempt) leads to a retry if one is allowed
/// and an endpoint is left; else the call keeps waiting while any attempt is
/// still running. It gives up only when its deadline passes, or when no attempt
/// is left running and no retry is possible (attempts, budget or endpoints used
/// up), with the outcome of the attempt that finished last.
async fn run(
    shared: Arc<CallContext>,
    list: EndpointList,
    request: http::Request<Body>,
) -> Result<Response, BoxError> {
    let start = Instant::now();
    let (mut parts, body) = request.into_parts();
    let timeout = match deadline::from_headers(&parts.headers) {
        Some(timeout) => Some(timeout),
        None => shared
            .cfg
            .default_timeout
            .inspect(|t| deadline::set(&mut parts.headers, *t)),
    };
    let retry_safe = match parts.extensions.get::<SafeToRetry>() {
        Some(SafeToRetry(safe)) => *safe,
        None => shared.cfg.retry.safe.is_safe(parts.uri.path()),
    };
    shared.budget.deposit(start);
    let replay = Replay::new(body, shared.cfg.retry.max_replay_bytes);
    let mut call = Call {
        list,
        start,
        deadline: timeout.map(|t| start + t),
        timeout,
        tried: Tried::default(),
        attempts: 0,
        shared,
    };
    let per_try_timeout = call.shared.cfg.retry.per_try_timeout.filter(|_| retry_safe);
    let max_attempts = call.shared.cfg.retry.max_attempts;
    let mut charged_retries = 0u32;

    let first = match call.pick_or_wait().await {
        Ok(endpoint) => endpoint,
        Err(response) => return Ok(response),
    };
    let mut attempts = Attempts {
        slot: pin!(None),
        more: Vec::new(),
    };
    let mut timer = pin!(None::<Sleep>);
    // The newest attempt's endpoint (or the next one's, while `begin` says an
    // attempt is to start there), and whether that attempt is live: still
    // running and within its per-try timeout.
    let mut current = first;
    let mut begin = true;
    let mut live = false;

    loop {
        if std::mem::take(&mut begin) {
            call.attempts += 1;
            let now = Instant::now();
            let mut request = http::Request::from_parts(parts.clone(), replay.attempt());
            // A retry tells the server the time actually left, not the call's
            // whole timeout (the first attempt's header is that already).
            if call.attempts > 1
                && let Some(deadline) = call.deadline
            {
                deadline::set(
                    request.headers_mut(),
                    deadline.saturating_duration_since(now),
                );
            }
            let tls = call.shared.cfg.connect.tls.is_some();
            attempts.push(send(call.attempts, current.clone(), request, tls));
            let limit = match (per_try_timeout.map(|t| now + t), call.deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            timer.set(limit.map(sleep_until));
            live = true;
        }

        let event = poll_fn(|cx| {
            if let Poll::Ready(done) = attempts.poll_next(cx) {
                return Poll::Ready(Event::Done(done));
            }
            match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Event::Timer),
                _ => Poll::Pending,
            }
        })
        .await;

        let Done {
            n,
            endpoint,
            outcome,
        } = match event {
            Event::Done(done) => done,
            Event::Timer if call.deadline.is_some_and(|d| Instant::now() >= d) => {
                return Ok(call.deadline_exceeded(&current));
            }
            Event::Timer => {
                // Per-try timeout: no response headers yet. The attempt goes on
                // (it may still answer first); only the deadline bounds it now.
                live = false;
                timer.set(call.deadline.map(sleep_until));
                let waited = Instant::now().saturating_duration_since(call.start);
                call.shared.count_failure(
                    &current,
                    CallFailure::Timeout,
                    "no response headers within the per-try timeout",
                    waited,
                );
                call.tried.add(&current);
                match call.retry_target(&replay, charged_retries, max_attempts) {
                    Some(other) => {
                        tracing::debug!(from = %current.addr, to = %other.addr, "per-try timeout; retrying");
                        charged_retries += 1;
                        current = other;
                        begin = true;
                    }
                    None => {
                        tracing::debug!(endpoint = %current.addr, "per-try timeout; no retry possible, waiting on");
                    }
                }
                continue;
            }
        };

        // Whether this was the live attempt: an earlier one, or one past its
        // per-try timeout, was counted against its endpoint already.
        let was_live = live && n == call.attempts;
        if n == call.attempts {
            live = false;
        }
        match outcome {
            Outcome::Response(response, rtt) => match unavailable(&response) {
                None => {
                    endpoint.on_success(rtt, Instant::now());
                    replay.commit();
                    return Ok(Observed::wrap(response, endpoint, call.shared));
                }
                Some(message) => {
                    if was_live {
                        call.shared.count_failure(
                            &endpoint,
                            CallFailure::Unavailable,
                            &message,
                            rtt,
                        );
                        call.tried.add(&endpoint);
                    }
                    if live {
                        continue; // The live attempt goes on.
                    }
                    if retry_safe
                        && let Some(other) =
                            call.retry_target(&replay, charged_retries, max_attempts)
                    {
                        tracing::debug!(from = %endpoint.addr, to = %other.addr, %message, "UNAVAILABLE; retrying");
                        charged_retries += 1;
                        current = other;
                        begin = true;
                        continue;
                    }
                    if call.wait_on(&attempts, timer.as_mut()) {
                        continue;
                    }
                    replay.commit();
                    return Ok(response);
                }
            },
            Outcome::NotSent(error) => {
                let text = call.shared.explain(&endpoint, &*error);
                if was_live {
                    call.transport_failure(&endpoint, &text);
                }
                if live {
                    continue;
                }
                // Transparent retry: no budget, each endpoint once.
                if replay.can_replay() {
                    call.list = call.shared.endpoints();
                    if let Some(other) = call.pick() {
                        tracing::debug!(from = %endpoint.addr, to = %other.addr, error = %text, "call never reached the server; retrying");
                        current = other;
                        begin = true;
                        continue;
                    }
                }
                if call.wait_on(&attempts, timer.as_mut()) {
                    continue;
                }
                if !replay.can_replay() {
                    return call.fail(&replay, &endpoint, error, &text);
                }
                // No endpoint left now: wait for one (`wait_for_ready`), or
                // answer UNAVAILABLE naming every endpoint.
                tracing::debug!(endpoint = %endpoint.addr, error = %text, "call never reached the server; no endpoint left");
                match call.pick_or_wait().await {
                    Ok(other) => {
                        current = other;
                        begin = true;
                    }
                    Err(response) => return Ok(response),
                }
            }
            Outcome::Failed(error) => {
                let text = call.shared.explain(&endpoint, &*error);
                if was_live {
                    call.transport_failure(&endpoint, &text);
                }
                if live {
                    continue;
                }
                if retry_safe
                    && let Some(other) = call.retry_target(&replay, charged_retries, max_attempts)
                {
                    tracing::debug!(from = %endpoint.addr, to = %other.addr, error = %text, "transport error; retrying");
                    charged_retries += 1;
                    current = other;
                    begin = true;
                    continue;
                }
                if call.wait_on(&attempts, timer.as_mut()) {
                    continue;
                }
                replay.commit();
                return call.fail(&replay, &endpoint, error, &text);
            }
            Outcome::Expired => return Ok(call.deadline_exceeded(&endpoint)),
        }
    }
}

/// Sends one attempt; the endpoint's outstanding count covers it until the
/// response headers (or the failure), including when the caller gives up on it.
/// `tls`: whether the endpoint's connections use TLS.
async fn send(n: u32, endpoint: Arc<Endpoint>, request: http::Request<Body>, tls: bool) -> Done {
    let outcome = attempt(&endpoint, request, tls).await;
    Done {
        n,
        endpoint,
        outcome,
    }
}

async fn attempt(endpoint: &Endpoint, request: http::Request<Body>, tls: bool) -> Outcome {
    let _in_flight = endpoint.start();
    let sent = Instant::now();
    let mut channel = endpoint.channel.clone();
    if let Err(error) = channel.ready().await {
        return Outcome::NotSent(error.into());
    }
    match channel.call(request).await {
        Ok(response) => Outcome::Response(response, sent.elapsed()),
        Err(error) => {
            let error: BoxError = error.into();
            if is_timeout(&*error) {
                Outcome::Expired
            } else if never_sent(&*error) || (tls && endpoint.closed_unanswered(&*error)) {
                // With TLS, a server that never answered and closes a new
                // connection under the first requests is refusing the
                // handshake (TLS 1.3 lets the client finish its half first):
                // those requests were never served.
                Outcome::NotSent(error)
            } else {
                Outcome::Failed(error)
            }
        }
    }
}

impl Call {
    /// Counts a transport failure against the endpoint of a live attempt (which
    /// ejects it) and keeps the call from trying it again.
    fn transport_failure(&mut self, endpoint: &Arc<Endpoint>, error: &str) {
        self.shared
            .count_failure(endpoint, CallFailure::Transport, error, Duration::ZERO);
        self.tried.add(endpoint);
    }

    fn pick(&self) -> Option<Arc<Endpoint>> {
        let tried = &self.tried;
        pick(
            self.shared.cfg.policy,
            &self.list,
            |e: &Arc<Endpoint>| tried.contains(e),
            &self.shared.round_robin,
            &mut rand::rng(),
            Instant::now(),
        )
        .cloned()
    }

    /// Whether earlier attempts (past their per-try timeout) are still running,
    /// so the call waits on for them, until its deadline, instead of giving up.
    fn wait_on<F: Future<Output = Done>>(
        &self,
        attempts: &Attempts<'_, F>,
        mut timer: Pin<&mut Option<Sleep>>,
    ) -> bool {
        if attempts.is_empty() {
            return false;
        }
        tracing::debug!("no retry possible; waiting for an earlier attempt still running");
        timer.set(self.deadline.map(sleep_until));
        true
    }

    /// Another endpoint for a retry of a call that may have reached a server:
    /// needs a replayable body, attempts left, time left, an untried endpoint
    /// and a token from the retry budget.
    fn retry_target(
        &mut self,
        replay: &Replay,
        charged_retries: u32,
        max_attempts: u32,
    ) -> Option<Arc<Endpoint>> {
        if charged_retries + 1 >= max_attempts || !replay.can_replay() {
            return None;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            return None;
        }
        self.list = self.shared.endpoints();
        let other = self.pick()?;
        if !self.shared.budget.try_withdraw(now) {
            tracing::debug!("retry budget exhausted; not retrying");
            return None;
        }
        Some(other)
    }

    /// Picks an endpoint; when none can take the call, waits (while a source
    /// is still settling, or with `wait_for_ready`) or answers `UNAVAILABLE`.
    async fn pick_or_wait(&mut self) -> Result<Arc<Endpoint>, Response> {
        if self.tried.0.is_empty()
            && let Some(endpoint) = self.pick()
        {
            return Ok(endpoint);
        }
        let cfg = &self.shared.cfg;
        let mut members = self.shared.members.clone();
        loop {
            let settling = {
                let members = members.borrow_and_update();
                self.list = members.endpoints.clone();
                members.unsettled && self.list.is_empty()
            };
            if let Some(endpoint) = self.pick() {
                return Ok(endpoint);
            }
            let limit = match (cfg.wait_for_ready, settling) {
                (Some(wait), _) => Some(self.start + wait),
                (None, true) => Some(self.start + cfg.resolve_timeout),
                (None, false) => None,
            };
            let limit = match (limit, self.deadline) {
                (Some(l), Some(d)) => Some(l.min(d)),
                (l, _) => l,
            };
            let Some(limit) = limit.filter(|l| *l > Instant::now()) else {
                if self.deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(self.deadline_response("while waiting for a healthy endpoint"));
                }
                return Err(self.unavailable());
            };
            let _ = timeout_at(limit, members.changed()).await;
        }
    }

    /// The call failed with a transport error and will not be retried: the
    /// caller's own body error is passed through; anything else is answered
    /// `UNAVAILABLE` (as gRPC does for broken connections), naming the endpoint,
    /// the error and every endpoint's state.
    fn fail(
        &self,
        replay: &Replay,
        endpoint: &Endpoint,
        error: BoxError,
        text: &str,
    ) -> Result<Response, BoxError> {
        if replay.source_failed() {
            return Err(error);
        }
        let message = format!(
            "chat-lb-client: call to {} failed after {} attempt(s): {text}; endpoints: {}",
            endpoint.addr,
            self.attempts,
            self.describe_endpoints()
        );
        tracing::debug!(%message, "answering UNAVAILABLE");
        Ok(Status::unavailable(message).into_http())
    }

    /// Every endpoint with its state and last error, then every configured
    /// host name that has no address with why (`chat-1.invalid:8500 (cannot
    /// resolve: ...)`), separated by `; `.
    fn describe_endpoints(&self) -> String {
        let mut described: Vec<String> = self.list.iter().map(|e| e.describe()).collect();
        described.extend(unresolved(&self.shared));
        described.join("; ")
    }

    /// `UNAVAILABLE`, naming every endpoint and its last error, and every
    /// configured host name that has no address and why (with no endpoint at
    /// all: `no endpoint: chat-1.invalid:8500 (cannot resolve: ...)`).
    fn unavailable(&self) -> Response {
        let message = if self.list.is_empty() {
            let unresolved = unresolved(&self.shared);
            if !unresolved.is_empty() {
                format!("chat-lb-client: no endpoint: {}", unresolved.join("; "))
            } else if self.shared.members.borrow().unsettled {
                "chat-lb-client: no endpoint yet (host names or discovery still pending)".to_owned()
            } else {
                "chat-lb-client: no endpoints configured".to_owned()
            }
        } else {
            format!(
                "chat-lb-client: no healthy endpoint for this call after {} attempt(s); endpoints: {}",
                self.attempts,
                self.describe_endpoints()
            )
        };
        tracing::debug!(%message, "answering UNAVAILABLE");
        Status::unavailable(message).into_http()
    }

    fn deadline_exceeded(&self, endpoint: &Endpoint) -> Response {
        self.deadline_response(&format!("waiting for {}", endpoint.addr))
    }

    fn deadline_response(&self, what: &str) -> Response {
        let timeout = self
            .timeout
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_default();
        Status::deadline_exceeded(format!(
            "chat-lb-client: deadline of {timeout} exceeded {what} (attempt {})",
            self.attempts
        ))
        .into_http()
    }
}

/// The configured host names without an address, as `name:port (why)`.
fn unresolved(shared: &CallContext) -> Vec<String> {
    shared
        .members
        .borrow()
        .unresolved
        .iter()
        .map(|(target, why)| format!("{target} ({why})"))
        .collect()
}
