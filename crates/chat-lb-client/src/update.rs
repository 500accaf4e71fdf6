//! The messages that change the balancer's membership.
//!
//! Everything that learns something about the endpoint set (the resolver, the
//! discovery streams, the probers, calls that ejected an endpoint) reports it
//! as an [`Update`] to the membership owner (see `members`), which alone
//! changes the registry and publishes the result. The producers therefore know
//! nothing of the registry, and the registry nothing of how they learn.

use std::{net::SocketAddr, sync::Arc};

use tokio::sync::mpsc;

use crate::{address::Target, endpoint::Endpoint};

/// Where an address of the endpoint set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A configured address (a literal one, or a host name and its resolution).
    Target(Target),
    /// A key of a discovery stream.
    Discovered { stream: u64, key: u64 },
}

/// A change reported to the membership owner.
#[derive(Debug)]
pub(crate) enum Update {
    /// A configured address was added (`Balancer::add_endpoint`, the builder).
    AddTarget(Target),
    /// A configured address was removed.
    RemoveTarget(Target),
    /// A host name resolved to these addresses (ignored if the name was removed
    /// meanwhile).
    Resolved(Target, Vec<SocketAddr>),
    /// Resolving a host name gave no address, for this reason.
    ResolutionFailed(Target, String),
    /// A discovery stream will report (its first item settles it).
    ExpectStream,
    /// A discovery stream's key is at this address now.
    Discovered {
        stream: u64,
        key: u64,
        addr: SocketAddr,
    },
    /// A discovery stream removed a key.
    Undiscovered { stream: u64, key: u64 },
    /// A discovery stream produced its first item (or ended without one).
    StreamSettled,
    /// An endpoint's probe ended: `check` for a periodic or requested check (not
    /// a pushed watch update); `changed` when its state or tier changed.
    Probed {
        endpoint: Arc<Endpoint>,
        check: bool,
        changed: bool,
    },
    /// An endpoint's state or tier changed outside a probe (a call ejected it).
    StateChanged,
}

/// Where updates are sent.
pub(crate) type Updates = mpsc::UnboundedSender<Update>;

/// Sends an update; after the balancer is gone there is no one to tell.
pub(crate) fn report(updates: &Updates, update: Update) {
    let _ = updates.send(update);
}
