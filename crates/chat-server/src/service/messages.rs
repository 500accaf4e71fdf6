//! `SendMessage`, `FetchMessages` and `AckMessages`.

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{ChatService, to_wire};
use crate::{
    auth,
    config::limits,
    store::{MessageDraft, SessionSend},
    validate,
};

impl ChatService {
    pub(super) async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let token_hash = auth::session_token_hash(&request)?;
        let pb::SendMessageRequest {
            recipient,
            text,
            idempotency_key,
        } = request.into_inner();
        validate::username(&recipient)?;
        validate::message_text(&text, self.settings.max_message_bytes)?;
        validate::idempotency_key(&idempotency_key)?;
        let now = crate::now_unix_ms();
        let sent = self
            .store
            .send_message_as(
                &token_hash,
                now,
                MessageDraft {
                    recipient: &recipient,
                    text: &text,
                    idempotency_key: &idempotency_key,
                    sent_at_unix_ms: now,
                },
            )
            .await?;
        let outcome = match sent {
            SessionSend::Sent(outcome) => outcome,
            SessionSend::Refused(refusal) => return Err(auth::refused(refusal)),
        };
        if outcome.duplicate {
            tracing::debug!(key = %idempotency_key, "resend of a stored message");
        } else {
            // Durable now: subscribers here and on this host's other replicas get it at
            // once rather than at their next feed poll.
            self.hub.committed();
        }
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(to_wire(&outcome.message)),
        }))
    }

    pub(super) async fn fetch_messages(
        &self,
        request: Request<pb::FetchMessagesRequest>,
    ) -> Result<Response<pb::FetchMessagesResponse>, Status> {
        let account = auth::authenticate(self.store.as_ref(), &request).await?;
        let pb::FetchMessagesRequest {
            after_sequence,
            page_size,
        } = request.into_inner();
        let page = self
            .store
            .fetch_messages(
                account.id,
                after_sequence,
                validate::page_size(page_size, limits::FETCH_PAGE),
            )
            .await?;
        Ok(Response::new(pb::FetchMessagesResponse {
            messages: page.messages.iter().map(to_wire).collect(),
            has_more: page.has_more,
            acked_sequence: page.acked_sequence,
        }))
    }

    pub(super) async fn ack_messages(
        &self,
        request: Request<pb::AckMessagesRequest>,
    ) -> Result<Response<pb::AckMessagesResponse>, Status> {
        let account = auth::authenticate(self.store.as_ref(), &request).await?;
        let up_to = request.into_inner().up_to_sequence;
        let acked_sequence = self.store.ack_messages(account.id, up_to).await?;
        Ok(Response::new(pb::AckMessagesResponse { acked_sequence }))
    }
}
