//! `watch`: print messages live, across replica failures, until Ctrl-C.

use chat_proto::v1::AckMessagesRequest;
use tokio::sync::mpsc;

use crate::{
    connect::Session,
    error::CliError,
    feed::{self, FeedEvent},
    output,
};

/// Prints messages as they arrive and acknowledges them once printed. Failover
/// notices go to stderr, so stdout carries only messages.
pub async fn run(session: &Session, json: bool) -> Result<(), CliError> {
    let (events, mut incoming) = mpsc::channel(256);
    let mut feed = tokio::spawn(feed::run(session.clone(), 0, events));
    let mut client = session.client.clone();
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            finished = &mut feed => {
                return finished.unwrap_or_else(|error| {
                    Err(CliError::new(crate::error::ErrorKind::Other, format!("watch failed: {error}")))
                });
            }
            event = incoming.recv() => event,
        };
        let Some(event) = event else { return Ok(()) };
        let mut last_printed = None;
        let mut next = Some(event);
        // Print everything already queued, then acknowledge it all at once.
        while let Some(event) = next {
            match event {
                FeedEvent::Message(message) => {
                    output::print_message(json, &message);
                    last_printed = Some(message.sequence);
                }
                other => eprintln!("{}", describe(&other)),
            }
            next = incoming.try_recv().ok();
        }
        if let Some(up_to_sequence) = last_printed {
            // A lost acknowledgement only means the message is shown again next time.
            if let Err(status) = client
                .ack_messages(session.request(AckMessagesRequest { up_to_sequence }))
                .await
            {
                eprintln!(
                    "* could not acknowledge up to #{up_to_sequence}: {}",
                    output::sanitize(&crate::error::one_line(status.message()))
                );
            }
        }
    }
}

/// A one-line notice for a feed event other than a message.
pub fn describe(event: &FeedEvent) -> String {
    match event {
        FeedEvent::Connected {
            replica,
            resumed,
            after,
        } => {
            let replica = output::sanitize(replica.as_deref().unwrap_or("a replica"));
            if *resumed {
                format!("* failover: resumed on {replica} after message #{after}")
            } else {
                format!("* watching via {replica}")
            }
        }
        FeedEvent::Lost { reason } => format!(
            "* lost the stream ({}); reconnecting",
            output::sanitize(reason)
        ),
        FeedEvent::Message(message) => output::message_line(message),
    }
}
