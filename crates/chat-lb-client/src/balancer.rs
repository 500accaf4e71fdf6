//! The [`Balancer`] handle: what an application holds and clones.

use std::{fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio::{runtime::Handle, sync::mpsc, time::timeout_at};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{
    address::{IntoTarget, Target},
    builder::Builder,
    config::Config,
    context::CallContext,
    error::{AddressError, BuildError},
    health::HealthProbe,
    members::{self, Env, Membership},
    outlier::EjectionCap,
    snapshot::EndpointSnapshot,
    transport::MakeTransport,
    update::Update,
};

/// A client-side gRPC load balancer, usable wherever a `tonic::transport::Channel`
/// is: it is a cheap-to-clone
/// `tower::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>>`
/// whose error type is [`crate::BoxError`].
///
/// Calls go to healthy endpoints (or, while there are none, to endpoints not
/// probed yet, then to ejected endpoints whose last probe succeeded; see the
/// crate guide for the details). When no endpoint can take a call, it is answered with a trailers-only gRPC
/// response, which tonic clients see as `Err(Status)` with code `UNAVAILABLE`
/// and a message naming every endpoint with its state and last error. A
/// deadline (from `tonic::Request::set_timeout` or [`Builder::timeout`]) that
/// passes is answered `DEADLINE_EXCEEDED`. A transport error that ends a call
/// (no retry allowed or left) is answered `UNAVAILABLE` too (gRPC's code for a
/// broken connection; tonic's `Channel` would report most of them as
/// `UNKNOWN`), its message naming the endpoint and the error. Only an error of
/// the request body itself (the caller's stream failed) is passed through as
/// the service error.
///
/// Background tasks (one prober per endpoint, the resolver, discovery streams,
/// the membership owner, see `members`) run on the runtime `build` was called
/// in and stop when the last clone of the balancer is dropped. Calls in flight
/// then still complete.
#[derive(Clone)]
pub struct Balancer {
    pub(crate) context: Arc<CallContext>,
    pub(crate) membership: Arc<Membership>,
    /// Cancels the background tasks when the last clone drops.
    _tasks: Arc<DropGuard>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("membership", &self.membership)
            .field("policy", &self.context.cfg.policy)
            .finish()
    }
}

impl Balancer {
    /// A builder with the default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    /// A balancer over a comma-separated address list with the default
    /// settings (`Balancer::builder().addresses(list).build()`).
    pub fn from_addresses(list: &str) -> Result<Self, BuildError> {
        Builder::new().addresses(list).build()
    }

    /// A balancer without endpoints yet, its membership owner running on
    /// `runtime`.
    pub(crate) fn start(
        cfg: Config,
        probe: Arc<dyn HealthProbe>,
        runtime: Handle,
        transport: Option<MakeTransport>,
    ) -> Self {
        let cfg = Arc::new(cfg);
        let cancel = CancellationToken::new();
        let ejections = Arc::new(EjectionCap::default());
        let (updates, updates_rx) = mpsc::unbounded_channel();
        let membership = Arc::new(Membership::new(Env {
            cfg: cfg.clone(),
            probe,
            ejections: ejections.clone(),
            runtime,
            cancel: cancel.clone(),
            updates: updates.clone(),
            transport,
        }));
        membership.spawn(Box::pin(members::run(membership.clone(), updates_rx)));
        let context = CallContext::new(cfg, membership.subscribe(), updates, ejections);
        Self {
            context: Arc::new(context),
            membership,
            _tasks: Arc::new(cancel.drop_guard()),
        }
    }

    /// Adds an endpoint address at run time (`"host:port"`, `"ip:port"`, a
    /// `SocketAddr` or a [`crate::Target`]). A host name is resolved in the
    /// background and re-resolved every `resolve_interval`. Adding an address
    /// that is already configured does nothing.
    pub fn add_endpoint(&self, address: impl IntoTarget) -> Result<(), AddressError> {
        let target = address.into_target()?;
        self.membership.apply(Update::AddTarget(target));
        Ok(())
    }

    /// Removes an address added by the builder or by [`Balancer::add_endpoint`]
    /// (for a host name: every address it resolved to). Returns whether it was
    /// configured. Calls in flight to it complete; new calls go elsewhere.
    /// Endpoints that came from a discovery stream are removed by that stream.
    pub fn remove_endpoint(&self, address: impl IntoTarget) -> Result<bool, AddressError> {
        let target = address.into_target()?;
        let configured = self.membership.has_target(&target);
        self.membership.apply(Update::RemoveTarget(target));
        Ok(configured)
    }

    /// The socket addresses of the current endpoints, in configuration order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.context.endpoints().iter().map(|e| e.addr).collect()
    }

    /// A point-in-time view of every endpoint, in configuration order.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.context
            .endpoints()
            .iter()
            .map(|e| e.snapshot())
            .collect()
    }

    /// The configured host names that have no address now, in configuration
    /// order, each with why, in words: `cannot resolve: <the resolver's
    /// error>`, `cannot resolve: no answer within 5s`, `resolved to no
    /// address`, or `not resolved yet` while the first resolution is pending
    /// (see `resolve` for when names are resolved).
    ///
    /// Such names have no endpoint, so [`Balancer::snapshot`] does not show
    /// them; a `status` display can list them beside it. A name that resolved
    /// before keeps its addresses when a later resolution fails, and is not
    /// listed.
    ///
    /// ```no_run
    /// # async fn demo() {
    /// let lb = chat_lb_client::Balancer::from_addresses("chat-1.invalid:8500").unwrap();
    /// lb.wait_for_probe_round().await;
    /// for (target, why) in lb.unresolved_names() {
    ///     println!("{target}: {why}"); // chat-1.invalid:8500: cannot resolve: ...
    /// }
    /// # }
    /// ```
    pub fn unresolved_names(&self) -> Vec<(Target, String)> {
        self.context.members.borrow().unresolved.to_vec()
    }

    /// Resolves at the next change of the endpoint set or of any endpoint's
    /// state (the change that happens after this method is called, even if the
    /// future is polled later).
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut members = self.context.members.clone();
        members.mark_unchanged();
        async move {
            if members.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Probes every endpoint now and resolves once each has completed a probe
    /// that started after this call — for a `status` command that wants fresh
    /// data before [`Balancer::snapshot`].
    ///
    /// Waits first for host names and discovery streams still pending (at most
    /// `resolve_timeout`), then at most twice the probe timeout (a probe in
    /// progress, then the requested one). Returns `false` if some endpoint's
    /// probe did not complete in that time (its snapshot then shows older data).
    pub async fn wait_for_probe_round(&self) -> bool {
        let cfg = &self.context.cfg;
        let settle_by = Instant::now() + cfg.resolve_timeout;
        let mut members = self.context.members.clone();
        let _ = timeout_at(settle_by, members.wait_for(|m| !m.unsettled)).await;

        let list = self.context.endpoints();
        let marks: Vec<u64> = list.iter().map(|e| e.probes_started()).collect();
        for endpoint in list.iter() {
            endpoint.probe_now.notify_one();
        }
        let limit = Instant::now() + cfg.health.timeout * 2 + Duration::from_millis(50);
        let mut probed = self.membership.subscribe_probed();
        let done = probed.wait_for(|_| {
            list.iter()
                .zip(&marks)
                .all(|(endpoint, mark)| endpoint.probes() > *mark)
        });
        matches!(timeout_at(limit, done).await, Ok(Ok(_)))
    }
}
