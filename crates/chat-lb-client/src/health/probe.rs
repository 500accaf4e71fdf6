//! The pluggable health probe.

use std::{net::SocketAddr, time::Duration};

use futures::{future::BoxFuture, stream::BoxStream};

use crate::{error::BoxError, transport::EndpointChannel};

/// What a probe learned from a replica that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeStatus {
    /// The replica serves calls.
    Healthy {
        /// How long the probe took.
        latency: Duration,
        /// Free text for status tables (e.g. the replica id).
        detail: String,
    },
    /// The replica answered that it must get no new calls.
    NotServing {
        /// Why, as the replica put it.
        detail: String,
    },
}

/// The endpoint a probe checks.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The endpoint's address.
    pub address: SocketAddr,
    /// A channel to this endpoint only (the one its calls use, so a probe also
    /// checks the connection the calls go over).
    pub channel: EndpointChannel,
    /// The probe timeout; the prober enforces it too, but a probe should pass it
    /// on (e.g. `tonic::Request::set_timeout`) so the server gives up as well.
    pub timeout: Duration,
}

/// A health check of one endpoint, run by the balancer's prober every
/// `probe_interval`.
///
/// `check` returns `Ok(ProbeStatus)` when the replica answered, `Err` when it did
/// not (the prober also fails a check that outlives the probe timeout). A probe
/// may also offer a push channel with [`HealthProbe::watch`].
///
/// ```
/// use chat_lb_client::{BoxError, HealthProbe, ProbeStatus, ProbeTarget};
/// use futures::{FutureExt, future::BoxFuture};
/// use std::time::Duration;
///
/// /// A probe that only checks that a TCP connection can be opened.
/// struct TcpProbe;
///
/// impl HealthProbe for TcpProbe {
///     fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
///         let addr = target.address;
///         async move {
///             let start = tokio::time::Instant::now();
///             tokio::net::TcpStream::connect(addr).await?;
///             Ok(ProbeStatus::Healthy { latency: start.elapsed(), detail: String::new() })
///         }
///         .boxed()
///     }
/// }
/// ```
pub trait HealthProbe: Send + Sync + 'static {
    /// Checks the endpoint once.
    fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>>;

    /// A stream of status changes pushed by the replica, if this probe has one.
    ///
    /// The prober applies each item at once, in addition to the periodic checks.
    /// When the stream fails with a `tonic::Status` of code `UNIMPLEMENTED` the
    /// prober stops watching that endpoint (periodic checks go on); on any other
    /// error or at its end it checks at once and watches again one interval later.
    fn watch(
        &self,
        target: &ProbeTarget,
    ) -> Option<BoxStream<'static, Result<ProbeStatus, BoxError>>> {
        let _ = target;
        None
    }
}

impl<P: HealthProbe + ?Sized> HealthProbe for std::sync::Arc<P> {
    fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
        (**self).check(target)
    }

    fn watch(
        &self,
        target: &ProbeTarget,
    ) -> Option<BoxStream<'static, Result<ProbeStatus, BoxError>>> {
        (**self).watch(target)
    }
}
