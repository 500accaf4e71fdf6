//! The state every clone of a balancer shares: settings, the endpoint set and
//! where it comes from, and the background tasks.
//!
//! The endpoint set is the union of its *sources*: each configured address (an
//! IP address, or a host name and whatever it last resolved to) and each key of
//! each discovery stream. A change of any source reconciles the set: new
//! addresses get an endpoint and a prober, vanished ones are retired. The
//! current set is published as an immutable `Arc<[Arc<Endpoint>]>` plus a
//! generation number, so calls read it without taking a lock.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, RwLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{runtime::Handle, sync::Notify, task::AbortHandle, time::Instant};

use crate::{
    address::{Host, Target},
    config::Config,
    connect::connect_lazy,
    endpoint::Endpoint,
    health::{HealthProbe, prober},
    outlier::EjectionCap,
    retry::budget::RetryBudget,
    slow,
};

/// The endpoint list as calls see it.
pub(crate) type EndpointList = Arc<[Arc<Endpoint>]>;

/// Where an address of the endpoint set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A configured address (a literal one, or a host name and its resolution).
    Target(Target),
    /// A key of a discovery stream.
    Discovered { stream: u64, key: u64 },
}

#[derive(Debug)]
struct SourceEntry {
    source: Source,
    addrs: Vec<SocketAddr>,
    /// Whether it produced its first result (resolved, or failed to).
    settled: bool,
    /// Why the latest resolution of a host name gave no address (cleared by
    /// the next one that gives some); `None` for other sources.
    error: Option<String>,
}

#[derive(Debug)]
struct Member {
    endpoint: Arc<Endpoint>,
    prober: AbortHandle,
}

#[derive(Debug, Default)]
struct Registry {
    sources: Vec<SourceEntry>,
    members: Vec<Member>,
    /// Resolver and discovery tasks.
    tasks: Vec<AbortHandle>,
    resolver_running: bool,
    closed: bool,
}

/// State shared by all clones of a balancer and its background tasks.
pub(crate) struct Shared {
    pub cfg: Config,
    pub probe: Arc<dyn HealthProbe>,
    runtime: Handle,
    registry: Mutex<Registry>,
    list: RwLock<EndpointList>,
    generation: AtomicU64,
    /// Notified whenever the endpoint set or an endpoint's state changes.
    pub changed: Notify,
    /// Notified whenever a probe completes.
    pub probed: Notify,
    /// Wakes the resolver to resolve new host names now.
    pub resolver_wake: Notify,
    /// Sources that have not produced their first result yet.
    unsettled: AtomicUsize,
    pub round_robin: AtomicUsize,
    pub budget: RetryBudget,
    pub ejections: EjectionCap,
    next_stream_id: AtomicU64,
    /// Serialises slow-endpoint assessments and holds their scratch buffers.
    slow_scratch: Mutex<SlowScratch>,
}

/// Buffers reused by every slow-endpoint assessment, so that one allocates
/// nothing once they have grown to the endpoint count.
#[derive(Debug, Default)]
struct SlowScratch {
    /// Each endpoint's judged probe latency, in list order.
    latencies: Vec<Option<Duration>>,
    /// The judged latencies, ascending.
    sorted: Vec<Duration>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field(
                "endpoints",
                &self.list().iter().map(|e| e.addr).collect::<Vec<_>>(),
            )
            .field("policy", &self.cfg.policy)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(cfg: Config, probe: Arc<dyn HealthProbe>, runtime: Handle) -> Self {
        let budget = RetryBudget::new(
            cfg.retry.budget_ratio,
            cfg.retry.budget_min_per_sec,
            cfg.retry.budget_window,
            Instant::now(),
        );
        Self {
            cfg,
            probe,
            runtime,
            registry: Mutex::new(Registry::default()),
            list: RwLock::new(Arc::from(Vec::new())),
            generation: AtomicU64::new(0),
            changed: Notify::new(),
            probed: Notify::new(),
            resolver_wake: Notify::new(),
            unsettled: AtomicUsize::new(0),
            round_robin: AtomicUsize::new(0),
            budget,
            ejections: EjectionCap::default(),
            next_stream_id: AtomicU64::new(0),
            slow_scratch: Mutex::new(SlowScratch::default()),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current endpoint list.
    pub fn list(&self) -> EndpointList {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The generation of the endpoint list; changes with every new list.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// How many endpoints there are.
    pub fn endpoint_count(&self) -> usize {
        self.list
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether some source has not produced its first result yet.
    pub fn unsettled(&self) -> bool {
        self.unsettled.load(Ordering::Acquire) > 0
    }

    /// A fresh id for a discovery stream.
    pub fn stream_id(&self) -> u64 {
        self.next_stream_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a configured address. Host names are handed to the resolver.
    pub fn add_target(self: &Arc<Self>, target: Target) {
        match target.socket_addr() {
            Some(addr) => self.set_source(Source::Target(target), vec![addr]),
            None => {
                let mut registry = self.registry();
                if registry.closed {
                    return;
                }
                let source = Source::Target(target);
                if !registry.sources.iter().any(|s| s.source == source) {
                    registry.sources.push(SourceEntry {
                        source,
                        addrs: Vec::new(),
                        settled: false,
                        error: None,
                    });
                    self.unsettled.fetch_add(1, Ordering::AcqRel);
                }
                if !registry.resolver_running {
                    registry.resolver_running = true;
                    let task = self.runtime.spawn(crate::resolve::run(self.clone()));
                    registry.tasks.push(task.abort_handle());
                }
                drop(registry);
                self.resolver_wake.notify_one();
            }
        }
    }

    /// Registers a source that will settle later (a discovery stream).
    pub fn expect_source(&self) {
        self.unsettled.fetch_add(1, Ordering::AcqRel);
    }

    /// A source that was expected has produced its first result.
    pub fn settle_expected(&self) {
        let _ = self
            .unsettled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.changed.notify_waiters();
    }

    /// The host-name targets, for the resolver.
    pub fn name_targets(&self) -> Vec<Target> {
        self.registry()
            .sources
            .iter()
            .filter_map(|s| match &s.source {
                Source::Target(t) if t.is_name() => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// Records that resolving a host name gave no address, and why (`cannot
    /// resolve: ...`), keeping its previous addresses; marks its first
    /// resolution attempt as done.
    pub fn resolution_failed(&self, source: &Source, reason: String) {
        let mut registry = self.registry();
        if let Some(entry) = registry.sources.iter_mut().find(|s| &s.source == source) {
            entry.error = Some(reason);
            if !entry.settled {
                entry.settled = true;
                self.unsettled.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(registry);
        self.changed.notify_waiters();
    }

    /// The configured host names that have no address now, in configuration
    /// order, each with why: its latest resolution error, or `not resolved
    /// yet` while its first resolution is pending.
    pub fn unresolved(&self) -> Vec<(Target, String)> {
        self.registry()
            .sources
            .iter()
            .filter_map(|s| match &s.source {
                Source::Target(target) if target.is_name() && s.addrs.is_empty() => Some((
                    target.clone(),
                    s.error
                        .clone()
                        .unwrap_or_else(|| "not resolved yet".to_owned()),
                )),
                _ => None,
            })
            .collect()
    }

    /// Sets the addresses of a source (adding the source if new) and reconciles.
    pub fn set_source(self: &Arc<Self>, source: Source, addrs: Vec<SocketAddr>) {
        self.store_source(source, addrs, false);
    }

    /// Updates the addresses of a source only if it is still registered, so a
    /// host name removed while it was being resolved stays removed.
    pub fn update_source(self: &Arc<Self>, source: Source, addrs: Vec<SocketAddr>) {
        self.store_source(source, addrs, true);
    }

    fn store_source(self: &Arc<Self>, source: Source, addrs: Vec<SocketAddr>, only_known: bool) {
        let mut registry = self.registry();
        if registry.closed {
            return;
        }
        match registry.sources.iter_mut().find(|s| s.source == source) {
            Some(entry) => {
                entry.addrs = addrs;
                entry.error = None;
                if !entry.settled {
                    entry.settled = true;
                    self.unsettled.fetch_sub(1, Ordering::AcqRel);
                }
            }
            None if only_known => return,
            None => registry.sources.push(SourceEntry {
                source,
                addrs,
                settled: true,
                error: None,
            }),
        }
        self.reconcile(&mut registry);
    }

    /// Removes a source and reconciles. Returns whether it existed.
    pub fn remove_source(self: &Arc<Self>, source: &Source) -> bool {
        let mut registry = self.registry();
        let Some(index) = registry.sources.iter().position(|s| &s.source == source) else {
            return false;
        };
        let entry = registry.sources.remove(index);
        if !entry.settled {
            self.unsettled.fetch_sub(1, Ordering::AcqRel);
        }
        self.reconcile(&mut registry);
        true
    }

    /// Registers a background task to stop with the balancer.
    pub fn adopt_task(&self, task: AbortHandle) {
        let mut registry = self.registry();
        if registry.closed {
            task.abort();
        } else {
            registry.tasks.push(task);
        }
    }

    /// Spawns on the balancer's runtime.
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.runtime.spawn(future)
    }

    /// Makes the endpoint set the union of the sources. Each new endpoint's
    /// channel learns the host name its address was resolved from, if any (the
    /// name TLS verifies); an address that two names resolve to keeps the
    /// first source's.
    fn reconcile(self: &Arc<Self>, registry: &mut Registry) {
        let mut wanted: Vec<(SocketAddr, Option<&str>)> = Vec::new();
        for source in &registry.sources {
            let host_name = match &source.source {
                Source::Target(target) => match target.host() {
                    Host::Name(name) => Some(name.as_str()),
                    Host::Ip(_) => None,
                },
                Source::Discovered { .. } => None,
            };
            for addr in &source.addrs {
                if !wanted.iter().any(|(a, _)| a == addr) {
                    wanted.push((*addr, host_name));
                }
            }
        }
        let unchanged = wanted.len() == registry.members.len()
            && registry
                .members
                .iter()
                .zip(&wanted)
                .all(|(m, (a, _))| m.endpoint.addr == *a);
        if unchanged {
            return;
        }

        let mut members = Vec::with_capacity(wanted.len());
        let mut old = std::mem::take(&mut registry.members);
        for (addr, host_name) in wanted {
            if let Some(i) = old.iter().position(|m| m.endpoint.addr == addr) {
                members.push(old.swap_remove(i));
                continue;
            }
            let channel = {
                let _entered = self.runtime.enter();
                connect_lazy(addr, host_name, &self.cfg.connect)
            };
            let channel = match channel {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::error!(endpoint = %addr, %error, "cannot create a channel; endpoint skipped");
                    continue;
                }
            };
            let endpoint = Arc::new(Endpoint::new(
                addr,
                channel,
                self.cfg.default_rtt,
                self.cfg.ewma_decay,
            ));
            let prober = self
                .runtime
                .spawn(prober::run(self.clone(), endpoint.clone()))
                .abort_handle();
            tracing::info!(endpoint = %addr, "endpoint added");
            members.push(Member { endpoint, prober });
        }
        for gone in old {
            gone.prober.abort();
            gone.endpoint.retire(self);
            tracing::info!(endpoint = %gone.endpoint.addr, "endpoint removed");
        }
        let list: EndpointList = members.iter().map(|m| m.endpoint.clone()).collect();
        registry.members = members;
        *self.list.write().unwrap_or_else(PoisonError::into_inner) = list;
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    /// Marks as slow each endpoint healthy by its probes whose probe latency is
    /// over `slow_endpoint_factor` times the median of the others' (see
    /// `slow`), and clears the others. Runs after each probe check, never on
    /// the call path: one pass over the list taking each endpoint's record lock
    /// briefly, a sort of the latencies, and no allocation once the scratch
    /// buffers have grown. Assessments are serialised, so a stale one cannot
    /// overwrite a newer one.
    pub fn reassess_slow(&self) {
        let cfg = &self.cfg.slow;
        if !cfg.enabled {
            return;
        }
        let list = self.list();
        let mut scratch = self
            .slow_scratch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let SlowScratch { latencies, sorted } = &mut *scratch;
        latencies.clear();
        latencies.extend(list.iter().map(|e| e.judged_probe_latency()));
        sorted.clear();
        sorted.extend(latencies.iter().flatten());
        sorted.sort_unstable();
        for (endpoint, own) in list.iter().zip(latencies.iter()) {
            let judged = own.and_then(|own| Some((own, slow::median_of_others(own, sorted)?)));
            endpoint.judge_slow(self, judged);
        }
    }

    /// Stops every background task; called when the last balancer clone drops.
    pub fn shutdown(&self) {
        let mut registry = self.registry();
        registry.closed = true;
        for task in registry.tasks.drain(..) {
            task.abort();
        }
        for member in &registry.members {
            member.prober.abort();
        }
        tracing::debug!("balancer dropped; background tasks stopped");
    }
}
