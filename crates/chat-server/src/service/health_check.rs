//! `HealthCheck`: whether this replica can serve calls.

use chat_proto::v1::{self as pb, health_check_response::ServingStatus};
use tonic::{Request, Response, Status};

use super::ChatService;

impl ChatService {
    pub(super) async fn health_check(
        &self,
        _request: Request<pb::HealthCheckRequest>,
    ) -> Result<Response<pb::HealthCheckResponse>, Status> {
        let view = self.health.view();
        let status = if view.serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(Response::new(pb::HealthCheckResponse {
            status: status.into(),
            replica_id: view.replica_id,
            store_reachable: view.store_reachable,
            detail: view.detail,
        }))
    }
}
