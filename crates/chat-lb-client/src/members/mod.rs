//! Membership: which endpoints the balancer has, and their background tasks.
//!
//! One owner, [`Membership`], holds the [`Registry`] of sources and the
//! endpoints they add up to. Every change reaches it as an [`Update`]: the
//! resolver, the discovery streams and the probers send theirs over a channel
//! to the owner task ([`run`]); the balancer's own `add_endpoint` and
//! `remove_endpoint` apply theirs in place, so that their effect is visible as
//! soon as they return. After each change the owner *reconciles*: a new address
//! gets an endpoint and a prober task, a vanished one is retired and its prober
//! stopped. It then publishes the result through a `tokio::sync::watch`
//! channel ([`Members`]): calls read the current list with `borrow()` and
//! wait for a change with `changed()`.
//!
//! The owner also reacts to probes: after every probe check (and every state
//! change a pushed update causes) it reassesses which endpoints are slow (see
//! `slow`), then counts the check as complete (so `wait_for_probe_round` sees
//! the outcome), then wakes whoever waits. Endpoints never reach into this
//! state: what they change is reported as an update.
//!
//! Every task (the owner, probers, resolver, discovery streams) stops when the
//! balancer's cancellation token is cancelled: when the last clone of the
//! balancer drops.

mod registry;

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use tokio::{
    runtime::Handle,
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use crate::{
    address::Target,
    config::Config,
    connect::endpoint_channel,
    endpoint::Endpoint,
    health::{HealthProbe, prober},
    outlier::EjectionCap,
    picker::Policy,
    resolve, slow,
    transport::MakeTransport,
    update::{Update, Updates},
};
pub(crate) use registry::Registry;

/// The endpoint list as calls see it.
pub(crate) type EndpointList = Arc<[Arc<Endpoint>]>;

/// The membership as published to calls and the balancer's handle.
#[derive(Debug, Clone)]
pub(crate) struct Members {
    /// The endpoints, in configuration order.
    pub endpoints: EndpointList,
    /// The configured host names without an address, each with why.
    pub unresolved: Arc<[(Target, String)]>,
    /// Whether some source has not produced its first result yet.
    pub unsettled: bool,
}

/// What the owner needs to create endpoints and run their tasks.
pub(crate) struct Env {
    pub cfg: Arc<Config>,
    pub probe: Arc<dyn HealthProbe>,
    pub ejections: Arc<EjectionCap>,
    pub runtime: Handle,
    /// Cancelled when the last balancer clone drops.
    pub cancel: CancellationToken,
    pub updates: Updates,
    /// Replaces each endpoint's channel for its calls (tests).
    pub transport: Option<MakeTransport>,
}

#[derive(Debug)]
struct Member {
    endpoint: Arc<Endpoint>,
    prober: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    registry: Registry,
    members: Vec<Member>,
    resolver: Option<watch::Sender<Arc<[Target]>>>,
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

/// The single owner of the member registry.
pub(crate) struct Membership {
    env: Env,
    state: Mutex<State>,
    members: watch::Sender<Members>,
    /// Counts completed probe checks (after their slow reassessment).
    probed: watch::Sender<u64>,
    next_stream: AtomicU64,
    slow_scratch: Mutex<SlowScratch>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let members = self.members.borrow();
        let addrs: Vec<SocketAddr> = members.endpoints.iter().map(|e| e.addr).collect();
        f.debug_struct("Membership")
            .field("endpoints", &addrs)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Membership {
    /// An owner with no endpoints yet; updates sent to `env.updates` reach it
    /// through [`run`].
    pub fn new(env: Env) -> Self {
        let (members, _) = watch::channel(Members {
            endpoints: Arc::from(Vec::new()),
            unresolved: Arc::from(Vec::new()),
            unsettled: false,
        });
        Self {
            env,
            state: Mutex::new(State::default()),
            members,
            probed: watch::channel(0).0,
            next_stream: AtomicU64::new(0),
            slow_scratch: Mutex::new(SlowScratch::default()),
        }
    }

    /// A receiver of the published membership.
    pub fn subscribe(&self) -> watch::Receiver<Members> {
        self.members.subscribe()
    }

    /// A receiver of the count of completed probe checks.
    pub fn subscribe_probed(&self) -> watch::Receiver<u64> {
        self.probed.subscribe()
    }

    /// A fresh id for a discovery stream.
    pub fn stream_id(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a configured address is present.
    pub fn has_target(&self, target: &Target) -> bool {
        lock(&self.state).registry.has_target(target)
    }

    /// Runs a background task until the balancer is dropped.
    pub fn spawn(&self, task: BoxFuture<'static, ()>) {
        let cancel = self.env.cancel.clone();
        self.env
            .runtime
            .spawn(cancel.run_until_cancelled_owned(task));
    }

    /// Applies one update and publishes what it changed.
    pub fn apply(&self, update: Update) {
        if self.env.cancel.is_cancelled() {
            return;
        }
        match update {
            Update::Probed {
                endpoint,
                check,
                changed,
            } => self.probed(&endpoint, check, changed),
            Update::StateChanged => self.members.send_modify(|_| {}),
            update => self.change_sources(update),
        }
    }

    fn change_sources(&self, update: Update) {
        let mut state = lock(&self.state);
        let applied = state.registry.apply(update);
        if applied.names {
            self.follow_names(&mut state);
        }
        let reconciled = applied.addresses && self.reconcile(&mut state);
        if reconciled || applied.visible {
            let endpoints: EndpointList =
                state.members.iter().map(|m| m.endpoint.clone()).collect();
            let unresolved = Arc::from(state.registry.unresolved());
            let unsettled = state.registry.unsettled();
            self.members.send_modify(|m| {
                m.endpoints = endpoints;
                m.unresolved = unresolved;
                m.unsettled = unsettled;
            });
        }
    }

    /// Hands the host names to the resolver, starting it for the first one.
    fn follow_names(&self, state: &mut State) {
        let names: Arc<[Target]> = Arc::from(state.registry.names());
        match &state.resolver {
            Some(resolver) => {
                resolver.send_replace(names);
            }
            None if names.is_empty() => {}
            None => {
                let (tx, rx) = watch::channel(names);
                let task = resolve::run(rx, self.env.cfg.clone(), self.env.updates.clone());
                self.spawn(Box::pin(task));
                state.resolver = Some(tx);
            }
        }
    }

    /// Makes the endpoints those the registry wants; returns whether they
    /// changed.
    fn reconcile(&self, state: &mut State) -> bool {
        let wanted = state.registry.wanted();
        let unchanged = wanted.len() == state.members.len()
            && state
                .members
                .iter()
                .zip(&wanted)
                .all(|(m, (a, _))| m.endpoint.addr == *a);
        if unchanged {
            return false;
        }
        let mut members = Vec::with_capacity(wanted.len());
        let mut old = std::mem::take(&mut state.members);
        // A new endpoint joining a balancer that serves already ramps up.
        let serving = old.iter().any(|m| m.endpoint.is_preferred());
        for (addr, host_name) in wanted {
            if let Some(i) = old.iter().position(|m| m.endpoint.addr == addr) {
                members.push(old.swap_remove(i));
            } else if let Some(member) = self.admit(addr, host_name, serving) {
                members.push(member);
            }
        }
        for gone in old {
            gone.prober.cancel();
            gone.endpoint.retire(&self.env.ejections);
            tracing::info!(endpoint = %gone.endpoint.addr, "endpoint removed");
        }
        state.members = members;
        true
    }

    /// A new endpoint and its prober; `serving`: whether the balancer has a
    /// healthy endpoint already (then the new one's slow start ramps its first
    /// admission too, see `ramp`).
    fn admit(&self, addr: SocketAddr, host_name: Option<&str>, serving: bool) -> Option<Member> {
        let env = &self.env;
        let channel = match endpoint_channel(addr, host_name, &env.cfg.connect, &env.runtime) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::error!(endpoint = %addr, %error, "cannot create a channel; endpoint skipped");
                return None;
            }
        };
        let transport = env.transport.as_ref().map(|make| make(addr));
        // Slow start ramps shares; pick-first has none to ramp.
        let slow_start = (env.cfg.policy != Policy::PickFirst).then_some(env.cfg.slow_start);
        let endpoint = Arc::new(
            Endpoint::new(
                addr,
                channel,
                transport,
                env.cfg.default_rtt,
                env.cfg.ewma_decay,
                env.cfg.outlier.window,
            )
            .with_slow_start(slow_start, serving)
            .with_cost_model(env.cfg.p2c_cost),
        );
        let prober = env.cancel.child_token();
        let task = prober::run(
            endpoint.clone(),
            env.probe.clone(),
            env.cfg.clone(),
            env.ejections.clone(),
            env.updates.clone(),
        );
        env.runtime
            .spawn(prober.clone().run_until_cancelled_owned(task));
        tracing::info!(endpoint = %addr, "endpoint added");
        Some(Member { endpoint, prober })
    }

    /// A probe ended: reassess slowness, count a completed check, then wake
    /// whoever waits, in that order (so a waiter sees the outcome).
    fn probed(&self, endpoint: &Endpoint, check: bool, changed: bool) {
        let slow_changed = (check || changed) && self.reassess_slow();
        if check {
            endpoint.probe_done();
        }
        if changed || slow_changed {
            self.members.send_modify(|_| {});
        }
        if check {
            self.probed.send_modify(|n| *n += 1);
        }
    }

    /// Marks as slow each endpoint healthy by its probes whose probe latency is
    /// over `slow_endpoint_factor` times the median of the others' (see
    /// `slow`), and clears the others; returns whether any mark changed. Runs
    /// in the owner task, never on the call path: one pass over the list
    /// taking each endpoint's record lock briefly, a sort of the latencies,
    /// and no allocation once the scratch buffers have grown.
    fn reassess_slow(&self) -> bool {
        let cfg = &self.env.cfg.slow;
        if !cfg.enabled {
            return false;
        }
        let list = self.members.borrow().endpoints.clone();
        let mut scratch = lock(&self.slow_scratch);
        let SlowScratch { latencies, sorted } = &mut *scratch;
        latencies.clear();
        latencies.extend(list.iter().map(|e| e.judged_probe_latency()));
        sorted.clear();
        sorted.extend(latencies.iter().flatten());
        sorted.sort_unstable();
        let mut changed = false;
        for (endpoint, own) in list.iter().zip(latencies.iter()) {
            let judged = own.and_then(|own| Some((own, slow::median_of_others(own, sorted)?)));
            changed |= endpoint.judge_slow(cfg, judged);
        }
        changed
    }
}

/// The owner task: applies the updates the other tasks send, until the
/// balancer is dropped (the caller runs it under the cancellation token).
pub(crate) async fn run(membership: Arc<Membership>, mut updates: mpsc::UnboundedReceiver<Update>) {
    while let Some(update) = updates.recv().await {
        membership.apply(update);
    }
}
