//! The state of one call, and its transitions.
//!
//! [`Call`] holds everything a call knows: its deadline, retry-safety, the
//! request to replay, the endpoints it tried, its attempts and its timer. The
//! driver (see the module above) feeds it one event at a time, and each
//! transition returns the [`Action`] to take next:
//!
//! | event | transition |
//! |---|---|
//! | the call starts | [`Call::start`] |
//! | an attempt finished | [`Call::on_attempt`] |
//! | the timer fired (per-try timeout, deadline, end of a wait for endpoints or of a backoff) | [`Call::on_timer`] |
//! | the endpoints changed while the call waits for one | [`Call::on_endpoints_changed`] |
//!
//! At most one attempt is *live*: the newest, while it is within its per-try
//! timeout. An attempt that exceeds the per-try timeout is **not cancelled**
//! when a retry starts: it goes on in the background, since it may still be
//! the first to get response headers, and the first attempt that does answers
//! the call (the others are then dropped, which cancels them). A failure of the
//! live attempt (or, while none is live, of any attempt) leads to a retry if
//! one is allowed and an endpoint is left; else the call keeps waiting while
//! any attempt is still running. It gives up only when its deadline passes, or
//! when no attempt is left running and no retry is possible (attempts, budget
//! or endpoints used up), with the outcome of the attempt that finished last.
//!
//! A **shed** attempt (`RESOURCE_EXHAUSTED` with a retry pushback, see
//! `classify`) is no failure of its endpoint: the endpoint is avoided for the
//! pushback period (its cost is raised, see `ewma`) and the call does not go
//! back to it before a backoff. A retry-safe call is retried at once on an
//! endpoint that is not itself under a pushback (within `max_attempts` and the
//! budget); when there is none, it **backs off** (see `retry::backoff`): it
//! waits at least the pushback, then picks afresh among all endpoints, the one
//! that shed it included. A negative pushback ("do not retry"), a call that is
//! not retry-safe, or a backoff that would outlast the deadline passes the
//! server's answer on, as does a retry the budget refuses (asked once: a
//! refusal of the retry elsewhere is not asked again for a backoff).
//!
//! **Hedging** (for the methods named by `Builder::hedge_methods`; see
//! `hedge`) adds one transition: when the live attempt has no response headers
//! after the hedging delay, [`Call::on_timer`] sends a *hedge*, the same call
//! to an endpoint it has not tried, if `max_attempts`, the hedge budget and the
//! retry budget allow; else the call waits on as before. The hedge is now the
//! live attempt (with its own per-try timeout and hedging delay); the attempt
//! it joined is not cancelled and races it, and a failure of that attempt
//! still counts against its endpoint (it was not timed out), but its own
//! per-try timeout no longer applies: the newest attempt's does. Its wait so
//! far is a lower bound of its latency: its endpoint's latency estimate rises
//! to it (so a replica whose stalls lose hedge races, cancelled before they
//! are ever observed, is still seen as slow). As for any
//! overlap, the first response headers answer the call and the driver drops
//! the other attempts.
//!
//! Every attempt after the first carries `grpc-previous-rpc-attempts` (the
//! number of attempts before it), set where attempts are built
//! ([`Call::send_to`]).
//!
//! Which endpoint an attempt goes to, and whether a retry or hedge may be
//! sent at all, is decided in `choose`.

mod choose;

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tonic::body::Body;

use crate::{
    body::Replay,
    classify::{CallFailure, Outcome, Pushback},
    context::CallContext,
    deadline,
    endpoint::Endpoint,
    error::BoxError,
    hedge::MethodLatency,
    members::EndpointList,
    observe::Observed,
    retry::{SafeToRetry, backoff::backoff},
};
use choose::{NoTarget, Tried};

pub(crate) type Response = http::Response<Body>;

/// An attempt to send.
pub(crate) struct Attempt {
    /// Its number in the call, from 1.
    pub n: u32,
    pub endpoint: Arc<Endpoint>,
    pub request: http::Request<Body>,
    /// When it was decided on: the start of its round trip.
    pub sent: Instant,
}

/// A finished attempt: which one, where it went and what became of it.
pub(crate) struct Done {
    pub n: u32,
    pub endpoint: Arc<Endpoint>,
    pub outcome: Outcome,
    /// When it finished (the clock is read once per attempt and once per
    /// call: each transition takes the time it is given).
    pub finished: Instant,
}

/// What the driver does next.
pub(crate) enum Action {
    /// Send this attempt, beside any still running, and wait.
    Send(Attempt),
    /// Wait for the next event.
    Wait,
    /// Answer the call (and drop every attempt still running).
    Answer(Result<Response, BoxError>),
}

/// Which retry a failure allows.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The request never reached a server: any call, no budget, each endpoint
    /// once.
    Transparent,
    /// It may have: retry-safe calls only, within `max_attempts` and the
    /// budget.
    IfSafe,
}

/// A failed attempt the call may retry, and how it answers if it cannot.
struct Failed {
    endpoint: Arc<Endpoint>,
    /// What happened, in words (for logs and messages).
    why: String,
    give_up: GiveUp,
}

enum GiveUp {
    /// Pass the server's answer on.
    Respond(Response),
    /// Answer the transport error (see [`Call::fail`]).
    Fail(BoxError),
}

/// One call through the balancer.
pub(crate) struct Call {
    pub(super) ctx: Arc<CallContext>,
    parts: http::request::Parts,
    pub(super) replay: Replay,
    retry_safe: bool,
    /// The per-try timeout, for retry-safe calls.
    per_try_timeout: Option<Duration>,
    pub(super) start: Instant,
    pub(super) deadline: Option<Instant>,
    /// The call's whole timeout (for messages).
    pub(super) timeout: Option<Duration>,
    /// The endpoints as last read.
    pub(super) list: EndpointList,
    tried: Tried,
    /// Attempts started; the newest one is number `attempts`.
    pub(super) attempts: u32,
    /// Retries drawn from the budget.
    charged_retries: u32,
    /// The newest attempt's endpoint.
    current: Option<Arc<Endpoint>>,
    /// When the newest attempt was sent.
    sent_at: Instant,
    /// Whether the newest attempt is still running within its per-try timeout.
    live: bool,
    /// When the newest attempt's per-try timeout is due.
    per_try_at: Option<Instant>,
    /// The latency record of the call's method, if it is hedged.
    hedged_method: Option<Arc<MethodLatency>>,
    /// When the next hedge is due, if one may be sent.
    hedge_at: Option<Instant>,
    /// The numbers of the attempts that are hedges.
    hedges: Vec<u32>,
    /// Attempts a hedge joined within their per-try timeout: their failures
    /// still count against their endpoints.
    hedged_over: Vec<u32>,
    /// When [`Call::on_timer`] is due.
    timer: Option<Instant>,
    /// Whether the call waits for an endpoint to take it.
    waiting_for_endpoints: bool,
    /// When the pending retry after a shed attempt is due, while one is.
    backoff_until: Option<Instant>,
    /// Backoffs so far (the next one's exponent).
    backoffs: u32,
}

impl Call {
    /// A call of `request` arriving at `now`: its deadline (from its
    /// `grpc-timeout` header, or the default timeout, which is then written
    /// into the header), this client named in its `user-agent` header, its
    /// retry-safety, a deposit into the retry budget.
    pub fn new(ctx: Arc<CallContext>, request: http::Request<Body>, now: Instant) -> Self {
        let cfg = &ctx.cfg;
        let (mut parts, body) = request.into_parts();
        let timeout = match deadline::from_headers(&parts.headers) {
            Some(timeout) => Some(timeout),
            None => cfg
                .default_timeout
                .inspect(|t| deadline::set(&mut parts.headers, *t)),
        };
        crate::transport::set_user_agent(&mut parts.headers);
        let retry_safe = match parts.extensions.get::<SafeToRetry>() {
            Some(SafeToRetry(safe)) => *safe,
            None => cfg.retry.safe.is_safe(parts.uri.path()),
        };
        ctx.budget.deposit();
        let hedged_method = ctx.hedging.method(parts.uri.path()).filter(|_| retry_safe);
        if hedged_method.is_some() {
            ctx.hedging.budget.deposit();
        }
        Self {
            replay: Replay::new(body, cfg.retry.max_replay_bytes),
            per_try_timeout: cfg.retry.per_try_timeout.filter(|_| retry_safe),
            // Read when the call picks (see `Call::pick_or_wait`).
            list: EndpointList::default(),
            parts,
            retry_safe,
            start: now,
            deadline: timeout.map(|t| now + t),
            timeout,
            tried: Tried::default(),
            attempts: 0,
            charged_retries: 0,
            current: None,
            sent_at: now,
            live: false,
            per_try_at: None,
            hedged_method,
            hedge_at: None,
            hedges: Vec::new(),
            hedged_over: Vec::new(),
            timer: None,
            waiting_for_endpoints: false,
            backoff_until: None,
            backoffs: 0,
            ctx,
        }
    }

    /// When the timer is due, if it is set.
    pub fn timer(&self) -> Option<Instant> {
        self.timer
    }

    /// Whether the call waits for the endpoints to change.
    pub fn waits_for_endpoints(&self) -> bool {
        self.waiting_for_endpoints
    }

    /// The call starts: it goes to an endpoint, or waits for one.
    pub fn start(&mut self, now: Instant) -> Action {
        self.pick_or_wait(now)
    }

    /// The endpoints changed while the call waited for one: it looks again.
    pub fn on_endpoints_changed(&mut self, now: Instant) -> Action {
        self.pick_or_wait(now)
    }

    /// The timer fired: the end of a wait for endpoints or of a backoff, the
    /// deadline, the hedging delay, or the newest attempt's per-try timeout.
    pub fn on_timer(&mut self, now: Instant) -> Action {
        if self.waiting_for_endpoints {
            return self.pick_or_wait(now);
        }
        if self.backoff_until.take().is_some() {
            // Every endpoint may take the retry now, the one that shed the
            // call included (its pushback is over).
            self.tried = Tried::default();
            return self.pick_or_wait(now);
        }
        let Some(current) = self.current.clone() else {
            return self.pick_or_wait(now);
        };
        if self.deadline.is_some_and(|d| now >= d) {
            return Action::Answer(Ok(self.deadline_exceeded(&current)));
        }
        let due = |at: Option<Instant>| at.is_some_and(|at| now >= at);
        if self.live && due(self.hedge_at) && !due(self.per_try_at) {
            return self.hedge(current, now);
        }
        self.hedge_at = None;
        // Per-try timeout: no response headers yet. The attempt goes on (see
        // the module docs); only the deadline bounds it now.
        self.live = false;
        self.timer = self.deadline;
        let waited = now.saturating_duration_since(self.start);
        let why = "no response headers within the per-try timeout";
        self.ctx
            .count_failure(&current, CallFailure::Timeout, why, waited);
        self.tried.add(&current);
        match self.charged_retry_target(now, false) {
            Some(other) => {
                tracing::debug!(from = %current.addr, to = %other.addr, "per-try timeout; retrying");
                self.send_to(other, now)
            }
            None => {
                tracing::debug!(endpoint = %current.addr, "per-try timeout; no retry possible, waiting on");
                Action::Wait
            }
        }
    }

    /// An attempt finished; `running`: whether other attempts still run.
    pub fn on_attempt(&mut self, done: Done, running: bool, now: Instant) -> Action {
        let Done {
            n,
            endpoint,
            outcome,
            ..
        } = done;
        // Whether its failure is still to be counted: the live attempt's, or
        // that of an attempt a hedge joined; an earlier attempt past its
        // per-try timeout was counted against its endpoint already.
        let was_live = (self.live && n == self.attempts) || self.hedged_over.contains(&n);
        if n == self.attempts {
            self.live = false;
        }
        let (retry, failed) = match outcome {
            Outcome::Answered(response, rtt) => {
                endpoint.on_success(rtt, now);
                self.answered_by(n, &endpoint, now);
                self.replay.commit();
                let response = Observed::wrap(response, endpoint, self.ctx.clone());
                return Action::Answer(Ok(response));
            }
            Outcome::Expired => return Action::Answer(Ok(self.deadline_exceeded(&endpoint))),
            Outcome::Overloaded(response, pushback) => {
                endpoint.on_overload(pushback, now);
                self.tried.add(&endpoint);
                return self.after_overload(&endpoint, response, pushback, running, now);
            }
            Outcome::Failing(response, rtt, kind, why) => {
                // A failure code: counted against the endpoint (see
                // `outlier`), and a retry-safe call goes elsewhere.
                if was_live {
                    self.count(&endpoint, kind, &why, rtt);
                }
                let give_up = GiveUp::Respond(response);
                (
                    Retry::IfSafe,
                    Failed {
                        endpoint,
                        why,
                        give_up,
                    },
                )
            }
            Outcome::NotSent(error) => (
                Retry::Transparent,
                self.transport(endpoint, error, CallFailure::Refused, was_live),
            ),
            Outcome::Failed(error) => (
                Retry::IfSafe,
                self.transport(endpoint, error, CallFailure::Transport, was_live),
            ),
        };
        self.after_failure(retry, failed, running, now)
    }

    /// A transport failure: counted against the endpoint of a live attempt
    /// (which ejects it, and keeps the call from trying it again).
    /// `kind`: `Refused` or `Transport`.
    fn transport(
        &mut self,
        endpoint: Arc<Endpoint>,
        error: BoxError,
        kind: CallFailure,
        was_live: bool,
    ) -> Failed {
        let why = self.ctx.explain(&endpoint, &*error);
        if was_live {
            self.count(&endpoint, kind, &why, Duration::ZERO);
        }
        let give_up = GiveUp::Fail(error);
        Failed {
            endpoint,
            why,
            give_up,
        }
    }

    /// Counts a failure of the live attempt against its endpoint, which the
    /// call then does not try again.
    fn count(&mut self, endpoint: &Endpoint, kind: CallFailure, why: &str, elapsed: Duration) {
        self.ctx.count_failure(endpoint, kind, why, elapsed);
        self.tried.add(endpoint);
    }

    /// After a failed attempt: while the live attempt runs, wait for it; else
    /// retry if allowed; else wait for attempts still running; else give up.
    fn after_failure(
        &mut self,
        retry: Retry,
        failed: Failed,
        running: bool,
        now: Instant,
    ) -> Action {
        if self.live || self.backoff_until.is_some() {
            return Action::Wait;
        }
        let target = match retry {
            Retry::Transparent => self.transparent_retry_target(now),
            Retry::IfSafe if self.retry_safe => self.charged_retry_target(now, false),
            Retry::IfSafe => None,
        };
        if let Some(other) = target {
            tracing::debug!(from = %failed.endpoint.addr, to = %other.addr, why = %failed.why, "attempt failed; retrying");
            return self.send_to(other, now);
        }
        if running {
            tracing::debug!("no retry possible; waiting for an earlier attempt still running");
            self.timer = self.deadline;
            return Action::Wait;
        }
        if retry == Retry::Transparent && self.replay.can_replay() {
            // No endpoint left now: wait for one (`wait_for_ready`), or answer
            // UNAVAILABLE naming every endpoint.
            tracing::debug!(endpoint = %failed.endpoint.addr, why = %failed.why, "call never reached the server; no endpoint left");
            return self.pick_or_wait(now);
        }
        self.replay.commit();
        match failed.give_up {
            GiveUp::Respond(response) => Action::Answer(Ok(response)),
            GiveUp::Fail(error) => Action::Answer(self.fail(&failed.endpoint, error, &failed.why)),
        }
    }

    /// After a shed attempt (see the module docs): while the live attempt runs
    /// or a backoff is pending, wait; a retry-safe call with a pushback period
    /// is retried at once on an endpoint not under a pushback, else after a
    /// backoff; otherwise the server's answer is passed on (once no other
    /// attempt runs).
    fn after_overload(
        &mut self,
        endpoint: &Endpoint,
        response: Response,
        pushback: Pushback,
        running: bool,
        now: Instant,
    ) -> Action {
        if self.live || self.backoff_until.is_some() {
            return Action::Wait;
        }
        match pushback {
            Pushback::After(period) if self.retry_safe => {
                match self.charged_target(now, true, false) {
                    Ok(other) => {
                        tracing::debug!(from = %endpoint.addr, to = %other.addr, "call shed; retrying elsewhere");
                        return self.send_to(other, now);
                    }
                    // The budget refused this retry (and the refusal was counted):
                    // a backoff would only ask it again.
                    Err(NoTarget::Refused) => {}
                    Err(NoTarget::Unavailable) => {
                        if let Some(at) = self.back_off(period, now) {
                            let wait = at - now;
                            tracing::debug!(endpoint = %endpoint.addr, ?wait, "call shed, no endpoint free; backing off");
                            return Action::Wait;
                        }
                    }
                }
            }
            _ => {
                tracing::debug!(endpoint = %endpoint.addr, ?pushback, retry_safe = self.retry_safe, "call shed; not retried");
            }
        }
        if running {
            self.timer = self.deadline;
            return Action::Wait;
        }
        self.replay.commit();
        Action::Answer(Ok(response))
    }

    /// Schedules a retry after the call's next backoff, and at least `period`
    /// (the pushback) from `now`; returns when it is due, or `None` when it
    /// cannot be made: no attempt left, a body that cannot be replayed, a wait
    /// that would reach the deadline, or no retry budget.
    fn back_off(&mut self, period: Duration, now: Instant) -> Option<Instant> {
        let retry = &self.ctx.cfg.retry;
        if self.charged_retries + 1 >= retry.max_attempts || !self.replay.can_replay() {
            return None;
        }
        self.backoffs += 1;
        let wait = backoff(
            self.backoffs,
            retry.backoff_base,
            retry.backoff_max,
            &mut rand::rng(),
        );
        let at = now + wait.max(period);
        if self.deadline.is_some_and(|d| at >= d) {
            return None;
        }
        if !self.ctx.budget.try_withdraw() {
            self.ctx.metrics.budget_refused();
            return None;
        }
        self.charged_retries += 1;
        self.ctx.metrics.backoff();
        self.backoff_until = Some(at);
        self.timer = Some(at);
        Some(at)
    }

    /// The hedging delay passed without response headers on the live attempt
    /// (on `current`): sends a hedge elsewhere if allowed, else waits on.
    fn hedge(&mut self, current: Arc<Endpoint>, now: Instant) -> Action {
        self.hedge_at = None;
        self.tried.add(&current);
        current.on_hedged_over(now.saturating_duration_since(self.sent_at), now);
        match self.charged_target(now, true, true).ok() {
            Some(other) => {
                let waited = now.saturating_duration_since(self.start);
                tracing::debug!(from = %current.addr, to = %other.addr, ?waited, "no response headers within the hedging delay; hedging");
                self.hedged_over.push(self.attempts);
                self.hedges.push(self.attempts + 1);
                other.on_hedge();
                self.ctx.metrics.hedge();
                self.send_to(other, now)
            }
            None => {
                self.timer = earliest(self.per_try_at, self.deadline);
                Action::Wait
            }
        }
    }

    /// Attempt `n`, on `endpoint`, got the response headers that answer the
    /// call: a hedge won if it was one, and the latency of a hedged method is
    /// recorded.
    fn answered_by(&self, n: u32, endpoint: &Endpoint, now: Instant) {
        if self.hedges.contains(&n) {
            endpoint.on_hedge_won();
            self.ctx.metrics.hedge_won();
            tracing::debug!(endpoint = %endpoint.addr, attempt = n, "a hedge answered first");
        }
        if let Some(method) = &self.hedged_method {
            let latency = now.saturating_duration_since(self.start);
            self.ctx.hedging.record(method, latency);
        }
    }

    /// When the next hedge of a call whose newest attempt started at `now` is
    /// due: for a hedged method with a known delay and attempts left.
    fn next_hedge_at(&self, now: Instant) -> Option<Instant> {
        let method = self.hedged_method.as_ref()?;
        if self.charged_retries + 1 >= self.ctx.cfg.retry.max_attempts {
            return None;
        }
        self.ctx.hedging.delay(method).map(|delay| now + delay)
    }

    /// Starts the next attempt on `endpoint` — the one place attempts are
    /// built. Every attempt after the first tells the server the time actually
    /// left (the first attempt's header is the whole timeout) and how many
    /// attempts came before it (`grpc-previous-rpc-attempts`).
    fn send_to(&mut self, endpoint: Arc<Endpoint>, now: Instant) -> Action {
        self.waiting_for_endpoints = false;
        self.attempts += 1;
        let is_hedge = self.hedges.last() == Some(&self.attempts);
        if self.attempts > 1 && !is_hedge {
            self.ctx.metrics.retry();
        }
        let mut request = self.attempt_request(&endpoint);
        if self.attempts > 1 {
            request.headers_mut().insert(
                PREVIOUS_ATTEMPTS,
                http::HeaderValue::from(self.attempts - 1),
            );
            if let Some(deadline) = self.deadline {
                deadline::set(
                    request.headers_mut(),
                    deadline.saturating_duration_since(now),
                );
            }
        }
        self.per_try_at = self.per_try_timeout.map(|t| now + t);
        self.hedge_at = self.next_hedge_at(now);
        self.timer = earliest(earliest(self.per_try_at, self.hedge_at), self.deadline);
        self.live = true;
        self.current = Some(endpoint.clone());
        self.sent_at = now;
        let n = self.attempts;
        Action::Send(Attempt {
            n,
            endpoint,
            request,
            sent: now,
        })
    }

    /// A copy of the call's request head with the next handle on its body,
    /// for an attempt on `endpoint`. The request's extensions are for the
    /// layers above the balancer (it reads [`SafeToRetry`] there itself): an
    /// attempt over an endpoint's own channel goes without them, since the
    /// channel reads none (see `EndpointTransport::reads_extensions`), and
    /// copying them would cost three allocations per call.
    fn attempt_request(&self, endpoint: &Endpoint) -> http::Request<Body> {
        let body = self.replay.attempt();
        if endpoint.transport.reads_extensions() {
            return http::Request::from_parts(self.parts.clone(), body);
        }
        let mut request = http::Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.uri_mut() = self.parts.uri.clone();
        *request.version_mut() = self.parts.version;
        *request.headers_mut() = self.parts.headers.clone();
        request
    }
}

/// The header telling the server how many attempts of the call came before
/// this one (gRPC's retry design, A6).
pub(crate) const PREVIOUS_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
