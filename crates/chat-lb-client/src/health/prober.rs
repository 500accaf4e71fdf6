//! The per-endpoint prober task.
//!
//! Checks at once when started, then every `probe_interval * (1 ± jitter)`; an
//! ejected endpoint is checked as soon as its ejection time is over. A request
//! for an immediate probe (`wait_for_probe_round`, a broken watch) is served
//! right after the probe in progress. Each result is applied to the endpoint,
//! and reported to the membership owner (see `members`), which reassesses slow
//! endpoints and wakes waiters. The task runs until the membership owner
//! cancels it (endpoint removed, or the last balancer clone dropped); it holds
//! no lock across an await, so stopping it at any point is safe.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, future, stream::BoxStream};
use tokio::time::{Instant, sleep_until, timeout};
use tonic::Code;

use super::{
    jittered,
    probe::{ProbeStatus, ProbeTarget},
};
use crate::{
    classify::{describe, is_timeout, status_code},
    config::Config,
    endpoint::Endpoint,
    error::BoxError,
    outlier::EjectionCap,
    update::{Update, Updates, report},
};

use super::HealthProbe;

type Watch = BoxStream<'static, Result<ProbeStatus, BoxError>>;

pub(crate) async fn run(
    endpoint: Arc<Endpoint>,
    probe: Arc<dyn HealthProbe>,
    config: Arc<Config>,
    ejections: Arc<EjectionCap>,
    updates: Updates,
) {
    let cfg = &config.health;
    let apply = |result, latency, pushed| {
        let changed = endpoint.on_probe((cfg, &ejections), result, latency, pushed);
        let endpoint = endpoint.clone();
        let check = !pushed;
        report(
            &updates,
            Update::Probed {
                endpoint,
                check,
                changed,
            },
        );
    };
    let target = ProbeTarget {
        address: endpoint.addr,
        channel: endpoint.channel.clone(),
        timeout: cfg.timeout,
    };
    let mut watch: Option<Watch> = None;
    // `Some(at)`: (re)open the watch at `at`; `None`: the server cannot watch.
    let mut watch_at = cfg.watch.then(Instant::now);
    let mut next_check = Instant::now();

    loop {
        if watch.is_none() && watch_at.is_some_and(|at| at <= Instant::now()) {
            watch = probe.watch(&target);
            watch_at = None;
        }
        let watch_retry = watch_at.filter(|_| watch.is_none());
        tokio::select! {
            biased;
            item = next_item(&mut watch) => {
                match item {
                    Some(Ok(status)) => {
                        apply(Ok(status), Duration::ZERO, true);
                        continue;
                    }
                    Some(Err(error)) if status_code(&*error) == Some(Code::Unimplemented) => {
                        tracing::debug!(endpoint = %endpoint.addr, "health watch unimplemented; polling only");
                        watch = None;
                        continue;
                    }
                    Some(Err(error)) => {
                        tracing::debug!(endpoint = %endpoint.addr, error = %describe(&*error), "health watch failed");
                    }
                    None => tracing::debug!(endpoint = %endpoint.addr, "health watch ended"),
                }
                // A broken watch often means a dead replica: check now, and
                // watch again one interval later.
                watch = None;
                watch_at = Some(Instant::now() + cfg.interval);
            }
            _ = sleep_until(watch_retry.unwrap_or_else(far_future)), if watch_retry.is_some() => continue,
            _ = sleep_until(next_check) => {}
            _ = endpoint.probe_now.notified() => {}
        }

        let started = Instant::now();
        endpoint.begin_probe();
        let result = match timeout(cfg.timeout, probe.check(&target)).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(error)) if !is_timeout(&*error) => {
                Err(endpoint.explain(config.connect.tls.as_deref(), &*error))
            }
            Ok(Err(_)) | Err(_) => Err(format!(
                "probe timed out after {}",
                humantime::format_duration(cfg.timeout)
            )),
        };
        let latency = match &result {
            Ok(ProbeStatus::Healthy { latency, .. }) => *latency,
            _ => started.elapsed(),
        };
        apply(result, latency, false);

        let now = Instant::now();
        next_check = now + jittered(cfg.interval, cfg.jitter, &mut rand::rng());
        if let Some(until) = endpoint.ejected_until()
            && until > now
            && until < next_check
        {
            next_check = until;
        }
    }
}

async fn next_item(watch: &mut Option<Watch>) -> Option<Result<ProbeStatus, BoxError>> {
    match watch {
        Some(stream) => stream.next().await,
        None => future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}
