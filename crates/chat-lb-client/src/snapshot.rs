//! Point-in-time views of the endpoints, for status commands and metrics.

use std::{
    fmt,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

/// The state of one endpoint, as far as new calls are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndpointState {
    /// Not probed to a conclusion yet. Takes calls only while no endpoint is
    /// healthy (a [slow](EndpointSnapshot::slow) one aside; it is on a par
    /// with those).
    Unknown,
    /// Probes succeed; takes calls (while [slow](EndpointSnapshot::slow), only
    /// when no other endpoint is healthy).
    Healthy,
    /// `unhealthy_threshold` probes in a row failed; takes no calls.
    Unhealthy,
    /// The replica said it is not serving; takes no calls.
    NotServing,
    /// Ejected by outlier detection after a failed call, until the ejection
    /// time is over and a probe succeeds. Meanwhile it takes calls only as a
    /// *last resort*: while its most recent probe ([`EndpointSnapshot::last_probe`])
    /// succeeded and no endpoint is healthy or unknown.
    Ejected,
}

impl EndpointState {
    /// Whether the endpoint takes new calls in this state in normal operation
    /// (healthy or unknown). An `Ejected` endpoint is not routable, although
    /// it may still take calls as a last resort (see [`EndpointState::Ejected`]).
    pub fn is_routable(self) -> bool {
        matches!(self, EndpointState::Healthy | EndpointState::Unknown)
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EndpointState::Unknown => "unknown",
            EndpointState::Healthy => "healthy",
            EndpointState::Unhealthy => "unhealthy",
            EndpointState::NotServing => "not-serving",
            EndpointState::Ejected => "ejected",
        })
    }
}

/// Why outlier detection ejected an endpoint (also the `reason` label of
/// `chat_lb_endpoint_ejections_total`, as [`EjectionReason::as_str`] writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectionReason {
    /// A call never reached it (connection refused or failed): at once.
    Refused,
    /// The connection failed under a call: at once.
    Transport,
    /// It answered `UNAVAILABLE`: at once.
    Unavailable,
    /// No response headers within the per-try timeout: at once.
    Timeout,
    /// `consecutive_failures` failed attempts in a row (see
    /// [`crate::Builder::consecutive_failures`]).
    ConsecutiveFailures,
    /// Its success rate over the accrual window was far below the other
    /// endpoints' (gRPC A50's success-rate ejection; see
    /// [`crate::Builder::success_rate_ejection`]).
    SuccessRate,
    /// Its share of failed attempts over the accrual window was over the
    /// threshold (gRPC A50's failure-percentage ejection; see
    /// [`crate::Builder::failure_percentage_ejection`]).
    FailurePercentage,
}

impl EjectionReason {
    /// Every reason, in the order of their metric labels.
    pub const ALL: [EjectionReason; 7] = [
        EjectionReason::Refused,
        EjectionReason::Transport,
        EjectionReason::Unavailable,
        EjectionReason::Timeout,
        EjectionReason::ConsecutiveFailures,
        EjectionReason::SuccessRate,
        EjectionReason::FailurePercentage,
    ];

    /// Its name: `refused`, `transport`, `unavailable`, `timeout`,
    /// `consecutive_failures`, `success_rate` or `failure_percentage`.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Refused => "refused",
            EjectionReason::Transport => "transport",
            EjectionReason::Unavailable => "unavailable",
            EjectionReason::Timeout => "timeout",
            EjectionReason::ConsecutiveFailures => "consecutive_failures",
            EjectionReason::SuccessRate => "success_rate",
            EjectionReason::FailurePercentage => "failure_percentage",
        }
    }
}

impl fmt::Display for EjectionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The replica answered that it serves.
    Healthy {
        /// The probe's detail (e.g. the replica id).
        detail: String,
    },
    /// The replica answered that it does not serve.
    NotServing {
        /// Why.
        detail: String,
    },
    /// No usable answer: an error or a timeout.
    Failed {
        /// The error.
        error: String,
    },
}

/// The last probe of an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// What it found.
    pub outcome: ProbeOutcome,
    /// How long it took (zero for a pushed `Watch` update).
    pub latency: Duration,
    /// When it completed.
    pub at: SystemTime,
    /// Whether it was a pushed update (`Watch`) rather than a check.
    pub pushed: bool,
}

/// One endpoint, as [`crate::Balancer::snapshot`] sees it.
#[derive(Debug, Clone)]
pub struct EndpointSnapshot {
    /// The endpoint's socket address.
    pub address: SocketAddr,
    /// Its state.
    pub state: EndpointState,
    /// Healthy, but its probes answer much more slowly than the other healthy
    /// endpoints' (over `slow_endpoint_factor` times their median; see
    /// [`crate::Builder::slow_endpoint_factor`]): it takes calls only while no
    /// other endpoint is healthy. Always `false` in any other state, and with
    /// slow-endpoint detection off.
    pub slow: bool,
    /// Its last probe, if any.
    pub last_probe: Option<ProbeRecord>,
    /// The current peak-EWMA latency estimate of its calls.
    pub latency_estimate: Duration,
    /// Calls in flight (until their response headers).
    pub outstanding: usize,
    /// Failed probes in a row.
    pub consecutive_failures: u32,
    /// Failed attempts in a row, since its last answer or ejection (see
    /// [`crate::Builder::consecutive_failures`]).
    pub consecutive_call_failures: u32,
    /// How many times outlier detection ejected it.
    pub ejections: u32,
    /// Why its current ejection (or, once that ended, its last one) happened.
    pub ejection_reason: Option<EjectionReason>,
    /// How long the current ejection still lasts at least.
    pub ejected_for: Option<Duration>,
    /// Attempts sent to it (hedges included).
    pub calls: u64,
    /// Hedges sent to it: attempts of [hedged](crate::Builder::hedge_methods)
    /// calls sent after the hedging delay, beside an earlier attempt elsewhere.
    pub hedges: u64,
    /// Hedges sent to it that got their response headers first and answered
    /// their call.
    pub hedges_won: u64,
    /// Attempts that failed in a way that counts against its health (transport
    /// error, a failure status code such as `UNAVAILABLE` or `INTERNAL`,
    /// per-try timeout).
    pub errors: u64,
    /// Attempts it finished within the accrual window (answered or failed;
    /// cleared when it is ejected and when the ejection ends).
    pub recent_attempts: u64,
    /// Of those, the failed ones.
    pub recent_failures: u64,
    /// The last error seen, from a probe or a call.
    pub last_error: Option<String>,
    /// Calls it shed: answered `RESOURCE_EXHAUSTED` with a retry pushback
    /// (`grpc-retry-pushback-ms`). Not counted in `errors`: an overloaded
    /// replica is not ejected, only avoided for its pushback.
    pub overloads: u64,
    /// How long it is still avoided after its latest shed call (its cost is
    /// raised until then, see [overload](crate#overload)).
    pub overloaded_for: Option<Duration>,
    /// Its [slow-start](crate#slow-start) weight while it ramps up after
    /// (re)joining the healthy tier: its share of calls relative to a full
    /// one, from the minimum weight to 1. `None` once the window is over (or
    /// with slow start off).
    pub slow_start_weight: Option<f64>,
}
