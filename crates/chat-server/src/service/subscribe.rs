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
                        last = Some(message.sequence);
                        self.forward(&out, Ok(to_wire(&message))).await
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

    /// Sends every stored message after `last`, advancing `last`.
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
                *last = Some(message.sequence);
                self.forward(out, Ok(to_wire(message))).await?;
            }
            if !page.has_more {
                return Ok(());
            }
        }
    }

    /// Sends one item to the client, giving up if it leaves or the replica shuts down.
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
