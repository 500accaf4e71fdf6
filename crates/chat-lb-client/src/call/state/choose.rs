//! Where a call's attempts go: its first endpoint (or a wait for one), and
//! the endpoint of a transparent retry, of a charged retry or of a hedge.
//!
//! Every choice excludes the endpoints the call already tried ([`Tried`]) in
//! their current routable epoch, so a call goes to each endpoint at most once
//! unless the endpoint became routable again since. A retry or hedge that
//! may have reached a server is *charged*: it needs attempts, time and a
//! replayable body left, and a token from the retry budget (a hedge first
//! one from the hedge budget).

use std::{net::SocketAddr, sync::Arc};

use tokio::time::Instant;

use super::{Action, Call};
use crate::{
    endpoint::Endpoint,
    picker::{Choice, pick},
};

/// Endpoints a call already tried, with the routable epoch they had then.
#[derive(Default)]
pub(super) struct Tried(Vec<(SocketAddr, u64)>);

impl Tried {
    pub(super) fn add(&mut self, endpoint: &Endpoint) {
        self.0.push((endpoint.addr, endpoint.epoch()));
    }

    pub(super) fn contains(&self, endpoint: &Endpoint) -> bool {
        !self.0.is_empty()
            && self
                .0
                .iter()
                .any(|(addr, epoch)| *addr == endpoint.addr && *epoch == endpoint.epoch())
    }
}

/// Why a call got no endpoint for a retry or hedge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoTarget {
    /// No attempt, body replay, time or endpoint left for one.
    Unavailable,
    /// The retry (or hedge) budget refused it; the refusal is counted.
    Refused,
}

impl Call {
    /// Picks an endpoint the call has not tried; with `unloaded`, also not
    /// one within the pushback period of a shed call at `now`.
    fn pick_among(&self, unloaded: bool, now: Instant) -> Option<Arc<Endpoint>> {
        let tried = &self.tried;
        let choice = Choice {
            policy: self.ctx.cfg.policy,
            tolerance: self.ctx.cfg.p2c_tolerance,
        };
        pick(
            choice,
            &self.list,
            |e: &Arc<Endpoint>| tried.contains(e) || (unloaded && e.is_overloaded(now)),
            &self.ctx.round_robin,
            &mut rand::rng(),
            now,
        )
        .cloned()
    }

    fn pick(&self, now: Instant) -> Option<Arc<Endpoint>> {
        self.pick_among(false, now)
    }

    /// Another endpoint for a call that never reached a server: needs a
    /// replayable body and an untried endpoint.
    pub(super) fn transparent_retry_target(&mut self, now: Instant) -> Option<Arc<Endpoint>> {
        if !self.replay.can_replay() {
            return None;
        }
        self.list = self.ctx.endpoints();
        self.pick(now)
    }

    /// Another endpoint for a retry of a call that may have reached a server:
    /// needs a replayable body, attempts left, time left, an untried endpoint
    /// (with `unloaded`, also not under a pushback) and a token from the retry
    /// budget.
    pub(super) fn charged_retry_target(
        &mut self,
        now: Instant,
        unloaded: bool,
    ) -> Option<Arc<Endpoint>> {
        self.charged_target(now, unloaded, false).ok()
    }

    /// Another endpoint for a retry or (`hedge`) a hedge: see
    /// [`Call::charged_retry_target`]; a hedge needs a token from the hedge
    /// budget first (see `hedge`). A budget's refusal is counted here, once,
    /// and told apart ([`NoTarget::Refused`]) so that the caller does not ask
    /// the budget again for the same retry.
    pub(super) fn charged_target(
        &mut self,
        now: Instant,
        unloaded: bool,
        hedge: bool,
    ) -> Result<Arc<Endpoint>, NoTarget> {
        let max_attempts = self.ctx.cfg.retry.max_attempts;
        if self.charged_retries + 1 >= max_attempts || !self.replay.can_replay() {
            return Err(NoTarget::Unavailable);
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(NoTarget::Unavailable);
        }
        self.list = self.ctx.endpoints();
        let other = self
            .pick_among(unloaded, now)
            .ok_or(NoTarget::Unavailable)?;
        let budget = &self.ctx.budget;
        if hedge && !(self.ctx.hedging.budget.try_withdraw() && budget.try_withdraw()) {
            self.ctx.metrics.budget_refused();
            tracing::debug!("hedge or retry budget exhausted; not hedging");
            return Err(NoTarget::Refused);
        }
        if !hedge && !budget.try_withdraw() {
            self.ctx.metrics.budget_refused();
            tracing::debug!("retry budget exhausted; not retrying");
            return Err(NoTarget::Refused);
        }
        self.charged_retries += 1;
        Ok(other)
    }

    /// Picks an endpoint; when none can take the call, waits (while a source
    /// is still settling, or with `wait_for_ready`) or answers `UNAVAILABLE`
    /// (`DEADLINE_EXCEEDED` once the deadline passed).
    pub(super) fn pick_or_wait(&mut self, now: Instant) -> Action {
        self.waiting_for_endpoints = false;
        let settling = {
            let members = self.ctx.members.borrow();
            self.list = members.endpoints.clone();
            members.unsettled && self.list.is_empty()
        };
        if let Some(endpoint) = self.pick(now) {
            return self.send_to(endpoint, now);
        }
        let cfg = &self.ctx.cfg;
        let limit = match (cfg.wait_for_ready, settling) {
            (Some(wait), _) => Some(self.start + wait),
            (None, true) => Some(self.start + cfg.resolve_timeout),
            (None, false) => None,
        };
        let limit = match (limit, self.deadline) {
            (Some(l), Some(d)) => Some(l.min(d)),
            (l, _) => l,
        };
        match limit.filter(|l| *l > now) {
            Some(limit) => {
                self.waiting_for_endpoints = true;
                self.timer = Some(limit);
                Action::Wait
            }
            None if self.deadline.is_some_and(|d| now >= d) => Action::Answer(Ok(
                self.deadline_response("while waiting for a healthy endpoint")
            )),
            None => {
                self.ctx.metrics.no_endpoint();
                Action::Answer(Ok(self.unavailable()))
            }
        }
    }
}
