//! `send TO TEXT`: send one message (`-` reads the text from stdin).

use std::io::Read;

use chat_proto::v1::{Message, SendMessageRequest};

use crate::{
    connect::Session,
    error::{CliError, ErrorKind},
    output,
};

/// Sends `text` (or stdin for `-`) to `to` and prints the stored message.
pub async fn run(session: &Session, to: &str, text: &str, json: bool) -> Result<(), CliError> {
    let text = if text == "-" {
        let mut buffer = String::new();
        std::io::stdin()
            .read_to_string(&mut buffer)
            .map_err(|error| {
                CliError::new(ErrorKind::Other, format!("cannot read stdin: {error}"))
            })?;
        buffer.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        text.to_owned()
    };
    let message = send(session, to, &text).await?;
    if json {
        println!("{}", output::json_line(&output::message_json(&message)));
    } else {
        println!(
            "sent #{} to {} (their message {})",
            message.id,
            output::sanitize(&message.recipient),
            message.sequence
        );
    }
    Ok(())
}

/// Sends one message with a fresh idempotency key. The balancer may retry the call on
/// another replica; the key makes sure it is stored once.
pub async fn send(session: &Session, to: &str, text: &str) -> Result<Message, CliError> {
    let mut client = session.client.clone();
    let response = client
        .send_message(session.request(SendMessageRequest {
            recipient: to.to_owned(),
            text: text.to_owned(),
            idempotency_key: uuid::Uuid::new_v4().to_string(),
        }))
        .await?
        .into_inner();
    response
        .message
        .ok_or_else(|| CliError::new(ErrorKind::Other, "the server answered without the message"))
}
