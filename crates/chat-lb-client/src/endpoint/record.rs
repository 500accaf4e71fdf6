//! An endpoint's health record: its probe state machine, ejection, last probe
//! and last error, behind the endpoint's mutex (see the module above), and the
//! picker tier the record implies.

use crate::{
    health::{Active, HealthTracker},
    outlier::Ejection,
    picker::Tier,
    slow::ProbeWindow,
    snapshot::{EndpointState, ProbeOutcome, ProbeRecord},
    tls,
};

/// What is known of an endpoint's health.
#[derive(Debug, Default)]
pub(super) struct Record {
    pub(super) health: HealthTracker,
    pub(super) ejection: Ejection,
    pub(super) last_probe: Option<ProbeRecord>,
    pub(super) last_error: Option<String>,
    /// Latencies of the last successful probe checks (slow-endpoint detection).
    pub(super) probe_window: ProbeWindow,
    /// Its probes answer much more slowly than the other healthy endpoints'
    /// (set and cleared by the membership owner, see `members`).
    pub(super) slow: bool,
}

impl Record {
    pub(super) fn state(&self) -> EndpointState {
        match self.health.state() {
            Active::NotServing => EndpointState::NotServing,
            Active::Unhealthy => EndpointState::Unhealthy,
            _ if self.ejection.is_ejected() => EndpointState::Ejected,
            Active::Healthy => EndpointState::Healthy,
            Active::Unknown => EndpointState::Unknown,
        }
    }

    /// The picker tier the record implies.
    pub(super) fn tier(&self) -> Tier {
        match self.state() {
            EndpointState::Healthy if self.slow => Tier::Fallback,
            EndpointState::Healthy => Tier::Preferred,
            EndpointState::Unknown => Tier::Fallback,
            EndpointState::Ejected if self.last_probe_succeeded() => Tier::LastResort,
            EndpointState::Ejected | EndpointState::Unhealthy | EndpointState::NotServing => {
                Tier::Excluded
            }
        }
    }

    /// Records the last error; a guess at a TLS failure does not replace what
    /// the server said of it.
    pub(super) fn note_error(&mut self, error: String) {
        let exact_tls = self
            .last_error
            .as_deref()
            .is_some_and(|last| tls::is_tls_text(last) && !tls::is_guess(last));
        if !(exact_tls && tls::is_guess(&error)) {
            self.last_error = Some(error);
        }
    }

    /// Whether the most recent probe (a check or a pushed update) found the
    /// replica serving.
    pub(super) fn last_probe_succeeded(&self) -> bool {
        matches!(
            self.last_probe,
            Some(ProbeRecord {
                outcome: ProbeOutcome::Healthy { .. },
                ..
            })
        )
    }
}

/// A last error as recorded: `label: error`, or a TLS failure as it is
/// (`TLS: ...`, the same whether a call or a probe met it).
pub(super) fn labelled(label: &str, error: &str) -> String {
    if tls::is_tls_text(error) {
        error.to_owned()
    } else {
        format!("{label}: {error}")
    }
}
