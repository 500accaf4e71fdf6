//! Periodic DNS resolution of the configured host names.
//!
//! Every host name is resolved when it is added and every `resolve_interval`
//! after; the endpoint set follows the answers (new addresses are added,
//! vanished ones removed). A failed or empty answer keeps the previous
//! addresses: a DNS hiccup must not empty the balancer. Its reason is kept
//! until the next answer with addresses, so that a call that finds no
//! endpoint because a name never resolved says which name and why
//! (`no endpoint: chat-1.invalid:8500 (cannot resolve: ...)`), and
//! `Balancer::unresolved_names` lists such names.

use std::{net::SocketAddr, sync::Arc};

use futures::future::join_all;
use tokio::{
    sync::watch,
    time::{sleep, timeout},
};

use crate::{
    address::{Host, Target},
    config::Config,
    update::{Update, Updates, report},
};

/// Resolves the host names `names` holds now, every `resolve_interval` and
/// whenever they change, reporting each answer.
pub(crate) async fn run(
    mut names: watch::Receiver<Arc<[Target]>>,
    cfg: Arc<Config>,
    updates: Updates,
) {
    loop {
        let targets = names.borrow_and_update().clone();
        join_all(
            targets
                .iter()
                .map(|target| resolve_one(&cfg, &updates, target)),
        )
        .await;
        tokio::select! {
            _ = sleep(cfg.resolve_interval) => {}
            changed = names.changed() => if changed.is_err() { return },
        }
    }
}

async fn resolve_one(cfg: &Config, updates: &Updates, target: &Target) {
    let Host::Name(name) = target.host() else {
        return;
    };
    let lookup = tokio::net::lookup_host((name.as_str(), target.port()));
    let failed = |reason: String| Update::ResolutionFailed(target.clone(), reason);
    let update = match timeout(cfg.resolve_timeout, lookup).await {
        Ok(Ok(addrs)) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                tracing::warn!(target = %target, "host name resolved to no address; keeping the previous ones");
                failed("resolved to no address".to_owned())
            } else {
                tracing::debug!(target = %target, ?addrs, "host name resolved");
                Update::Resolved(target.clone(), addrs)
            }
        }
        Ok(Err(error)) => {
            tracing::warn!(target = %target, %error, "cannot resolve host name; keeping the previous addresses");
            failed(format!("cannot resolve: {error}"))
        }
        Err(_) => {
            tracing::warn!(target = %target, "host name resolution timed out; keeping the previous addresses");
            let waited = humantime::format_duration(cfg.resolve_timeout);
            failed(format!("cannot resolve: no answer within {waited}"))
        }
    };
    report(updates, update);
}
