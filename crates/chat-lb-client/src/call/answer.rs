//! The answers the balancer itself gives a call: `UNAVAILABLE` when no
//! endpoint can take it or it failed on a broken connection, and
//! `DEADLINE_EXCEEDED` when its deadline passed. Both are proper gRPC
//! *trailers-only* responses, which tonic clients surface as a
//! `tonic::Status` with that code and message.

use tonic::Status;

use super::state::{Call, Response};
use crate::{endpoint::Endpoint, error::BoxError};

impl Call {
    /// The call failed with a transport error and will not be retried: the
    /// caller's own body error is passed through; anything else is answered
    /// `UNAVAILABLE` (as gRPC does for broken connections), naming the endpoint,
    /// the error and every endpoint's state.
    pub(super) fn fail(
        &self,
        endpoint: &Endpoint,
        error: BoxError,
        text: &str,
    ) -> Result<Response, BoxError> {
        if self.replay.source_failed() {
            return Err(error);
        }
        let message = format!(
            "chat-lb-client: call to {} failed after {} attempt(s): {text}; endpoints: {}",
            endpoint.addr,
            self.attempts,
            self.describe_endpoints()
        );
        tracing::debug!(%message, "answering UNAVAILABLE");
        Ok(Status::unavailable(message).into_http())
    }

    /// Every endpoint with its state and last error, then every configured
    /// host name that has no address with why (`chat-1.invalid:8500 (cannot
    /// resolve: ...)`), separated by `; `.
    fn describe_endpoints(&self) -> String {
        let mut described: Vec<String> = self.list.iter().map(|e| e.describe()).collect();
        described.extend(self.unresolved());
        described.join("; ")
    }

    /// `UNAVAILABLE`, naming every endpoint and its last error, and every
    /// configured host name that has no address and why (with no endpoint at
    /// all: `no endpoint: chat-1.invalid:8500 (cannot resolve: ...)`).
    pub(super) fn unavailable(&self) -> Response {
        let message = if self.list.is_empty() {
            let unresolved = self.unresolved();
            if !unresolved.is_empty() {
                format!("chat-lb-client: no endpoint: {}", unresolved.join("; "))
            } else if self.ctx.members.borrow().unsettled {
                "chat-lb-client: no endpoint yet (host names or discovery still pending)".to_owned()
            } else {
                "chat-lb-client: no endpoints configured".to_owned()
            }
        } else {
            format!(
                "chat-lb-client: no healthy endpoint for this call after {} attempt(s); endpoints: {}",
                self.attempts,
                self.describe_endpoints()
            )
        };
        tracing::debug!(%message, "answering UNAVAILABLE");
        Status::unavailable(message).into_http()
    }

    pub(super) fn deadline_exceeded(&self, endpoint: &Endpoint) -> Response {
        self.deadline_response(&format!("waiting for {}", endpoint.addr))
    }

    pub(super) fn deadline_response(&self, what: &str) -> Response {
        let timeout = self
            .timeout
            .map(|t| humantime::format_duration(t).to_string())
            .unwrap_or_default();
        Status::deadline_exceeded(format!(
            "chat-lb-client: deadline of {timeout} exceeded {what} (attempt {})",
            self.attempts
        ))
        .into_http()
    }

    /// The configured host names without an address, as `name:port (why)`.
    fn unresolved(&self) -> Vec<String> {
        self.ctx
            .members
            .borrow()
            .unresolved
            .iter()
            .map(|(target, why)| format!("{target} ({why})"))
            .collect()
    }
}
