//! `Subscribe`: the caller's messages in sequence order, first from the store, then live.
//!
//! The order of steps is what makes the stream lossless without a query per
//! subscriber per tick:
//! 1. register with the replica's [`Hub`](crate::hub::Hub), so that every message the
//!    hub reads from now on is queued for us;
//! 2. read the backlog from the store (everything committed so far);
//! 3. forward live deliveries, skipping any sequence already sent (a message can arrive
//!    by both paths). If the hub reports that we lagged, re-read the store.

use chat_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{ChatService, MessageStream, to_wire};
use crate::{
    auth,
    config::limits,
    hub::{Delivery, Subscription},
    store::AccountId,
};

/// Messages buffered between the pump task and the gRPC stream.
const STREAM_BUFFER: usize = 64;

impl ChatService {
    pub(super) async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<MessageStream>, Status> {
        let account = auth::authenticate(self.store.as_ref(), &request).await?;
        let after = request.into_inner().after_sequence;
        self.check_resume_point(account.id, after).await?;
        let subscription = self.hub.subscribe(&account.username);
        let (out, stream) = mpsc::channel(STREAM_BUFFER);
        tracing::debug!(user = %account.username, after, "subscribed");
        tokio::spawn(self.clone().pump(account.id, after, subscription, out));
        let mut response = Response::new(Box::pin(ReceiverStream::new(stream)) as MessageStream);
        // Tell the client which replica serves the stream, so it can report failovers.
        if let Ok(replica) = self.health.view().replica_id.parse() {
            response
                .metadata_mut()
                .insert(chat_proto::REPLICA_ID_HEADER, replica);
        }
        Ok(response)
    }

    /// Refuses to resume after a sequence number the caller has not reached (as
    /// `AckMessages` refuses to acknowledge one): such a stream would silently skip the
    /// caller's next messages, those numbered up to it. Some message numbered
    /// `after_sequence` or higher exists exactly when it is reached (retention never
    /// deletes an inbox's latest message), which one small store read tells.
    async fn check_resume_point(
        &self,
        account: AccountId,
        after_sequence: u64,
    ) -> Result<(), Status> {
        if after_sequence == 0 {
            return Ok(());
        }
        let page = self
            .store
            .fetch_messages(account, Some(after_sequence - 1), 1)
            .await?;
        if page.messages.is_empty() {
            return Err(Status::invalid_argument(format!(
                "cannot resume after sequence {after_sequence}: you have no message numbered that high yet"
            )));
        }
        Ok(())
    }

    /// Feeds one subscriber until it goes away, the replica shuts down or the store fails.
    async fn pump(
        self,
        account: AccountId,
        after_sequence: u64,
        mut subscription: Subscription,
        out: mpsc::Sender<Result<pb::Message, Status>>,
    ) {
        let mut last = (after_sequence > 0).then_some(after_sequence);
        let mut outcome = self.catch_up(account, &mut last, &out).await;
        while outcome.is_ok() {
            outcome = tokio::select! {
                _ = self.shutdown.cancelled() => Err(Stop::ShuttingDown),
                _ = out.closed() => Err(Stop::ClientGone),
                delivery = subscription.next() => match delivery {
                    Some(Delivery::Message(message)) if Some(message.sequence) > last => {
                        let sent = self.forward(&out, Ok(to_wire(&message))).await;
                        if sent.is_ok() {
                            last = Some(message.sequence);
                        }
                        sent
                    }
                    Some(Delivery::Message(_)) => Ok(()),
                    Some(Delivery::Lagged) => self.catch_up(account, &mut last, &out).await,
                    None => Err(Stop::ShuttingDown),
                },
            };
        }
        let status = match outcome {
            Err(Stop::ShuttingDown) => Status::unavailable(format!(
                "replica is shutting down; resubscribe elsewhere with after_sequence={}",
                last.unwrap_or(0)
            )),
            Err(Stop::Failed(status)) => status,
            Ok(()) | Err(Stop::ClientGone) => return,
        };
        // Best effort: the client may already be gone.
        let _ = out.try_send(Err(status));
    }

    /// Sends every stored message after `last`, advancing `last` past each message
    /// handed to the stream (and only then: `last` is the resume point a shutdown names).
    async fn catch_up(
        &self,
        account: AccountId,
        last: &mut Option<u64>,
        out: &mpsc::Sender<Result<pb::Message, Status>>,
    ) -> Result<(), Stop> {
        loop {
            let page = self
                .store
                .fetch_messages(account, *last, limits::FETCH_PAGE.1)
                .await
                .map_err(|error| Stop::Failed(error.into()))?;
            if last.is_none() {
                *last = Some(page.acked_sequence);
            }
            for message in &page.messages {
                self.forward(out, Ok(to_wire(message))).await?;
                *last = Some(message.sequence);
            }
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Sends one item to the client, giving up if it leaves or the replica shuts down.
    /// On an error the item was not sent: once shutdown has begun, `select!` may pick it
    /// over a send that was ready too, and a full buffer always loses to it.
    async fn forward(
        &self,
        out: &mpsc::Sender<Result<pb::Message, Status>>,
        item: Result<pb::Message, Status>,
    ) -> Result<(), Stop> {
        tokio::select! {
            sent = out.send(item) => sent.map_err(|_| Stop::ClientGone),
            _ = self.shutdown.cancelled() => Err(Stop::ShuttingDown),
        }
    }
}

/// Why a subscription stream ends.
enum Stop {
    ShuttingDown,
    ClientGone,
    Failed(Status),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        health::ReplicaHealth,
        hub::Hub,
        service::ServiceSettings,
        store::{self, NewMessage},
    };

    /// The resume point a shutting-down replica names is the last message the stream
    /// carried, never one it dropped: once shutdown has begun, every `forward` races it.
    #[tokio::test]
    async fn the_resume_point_named_at_shutdown_is_the_last_message_sent() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let uri = format!("sqlite:{}", dir.path().join("chat.db").display());
        let store = store::open(&uri).await.expect("store");
        let bob = store
            .create_account("bob", "not-a-real-hash", 0)
            .await
            .expect("account");
        for i in 1..=5 {
            store
                .send_message(NewMessage {
                    sender_id: bob.id,
                    recipient: "bob",
                    text: "hi",
                    idempotency_key: &format!("k{i}"),
                    sent_at_unix_ms: 0,
                })
                .await
                .expect("send");
        }
        let (reporter, _) = tonic_health::server::health_reporter();
        // Each run loses the race at a random message (or at none).
        for _ in 0..64 {
            let shutdown = CancellationToken::new();
            shutdown.cancel();
            let hub = Hub::default();
            let service = ChatService::new(
                store.clone(),
                hub.clone(),
                ReplicaHealth::new("replica".into(), reporter.clone()),
                ServiceSettings {
                    session_ttl: Duration::from_secs(60),
                    max_message_bytes: 4096,
                    inject_delay: None,
                },
                shutdown,
            );
            let (out, mut stream) = mpsc::channel(STREAM_BUFFER);
            service.pump(bob.id, 0, hub.subscribe("bob"), out).await;
            let mut received = 0;
            let status = loop {
                match stream.recv().await.expect("the stream ends with a status") {
                    Ok(message) => received = message.sequence,
                    Err(status) => break status,
                }
            };
            assert!(
                status
                    .message()
                    .ends_with(&format!("after_sequence={received}")),
                "{status:?} after receiving up to sequence {received}"
            );
        }
    }
}
