//! The member registry: the sources of the endpoint set and the endpoints
//! they add up to.
//!
//! The endpoint set is the union of its *sources*: each configured address (an
//! IP address, or a host name and whatever it last resolved to) and each key of
//! each discovery stream. [`Registry::apply`] changes a source; then
//! [`Registry::wanted`] says which addresses the set must hold, in
//! configuration order, each with the host name it was resolved from (the name
//! TLS verifies; an address that two names resolve to keeps the first
//! source's).

use std::net::SocketAddr;

use crate::{
    address::{Host, Target},
    update::{Source, Update},
};

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

/// What an applied update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// The addresses of some source changed: reconcile the endpoints.
    pub addresses: bool,
    /// The host names to resolve changed.
    pub names: bool,
    /// Something callers may wait on changed (settling, resolution errors).
    pub visible: bool,
}

/// The sources of the endpoint set.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    sources: Vec<SourceEntry>,
    /// Discovery streams that have not produced their first item.
    pending_streams: usize,
}

impl Registry {
    /// Applies a change of a source (other updates change nothing here).
    pub fn apply(&mut self, update: Update) -> Applied {
        match update {
            Update::AddTarget(target) => self.add_target(target),
            Update::RemoveTarget(target) => self.remove(&Source::Target(target)),
            Update::Resolved(target, addrs) => self.set(Source::Target(target), addrs, true),
            Update::ResolutionFailed(target, reason) => self.failed(Source::Target(target), reason),
            Update::ExpectStream => {
                self.pending_streams += 1;
                Applied {
                    visible: true,
                    ..Applied::default()
                }
            }
            Update::StreamSettled => {
                self.pending_streams = self.pending_streams.saturating_sub(1);
                Applied {
                    visible: true,
                    ..Applied::default()
                }
            }
            Update::Discovered { stream, key, addr } => {
                self.set(Source::Discovered { stream, key }, vec![addr], false)
            }
            Update::Undiscovered { stream, key } => {
                self.remove(&Source::Discovered { stream, key })
            }
            Update::Probed { .. } | Update::StateChanged => Applied::default(),
        }
    }

    /// Whether a source exists (for `remove_endpoint`'s answer).
    pub fn has_target(&self, target: &Target) -> bool {
        let source = Source::Target(target.clone());
        self.sources.iter().any(|s| s.source == source)
    }

    fn add_target(&mut self, target: Target) -> Applied {
        if let Some(addr) = target.socket_addr() {
            return self.set(Source::Target(target), vec![addr], false);
        }
        let source = Source::Target(target);
        if self.sources.iter().any(|s| s.source == source) {
            return Applied::default();
        }
        self.sources.push(SourceEntry {
            source,
            addrs: Vec::new(),
            settled: false,
            error: None,
        });
        Applied {
            names: true,
            visible: true,
            ..Applied::default()
        }
    }

    /// Sets the addresses of a source (adding it, unless `only_known`: a host
    /// name removed while it was being resolved stays removed).
    fn set(&mut self, source: Source, addrs: Vec<SocketAddr>, only_known: bool) -> Applied {
        match self.sources.iter_mut().find(|s| s.source == source) {
            Some(entry) => {
                entry.addrs = addrs;
                entry.error = None;
                entry.settled = true;
            }
            None if only_known => return Applied::default(),
            None => self.sources.push(SourceEntry {
                source,
                addrs,
                settled: true,
                error: None,
            }),
        }
        Applied {
            addresses: true,
            visible: true,
            ..Applied::default()
        }
    }

    /// Records that resolving a host name gave no address, and why, keeping
    /// its previous addresses; marks its first resolution as done.
    fn failed(&mut self, source: Source, reason: String) -> Applied {
        if let Some(entry) = self.sources.iter_mut().find(|s| s.source == source) {
            entry.error = Some(reason);
            entry.settled = true;
        }
        Applied {
            visible: true,
            ..Applied::default()
        }
    }

    fn remove(&mut self, source: &Source) -> Applied {
        let Some(index) = self.sources.iter().position(|s| &s.source == source) else {
            return Applied::default();
        };
        let entry = self.sources.remove(index);
        Applied {
            addresses: true,
            names: matches!(&entry.source, Source::Target(t) if t.is_name()),
            visible: true,
        }
    }

    /// Whether some source has not produced its first result yet.
    pub fn unsettled(&self) -> bool {
        self.pending_streams > 0 || self.sources.iter().any(|s| !s.settled)
    }

    /// The host-name targets, for the resolver.
    pub fn names(&self) -> Vec<Target> {
        self.sources
            .iter()
            .filter_map(|s| match &s.source {
                Source::Target(t) if t.is_name() => Some(t.clone()),
                _ => None,
            })
            .collect()
    }

    /// The configured host names that have no address now, in configuration
    /// order, each with why: its latest resolution error, or `not resolved
    /// yet` while its first resolution is pending.
    pub fn unresolved(&self) -> Vec<(Target, String)> {
        self.sources
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

    /// The addresses the endpoint set must hold, each with the host name it
    /// was resolved from, if any.
    pub fn wanted(&self) -> Vec<(SocketAddr, Option<&str>)> {
        let mut wanted: Vec<(SocketAddr, Option<&str>)> = Vec::new();
        for source in &self.sources {
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
        wanted
    }
}
