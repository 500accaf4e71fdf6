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
            Some(entry) if entry.addrs == addrs && entry.error.is_none() && entry.settled => {
                // A re-resolution with the same answer changes nothing.
                return Applied::default();
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IntoTarget;

    fn target(text: &str) -> Target {
        text.into_target().unwrap()
    }

    #[test]
    fn sources_add_up_to_the_wanted_addresses() {
        let mut registry = Registry::default();
        let ip: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let applied = registry.apply(Update::AddTarget(target("10.0.0.1:80")));
        assert!(applied.addresses && !applied.names);
        assert_eq!(registry.wanted(), [(ip, None)]);

        // A host name waits for its resolution, and settles with it.
        let name = target("chat-1.lan:80");
        let applied = registry.apply(Update::AddTarget(name.clone()));
        assert!(applied.names && !applied.addresses);
        assert_eq!(registry.names(), std::slice::from_ref(&name));
        assert!(registry.unsettled());
        assert_eq!(registry.unresolved()[0].1, "not resolved yet");
        let resolved: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let both = vec![ip, resolved];
        assert!(
            registry
                .apply(Update::Resolved(name.clone(), both.clone()))
                .addresses
        );
        assert!(!registry.unsettled());
        assert_eq!(
            registry.wanted(),
            [(ip, None), (resolved, Some("chat-1.lan"))],
            "an address two sources give keeps the first source's"
        );
        assert_eq!(
            registry.apply(Update::Resolved(name.clone(), both)),
            Applied::default(),
            "the same answer again changes nothing"
        );

        // A failed resolution keeps the addresses, and its reason.
        let failed = Update::ResolutionFailed(name.clone(), "cannot resolve: x".into());
        assert!(registry.apply(failed).visible);
        assert_eq!(registry.wanted().len(), 2);
        assert!(registry.unresolved().is_empty(), "it has addresses");

        // Removed while being resolved: a late answer does not bring it back.
        assert!(registry.has_target(&name));
        assert!(registry.apply(Update::RemoveTarget(name.clone())).names);
        assert!(!registry.has_target(&name));
        registry.apply(Update::Resolved(name, vec![resolved]));
        assert_eq!(registry.wanted(), [(ip, None)]);
    }

    #[test]
    fn a_discovery_stream_settles_with_its_first_item() {
        let mut registry = Registry::default();
        registry.apply(Update::ExpectStream);
        assert!(registry.unsettled());
        let addr: SocketAddr = "10.0.0.3:80".parse().unwrap();
        registry.apply(Update::Discovered {
            stream: 0,
            key: 1,
            addr,
        });
        registry.apply(Update::StreamSettled);
        assert!(!registry.unsettled());
        assert_eq!(registry.wanted(), [(addr, None)]);
        registry.apply(Update::Undiscovered { stream: 0, key: 1 });
        assert!(registry.wanted().is_empty());
    }
}
