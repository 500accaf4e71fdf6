//! The `grpc-timeout` header (chat-lb-client's `deadline.rs`, compiled in here because
//! the module is private). Properties: parsing arbitrary text never panics and accepts
//! only 1-8 ASCII digits followed by one of `HMSmun`, giving exactly that many units; a
//! parsed value encodes and parses back unchanged; any `Duration` encodes to a valid
//! header value that parses back to at least the duration and less than one unit of the
//! chosen encoding above it (or to the largest encodable value, 99999999H).
#![no_main]

#[allow(dead_code)]
#[path = "../../crates/chat-lb-client/src/deadline.rs"]
mod deadline;

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// Nanoseconds per unit, by the unit's letter.
fn unit_nanos(unit: u8) -> Option<u128> {
    Some(match unit {
        b'H' => 3_600_000_000_000,
        b'M' => 60_000_000_000,
        b'S' => 1_000_000_000,
        b'm' => 1_000_000,
        b'u' => 1_000,
        b'n' => 1,
        _ => return None,
    })
}

/// The grammar, checked independently: the value and its unit's size in nanoseconds.
fn expected(text: &str) -> Option<(u128, u128)> {
    let (&unit, digits) = text.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    Some((value, unit_nanos(unit)?))
}

fn check_text(text: &str) {
    let parsed = deadline::parse(text);
    match (parsed, expected(text)) {
        (Some(d), Some((value, per))) => {
            assert_eq!(d.as_nanos(), value * per, "{text:?}");
            assert_eq!(deadline::parse(&deadline::encode(d)), Some(d), "{text:?}");
        }
        (None, None) => {}
        (parsed, _) => panic!("{text:?} parsed as {parsed:?}"),
    }
}

fn check_duration(d: Duration) {
    let encoded = deadline::encode(d);
    let (value, per) = expected(&encoded).unwrap_or_else(|| panic!("{d:?} -> {encoded:?}"));
    let back = deadline::parse(&encoded).expect("encoded value parses");
    assert_eq!(back.as_nanos(), value * per);
    let largest = 99_999_999 * 3_600_000_000_000u128;
    if d.as_nanos() > largest {
        assert_eq!(back.as_nanos(), largest, "{d:?} -> {encoded:?}");
    } else {
        assert!(back >= d, "{d:?} -> {encoded:?} -> {back:?}");
        assert!(back.as_nanos() - d.as_nanos() < per, "{d:?} -> {encoded:?}");
    }
    let mut headers = HeaderMap::new();
    deadline::set(&mut headers, d);
    assert_eq!(deadline::from_headers(&headers), Some(back), "{d:?}");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_text(text);
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value);
        let from_headers = deadline::from_headers(&headers);
        if let Ok(text) = std::str::from_utf8(data) {
            assert_eq!(from_headers, deadline::parse(text));
        }
    }
    // The same bytes as a duration: seconds from the first 8, nanoseconds from the next 4.
    let mut bytes = [0u8; 12];
    let n = data.len().min(12);
    bytes[..n].copy_from_slice(&data[..n]);
    let secs = u64::from_le_bytes(bytes[..8].try_into().unwrap());
    let nanos = u32::from_le_bytes(bytes[8..].try_into().unwrap()) % 1_000_000_000;
    check_duration(Duration::new(secs, nanos));
    // Small durations too, where the fine units are chosen.
    check_duration(Duration::from_nanos(secs % 1_000_000_000_000));
});
