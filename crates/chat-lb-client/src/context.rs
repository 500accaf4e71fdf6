//! What every call needs, shared by all clones of a balancer: the settings,
//! the published membership, the retry and hedge budgets, and where to report a
//! change.

use std::{
    sync::{Arc, atomic::AtomicUsize},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{
    classify::CallFailure,
    config::Config,
    endpoint::Endpoint,
    hedge::Hedging,
    members::{EndpointList, Members},
    metrics::BalancerMetrics,
    outlier::EjectionCap,
    outlier::accrual,
    retry::budget::RetryBudget,
    snapshot::EjectionReason,
    update::{Update, Updates, report},
};

/// The call path's view of the balancer.
pub(crate) struct CallContext {
    pub cfg: Arc<Config>,
    /// The membership as its owner publishes it.
    pub members: watch::Receiver<Members>,
    /// Where a call reports an endpoint it ejected.
    pub updates: Updates,
    /// The balancer-wide count of ejected endpoints.
    pub ejections: Arc<EjectionCap>,
    /// Retries of calls that may have reached a server draw on it (see `retry`).
    pub budget: RetryBudget,
    /// The hedged methods, their delays and the hedge budget (see `hedge`).
    pub hedging: Hedging,
    /// The next turn of [`crate::Policy::RoundRobin`].
    pub round_robin: AtomicUsize,
    /// The balancer-wide metrics (see `metrics`).
    pub metrics: BalancerMetrics,
}

impl CallContext {
    pub fn new(
        cfg: Arc<Config>,
        members: watch::Receiver<Members>,
        updates: Updates,
        ejections: Arc<EjectionCap>,
    ) -> Self {
        let retry = &cfg.retry;
        let budget = RetryBudget::new(
            retry.budget_ratio,
            retry.budget_min_per_sec,
            retry.budget_window,
        );
        let hedging = Hedging::new(&cfg.hedge, retry.budget_window);
        Self {
            cfg,
            members,
            updates,
            ejections,
            budget,
            hedging,
            round_robin: AtomicUsize::new(0),
            metrics: BalancerMetrics::new(),
        }
    }

    /// The current endpoint list.
    pub fn endpoints(&self) -> EndpointList {
        self.members.borrow().endpoints.clone()
    }
}

impl CallContext {
    /// Counts a failed attempt against its endpoint (see
    /// [`Endpoint::on_failure`]) and ejects it when a detector says so: its
    /// own record (at once, or failures in a row), else the windowed
    /// detectors, which compare its recent outcomes with every endpoint's (see
    /// `outlier::accrual`). An ejection is reported to the membership owner so
    /// that waiters learn of it.
    pub fn count_failure(
        &self,
        endpoint: &Endpoint,
        kind: CallFailure,
        error: &str,
        elapsed: Duration,
    ) {
        let now = Instant::now();
        let reason = endpoint.on_failure(&self.cfg.outlier, kind, error, elapsed, now);
        self.judge(endpoint, reason, error, now);
    }

    /// Counts a failure of an answered call after its response headers (its
    /// stream broke, or its trailers carry a failure code) against
    /// `endpoint`: as [`CallContext::count_failure`], but the attempt was
    /// counted as a success already (see [`Endpoint::on_stream_failure`]).
    pub fn count_stream_failure(&self, endpoint: &Endpoint, kind: CallFailure, error: &str) {
        let now = Instant::now();
        let reason = endpoint.on_stream_failure(&self.cfg.outlier, kind, error, now);
        self.judge(endpoint, reason, error, now);
    }

    /// Ejects `endpoint` for `reason`, the verdict of its own record, if
    /// any; else for the windowed detectors' verdict, if any.
    fn judge(
        &self,
        endpoint: &Endpoint,
        reason: Option<EjectionReason>,
        error: &str,
        now: Instant,
    ) {
        let cfg = &self.cfg.outlier;
        let list = self.endpoints();
        let reason = reason.or_else(|| {
            let own = endpoint.recent(now);
            if !accrual::may_judge(own, cfg) {
                return None;
            }
            let all: Vec<accrual::Counts> = list.iter().map(|e| e.recent(now)).collect();
            accrual::judge(own, &all, cfg)
        });
        let Some(reason) = reason else { return };
        if endpoint.eject(cfg, (&self.ejections, list.len()), reason, error) {
            report(&self.updates, Update::StateChanged);
        }
    }

    /// A one-line description of an error of an attempt on `endpoint` (see
    /// [`Endpoint::explain`]).
    pub fn explain(
        &self,
        endpoint: &Endpoint,
        error: &(dyn std::error::Error + 'static),
    ) -> String {
        endpoint.explain(self.cfg.connect.tls.as_deref(), error)
    }
}
