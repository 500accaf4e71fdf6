//! The chat service's own `HealthCheck` RPC as a health probe.

use futures::{FutureExt, future::BoxFuture};
use tokio::time::Instant;

use chat_proto::v1::{
    HealthCheckRequest, chat_service_client::ChatServiceClient,
    health_check_response::ServingStatus,
};

use super::probe::{HealthProbe, ProbeStatus, ProbeTarget};
use crate::error::BoxError;

/// Probes with `chat.v1.ChatService/HealthCheck`.
///
/// Healthy when the replica answers `SERVING` with `store_reachable = true`;
/// any other answer (`NOT_SERVING`, `UNSPECIFIED`, or a store it cannot reach)
/// is *not serving*. The healthy detail is the replica id.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatHealthProbe;

impl ChatHealthProbe {
    /// The probe.
    pub fn new() -> Self {
        Self
    }
}

impl HealthProbe for ChatHealthProbe {
    fn check(&self, target: &ProbeTarget) -> BoxFuture<'static, Result<ProbeStatus, BoxError>> {
        let mut client = ChatServiceClient::new(target.channel.clone());
        let timeout = target.timeout;
        async move {
            let start = Instant::now();
            let mut request = tonic::Request::new(HealthCheckRequest {});
            request.set_timeout(timeout);
            let reply = client.health_check(request).await?.into_inner();
            let latency = start.elapsed();
            let status = reply.status();
            Ok(match (status, reply.store_reachable) {
                (ServingStatus::Serving, true) => ProbeStatus::Healthy {
                    latency,
                    detail: reply.replica_id,
                },
                (ServingStatus::Serving, false) => ProbeStatus::NotServing {
                    detail: non_empty(reply.detail, "store unreachable"),
                },
                (other, _) => ProbeStatus::NotServing {
                    detail: non_empty(reply.detail, other.as_str_name()),
                },
            })
        }
        .boxed()
    }
}

fn non_empty(detail: String, fallback: &str) -> String {
    if detail.is_empty() {
        fallback.to_owned()
    } else {
        detail
    }
}
