//! The balancer's metrics: their names, and the handles that record them.
//!
//! The balancer records through the [`metrics`](::metrics) facade and exports nothing
//! itself: the application installs the recorder (an exporter) it wants, e.g.
//! `metrics-exporter-prometheus`. Without one, recording is a no-op.
//!
//! **Handles are made once.** Each endpoint registers its metrics when it is
//! added to the balancer, and the balancer-wide ones when it is built, so the
//! call path only bumps ready handles: it never formats a label or looks a key
//! up. So install the recorder *before* building the balancer; endpoints added
//! while none is installed record nothing. An endpoint removed from the
//! balancer keeps its last values (the facade has no way to unregister).
//!
//! Names follow Prometheus's rules: the `chat_lb_` prefix, base units
//! (seconds), counters ending in `_total`. Per endpoint, the `endpoint` label is
//! its socket address (`10.0.0.1:8500`); the balancer-wide metrics have no
//! label (two balancers in one process add up).
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `chat_lb_endpoint_state` | gauge | `endpoint` | its state as a number: 0 unknown, 1 healthy, 2 ejected, 3 unhealthy, 4 not serving (see [`crate::EndpointState`]) |
//! | `chat_lb_endpoint_attempts_total` | counter | `endpoint` | attempts sent to it (first tries and retries) |
//! | `chat_lb_endpoint_calls_total` | counter | `endpoint` | calls it answered: response headers that do not count against it (any gRPC status but `UNAVAILABLE`) |
//! | `chat_lb_endpoint_outstanding` | gauge | `endpoint` | attempts on it waiting for response headers now |
//! | `chat_lb_endpoint_failures_total` | counter | `endpoint`, `kind` | failed attempts counted against it, by `kind`: `refused` (never reached the server: connection refused or failed, stream refused), `transport` (the connection failed under the call, also mid-response), `unavailable` (the server answered `UNAVAILABLE`), `timeout` (no response headers within the per-try timeout), `failure_code` (the server answered with another failure status code, `INTERNAL`, `UNKNOWN` or `DATA_LOSS` by default; see `Builder::failure_codes`) |
//! | `chat_lb_endpoint_ejections_total` | counter | `endpoint`, `reason` | ejections by outlier detection, by `reason`: at once after a failure of kind `refused`, `transport`, `unavailable` or `timeout`; by failure accrual, `consecutive_failures`, `success_rate` or `failure_percentage` (see [`crate::EjectionReason`]) |
//! | `chat_lb_endpoint_slow_marks_total` | counter | `endpoint` | times it was marked slow (its probes much slower than the others') |
//! | `chat_lb_endpoint_overloads_total` | counter | `endpoint` | calls it shed: `RESOURCE_EXHAUSTED` with a `grpc-retry-pushback-ms` trailer (not failures: they raise its cost for the pushback period) |
//! | `chat_lb_probe_duration_seconds` | histogram | `endpoint` | how long each health check took (failed ones included) |
//! | `chat_lb_probes_total` | counter | `endpoint`, `result` | health checks by `result`: `serving`, `not_serving`, `failed` (pushed `Watch` updates are not checks) |
//! | `chat_lb_retries_total` | counter | | attempts after a call's first, hedges aside (transparent retries of calls that never reached a server included) |
//! | `chat_lb_retry_budget_refusals_total` | counter | | retries and hedges not made because the retry budget (or, for a hedge, the hedge budget) was spent |
//! | `chat_lb_retry_backoffs_total` | counter | | retries that waited out a backoff first (a shed call no other endpoint could take at once) |
//! | `chat_lb_hedges_total` | counter | | hedges sent: attempts sent beside a hedged call's earlier attempt after the hedging delay (not counted in `chat_lb_retries_total`) |
//! | `chat_lb_hedges_won_total` | counter | | hedges whose response headers came first and answered their call |
//! | `chat_lb_no_endpoint_total` | counter | | calls answered `UNAVAILABLE` at once because no endpoint could take them |
//! | `chat_lb_call_duration_seconds` | histogram | | from a call's start to its answer (response headers, or the balancer's own error) |
//!
//! Each is recorded at the one place that decides it: the attempts and
//! outstanding calls where an endpoint starts an attempt, failures where it
//! counts one, ejections where it ejects, its state where it publishes a change,
//! probes where it applies a check, slow marks where it is judged; retries,
//! budget refusals and no-endpoint answers in the call's transitions; call
//! duration where the driver answers.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::{
    classify::CallFailure,
    health::Verdict,
    snapshot::{EjectionReason, EndpointState},
};

/// The `kind` label of each [`CallFailure`], in the order of [`failure_index`].
const FAILURE_KINDS: [&str; 5] = [
    "refused",
    "transport",
    "unavailable",
    "timeout",
    "failure_code",
];

fn failure_index(kind: CallFailure) -> usize {
    match kind {
        CallFailure::Refused => 0,
        CallFailure::Transport => 1,
        CallFailure::Unavailable => 2,
        CallFailure::Timeout => 3,
        CallFailure::Status(_) => 4,
    }
}

/// The index of an ejection `reason` label, in [`EjectionReason::ALL`].
fn reason_index(reason: EjectionReason) -> usize {
    EjectionReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

/// The `result` label of each health check [`Verdict`], in the order of
/// [`verdict_index`].
const PROBE_RESULTS: [&str; 3] = ["serving", "not_serving", "failed"];

fn verdict_index(verdict: Verdict) -> usize {
    match verdict {
        Verdict::Serving => 0,
        Verdict::NotServing => 1,
        Verdict::Failed => 2,
    }
}

/// The number `chat_lb_endpoint_state` reports for a state.
fn state_code(state: EndpointState) -> f64 {
    match state {
        EndpointState::Unknown => 0.0,
        EndpointState::Healthy => 1.0,
        EndpointState::Ejected => 2.0,
        EndpointState::Unhealthy => 3.0,
        EndpointState::NotServing => 4.0,
    }
}

/// One endpoint's metric handles, registered when it is created.
#[derive(Debug)]
pub(crate) struct EndpointMetrics {
    state: Gauge,
    attempts: Counter,
    calls: Counter,
    outstanding: Gauge,
    failures: [Counter; 5],
    ejections: [Counter; 7],
    slow_marks: Counter,
    overloads: Counter,
    probe_duration: Histogram,
    probes: [Counter; 3],
}

impl EndpointMetrics {
    /// Registers the metrics of the endpoint at `address` (its `endpoint`
    /// label), in the state `Unknown`.
    pub fn new(address: std::net::SocketAddr) -> Self {
        let endpoint = metrics::SharedString::from(address.to_string());
        let label = || ("endpoint", endpoint.clone());
        let with = |name: &'static str, key: &'static str, value: &'static str| {
            counter!(name, &[label(), (key, value.into())])
        };
        let metrics = Self {
            state: gauge!("chat_lb_endpoint_state", &[label()]),
            attempts: counter!("chat_lb_endpoint_attempts_total", &[label()]),
            calls: counter!("chat_lb_endpoint_calls_total", &[label()]),
            outstanding: gauge!("chat_lb_endpoint_outstanding", &[label()]),
            failures: FAILURE_KINDS
                .map(|kind| with("chat_lb_endpoint_failures_total", "kind", kind)),
            ejections: EjectionReason::ALL.map(|reason| {
                with(
                    "chat_lb_endpoint_ejections_total",
                    "reason",
                    reason.as_str(),
                )
            }),
            slow_marks: counter!("chat_lb_endpoint_slow_marks_total", &[label()]),
            overloads: counter!("chat_lb_endpoint_overloads_total", &[label()]),
            probe_duration: histogram!("chat_lb_probe_duration_seconds", &[label()]),
            probes: PROBE_RESULTS.map(|result| with("chat_lb_probes_total", "result", result)),
        };
        metrics.state(EndpointState::Unknown);
        metrics
    }

    /// Its state is now `state`.
    pub fn state(&self, state: EndpointState) {
        self.state.set(state_code(state));
    }

    /// An attempt starts on it.
    pub fn attempt_started(&self) {
        self.attempts.increment(1);
        self.outstanding.increment(1.0);
    }

    /// An attempt on it got its response headers, or failed.
    pub fn attempt_ended(&self) {
        self.outstanding.decrement(1.0);
    }

    /// It answered a call.
    pub fn answered(&self) {
        self.calls.increment(1);
    }

    /// An attempt on it failed in a way that counts against it.
    pub fn failed(&self, kind: CallFailure) {
        self.failures[failure_index(kind)].increment(1);
    }

    /// Outlier detection ejected it, for this reason.
    pub fn ejected(&self, reason: EjectionReason) {
        self.ejections[reason_index(reason)].increment(1);
    }

    /// A health check of it ended after `latency`.
    pub fn probed(&self, verdict: Verdict, latency: std::time::Duration) {
        self.probe_duration.record(latency.as_secs_f64());
        self.probes[verdict_index(verdict)].increment(1);
    }

    /// It was marked slow.
    pub fn marked_slow(&self) {
        self.slow_marks.increment(1);
    }

    /// It shed a call.
    pub fn overloaded(&self) {
        self.overloads.increment(1);
    }
}

/// The balancer-wide metric handles, registered when it is built.
pub(crate) struct BalancerMetrics {
    retries: Counter,
    budget_refusals: Counter,
    backoffs: Counter,
    hedges: Counter,
    hedges_won: Counter,
    no_endpoint: Counter,
    call_duration: Histogram,
}

impl BalancerMetrics {
    pub fn new() -> Self {
        Self {
            retries: counter!("chat_lb_retries_total"),
            budget_refusals: counter!("chat_lb_retry_budget_refusals_total"),
            backoffs: counter!("chat_lb_retry_backoffs_total"),
            hedges: counter!("chat_lb_hedges_total"),
            hedges_won: counter!("chat_lb_hedges_won_total"),
            no_endpoint: counter!("chat_lb_no_endpoint_total"),
            call_duration: histogram!("chat_lb_call_duration_seconds"),
        }
    }

    /// A call sends another attempt.
    pub fn retry(&self) {
        self.retries.increment(1);
    }

    /// A retry or a hedge was refused by the retry (or hedge) budget.
    pub fn budget_refused(&self) {
        self.budget_refusals.increment(1);
    }

    /// A retry waits out a backoff.
    pub fn backoff(&self) {
        self.backoffs.increment(1);
    }

    /// A call sends a hedge.
    pub fn hedge(&self) {
        self.hedges.increment(1);
    }

    /// A hedge answered its call.
    pub fn hedge_won(&self) {
        self.hedges_won.increment(1);
    }

    /// A call was answered `UNAVAILABLE` at once: no endpoint could take it.
    pub fn no_endpoint(&self) {
        self.no_endpoint.increment(1);
    }

    /// A call was answered after `elapsed`.
    pub fn call_answered(&self, elapsed: std::time::Duration) {
        self.call_duration.record(elapsed.as_secs_f64());
    }
}
