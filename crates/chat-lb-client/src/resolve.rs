//! Periodic DNS resolution of the configured host names.
//!
//! Every host name is resolved when it is added and every `resolve_interval`
//! after; the endpoint set follows the answers (new addresses are added,
//! vanished ones removed). A failed or empty answer keeps the previous
//! addresses: a DNS hiccup must not empty the balancer. Its reason is kept
//! until the next answer with addresses, so that a call that finds no
//! endpoint because a name never resolved says which name and why
//! (`no endpoint: chat-1.invalid:8500 (cannot resolve: ...)`), and
//! [`Balancer::unresolved_names`] lists such names.

use std::{net::SocketAddr, sync::Arc};

use futures::future::join_all;
use tokio::time::{sleep, timeout};

use crate::{
    Balancer,
    address::{Host, Target},
    shared::{Shared, Source},
};

impl Balancer {
    /// The configured host names that have no address now, in configuration
    /// order, each with why, in words: `cannot resolve: <the resolver's
    /// error>`, `cannot resolve: no answer within 5s`, `resolved to no
    /// address`, or `not resolved yet` while the first resolution is pending.
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
        self.shared.unresolved()
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        let targets = shared.name_targets();
        join_all(
            targets
                .into_iter()
                .map(|target| resolve_one(&shared, target)),
        )
        .await;
        tokio::select! {
            _ = sleep(shared.cfg.resolve_interval) => {}
            _ = shared.resolver_wake.notified() => {}
        }
    }
}

async fn resolve_one(shared: &Arc<Shared>, target: Target) {
    let Host::Name(name) = target.host() else {
        return;
    };
    let lookup = tokio::net::lookup_host((name.as_str(), target.port()));
    let source = Source::Target(target.clone());
    match timeout(shared.cfg.resolve_timeout, lookup).await {
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                tracing::warn!(target = %target, "host name resolved to no address; keeping the previous ones");
                shared.resolution_failed(&source, "resolved to no address".to_owned());
            } else {
                tracing::debug!(target = %target, ?addrs, "host name resolved");
                shared.update_source(source, addrs);
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(target = %target, %error, "cannot resolve host name; keeping the previous addresses");
            shared.resolution_failed(&source, format!("cannot resolve: {error}"));
        }
        Err(_) => {
            tracing::warn!(target = %target, "host name resolution timed out; keeping the previous addresses");
            let waited = humantime::format_duration(shared.cfg.resolve_timeout);
            shared.resolution_failed(
                &source,
                format!("cannot resolve: no answer within {waited}"),
            );
        }
    }
}
