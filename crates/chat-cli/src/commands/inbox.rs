//! `inbox`: print undelivered messages, oldest first, and acknowledge them.

use chat_proto::v1::{AckMessagesRequest, FetchMessagesRequest};

use crate::{connect::Session, error::CliError, output};

/// Prints and acknowledges every undelivered message, a page at a time: a page is
/// acknowledged only after it was printed, so an interruption loses nothing.
pub async fn run(session: &Session, json: bool) -> Result<(), CliError> {
    let mut client = session.client.clone();
    let mut printed = 0usize;
    loop {
        let page = client
            .fetch_messages(session.request(FetchMessagesRequest::default()))
            .await?
            .into_inner();
        let Some(last) = page.messages.last().map(|m| m.sequence) else {
            break;
        };
        for message in &page.messages {
            output::print_message(json, message);
        }
        printed += page.messages.len();
        client
            .ack_messages(session.request(AckMessagesRequest {
                up_to_sequence: last,
            }))
            .await?;
        if !page.has_more {
            break;
        }
    }
    if printed == 0 && !json {
        eprintln!("no new messages");
    }
    Ok(())
}
