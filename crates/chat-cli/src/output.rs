//! How results are printed: for people, or as one JSON object per line.

use std::time::{Duration, UNIX_EPOCH};

use chat_proto::v1::Message;
use serde_json::{Value, json};

/// Formats a message's send time as RFC 3339 (UTC, milliseconds).
pub fn format_time(unix_ms: i64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0));
    humantime::format_rfc3339_millis(time).to_string()
}

/// A message as a JSON object.
pub fn message_json(message: &Message) -> Value {
    json!({
        "type": "message",
        "id": message.id,
        "sequence": message.sequence,
        "sender": message.sender,
        "recipient": message.recipient,
        "text": message.text,
        "time": format_time(message.sent_at_unix_ms),
        "sent_at_unix_ms": message.sent_at_unix_ms,
    })
}

/// A message as one line for people.
pub fn message_line(message: &Message) -> String {
    format!(
        "[{}] #{} {}: {}",
        format_time(message.sent_at_unix_ms),
        message.sequence,
        message.sender,
        message.text
    )
}

/// Prints a message in the chosen format.
pub fn print_message(json: bool, message: &Message) {
    if json {
        println!("{}", message_json(message));
    } else {
        println!("{}", message_line(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_every_field() {
        let message = Message {
            id: 7,
            sequence: 3,
            sender: "alice".into(),
            recipient: "bob".into(),
            text: "hi \"there\"".into(),
            sent_at_unix_ms: 1_700_000_000_123,
        };
        let value = message_json(&message);
        assert_eq!(value["id"], 7);
        assert_eq!(value["sequence"], 3);
        assert_eq!(value["text"], "hi \"there\"");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(
            message_line(&message),
            "[2023-11-14T22:13:20.123Z] #3 alice: hi \"there\""
        );
    }
}
