//! Periodic DNS resolution of the configured host names.
//!
//! Every host name is resolved when it is added and every `resolve_interval`
//! after; the endpoint set follows the answers (new addresses are added,
//! vanished ones removed). A failed or empty answer keeps the previous
//! addresses: a DNS hiccup must not empty the balancer.

use std::{net::SocketAddr, sync::Arc};

use futures::future::join_all;
use tokio::time::{sleep, timeout};

use crate::{
    address::{Host, Target},
    shared::{Shared, Source},
};

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
                shared.settle(&source);
            } else {
                tracing::debug!(target = %target, ?addrs, "host name resolved");
                shared.update_source(source, addrs);
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(target = %target, %error, "cannot resolve host name; keeping the previous addresses");
            shared.settle(&source);
        }
        Err(_) => {
            tracing::warn!(target = %target, "host name resolution timed out; keeping the previous addresses");
            shared.settle(&source);
        }
    }
}
