//! The standard `grpc.health.v1.Health` service as a health probe.

use futures::{FutureExt, StreamExt, future::BoxFuture, stream::BoxStream};
use tokio::time::Instant;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_client::HealthClient,
};

use super::probe::{HealthProbe, ProbeStatus, ProbeTarget};
use crate::error::BoxError;

/// Probes with the standard gRPC health service (`grpc.health.v1.Health`), as
/// served by `tonic-health`.
///
/// `Check` polls every probe interval; in addition, unless turned off with
/// [`GrpcHealthProbe::watch`], a `Watch` stream per endpoint reports
/// `NOT_SERVING` the moment the server sets it. Servers that do not implement
/// `Watch` (`UNIMPLEMENTED`) are polled only.
///
/// `SERVING` is healthy; `NOT_SERVING`, `UNKNOWN`, `SERVICE_UNKNOWN` and a
/// `NOT_FOUND` answer (the server does not know the service name) are *not
/// serving*.
#[derive(Debug, Clone, Default)]
pub struct GrpcHealthProbe {
    service: String,
    no_watch: bool,
}

impl GrpcHealthProbe {
    /// Probes the server as a whole (service name `""`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Probes one service by its fully qualified name, e.g. `"kv.v1.Kv"`.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service = name.into();
        self
    }

    /// Whether to open `Watch` streams (default `true`).
    pub fn watch(mut self, enabled: bool) -> Self {
        self.no_watch = !enabled;
        self
    }

    fn request(&self) -> HealthCheckRequest {
        HealthCheckRequest {
            service: self.service.clone(),
        }
    }
}

fn status_of(reply: HealthCheckResponse, latency: std::time::Duration) -> ProbeStatus {
    match reply.status() {
        ServingStatus::Serving => ProbeStatus::Healthy {
            latency,
            detail: String::new(),
        },
        other => ProbeStatus::NotServing {
            detail: other.as_str_name().to_owned(),
        },
    }
}

impl HealthProbe for GrpcHealthProbe {
    fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
        let mut client = HealthClient::new(target.channel.clone());
        let mut request = tonic::Request::new(self.request());
        request.set_timeout(target.timeout);
        async move {
            let start = Instant::now();
            match client.check(request).await {
                Ok(reply) => Ok(status_of(reply.into_inner(), start.elapsed())),
                Err(status) if status.code() == Code::NotFound => Ok(ProbeStatus::NotServing {
                    detail: format!("service unknown: {}", status.message()),
                }),
                Err(status) => Err(status.into()),
            }
        }
        .boxed()
    }

    fn watch(
        &self,
        target: &ProbeTarget,
    ) -> Option<BoxStream<'static, Result<ProbeStatus, BoxError>>> {
        if self.no_watch {
            return None;
        }
        let mut client = HealthClient::new(target.channel.clone());
        let request = self.request();
        let stream = async move {
            match client.watch(request).await {
                Ok(reply) => reply
                    .into_inner()
                    .map(|item| match item {
                        Ok(reply) => Ok(status_of(reply, std::time::Duration::ZERO)),
                        Err(status) => Err(BoxError::from(status)),
                    })
                    .boxed(),
                Err(status) => {
                    futures::stream::once(async move { Err(BoxError::from(status)) }).boxed()
                }
            }
        }
        .flatten_stream();
        Some(stream.boxed())
    }
}
