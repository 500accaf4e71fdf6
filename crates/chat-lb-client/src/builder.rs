//! [`Builder`]: every setting of the balancer, with its default.

use std::{fmt, hash::Hash, net::SocketAddr, sync::Arc, time::Duration};

use futures::{Stream, future::BoxFuture};
use tower::discover::Change;

use crate::{
    Balancer,
    address::{IntoTarget, Target, parse_address_list},
    config::Config,
    error::{BoxError, BuildError},
    health::{HealthProbe, default_probe},
    hedge::HedgeDelay,
    picker::{P2cCost, Policy},
    retry::RetrySafe,
    tls::TlsSettings,
    transport::{self, MakeTransport},
    update::{Update, Updates},
};

/// Starts following a discovery stream, given its id and where to report.
type DiscoverTask = Box<dyn FnOnce(u64, Updates) -> BoxFuture<'static, ()> + Send>;

/// Configures and builds a [`Balancer`].
///
/// Every setting has a default suited to replicas on one LAN.
///
/// ```no_run
/// use chat_lb_client::{Balancer, Policy, RetrySafe};
/// use std::time::Duration;
/// # async fn demo() -> Result<(), chat_lb_client::BuildError> {
/// let lb = Balancer::builder()
///     .addresses("replica-1:8500,replica-2:8500,10.0.0.7:8500")
///     .policy(Policy::PowerOfTwoChoices)
///     .probe_interval(Duration::from_millis(300))
///     .retry_safe(RetrySafe::prefix("/chat.v1.ChatService/"))
///     .timeout(Duration::from_secs(5))
///     .build()?;
/// # let _ = lb; Ok(()) }
/// ```
#[must_use]
pub struct Builder {
    cfg: Config,
    targets: Vec<Target>,
    error: Option<BuildError>,
    probe: Option<Arc<dyn HealthProbe>>,
    discover: Vec<DiscoverTask>,
    /// Replaces each endpoint's channel for its calls (tests).
    transport: Option<MakeTransport>,
    /// The `tls_*` settings (their methods are in `tls.rs`).
    pub(crate) tls: TlsSettings,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("targets", &self.targets)
            .field("policy", &self.cfg.policy)
            .field("health", &self.cfg.health)
            .field("outlier", &self.cfg.outlier)
            .field("slow", &self.cfg.slow)
            .field("retry_safe", &self.cfg.retry.safe)
            .field("hedge", &self.cfg.hedge)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with the default settings and no endpoints.
    pub fn new() -> Self {
        Self {
            cfg: Config::default(),
            targets: Vec::new(),
            error: None,
            probe: None,
            discover: Vec::new(),
            transport: None,
            tls: TlsSettings::default(),
        }
    }

    fn fail(mut self, error: impl Into<BuildError>) -> Self {
        self.error.get_or_insert(error.into());
        self
    }

    // ---- endpoints -------------------------------------------------------

    /// Adds the endpoints of a comma-separated list such as
    /// `"replica-1:8500, replica-2:8500, 10.0.0.3:8500"`. A malformed entry makes
    /// [`Builder::build`] fail with [`crate::AddressError`] naming it.
    pub fn addresses(mut self, list: &str) -> Self {
        match parse_address_list(list) {
            Ok(targets) => {
                self.targets.extend(targets);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Adds one endpoint address.
    pub fn address(mut self, address: impl IntoTarget) -> Self {
        match address.into_target() {
            Ok(target) => {
                self.targets.push(target);
                self
            }
            Err(e) => self.fail(e),
        }
    }

    /// Adds endpoints from a stream of changes (`Change::Insert(key, addr)`,
    /// `Change::Remove(key)`), like `tower::discover::Discover`. May be given
    /// more than once, and combined with addresses.
    pub fn discover<S, K, E>(mut self, stream: S) -> Self
    where
        S: Stream<Item = Result<Change<K, SocketAddr>, E>> + Send + 'static,
        K: Hash + Eq + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        self.discover.push(Box::new(move |id, updates| {
            Box::pin(crate::discover::run(id, updates, stream))
        }));
        self
    }

    /// For tests: each endpoint sends its calls to the service `make` gives
    /// its address instead of a connection to it (probes still get the
    /// endpoint's channel, never connected unless the probe uses it). With
    /// in-memory services and a probe that needs no network, a balancer runs
    /// without sockets, on tokio's paused clock.
    #[doc(hidden)]
    pub fn transport<F, S>(mut self, make: F) -> Self
    where
        F: Fn(SocketAddr) -> S + Send + Sync + 'static,
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send,
    {
        self.transport = Some(transport::from_services(make));
        self
    }

    // ---- choice ------------------------------------------------------------

    /// How calls choose among healthy endpoints. Default:
    /// [`Policy::PowerOfTwoChoices`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.cfg.policy = policy;
        self
    }

    /// How far apart two endpoints' costs must be for power of two choices to
    /// prefer the cheaper one: by more than this factor. Within it the two count
    /// as equal and the call takes either at random, so that noise in the
    /// latency estimates and in-flight counts of equal replicas does not bunch
    /// calls up on whichever looked cheapest last; a replica dearer by more
    /// (slow, stalling, backed up) is still avoided. Higher factors spread calls
    /// over equal replicas more evenly but steer less hard away from a replica
    /// that is only somewhat slower; `1.0` compares strictly (ties still go
    /// either way at random). Default 2. See `picker.rs` and the README's
    /// steady-state benchmark for the measurements behind it.
    pub fn p2c_tolerance(mut self, factor: f64) -> Self {
        self.cfg.p2c_tolerance = factor;
        self
    }

    /// What power of two choices compares. Default: [`P2cCost::Latency`], the
    /// latency estimate alone; [`P2cCost::LatencyTimesOutstanding`] also
    /// weighs the attempts in flight, for replicas that are independent
    /// queues (see [`P2cCost`] for the measurements behind the default).
    pub fn p2c_cost(mut self, cost: P2cCost) -> Self {
        self.cfg.p2c_cost = cost;
        self
    }

    /// The latency assumed for an endpoint before its first call. Default 1ms.
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.cfg.default_rtt = rtt;
        self
    }

    /// The time constant of the peak-EWMA latency estimate. Default 10s.
    pub fn ewma_decay(mut self, decay: Duration) -> Self {
        self.cfg.ewma_decay = decay;
        self
    }

    // ---- active health -----------------------------------------------------

    /// The health probe. Default: `ChatHealthProbe` (`chat.v1` `HealthCheck`)
    /// with the `chat-probe` feature (on by default), else
    /// [`crate::GrpcHealthProbe`], for any server with the standard gRPC
    /// health service.
    pub fn probe(mut self, probe: impl HealthProbe) -> Self {
        self.probe = Some(Arc::new(probe));
        self
    }

    /// Time between probes of an endpoint. Default 500ms.
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.cfg.health.interval = interval;
        self
    }

    /// How long a probe may take before it counts as failed. Default 250ms.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.health.timeout = timeout;
        self
    }

    /// Spread of the probe interval: each wait is `interval * (1 ± jitter)`,
    /// uniformly drawn, so probes of many clients do not align. Default 0.1.
    pub fn probe_jitter(mut self, jitter: f64) -> Self {
        self.cfg.health.jitter = jitter;
        self
    }

    /// Failed probes in a row that make an endpoint unhealthy. Default 2.
    pub fn unhealthy_threshold(mut self, probes: u32) -> Self {
        self.cfg.health.unhealthy_threshold = probes;
        self
    }

    /// Successful probes in a row that make an endpoint healthy again.
    /// Default 1.
    pub fn healthy_threshold(mut self, probes: u32) -> Self {
        self.cfg.health.healthy_threshold = probes;
        self
    }

    /// Whether to use the probe's push updates (gRPC health `Watch`) when it
    /// offers them. Default `true`.
    pub fn health_watch(mut self, enabled: bool) -> Self {
        self.cfg.health.watch = enabled;
        self
    }

    // ---- slow endpoints ----------------------------------------------------

    /// Whether healthy endpoints whose probes answer much more slowly than the
    /// others' are demoted to a fallback, used only while no other endpoint is
    /// healthy (see the crate guide, "Health"). Default `true`.
    pub fn slow_endpoint_detection(mut self, enabled: bool) -> Self {
        self.cfg.slow.enabled = enabled;
        self
    }

    /// How many times slower than the median of the other healthy endpoints'
    /// an endpoint's probe latency (the fastest of its last 3 successful probe
    /// checks) must be for it to be slow; it is no longer slow under 2/3 of
    /// this factor. At least 1.5. Default 3.0 (no longer slow under 2x).
    pub fn slow_endpoint_factor(mut self, factor: f64) -> Self {
        self.cfg.slow.factor = factor;
        self
    }

    /// The probe latency at or under which an endpoint is never slow, whatever
    /// the others' (so replicas that all answer in microseconds are not told
    /// apart by noise). Default 10ms: on a busy host a healthy replica's probes can
    /// take a few milliseconds, which must not count as slow.
    pub fn slow_endpoint_min_latency(mut self, latency: Duration) -> Self {
        self.cfg.slow.min_latency = latency;
        self
    }

    // ---- slow start --------------------------------------------------------

    /// Slow start: for this long after an endpoint (re)joins the healthy tier
    /// (new, back from an ejection or from failed probes), its share of calls
    /// ramps up from [`slow_start_min_weight`](Self::slow_start_min_weight) to
    /// full (see [slow start](crate#slow-start)). `None` turns it off; it is
    /// always off under [`Policy::PickFirst`]. Default 10s.
    pub fn slow_start_window(mut self, window: impl Into<Option<Duration>>) -> Self {
        self.cfg.slow_start.window = window.into();
        self
    }

    /// The shape of the slow-start ramp: the weight is
    /// `(elapsed / window) ^ (1 / aggression)`; 1 is linear, above 1 ramps
    /// faster early. Must be finite and above zero. Default 1.
    pub fn slow_start_aggression(mut self, aggression: f64) -> Self {
        self.cfg.slow_start.aggression = aggression;
        self
    }

    /// The weight an endpoint starts its slow start with (its share of calls
    /// relative to a full one). Above 0, at most 1. Default 0.1.
    pub fn slow_start_min_weight(mut self, weight: f64) -> Self {
        self.cfg.slow_start.min_weight = weight;
        self
    }

    // ---- passive health ----------------------------------------------------

    /// Whether outlier detection ejects endpoints after failed calls: at once
    /// on a failure that says the replica may be down, or by failure accrual
    /// (see the crate guide, "Health"). Default `true`.
    pub fn outlier_detection(mut self, enabled: bool) -> Self {
        self.cfg.outlier.enabled = enabled;
        self
    }

    /// Ejection time of a first offence; the n-th in a row lasts n times as
    /// long. Default 1s.
    pub fn base_ejection_time(mut self, time: Duration) -> Self {
        self.cfg.outlier.base_ejection_time = time;
        self
    }

    /// Longest ejection time. Default 30s.
    pub fn max_ejection_time(mut self, time: Duration) -> Self {
        self.cfg.outlier.max_ejection_time = time;
        self
    }

    /// Most endpoints, in percent, ejected at once (at least one always may
    /// be). Default 50.
    pub fn max_ejection_percent(mut self, percent: u8) -> Self {
        self.cfg.outlier.max_ejection_percent = percent;
        self
    }

    /// The gRPC status codes whose answers count as the endpoint's failure:
    /// in outlier detection, and for retrying retry-safe calls elsewhere.
    /// `UNAVAILABLE` ejects at once; the others accrue. Only codes that say
    /// the server failed may be given: `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `UNIMPLEMENTED`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS` (any other is a
    /// build error: application outcomes such as `NOT_FOUND` never count).
    /// Default `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`. Attempts that
    /// get no response headers within the per-try timeout always count.
    pub fn failure_codes(mut self, codes: impl IntoIterator<Item = tonic::Code>) -> Self {
        self.cfg.outlier.failure_codes = crate::classify::FailureCodes::new(codes);
        self
    }

    /// Failed attempts in a row that eject an endpoint (failure accrual);
    /// `None` turns the rule off. Default 5.
    pub fn consecutive_failures(mut self, failures: impl Into<Option<u32>>) -> Self {
        self.cfg.outlier.consecutive_failures = failures.into();
        self
    }

    /// The sliding window the success-rate and failure-percentage ejections
    /// count each endpoint's attempts over, from 1s to 10m. Default 10s.
    pub fn accrual_window(mut self, window: Duration) -> Self {
        self.cfg.outlier.window = window;
        self
    }

    /// gRPC A50's success-rate ejection: an endpoint whose success rate over
    /// the accrual window is under `mean - stdev_factor * stdev` of the
    /// endpoints' rates is ejected (counting only endpoints with the request
    /// volume, when there are at least the minimum number of them).
    /// Default `true`.
    pub fn success_rate_ejection(mut self, enabled: bool) -> Self {
        self.cfg.outlier.success_rate.enabled = enabled;
        self
    }

    /// The success-rate ejection's factor of the standard deviation, above 0.
    /// Default 1.9 (with it, at least 6 endpoints are needed for any ejection).
    pub fn success_rate_stdev_factor(mut self, factor: f64) -> Self {
        self.cfg.outlier.success_rate.stdev_factor = factor;
        self
    }

    /// Endpoints with the request volume needed for the success-rate
    /// ejection to judge any. Default 5.
    pub fn success_rate_minimum_hosts(mut self, endpoints: u32) -> Self {
        self.cfg.outlier.success_rate.minimum_hosts = endpoints;
        self
    }

    /// Attempts within the accrual window an endpoint needs to count in the
    /// success-rate ejection. Default 100.
    pub fn success_rate_request_volume(mut self, attempts: u32) -> Self {
        self.cfg.outlier.success_rate.request_volume = attempts;
        self
    }

    /// gRPC A50's failure-percentage ejection: an endpoint whose share of
    /// failed attempts over the accrual window is over the threshold is
    /// ejected (when enough endpoints have the request volume). Default `true`.
    pub fn failure_percentage_ejection(mut self, enabled: bool) -> Self {
        self.cfg.outlier.failure_percentage.enabled = enabled;
        self
    }

    /// The failure-percentage ejection's threshold, in percent (0 to 100).
    /// Default 3 (A50's 85 would catch only replicas that fail nearly every
    /// call, which are ejected at once anyway).
    pub fn failure_percentage_threshold(mut self, percent: u8) -> Self {
        self.cfg.outlier.failure_percentage.threshold = percent;
        self
    }

    /// Endpoints with the request volume needed for the failure-percentage
    /// ejection to judge any. Default 3.
    pub fn failure_percentage_minimum_hosts(mut self, endpoints: u32) -> Self {
        self.cfg.outlier.failure_percentage.minimum_hosts = endpoints;
        self
    }

    /// Attempts within the accrual window an endpoint needs to count in the
    /// failure-percentage ejection. Default 50.
    pub fn failure_percentage_request_volume(mut self, attempts: u32) -> Self {
        self.cfg.outlier.failure_percentage.request_volume = attempts;
        self
    }

    /// Failed attempts within the accrual window an endpoint needs, beside a
    /// share over the threshold, to be ejected by the failure-percentage
    /// ejection. Default 5 (as many as `consecutive_failures` needs in a
    /// row): two unlucky failures among the request volume's 50 attempts are
    /// over 3%, but no evidence of a failing replica.
    pub fn failure_percentage_minimum_failures(mut self, failures: u32) -> Self {
        self.cfg.outlier.failure_percentage.minimum_failures = failures;
        self
    }

    // ---- retries and deadlines -----------------------------------------------

    /// Which calls may be retried after they may have reached a server (a
    /// failure code such as `UNAVAILABLE` or `INTERNAL`, see
    /// [`Builder::failure_codes`]; a transport error; a per-try timeout). Default
    /// [`RetrySafe::None`]; a [`crate::SafeToRetry`] request extension overrides
    /// it per call. Calls that never reached a server are always retried.
    pub fn retry_safe(mut self, safe: RetrySafe) -> Self {
        self.cfg.retry.safe = safe;
        self
    }

    /// Attempts of a retry-safe call that failed after it may have reached a
    /// server, the first included (attempts that never reached a server do
    /// not count). Default 3.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.cfg.retry.max_attempts = attempts;
        self
    }

    /// How long a retry-safe attempt may wait for response headers before a
    /// retry starts on another endpoint (if a retry is allowed; the slow
    /// attempt goes on beside it, see [how a call flows](crate#how-a-call-flows)).
    /// `None` turns it off. Default 2s.
    pub fn per_try_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.cfg.retry.per_try_timeout = timeout.into();
        self
    }

    /// The retry budget: retries allowed per call (`ratio`, 0 to 1000; up to 1
    /// it allows one retry per `1 / ratio` calls, rounded down) plus a floor
    /// of retries per second. Default 0.2 and 10/s. Counted by tower's
    /// `TpsBudget` (see `retry/budget.rs`).
    pub fn retry_budget(mut self, ratio: f64, min_per_sec: u32) -> Self {
        self.cfg.retry.budget_ratio = ratio;
        self.cfg.retry.budget_min_per_sec = min_per_sec;
        self
    }

    /// The window the retry budget counts calls and retries over, from 1s to
    /// 60s. Default 10s.
    pub fn retry_budget_window(mut self, window: Duration) -> Self {
        self.cfg.retry.budget_window = window;
        self
    }

    /// The backoff of a retry that must wait after the server shed the call
    /// (no other endpoint can take it now): the n-th waits
    /// `min(base * 2^(n-1), max)` scaled by a random 0.5..1, and at least the
    /// server's pushback, within the call's deadline. Default 25ms, 1s.
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.cfg.retry.backoff_base = base;
        self.cfg.retry.backoff_max = max;
        self
    }

    /// Most request-body bytes kept to replay a call on retry; a call whose
    /// body outgrows it is no longer retried. Default 1 MiB.
    pub fn max_replay_bytes(mut self, bytes: usize) -> Self {
        self.cfg.retry.max_replay_bytes = bytes;
        self
    }

    // ---- hedging ----------------------------------------------------------------

    /// Hedges calls to these methods, given as full paths
    /// (`/package.Service/Method`): when a call has no response headers after
    /// the [hedging delay](Builder::hedge_delay), the balancer sends the same
    /// call to another endpoint (and again after each further delay, within
    /// `max_attempts` and the [hedge budget](Builder::hedge_budget)); the first
    /// attempt to get response headers answers the call and the others are
    /// cancelled. Unary and server-streaming calls alike: headers decide.
    ///
    /// Only retry-safe methods (see [`Builder::retry_safe`]) can be hedged:
    /// [`Builder::build`] fails with [`crate::ConfigError::Hedge`] naming any
    /// other, or anything that is not a method path. A call whose
    /// [`crate::SafeToRetry`] extension says `false` is not hedged. Adds to
    /// the methods given before. Default: none.
    pub fn hedge_methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cfg
            .hedge
            .methods
            .extend(methods.into_iter().map(Into::into));
        self
    }

    /// How long a hedged call waits for response headers before each hedge:
    /// fixed, or a percentile of the method's recent latency through this
    /// balancer (a method is not hedged until 32 of its calls have answered).
    /// Default [`HedgeDelay::Percentile`]`(95.0)`.
    pub fn hedge_delay(mut self, delay: HedgeDelay) -> Self {
        self.cfg.hedge.delay = delay;
        self
    }

    /// The floor of an adaptive hedging delay
    /// ([`HedgeDelay::Percentile`]; a fixed delay is taken as given): a
    /// hedged call waits at least this long before a hedge, however fast the
    /// method's recent calls. Default 2ms: under it, what delays a call is
    /// ordinary jitter that a hedge cannot cut, and hedging it only adds load
    /// (see the crate docs, Hedging). `Duration::ZERO` turns it off.
    pub fn hedge_min_delay(mut self, min_delay: Duration) -> Self {
        self.cfg.hedge.min_delay = min_delay;
        self
    }

    /// The hedge budget: hedges allowed per hedged call (`ratio`, counted like
    /// the [retry budget](Builder::retry_budget)'s) plus a floor per second,
    /// over the retry budget's window. Each hedge also draws on the retry
    /// budget, so hedges and retries together stay within it. Default 0.1 and
    /// 1/s: at most about 10% more attempts than calls.
    pub fn hedge_budget(mut self, ratio: f64, min_per_sec: u32) -> Self {
        self.cfg.hedge.budget_ratio = ratio;
        self.cfg.hedge.budget_min_per_sec = min_per_sec;
        self
    }

    /// Overall timeout of calls that set none themselves (tonic's
    /// `Request::set_timeout` takes precedence); it is also sent to the server
    /// as `grpc-timeout`. Retries and waiting count against it. Default: none.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.cfg.default_timeout = timeout.into();
        self
    }

    /// When no endpoint can take a call, wait up to this long (and at most
    /// until the call's deadline) for one to become healthy, instead of failing
    /// at once with `UNAVAILABLE`. Default: `None` (fail fast).
    pub fn wait_for_ready(mut self, max_wait: impl Into<Option<Duration>>) -> Self {
        self.cfg.wait_for_ready = max_wait.into();
        self
    }

    // ---- connections and resolution ---------------------------------------------

    /// TCP connect timeout of each endpoint; with TLS, also the timeout of the
    /// TLS handshake. Default 1s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.connect.connect_timeout = timeout;
        self
    }

    /// `TCP_NODELAY` on the connections. Default `true`.
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.cfg.connect.tcp_nodelay = enabled;
        self
    }

    /// HTTP/2 keepalive pings: every `interval` (also while idle), the
    /// connection failing after `timeout` without an answer. `None` turns
    /// them off. Default 10s / 5s.
    pub fn http2_keepalive(
        mut self,
        interval: impl Into<Option<Duration>>,
        timeout: Duration,
    ) -> Self {
        self.cfg.connect.keepalive_interval = interval.into();
        self.cfg.connect.keepalive_timeout = timeout;
        self
    }

    /// Adjusts each endpoint's `tonic::transport::Endpoint` after the
    /// balancer's settings (user agent, window sizes, ...).
    ///
    /// With a hook, every endpoint's calls go over a tonic `Channel` built
    /// from that `Endpoint`, rather than over the balancer's own HTTP/2
    /// connection (which they use otherwise): the channel
    /// passes each call through a buffer and a task of its own, about 7,000
    /// instructions per call more (see the README's own-cost table).
    pub fn configure_endpoint(
        mut self,
        hook: impl Fn(tonic::transport::Endpoint) -> tonic::transport::Endpoint + Send + Sync + 'static,
    ) -> Self {
        self.cfg.connect.hook = Some(Arc::new(hook));
        self
    }

    /// How often host names are resolved again. Default 30s.
    pub fn resolve_interval(mut self, interval: Duration) -> Self {
        self.cfg.resolve_interval = interval;
        self
    }

    /// Timeout of one DNS resolution; also how long calls wait for the first
    /// resolution (or first discovery item) when there is no endpoint yet.
    /// Default 5s.
    pub fn resolve_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.resolve_timeout = timeout;
        self
    }

    // ---- build -------------------------------------------------------------

    /// Builds the balancer and starts its background tasks on the current
    /// tokio runtime (so it must be called from within one). Literal IP
    /// addresses are endpoints at once; host names are resolved in the
    /// background (calls wait for the first resolution, up to
    /// `resolve_timeout`). Connections are made lazily, by the first probe.
    ///
    /// The TLS settings are checked here, and their files read: see
    /// [`crate::TlsConfigError`] for what fails.
    pub fn build(self) -> Result<Balancer, BuildError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut cfg = self.cfg;
        cfg.validate()?;
        cfg.connect.tls =
            crate::tls::resolve(&self.tls, &self.targets, cfg.connect.connect_timeout)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let probe = self.probe.unwrap_or_else(default_probe);
        // Dropping the last clone of the balancer stops every task started here.
        let balancer = Balancer::start(cfg, probe, runtime, self.transport);
        let membership = &balancer.membership;
        for target in self.targets {
            membership.apply(Update::AddTarget(target));
        }
        for task in self.discover {
            membership.apply(Update::ExpectStream);
            membership.spawn(task(
                membership.stream_id(),
                balancer.context.updates.clone(),
            ));
        }
        Ok(balancer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ConfigError;

    fn refused_setting(b: Builder) -> Option<&'static str> {
        match b.cfg.validate() {
            Ok(()) => None,
            Err(ConfigError::OutOfRange { setting, .. }) => Some(setting),
            Err(ConfigError::Hedge { .. }) => Some("hedge_methods"),
        }
    }

    #[test]
    fn p2c_tolerance_defaults_to_2_and_must_be_a_factor_of_at_least_1() {
        assert_eq!(Builder::new().cfg.p2c_tolerance, 2.0);
        for ok in [1.0, 1.5, 100.0] {
            assert_eq!(refused_setting(Builder::new().p2c_tolerance(ok)), None);
        }
        for bad in [0.99, 0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                refused_setting(Builder::new().p2c_tolerance(bad)),
                Some("p2c_tolerance"),
                "{bad}"
            );
        }
    }

    #[test]
    fn p2c_cost_defaults_to_latency_alone() {
        assert_eq!(Builder::new().cfg.p2c_cost, P2cCost::Latency);
        let b = Builder::new().p2c_cost(P2cCost::LatencyTimesOutstanding);
        assert_eq!(b.cfg.p2c_cost, P2cCost::LatencyTimesOutstanding);
    }

    #[test]
    fn failure_accrual_settings_their_defaults_and_limits() {
        use tonic::Code;
        let b = Builder::new();
        let o = &b.cfg.outlier;
        assert_eq!(o.consecutive_failures, Some(5));
        assert_eq!(o.window, Duration::from_secs(10));
        assert!(o.success_rate.enabled && o.failure_percentage.enabled);
        assert_eq!(
            (o.success_rate.stdev_factor, o.success_rate.minimum_hosts),
            (1.9, 5)
        );
        assert_eq!(o.success_rate.request_volume, 100);
        let fp = &o.failure_percentage;
        assert_eq!(
            (fp.threshold, fp.minimum_hosts, fp.request_volume),
            (3, 3, 50)
        );
        assert_eq!(fp.minimum_failures, 5);
        for code in [
            Code::Unavailable,
            Code::Internal,
            Code::Unknown,
            Code::DataLoss,
        ] {
            assert!(o.failure_codes.contains(code), "{code:?}");
        }

        let b = b
            .failure_codes([Code::Internal])
            .consecutive_failures(None)
            .accrual_window(Duration::from_secs(30))
            .success_rate_ejection(false)
            .success_rate_stdev_factor(1.0)
            .success_rate_minimum_hosts(3)
            .success_rate_request_volume(20)
            .failure_percentage_ejection(false)
            .failure_percentage_threshold(50)
            .failure_percentage_minimum_hosts(2)
            .failure_percentage_request_volume(10)
            .failure_percentage_minimum_failures(0);
        let o = &b.cfg.outlier;
        assert!(o.failure_codes.contains(Code::Internal));
        assert!(!o.failure_codes.contains(Code::Unavailable));
        assert_eq!(
            (o.consecutive_failures, o.window),
            (None, Duration::from_secs(30))
        );
        assert!(!o.success_rate.enabled && !o.failure_percentage.enabled);
        assert_eq!(o.success_rate.stdev_factor, 1.0);
        assert_eq!(
            (o.success_rate.minimum_hosts, o.success_rate.request_volume),
            (3, 20)
        );
        let fp = &o.failure_percentage;
        assert_eq!(
            (fp.threshold, fp.minimum_hosts, fp.request_volume),
            (50, 2, 10)
        );
        assert_eq!(fp.minimum_failures, 0);
        assert_eq!(refused_setting(b), None);

        assert_eq!(
            refused_setting(Builder::new().failure_codes([Code::Internal, Code::NotFound])),
            Some("failure_codes")
        );
        assert_eq!(
            refused_setting(Builder::new().consecutive_failures(0)),
            Some("consecutive_failures")
        );
        assert_eq!(
            refused_setting(Builder::new().accrual_window(Duration::from_millis(500))),
            Some("accrual_window")
        );
        assert_eq!(
            refused_setting(Builder::new().success_rate_stdev_factor(f64::NAN)),
            Some("success_rate_stdev_factor")
        );
        assert_eq!(
            refused_setting(Builder::new().failure_percentage_threshold(101)),
            Some("failure_percentage_threshold")
        );
        assert_eq!(
            refused_setting(Builder::new().failure_percentage_request_volume(0)),
            Some("failure_percentage_request_volume")
        );
    }

    #[test]
    fn slow_endpoint_settings_and_their_defaults() {
        let b = Builder::new();
        assert!(b.cfg.slow.enabled);
        assert_eq!(b.cfg.slow.factor, 3.0);
        assert_eq!(b.cfg.slow.clear_factor(), 2.0);
        assert_eq!(b.cfg.slow.min_latency, Duration::from_millis(10));

        let b = b
            .slow_endpoint_detection(false)
            .slow_endpoint_factor(4.5)
            .slow_endpoint_min_latency(Duration::from_millis(5));
        assert!(!b.cfg.slow.enabled);
        assert_eq!(b.cfg.slow.factor, 4.5);
        assert_eq!(b.cfg.slow.clear_factor(), 3.0);
        assert_eq!(b.cfg.slow.min_latency, Duration::from_millis(5));
        assert!(b.cfg.validate().is_ok());

        let b = Builder::new()
            .slow_start_window(Duration::from_secs(3))
            .slow_start_aggression(2.0)
            .slow_start_min_weight(0.05)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(200));
        assert_eq!(b.cfg.slow_start.window, Some(Duration::from_secs(3)));
        assert_eq!(
            (b.cfg.slow_start.aggression, b.cfg.slow_start.min_weight),
            (2.0, 0.05)
        );
        assert_eq!(b.cfg.retry.backoff_base, Duration::from_millis(10));
        assert_eq!(b.cfg.retry.backoff_max, Duration::from_millis(200));
        assert!(b.cfg.validate().is_ok());
        assert_eq!(
            Builder::new().slow_start_window(None).cfg.slow_start.window,
            None
        );

        for factor in [1.2, f64::NAN, f64::INFINITY] {
            let b = Builder::new().slow_endpoint_factor(factor);
            assert!(
                matches!(
                    b.cfg.validate(),
                    Err(ConfigError::OutOfRange {
                        setting: "slow_endpoint_factor",
                        ..
                    })
                ),
                "{factor}"
            );
        }
    }
}
