//! The [`Balancer`] handle: what an application holds and clones.

use std::{fmt, net::SocketAddr, sync::Arc};

use tokio::time::{Instant, timeout_at};

use crate::{
    address::IntoTarget,
    builder::Builder,
    error::{AddressError, BuildError},
    shared::{EndpointList, Shared, Source},
    snapshot::EndpointSnapshot,
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
/// Background tasks (one prober per endpoint, the resolver, discovery streams)
/// run on the runtime `build` was called in and stop when the last clone of
/// the balancer is dropped. Calls in flight then still complete.
#[derive(Clone)]
pub struct Balancer {
    pub(crate) shared: Arc<Shared>,
    _tasks: Arc<TaskGuard>,
    cache: Cache,
}

#[derive(Clone)]
struct Cache {
    generation: u64,
    list: EndpointList,
}

/// Stops the background tasks when the last balancer clone is dropped.
struct TaskGuard(Arc<Shared>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("shared", &self.shared)
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

    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let cache = Cache {
            generation: shared.generation(),
            list: shared.list(),
        };
        Self {
            _tasks: Arc::new(TaskGuard(shared.clone())),
            shared,
            cache,
        }
    }

    /// The endpoint list, from this clone's cache unless it changed.
    pub(crate) fn endpoints(&mut self) -> EndpointList {
        let generation = self.shared.generation();
        if generation != self.cache.generation {
            self.cache = Cache {
                generation,
                list: self.shared.list(),
            };
        }
        self.cache.list.clone()
    }

    /// Adds an endpoint address at run time (`"host:port"`, `"ip:port"`, a
    /// `SocketAddr` or a [`crate::Target`]). A host name is resolved in the
    /// background and re-resolved every `resolve_interval`. Adding an address
    /// that is already configured does nothing.
    pub fn add_endpoint(&self, address: impl IntoTarget) -> Result<(), AddressError> {
        let target = address.into_target()?;
        self.shared.add_target(target);
        Ok(())
    }

    /// Removes an address added by the builder or by [`Balancer::add_endpoint`]
    /// (for a host name: every address it resolved to). Returns whether it was
    /// configured. Calls in flight to it complete; new calls go elsewhere.
    /// Endpoints that came from a discovery stream are removed by that stream.
    pub fn remove_endpoint(&self, address: impl IntoTarget) -> Result<bool, AddressError> {
        let target = address.into_target()?;
        Ok(self.shared.remove_source(&Source::Target(target)))
    }

    /// The socket addresses of the current endpoints, in configuration order.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.shared.list().iter().map(|e| e.addr).collect()
    }

    /// A point-in-time view of every endpoint, in configuration order.
    pub fn snapshot(&self) -> Vec<EndpointSnapshot> {
        self.shared.list().iter().map(|e| e.snapshot()).collect()
    }

    /// Resolves at the next change of the endpoint set or of any endpoint's
    /// state (the change that happens after this method is called, even if the
    /// future is polled later).
    pub fn changed(&self) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.shared.changed.notified()
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
        let shared = &self.shared;
        let settle_by = Instant::now() + shared.cfg.resolve_timeout;
        while shared.unsettled() {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !shared.unsettled() || timeout_at(settle_by, changed).await.is_err() {
                break;
            }
        }

        let list = shared.list();
        let marks: Vec<u64> = list.iter().map(|e| e.probes_started()).collect();
        for endpoint in list.iter() {
            endpoint.probe_now.notify_one();
        }
        let limit =
            Instant::now() + shared.cfg.health.timeout * 2 + std::time::Duration::from_millis(50);
        loop {
            let probed = shared.probed.notified();
            tokio::pin!(probed);
            probed.as_mut().enable();
            let done = list
                .iter()
                .zip(&marks)
                .all(|(endpoint, mark)| endpoint.probes() > *mark);
            if done {
                return true;
            }
            if timeout_at(limit, probed).await.is_err() {
                return false;
            }
        }
    }
}
