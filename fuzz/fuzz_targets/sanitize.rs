//! The CLI's text sanitising (`chat_cli::output`), applied to others' text before it
//! reaches a terminal. Properties, for arbitrary text:
//! - `sanitize` never panics; its output holds no control character (C0, DEL, C1), no
//!   bidirectional override or isolate (U+202A-U+202E, U+2066-U+2069) and nothing else
//!   `needs_escape` names; printable ASCII without a backslash passes through unchanged
//!   (borrowed); and the escaping is reversible (`unescape` gets the text back), so
//!   distinct texts never look the same;
//! - `json_line` of a JSON string holding the text is free of those characters too and
//!   parses back to the same value.
#![no_main]

use std::borrow::Cow;

use chat_cli::output::{json_line, needs_escape, sanitize, unescape};
use libfuzzer_sys::fuzz_target;

fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        || needs_escape(c)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let sanitized = sanitize(&text);
    if let Some(bad) = sanitized.chars().find(|&c| forbidden(c)) {
        panic!("{text:?} -> {sanitized:?} keeps {bad:?}");
    }
    if text.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'\\') {
        assert!(matches!(sanitized, Cow::Borrowed(_)), "plain text copied");
        assert_eq!(sanitized, text, "plain text changed");
    }
    assert_eq!(
        unescape(&sanitized).as_deref(),
        Some(&*text),
        "{sanitized:?} is not reversible"
    );

    let value = serde_json::json!({ "text": &*text });
    let line = json_line(&value);
    if let Some(bad) = line.chars().find(|&c| forbidden(c)) {
        panic!("{text:?} -> JSON {line:?} keeps {bad:?}");
    }
    let back: serde_json::Value = serde_json::from_str(&line).expect("json_line is JSON");
    assert_eq!(back, value);
});
