//! One endpoint: its transport, its load, and its health.
//!
//! What the hot path reads (tier, outstanding calls, how long they have
//! waited, latency estimate) lives in atomics or a tiny per-endpoint lock.
//! The health record (probe state machine, ejection, last errors) sits behind
//! a per-endpoint `std::sync::Mutex` taken only by probes, failed calls and
//! snapshots, never across an `.await`.
//!
//! The record decides the endpoint's picker tier (the tiers: see `picker`;
//! the mapping: `Record::tier`). Every change of state or tier is published to
//! the tier atomic at once. The endpoint never reaches into the balancer's
//! shared state: its methods return whether something changed, and the caller
//! reports that to the membership owner (see `members`).

mod record;

use std::{
    error::Error as StdError,
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use tokio::{sync::Notify, time::Instant};

use crate::{
    classify::{CallFailure, Pushback, describe},
    config::{HealthConfig, OutlierConfig, SlowConfig, SlowStartConfig},
    ewma::PeakEwma,
    health::{Active, ProbeStatus, Verdict},
    metrics::EndpointMetrics,
    outlier::{
        EjectionCap,
        accrual::{Counts, OutcomeWindow},
    },
    picker::{Candidate, P2cCost, Tier},
    ramp::Ramp,
    snapshot::{EjectionReason, EndpointSnapshot, EndpointState, ProbeOutcome, ProbeRecord},
    tls::{self, ClientTls},
    transport::{EndpointChannel, EndpointTransport, Transport},
};
use record::{Record, labelled};

/// A balancer endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    /// The lazily connected channel to it, which probes use.
    pub channel: EndpointChannel,
    /// What calls are sent over: the channel, unless the builder was given
    /// a transport.
    pub transport: EndpointTransport,
    tier: AtomicU8,
    /// Bumped each time the endpoint becomes routable again, so a call that
    /// already tried it may try it once more.
    epoch: AtomicU64,
    outstanding: AtomicUsize,
    /// When an attempt on it last ended, or one started while none was in
    /// flight, in nanoseconds since `created` (see `unanswered_for`).
    last_progress_ns: AtomicU64,
    created: Instant,
    calls: AtomicU64,
    /// `calls` when the previous probe check ended.
    calls_at_last_probe: AtomicU64,
    errors: AtomicU64,
    /// Hedges sent to it, and those that answered their call.
    hedges: AtomicU64,
    hedges_won: AtomicU64,
    /// Failed attempts in a row (since its last answer or ejection).
    call_failures: AtomicU32,
    ewma: PeakEwma,
    /// What power of two choices compares (see `P2cCost`).
    cost_model: P2cCost,
    /// Its recent outcomes, for failure accrual (a lock of its own: every
    /// finished attempt takes it, briefly; taken after `record` when both are).
    window: Mutex<OutcomeWindow>,
    record: Mutex<Record>,
    /// Wakes the prober for an immediate probe.
    pub probe_now: Notify,
    /// Probes started and completed (checks, not pushed updates).
    probes_started: AtomicU64,
    probes: AtomicU64,
    /// Whether the server ever answered a call or a probe.
    answered: AtomicBool,
    /// Calls it shed (`RESOURCE_EXHAUSTED` with a retry pushback).
    overloads: AtomicU64,
    /// Its slow start (see `ramp`).
    ramp: Ramp,
    metrics: EndpointMetrics,
}

/// Decrements the outstanding count when an attempt ends, however it ends:
/// through [`InFlight::end`] with the time the caller read already, or by
/// being dropped (an attempt the call gave up on), which reads the clock.
pub(crate) struct InFlight<'a>(&'a Endpoint);

impl InFlight<'_> {
    /// The attempt ended at `now`.
    pub fn end(self, now: Instant) {
        self.0.end_attempt(now);
        std::mem::forget(self);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.end_attempt(Instant::now());
    }
}

impl Candidate for Arc<Endpoint> {
    fn tier(&self) -> Tier {
        Tier::from_u8(self.tier.load(Ordering::Acquire))
    }

    fn cost(&self, now: Instant) -> f64 {
        let outstanding = self.outstanding.load(Ordering::Acquire);
        let waiting = self.unanswered_for(outstanding, now);
        self.ewma.cost(self.cost_model, outstanding, waiting, now)
    }

    fn weight(&self, now: Instant) -> f64 {
        self.slow_start_weight(now).unwrap_or(1.0)
    }

    fn overloaded(&self, now: Instant) -> bool {
        self.is_overloaded(now)
    }
}

impl Endpoint {
    /// The endpoint at `addr`: probed over `channel`, its calls sent over it
    /// too unless the builder was `given` a transport for the address.
    /// `default_rtt` and `decay` start and drive its latency estimate;
    /// `window` is its outlier-accrual window.
    pub fn new(
        addr: SocketAddr,
        channel: EndpointChannel,
        given: Option<Arc<dyn Transport>>,
        default_rtt: Duration,
        decay: Duration,
        window: Duration,
    ) -> Self {
        let transport = EndpointTransport::new(&channel, given);
        Self {
            addr,
            channel,
            transport,
            tier: AtomicU8::new(Tier::Fallback as u8),
            epoch: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            last_progress_ns: AtomicU64::new(0),
            created: Instant::now(),
            calls: AtomicU64::new(0),
            calls_at_last_probe: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            hedges: AtomicU64::new(0),
            hedges_won: AtomicU64::new(0),
            call_failures: AtomicU32::new(0),
            ewma: PeakEwma::new(default_rtt, decay, Instant::now()),
            cost_model: P2cCost::default(),
            window: Mutex::new(OutcomeWindow::new(window, Instant::now())),
            record: Mutex::new(Record::default()),
            probe_now: Notify::new(),
            probes_started: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            overloads: AtomicU64::new(0),
            ramp: Ramp::new(None, false),
            metrics: EndpointMetrics::new(addr),
        }
    }

    /// The same endpoint with slow start (`None`: off; see `ramp`), also for
    /// its first admission when `ramp_first`.
    pub fn with_slow_start(mut self, cfg: Option<SlowStartConfig>, ramp_first: bool) -> Self {
        self.ramp = Ramp::new(cfg, ramp_first);
        self
    }

    /// The same endpoint with `model` as its power-of-two-choices cost.
    pub fn with_cost_model(mut self, model: P2cCost) -> Self {
        self.cost_model = model;
        self
    }

    /// Whether it is in the healthy tier now.
    pub fn is_preferred(&self) -> bool {
        Tier::from_u8(self.tier.load(Ordering::Acquire)) == Tier::Preferred
    }

    /// Its slow-start weight while it ramps up (see `ramp`).
    pub fn slow_start_weight(&self, now: Instant) -> Option<f64> {
        self.ramp.weight(now)
    }

    /// The server shed a call (`RESOURCE_EXHAUSTED` with a retry pushback):
    /// counted, and with a pushback period its cost is raised until the period
    /// ends (see `ewma`), and the period is a latency sample: what a call sent
    /// there would have waited. Without that sample the endpoint would look
    /// cheap the moment the period ends (its shed answers took no time) and
    /// draw a burst of calls it sheds again. Not a failure: the endpoint is
    /// not ejected.
    pub fn on_overload(&self, pushback: Pushback, now: Instant) {
        self.note_answered();
        self.overloads.fetch_add(1, Ordering::Relaxed);
        self.metrics.overloaded();
        match pushback {
            Pushback::After(period) => {
                self.ewma.penalize_until(now + period);
                if !period.is_zero() {
                    self.ewma.observe(period, now);
                }
                tracing::debug!(endpoint = %self.addr, ?period, "endpoint shed a call; avoided for its pushback");
            }
            Pushback::DoNotRetry => {
                tracing::debug!(endpoint = %self.addr, "endpoint shed a call and asks not to retry it");
            }
        }
    }

    /// Whether it is within the pushback period of a shed call.
    pub fn is_overloaded(&self, now: Instant) -> bool {
        self.ewma.penalty_left(now).is_some()
    }

    /// Notes that the server answered (once: the flag is then only read).
    fn note_answered(&self) {
        if !self.answered.load(Ordering::Relaxed) {
            self.answered.store(true, Ordering::Relaxed);
        }
    }

    /// A one-line description of an error of a call or probe to this
    /// endpoint, as recorded and reported: a TLS failure in words
    /// (`TLS: ...`), else the error and its causes. A connection that a
    /// server which never answered closed at once gets a likely reason: with
    /// plaintext, that is how a TLS server treats a plaintext client; with TLS,
    /// how a server treats a client certificate it refuses.
    pub fn explain(&self, tls: Option<&ClientTls>, error: &(dyn StdError + 'static)) -> String {
        let text = describe(error);
        if tls::is_tls_text(&text) || self.answered.load(Ordering::Relaxed) {
            return text;
        }
        match tls {
            _ if !tls::closed_at_once(error) => text,
            None => format!("{text} ({})", tls::PLAINTEXT_HINT),
            Some(tls) => tls.closed_after_handshake().to_owned(),
        }
    }

    /// Whether the server, which never answered a call or probe, closed the
    /// connection under this request (see `tls::closed_at_once`).
    pub fn closed_unanswered(&self, error: &(dyn StdError + 'static)) -> bool {
        !self.answered.load(Ordering::Relaxed) && tls::closed_at_once(error)
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn window(&self) -> MutexGuard<'_, OutcomeWindow> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Its attempts and failures within the accrual window ending at `now`.
    pub fn recent(&self, now: Instant) -> Counts {
        self.window().counts(now)
    }

    /// The routable epoch (see the field).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Probes completed so far.
    pub fn probes(&self) -> u64 {
        self.probes.load(Ordering::Acquire)
    }

    /// Probes started so far.
    pub fn probes_started(&self) -> u64 {
        self.probes_started.load(Ordering::Acquire)
    }

    /// A check is starting.
    pub fn begin_probe(&self) {
        self.probes_started.fetch_add(1, Ordering::AcqRel);
    }

    /// A check is complete, its outcome applied everywhere (slowness included).
    pub fn probe_done(&self) {
        self.probes.fetch_add(1, Ordering::AcqRel);
    }

    /// When the current ejection may end, if ejected.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.lock().ejection.until()
    }

    /// Starts an attempt at `now`: counts it and its load until the guard
    /// ends or drops.
    pub fn start(&self, now: Instant) -> InFlight<'_> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        // Marked before the attempt counts, so that no pick sees it in flight
        // with the time of an earlier, idle, stretch (see `unanswered_for`).
        if self.outstanding.load(Ordering::Acquire) == 0 {
            self.mark_progress(now);
        }
        self.outstanding.fetch_add(1, Ordering::AcqRel);
        self.metrics.attempt_started();
        InFlight(self)
    }

    /// An attempt ended at `now` (see [`InFlight`]).
    fn end_attempt(&self, now: Instant) {
        self.mark_progress(now);
        self.outstanding.fetch_sub(1, Ordering::AcqRel);
        self.metrics.attempt_ended();
    }

    /// How long, at least, its oldest attempt in flight has waited for its
    /// answer (`outstanding`: how many are in flight; none, no wait): the time
    /// since its last progress, when an attempt last ended or one started
    /// while none was in flight. The bound holds because every attempt in
    /// flight now started before that progress or was the one that made it:
    /// those in flight when an attempt ends started before it ended, and an
    /// endpoint that went idle is marked again by its next attempt. A replica
    /// that stops answering (frozen, partitioned) thus grows dearer by the
    /// millisecond (see `ewma`), with no bookkeeping per attempt: one
    /// timestamp, written when an attempt ends or starts on an idle endpoint.
    fn unanswered_for(&self, outstanding: usize, now: Instant) -> Duration {
        if outstanding == 0 {
            return Duration::ZERO;
        }
        let since = Duration::from_nanos(self.last_progress_ns.load(Ordering::Acquire));
        now.saturating_duration_since(self.created + since)
    }

    /// Notes progress at `now` (see `unanswered_for`); never moves it back.
    fn mark_progress(&self, now: Instant) {
        let since = now.saturating_duration_since(self.created).as_nanos();
        let since = u64::try_from(since).unwrap_or(u64::MAX);
        self.last_progress_ns.fetch_max(since, Ordering::AcqRel);
    }

    /// A hedge is sent to it (its attempt is counted by [`Endpoint::start`]).
    pub fn on_hedge(&self) {
        self.hedges.fetch_add(1, Ordering::Relaxed);
    }

    /// A call's attempt on it has had no response headers for `waited`, and
    /// is being hedged: its latency is at least that, and its estimate rises
    /// to it if lower. Without it, a replica whose stalled attempts lose their
    /// hedge race (and are cancelled, never observed) would look as fast as
    /// the others and keep its full share of calls, each then waiting out the
    /// hedging delay.
    pub fn on_hedged_over(&self, waited: Duration, now: Instant) {
        self.ewma.raise_to(waited, now);
    }

    /// A hedge sent to it answered its call.
    pub fn on_hedge_won(&self) {
        self.hedges_won.fetch_add(1, Ordering::Relaxed);
    }

    /// After a probe check: an endpoint that took no call since the previous
    /// check and answered this one more quickly than its latency estimate gets
    /// the probe latency as its estimate (a slower answer changes nothing: probe
    /// latencies are noisy, and slowness shows in calls and in the slow tier).
    /// Without it, under light (e.g. sequential) load, power of two choices would
    /// keep avoiding an endpoint whose estimate is high from one slow call long
    /// ago — nothing but the slow decay would bring it back.
    fn refresh_idle_estimate(&self, verdict: Verdict, latency: Duration, now: Instant) {
        let calls = self.calls.load(Ordering::Acquire);
        let previous = self.calls_at_last_probe.swap(calls, Ordering::AcqRel);
        if verdict == Verdict::Serving
            && calls == previous
            && self.outstanding.load(Ordering::Acquire) == 0
        {
            self.ewma.lower_to(latency, now);
        }
    }

    /// An attempt got response headers that do not count against the endpoint.
    pub fn on_success(&self, rtt: Duration, now: Instant) {
        self.note_answered();
        self.metrics.answered();
        self.ewma.observe(rtt, now);
        self.window().record(now, false);
        if self.call_failures.load(Ordering::Relaxed) != 0 {
            self.call_failures.store(0, Ordering::Relaxed);
        }
    }

    /// An attempt failed in a way that counts against the endpoint: counts it
    /// (metrics, last error, failures in a row, the accrual window) and says
    /// whether the endpoint's own record calls for an ejection: at once for a
    /// failure that says it may be down, else after `consecutive_failures` in
    /// a row (see `outlier`). The windowed detectors, which compare it with
    /// the other endpoints, are the caller's (`CallContext::count_failure`).
    pub fn on_failure(
        &self,
        cfg: &OutlierConfig,
        kind: CallFailure,
        error: &str,
        elapsed: Duration,
        now: Instant,
    ) -> Option<EjectionReason> {
        self.window().record(now, true);
        self.failed(cfg, kind, error, elapsed, now)
    }

    /// A call it answered failed after its response headers (a stream that
    /// broke, or ended with a failure code in its trailers): as
    /// [`Endpoint::on_failure`], but the attempt was counted already, as a
    /// success, when its headers came, so the window turns that success into
    /// a failure instead of counting a second attempt.
    pub fn on_stream_failure(
        &self,
        cfg: &OutlierConfig,
        kind: CallFailure,
        error: &str,
        now: Instant,
    ) -> Option<EjectionReason> {
        self.window().record_late_failure(now);
        self.failed(cfg, kind, error, Duration::ZERO, now)
    }

    /// Counts a failure everywhere but in the window (its callers' part)
    /// and judges the endpoint's own record; see [`Endpoint::on_failure`].
    fn failed(
        &self,
        cfg: &OutlierConfig,
        kind: CallFailure,
        error: &str,
        elapsed: Duration,
        now: Instant,
    ) -> Option<EjectionReason> {
        self.metrics.failed(kind);
        self.errors.fetch_add(1, Ordering::Relaxed);
        let in_a_row = self
            .call_failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if kind == CallFailure::Timeout {
            // A timeout is the slowest possible answer.
            self.ewma.observe(elapsed, now);
        }
        self.lock().note_error(labelled(kind.label(), error));
        crate::outlier::reason_at_once(kind).or_else(|| {
            cfg.consecutive_failures
                .filter(|n| in_a_row >= *n)
                .map(|_| EjectionReason::ConsecutiveFailures)
        })
    }

    /// Ejects the endpoint for `reason` (`error`: the failure that decided
    /// it), within the ejection cap (`total`: how many endpoints there are).
    /// Only a routable endpoint is ejected: not one ejected already (a last
    /// resort that failed again), unhealthy or not serving. Returns whether it
    /// was ejected (a change to report).
    pub fn eject(
        &self,
        cfg: &OutlierConfig,
        (cap, total): (&EjectionCap, usize),
        reason: EjectionReason,
        error: &str,
    ) -> bool {
        let mut record = self.lock();
        let before = record.state();
        if !cfg.enabled || !before.is_routable() {
            return false;
        }
        if !cap.try_acquire(total, cfg.max_ejection_percent) {
            tracing::debug!(endpoint = %self.addr, %reason, error, "not ejected: max_ejection_percent reached");
            return false;
        }
        let time = record.ejection.eject(Instant::now(), cfg, reason);
        // Its accrual starts over: it is judged on its calls after the ejection.
        self.call_failures.store(0, Ordering::Relaxed);
        self.window().clear();
        self.metrics.ejected(reason);
        tracing::warn!(
            endpoint = %self.addr,
            %reason,
            error,
            ejection = %humantime::format_duration(time),
            ejections = record.ejection.total(),
            "endpoint ejected after a failed call"
        );
        self.publish(&record, before, "ejected");
        true
    }

    /// Applies a probe result (from a check, or pushed by a watch). Returns
    /// whether the endpoint's state or tier changed.
    pub fn on_probe(
        &self,
        (cfg, cap): (&HealthConfig, &EjectionCap),
        result: Result<ProbeStatus, String>,
        latency: Duration,
        pushed: bool,
    ) -> bool {
        let now = Instant::now();
        let (verdict, outcome) = match result {
            Ok(ProbeStatus::Healthy { detail, .. }) => {
                (Verdict::Serving, ProbeOutcome::Healthy { detail })
            }
            Ok(ProbeStatus::NotServing { detail }) => {
                (Verdict::NotServing, ProbeOutcome::NotServing { detail })
            }
            Err(error) => (Verdict::Failed, ProbeOutcome::Failed { error }),
        };
        if verdict != Verdict::Failed {
            self.note_answered();
        }
        if !pushed {
            self.metrics.probed(verdict, latency);
            self.refresh_idle_estimate(verdict, latency, now);
        }
        let mut record = self.lock();
        if !pushed && verdict == Verdict::Serving {
            record.probe_window.push(latency);
        }
        let before = record.state();
        let before_tier = record.tier();
        match &outcome {
            ProbeOutcome::Failed { error } => record.note_error(labelled("probe", error)),
            ProbeOutcome::NotServing { detail } => {
                record.last_error = Some(format!("not serving: {detail}"));
            }
            ProbeOutcome::Healthy { .. } => {}
        }
        let ejection_over = verdict == Verdict::Serving && record.ejection.expired(now);
        if ejection_over && record.ejection.end(now) {
            cap.release();
            // Readmitted: judged on its calls from now on (not the last-resort
            // calls it took while ejected).
            self.window().clear();
        }
        record.health.observe(verdict, cfg);
        record.last_probe = Some(ProbeRecord {
            outcome,
            latency,
            at: SystemTime::now(),
            pushed,
        });
        // The tier can change without the state: an ejected endpoint becomes,
        // or stops being, a last resort as its probes succeed or fail.
        let changed = record.state() != before || record.tier() != before_tier;
        if changed {
            self.publish(&record, before, if pushed { "watch" } else { "probe" });
        }
        changed
    }

    /// The latency slow-endpoint detection judges the endpoint by: the fastest
    /// of its last successful probe checks, while it is healthy by its probes
    /// and has had enough of them; else `None` (not judged).
    pub fn judged_probe_latency(&self) -> Option<Duration> {
        let record = self.lock();
        if record.health.state() != Active::Healthy {
            return None;
        }
        record.probe_window.fastest()
    }

    /// Marks it slow or not (from the membership owner's reassessment), given
    /// its probe latency and the other endpoints' median when it is judged
    /// (`None`: not slow). On a change, republishes its tier, logs the change
    /// and returns `true`.
    pub fn judge_slow(&self, cfg: &SlowConfig, judged: Option<(Duration, Duration)>) -> bool {
        let mut record = self.lock();
        let slow = judged.is_some_and(|(latency, median)| {
            crate::slow::is_slow(latency, median, record.slow, cfg)
        });
        if record.slow == slow {
            return false;
        }
        record.slow = slow;
        if slow {
            self.metrics.marked_slow();
        }
        self.store_tier(record.tier());
        let healthy = record.state() == EndpointState::Healthy;
        drop(record);
        let factor = cfg.factor;
        match judged {
            Some((latency, median)) if slow => tracing::warn!(
                endpoint = %self.addr,
                probe_latency = ?latency,
                others_median = ?median,
                factor,
                healthy,
                "endpoint is slow: its probes answer over `factor` times more slowly than the \
                 others'; it takes calls only while no other endpoint is healthy"
            ),
            Some((latency, median)) => tracing::info!(
                endpoint = %self.addr,
                probe_latency = ?latency,
                others_median = ?median,
                "endpoint is no longer slow"
            ),
            None => tracing::debug!(
                endpoint = %self.addr,
                "endpoint no longer marked slow: not judged now (not healthy, too few probes, \
                 or no other endpoint to compare with)"
            ),
        }
        true
    }

    /// Stores the tier the record implies and logs a change of state (from
    /// `before`) or of tier.
    fn publish(&self, record: &Record, before: EndpointState, cause: &str) {
        let state = record.state();
        let tier = record.tier();
        self.store_tier(tier);
        self.metrics.state(state);
        let last_resort = tier == Tier::LastResort;
        let error = record.last_error.as_deref().unwrap_or("");
        if state == before {
            tracing::info!(endpoint = %self.addr, %state, last_resort, cause, "ejected endpoint's last-resort status changed");
        } else if state.is_routable() {
            tracing::info!(endpoint = %self.addr, %state, cause, "endpoint state changed");
        } else {
            tracing::warn!(endpoint = %self.addr, %state, last_resort, cause, error, "endpoint state changed");
        }
    }

    /// Stores the tier (under the record's lock, so publishers do not race).
    fn store_tier(&self, tier: Tier) {
        let old = Tier::from_u8(self.tier.swap(tier as u8, Ordering::AcqRel));
        // Back from excluded, or from last resort to normal service: a call
        // that tried it before may try it once more.
        if tier > old && old <= Tier::LastResort {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        if tier == Tier::Preferred && old < Tier::Preferred && self.ramp.joined(Instant::now()) {
            tracing::debug!(endpoint = %self.addr, "slow start begins");
        }
    }

    /// The endpoint was removed from the balancer.
    pub fn retire(&self, cap: &EjectionCap) {
        let mut record = self.lock();
        if record.ejection.end(Instant::now()) {
            cap.release();
        }
        self.tier.store(Tier::Excluded as u8, Ordering::Release);
    }

    /// `address (state: last error)` for error messages; `address (TLS: ...)`
    /// when the last error is a TLS failure (whatever the state: until the
    /// settings or the server's certificate change, that is all there is to
    /// say).
    pub fn describe(&self) -> String {
        let record = self.lock();
        match &record.last_error {
            Some(error) if tls::is_tls_text(error) => format!("{} ({error})", self.addr),
            Some(error) => format!("{} ({}: {error})", self.addr, record.state()),
            None => format!("{} ({})", self.addr, record.state()),
        }
    }

    /// A point-in-time view.
    pub fn snapshot(&self) -> EndpointSnapshot {
        let now = Instant::now();
        let recent = self.recent(now);
        let record = self.lock();
        EndpointSnapshot {
            address: self.addr,
            state: record.state(),
            slow: record.slow && record.state() == EndpointState::Healthy,
            last_probe: record.last_probe.clone(),
            latency_estimate: Duration::from_secs_f64(self.ewma.estimate(now) / 1e9),
            outstanding: self.outstanding.load(Ordering::Acquire),
            consecutive_failures: record.health.consecutive_failures(),
            consecutive_call_failures: self.call_failures.load(Ordering::Relaxed),
            ejections: record.ejection.total(),
            ejection_reason: record.ejection.reason(),
            ejected_for: record
                .ejection
                .until()
                .map(|until| until.saturating_duration_since(now)),
            calls: self.calls.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            recent_attempts: recent.attempts,
            recent_failures: recent.failures,
            hedges: self.hedges.load(Ordering::Relaxed),
            hedges_won: self.hedges_won.load(Ordering::Relaxed),
            last_error: record.last_error.clone(),
            overloads: self.overloads.load(Ordering::Relaxed),
            overloaded_for: self.ewma.penalty_left(now),
            slow_start_weight: self.slow_start_weight(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthConfig, OutlierConfig};

    fn probed(record: &mut Record, verdict: Verdict) {
        let outcome = match verdict {
            Verdict::Serving => ProbeOutcome::Healthy {
                detail: String::new(),
            },
            Verdict::NotServing => ProbeOutcome::NotServing {
                detail: String::new(),
            },
            Verdict::Failed => ProbeOutcome::Failed {
                error: String::new(),
            },
        };
        record.health.observe(verdict, &HealthConfig::default());
        record.last_probe = Some(ProbeRecord {
            outcome,
            latency: Duration::ZERO,
            at: SystemTime::now(),
            pushed: false,
        });
    }

    #[tokio::test(start_paused = true)]
    async fn an_ejected_endpoint_is_a_last_resort_while_its_last_probe_succeeds() {
        let mut record = Record::default();
        assert_eq!(record.tier(), Tier::Fallback, "not probed yet");
        probed(&mut record, Verdict::Serving);
        assert_eq!(record.tier(), Tier::Preferred);

        record.ejection.eject(
            Instant::now(),
            &OutlierConfig::default(),
            EjectionReason::Transport,
        );
        assert_eq!(record.state(), EndpointState::Ejected);
        assert_eq!(record.tier(), Tier::LastResort, "its last probe succeeded");
        // One failed probe (below the unhealthy threshold): not even a last resort.
        probed(&mut record, Verdict::Failed);
        assert_eq!(record.state(), EndpointState::Ejected);
        assert_eq!(record.tier(), Tier::Excluded);
        probed(&mut record, Verdict::Serving);
        assert_eq!(record.tier(), Tier::LastResort);
        // Unhealthy or not serving by its probes: never.
        probed(&mut record, Verdict::NotServing);
        assert_eq!(
            (record.state(), record.tier()),
            (EndpointState::NotServing, Tier::Excluded)
        );
        probed(&mut record, Verdict::Failed);
        probed(&mut record, Verdict::Failed);
        assert_eq!(
            (record.state(), record.tier()),
            (EndpointState::Unhealthy, Tier::Excluded)
        );

        // Ejected before any probe answered: excluded.
        let mut record = Record::default();
        record.ejection.eject(
            Instant::now(),
            &OutlierConfig::default(),
            EjectionReason::Transport,
        );
        assert_eq!(record.tier(), Tier::Excluded);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_healthy_endpoint_is_a_fallback() {
        let mut record = Record::default();
        probed(&mut record, Verdict::Serving);
        record.slow = true;
        assert_eq!(
            (record.state(), record.tier()),
            (EndpointState::Healthy, Tier::Fallback)
        );
        // Slowness never lifts an endpoint: ejected or unhealthy ones keep
        // their tier.
        record.ejection.eject(
            Instant::now(),
            &OutlierConfig::default(),
            EjectionReason::Transport,
        );
        assert_eq!(record.tier(), Tier::LastResort);
        let mut record = Record {
            slow: true,
            ..Record::default()
        };
        probed(&mut record, Verdict::Failed);
        probed(&mut record, Verdict::Failed);
        assert_eq!(
            (record.state(), record.tier()),
            (EndpointState::Unhealthy, Tier::Excluded)
        );
    }
}
