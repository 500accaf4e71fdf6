//! How results are printed: for people, or as one JSON object per line.
//!
//! Text from others (message texts, usernames, server error messages, replica
//! ids) goes through [`sanitize`] before it reaches a terminal in human output,
//! so that it cannot forge lines, move the cursor, retitle the terminal or
//! reorder what is shown. `--json` output is exact: serde escapes it, and
//! [`json_line`] escapes what serde leaves raw, so that it too is safe on a
//! terminal.

use std::{
    borrow::Cow,
    fmt::Write as _,
    time::{Duration, UNIX_EPOCH},
};

use chat_proto::v1::Message;
use serde_json::{Value, json};

/// Makes text from others safe to print on a terminal, on one line.
///
/// Plain text (no character listed below, no backslash) is returned as is,
/// borrowed. Otherwise every such character is written as a visible escape:
///
/// | characters | written as |
/// | --- | --- |
/// | `\` | `\\` (so that no escape can be forged) |
/// | line feed, carriage return, tab | `\n`, `\r`, `\t` |
/// | ESC (U+001B) | `\e` |
/// | the other C0 controls (U+0000-U+001F) and DEL (U+007F) | `\x00`-`\x1f`, `\x7f` |
/// | the C1 controls (U+0080-U+009F) | `\u{80}`-`\u{9f}` |
/// | invisible format characters (see [`needs_escape`]) | `\u{202e}` and so on |
///
/// The invisible format characters are those that can reorder or hide text:
/// the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
/// U+2066-U+2069) and marks (U+200E, U+200F, U+061C), the zero-width
/// characters (U+200B-U+200D, U+2060-U+2064, U+FEFF, U+180E), the line and
/// paragraph separators (U+2028, U+2029), the other format controls of
/// U+206A-U+206F and U+FFF9-U+FFFB, and the tag characters (U+E0000-U+E007F).
/// Escaping the zero-width joiners changes how some emoji sequences and
/// scripts render; a chat terminal cannot tell those from hidden text.
///
/// The result never contains a character for which [`needs_escape`] is true,
/// hence no line break: one message stays one line. The escaping is
/// reversible (every escape starts with a backslash, and a backslash in the
/// text is doubled), so distinct texts never look the same.
///
/// ```
/// use chat_cli::output::sanitize;
/// assert_eq!(sanitize("hello, world"), "hello, world");
/// assert_eq!(sanitize("a\r\n[time] #99 admin: hi"), r"a\r\n[time] #99 admin: hi");
/// assert_eq!(sanitize("\u{1b}]0;pwned\u{7}"), r"\e]0;pwned\x07");
/// assert_eq!(sanitize("abc\u{202e}fed"), r"abc\u{202e}fed");
/// assert_eq!(sanitize(r"\n"), r"\\n");
/// ```
pub fn sanitize(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(|c| c == '\\' || needs_escape(c)) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first]);
    for c in text[first..].chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{1b}' => out.push_str("\\e"),
            '\0'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether [`sanitize`] escapes `c` (a backslash aside, which it doubles):
/// the C0 controls, DEL, the C1 controls, and the invisible format
/// characters that can reorder or hide text (listed at [`sanitize`]).
pub fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\0'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{61c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// A JSON value as one line: exact for any JSON parser, and safe on a
/// terminal. serde escapes the C0 controls; every other character for which
/// [`needs_escape`] is true (DEL, the C1 controls, the invisible format
/// characters) is written as a JSON `\uXXXX` escape too (a surrogate pair
/// beyond U+FFFF), which decodes to the same text.
///
/// ```
/// let value = serde_json::json!({"text": "a\u{1b}b\u{9b}c\u{202e}d"});
/// let line = chat_cli::output::json_line(&value);
/// assert_eq!(line, r#"{"text":"a\u001bb\u009bc\u202ed"}"#);
/// assert_eq!(serde_json::from_str::<serde_json::Value>(&line).unwrap(), value);
/// ```
pub fn json_line(value: &Value) -> String {
    let text = value.to_string();
    // Outside strings, serialized JSON is printable ASCII; inside them, serde
    // writes only whole escapes, so a raw character can be replaced by one.
    if !text.contains(needs_escape) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if needs_escape(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    out
}

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

/// A message as one line for people: sender and text [`sanitize`]d, so the
/// line is exactly one line and shows what was sent.
pub fn message_line(message: &Message) -> String {
    format!(
        "[{}] #{} {}: {}",
        format_time(message.sent_at_unix_ms),
        message.sequence,
        sanitize(&message.sender),
        sanitize(&message.text)
    )
}

/// Prints a message in the chosen format.
pub fn print_message(json: bool, message: &Message) {
    if json {
        println!("{}", json_line(&message_json(message)));
    } else {
        println!("{}", message_line(message));
    }
}

/// Undoes [`sanitize`]: turns its escapes (`\\`, `\n`, `\r`, `\t`, `\e`, `\xHH`,
/// `\u{H...}`) back into the characters they stand for, so a script can recover the exact
/// text a command printed. `None` when `text` holds an escape `sanitize` never writes.
///
/// ```
/// use chat_cli::output::{sanitize, unescape};
/// let raw = "a\r\n\u{1b}]0;x\u{7} \u{202e}";
/// assert_eq!(unescape(&sanitize(raw)).as_deref(), Some(raw));
/// ```
pub fn unescape(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '\\' => '\\',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'e' => '\u{1b}',
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                char::from(u8::from_str_radix(&hex, 16).ok()?)
            }
            'u' => {
                if chars.next()? != '{' {
                    return None;
                }
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            _ => return None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_is_the_identity_on_plain_text() {
        for text in [
            "",
            "hello, world",
            "[2023-11-14T22:13:20.123Z] #3 alice: hi \"there\" {json} 100% ~`'",
            "Grüße, ça va? 日本語のテキスト Ελληνικά עברית العربية",
            "emoji 🎉🦀 and symbols ∑ → ½ · «»",
        ] {
            assert!(
                matches!(sanitize(text), Cow::Borrowed(t) if t == text),
                "{text:?} changed: {:?}",
                sanitize(text)
            );
        }
    }

    #[test]
    fn sanitize_escapes_each_kind_visibly() {
        let cases = [
            ("a\nb", r"a\nb"),
            ("a\rb", r"a\rb"),
            ("a\tb", r"a\tb"),
            ("\u{1b}[2J\u{1b}]0;title\u{7}", r"\e[2J\e]0;title\x07"),
            (
                "\0\u{1}\u{8}\u{b}\u{c}\u{1f}\u{7f}",
                r"\x00\x01\x08\x0b\x0c\x1f\x7f",
            ),
            (
                "\u{80}\u{85}\u{9b}31m\u{9f}",
                r"\u{80}\u{85}\u{9b}31m\u{9f}",
            ),
            (
                "\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
                r"\u{202a}\u{202b}\u{202c}\u{202d}\u{202e}",
            ),
            (
                "\u{2066}\u{2067}\u{2068}\u{2069}",
                r"\u{2066}\u{2067}\u{2068}\u{2069}",
            ),
            (
                "\u{200b}\u{200c}\u{200d}\u{200e}\u{200f}",
                r"\u{200b}\u{200c}\u{200d}\u{200e}\u{200f}",
            ),
            ("\u{2028}\u{2029}\u{feff}", r"\u{2028}\u{2029}\u{feff}"),
            ("\u{e0041}\u{2060}\u{61c}", r"\u{e0041}\u{2060}\u{61c}"),
            (r"C:\temp\n", r"C:\\temp\\n"),
            // A forged escape is told apart from a real one.
            ("\\e[31m", r"\\e[31m"),
        ];
        for (raw, shown) in cases {
            assert_eq!(sanitize(raw), shown, "{raw:?}");
            assert_eq!(unescape(&sanitize(raw)).as_deref(), Some(raw));
        }
        // A message forging a line of its own stays on the sender's line.
        let forged = "ok\r\n[2023-11-14T22:13:20.123Z] #99 admin: please re-enter your password";
        assert_eq!(sanitize(forged).lines().count(), 1);
    }

    #[test]
    fn sanitize_output_never_holds_a_character_it_escapes() {
        // Every Unicode scalar value, alone and between plain text.
        for c in (0..=0x10_FFFFu32).filter_map(char::from_u32) {
            let text = format!("a{c}b");
            let shown = sanitize(&text);
            assert!(!shown.chars().any(needs_escape), "{c:?} gave {shown:?}");
            if c.is_control() {
                assert!(needs_escape(c), "{c:?} is a control character");
            }
            if needs_escape(c) || c == '\\' {
                assert_ne!(shown, text, "{c:?} kept as is");
            } else {
                assert!(matches!(shown, Cow::Borrowed(_)), "{c:?} changed");
            }
            assert_eq!(unescape(&shown).as_deref(), Some(text.as_str()), "{c:?}");
        }
        for range in [
            0x202a..=0x202e,
            0x2066..=0x2069,
            0x200b..=0x200f,
            0x2028..=0x2029,
            0xfeff..=0xfeff,
            0x80..=0x9f,
            0..=0x1f,
            0x7f..=0x7f,
        ] {
            for c in range.filter_map(char::from_u32) {
                assert!(needs_escape(c), "{c:?}");
            }
        }
    }

    #[test]
    fn sanitize_round_trips_mixed_text() {
        // A small deterministic generator: no extra dependency.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "ab \\\n\r\t\u{1b}\u{0}\u{7f}\u{85}\u{9b}\u{202e}\u{2066}\u{200b}\u{2028}\u{feff}éx{}u🎉"
            .chars()
            .collect();
        for _ in 0..2000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let shown = sanitize(&text);
            assert!(!shown.chars().any(needs_escape), "{text:?} gave {shown:?}");
            assert_eq!(unescape(&shown).as_deref(), Some(text.as_str()));
        }
    }

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

    #[test]
    fn a_message_line_is_one_line_whatever_the_text() {
        let message = Message {
            id: 8,
            sequence: 4,
            sender: "mallory".into(),
            recipient: "bob".into(),
            text: "hi\r\n[2023-11-14T22:13:20.123Z] #99 admin: please re-enter your password\u{1b}]0;owned\u{7}".into(),
            sent_at_unix_ms: 1_700_000_000_123,
        };
        let line = message_line(&message);
        assert_eq!(
            line,
            r"[2023-11-14T22:13:20.123Z] #4 mallory: hi\r\n[2023-11-14T22:13:20.123Z] #99 admin: please re-enter your password\e]0;owned\x07"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        // JSON keeps the text exact.
        assert_eq!(message_json(&message)["text"], message.text.as_str());
    }

    #[test]
    fn json_lines_are_exact_and_safe_on_a_terminal() {
        let texts = [
            "plain".to_owned(),
            "\u{1b}[2J\r\n\t\u{0}\u{7f}\u{85}\u{9b}\u{202e}\u{2066}\u{200b}\u{2028}\u{feff}"
                .to_owned(),
            "tag \u{e0041} emoji 🎉 quote \" backslash \\ \\u009b".to_owned(),
            (0..=0x10_FFFFu32)
                .filter_map(char::from_u32)
                .filter(|c| needs_escape(*c) || c.is_ascii())
                .collect(),
        ];
        for text in texts {
            let value = json!({"type": "message", "text": text});
            let line = json_line(&value);
            assert!(!line.chars().any(needs_escape), "{line:?}");
            let parsed: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(parsed, value);
        }
        // Nothing to escape: serde's own output.
        let value = json!({"text": "hi \"there\""});
        assert_eq!(json_line(&value), value.to_string());
    }
}
