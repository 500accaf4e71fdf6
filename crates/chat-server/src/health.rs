//! The replica's health: whether its store answers and whether it is shutting down.
//!
//! One task per replica checks the store every `store_check_interval`. The result is
//! served by the chat `HealthCheck` RPC and mirrored into the standard
//! `grpc.health.v1.Health` service (for the whole server, `""`, and for
//! `chat.v1.ChatService`), so balancers route around a replica whose store is down,
//! one that an operator drained (`--drain-file`), and one that is shutting down.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::store::Store;

/// The shared, cheaply readable health of this replica.
#[derive(Clone)]
pub struct ReplicaHealth {
    inner: Arc<Inner>,
}

struct Inner {
    replica_id: String,
    store_reachable: AtomicBool,
    shutting_down: AtomicBool,
    drained: AtomicBool,
    last_store_error: Mutex<Option<String>>,
    reporter: HealthReporter,
}

/// A point-in-time view of [`ReplicaHealth`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthView {
    /// This replica's id.
    pub replica_id: String,
    /// Whether calls should be sent here.
    pub serving: bool,
    /// Whether the last store check succeeded.
    pub store_reachable: bool,
    /// Why the replica is not serving; empty when it is.
    pub detail: String,
}

impl ReplicaHealth {
    /// Health for a replica whose store was reachable at start-up.
    pub fn new(replica_id: String, reporter: HealthReporter) -> Self {
        Self {
            inner: Arc::new(Inner {
                replica_id,
                store_reachable: AtomicBool::new(true),
                shutting_down: AtomicBool::new(false),
                drained: AtomicBool::new(false),
                last_store_error: Mutex::new(None),
                reporter,
            }),
        }
    }

    /// The current health.
    pub fn view(&self) -> HealthView {
        let store_reachable = self.inner.store_reachable.load(Ordering::Acquire);
        let shutting_down = self.inner.shutting_down.load(Ordering::Acquire);
        let drained = self.inner.drained.load(Ordering::Acquire);
        let detail = if shutting_down {
            "replica is shutting down".to_owned()
        } else if drained {
            "replica drained by its operator (drain file present)".to_owned()
        } else if !store_reachable {
            let error = self
                .inner
                .last_store_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
                .unwrap_or_default();
            format!("store unreachable: {error}")
        } else {
            String::new()
        };
        HealthView {
            replica_id: self.inner.replica_id.clone(),
            serving: store_reachable && !shutting_down && !drained,
            store_reachable,
            detail,
        }
    }

    /// Marks the replica as draining: it reports NOT_SERVING from now on.
    pub async fn begin_shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
        self.publish().await;
    }

    /// Ends every open `grpc.health.v1` Watch stream (after they have been sent
    /// NOT_SERVING), so that they do not hold up the drain of in-flight calls.
    pub async fn end_watches(&self) {
        let mut reporter = self.inner.reporter.clone();
        for service in ["", chat_proto::CHAT_SERVICE_NAME] {
            reporter.clear_service_status(service).await;
        }
    }

    /// Records the outcome of a store check, publishing any change.
    pub async fn record_store_check(&self, result: Result<(), String>) {
        let reachable = result.is_ok();
        if let Err(error) = result {
            *self
                .inner
                .last_store_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
        }
        let was = self.inner.store_reachable.swap(reachable, Ordering::AcqRel);
        if was != reachable {
            if reachable {
                tracing::info!("store reachable again; replica SERVING");
            } else {
                tracing::warn!(detail = %self.view().detail, "replica NOT_SERVING");
            }
            self.publish().await;
        }
    }

    /// Pushes the current status to the `grpc.health.v1` service.
    pub async fn publish(&self) {
        let view = self.view();
        crate::metrics::record_health(view.serving, view.store_reachable);
        let status = if view.serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in ["", chat_proto::CHAT_SERVICE_NAME] {
            self.inner
                .reporter
                .set_service_status(service, status)
                .await;
        }
    }

    /// Records whether an operator has drained the replica, publishing any change.
    pub async fn record_drain(&self, drained: bool) {
        if self.inner.drained.swap(drained, Ordering::AcqRel) != drained {
            if drained {
                tracing::warn!("drain file present; replica NOT_SERVING");
            } else {
                tracing::info!("drain file removed; replica SERVING");
            }
            self.publish().await;
        }
    }

    /// Checks the store (each check bounded by `timeout`) and the drain file every
    /// `interval` until `stop`.
    pub async fn monitor_store(
        self,
        store: Arc<dyn Store>,
        interval: Duration,
        timeout: Duration,
        drain_file: Option<std::path::PathBuf>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            let result = match tokio::time::timeout(timeout, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(timeout)
                )),
            };
            self.record_store_check(result).await;
            if let Some(path) = &drain_file {
                let drained = tokio::fs::try_exists(path).await.unwrap_or(false);
                self.record_drain(drained).await;
            }
        }
    }
}

/// The standard `grpc.health.v1.Health` service, as tonic-health serves it, with one
/// correction: a `Watch` of a service the replica does not know answers with the
/// status `SERVICE_UNKNOWN` and stays open, as the health checking protocol says (the
/// service may appear later), instead of failing with `NOT_FOUND`. `Check` of an
/// unknown service is `NOT_FOUND`, as the protocol says. Watches of unknown services
/// end when the replica shuts down.
pub struct GrpcHealthService {
    inner: tonic_health::server::HealthService,
    shutdown: CancellationToken,
}

impl GrpcHealthService {
    /// The service reporting what `reporter` publishes.
    pub fn new(reporter: HealthReporter, shutdown: CancellationToken) -> Self {
        Self {
            inner: tonic_health::server::HealthService::from_health_reporter(reporter),
            shutdown,
        }
    }
}

type WatchStream = std::pin::Pin<
    Box<
        dyn futures::Stream<Item = Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>
            + Send,
    >,
>;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for GrpcHealthService {
    async fn check(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        self.inner.check(request).await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use futures::StreamExt;
        match self.inner.watch(request).await {
            Ok(response) => Ok(tonic::Response::new(
                Box::pin(response.into_inner()) as WatchStream
            )),
            Err(status) if status.code() == tonic::Code::NotFound => {
                let unknown = tonic_health::pb::HealthCheckResponse {
                    status: tonic_health::pb::health_check_response::ServingStatus::ServiceUnknown
                        as i32,
                };
                let until_shutdown = self.shutdown.clone().cancelled_owned();
                let stream = futures::stream::once(async move { Ok(unknown) })
                    .chain(futures::stream::once(until_shutdown).filter_map(|()| async { None }));
                Ok(tonic::Response::new(Box::pin(stream) as WatchStream))
            }
            Err(status) => Err(status),
        }
    }
}
