//! A message feed that survives replica failures: `Subscribe`, and when the stream
//! breaks, subscribe again (the balancer places the call on a live replica) from the
//! last sequence seen, so no message is lost or shown twice.

use std::time::Duration;

use chat_proto::v1::{Message, SubscribeRequest};
use tokio::sync::mpsc;
use tonic::Code;

use crate::{connect::Session, error::CliError};

/// What the feed reports to its consumer.
#[derive(Debug, Clone)]
pub enum FeedEvent {
    /// A stream is open on a replica.
    Connected {
        /// The replica's id (from the `x-chat-replica` header), if it said.
        replica: Option<String>,
        /// True when this replaces a stream that broke (a failover).
        resumed: bool,
        /// The sequence the stream resumes after (0: after the last acknowledged).
        after: u64,
    },
    /// A new message, in sequence order, never one shown before.
    Message(Message),
    /// The stream broke; the feed is reconnecting.
    Lost {
        /// Why, in one line.
        reason: String,
    },
}

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Runs the feed until the consumer goes away (`Ok`) or the server refuses the
/// subscription for good (wrong session: `Err`).
pub async fn run(
    session: Session,
    mut after: u64,
    events: mpsc::Sender<FeedEvent>,
) -> Result<(), CliError> {
    let mut client = session.client.clone();
    let mut connected_before = false;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let request = session.request(SubscribeRequest {
            after_sequence: after,
        });
        let reason = match client.subscribe(request).await {
            Ok(response) => {
                let replica = response
                    .metadata()
                    .get(chat_proto::REPLICA_ID_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let connected = FeedEvent::Connected {
                    replica,
                    resumed: connected_before,
                    after,
                };
                if events.send(connected).await.is_err() {
                    return Ok(());
                }
                connected_before = true;
                backoff = FIRST_BACKOFF;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            if after > 0 && message.sequence <= after {
                                continue;
                            }
                            after = message.sequence;
                            if events.send(FeedEvent::Message(message)).await.is_err() {
                                return Ok(());
                            }
                        }
                        Ok(None) => break "the stream ended".to_owned(),
                        Err(status) if is_permanent(&status) => return Err(status.into()),
                        Err(status) => break crate::error::one_line(status.message()),
                    }
                }
            }
            Err(status) if is_permanent(&status) => return Err(status.into()),
            Err(status) => crate::error::one_line(status.message()),
        };
        if events.send(FeedEvent::Lost { reason }).await.is_err() {
            return Ok(());
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Failures that resubscribing cannot cure.
fn is_permanent(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unauthenticated | Code::PermissionDenied | Code::InvalidArgument | Code::NotFound
    )
}
