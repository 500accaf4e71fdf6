//! The `grpc-timeout` request header: reading the deadline tonic's
//! `Request::set_timeout` sets, and writing the builder's default timeout.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

/// A ready-made name: looking it up skips parsing and validating a string.
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The call's timeout from its `grpc-timeout` header, if it has a valid one.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get(&GRPC_TIMEOUT)?.to_str().ok()?)
}

/// Sets the `grpc-timeout` header, so the server gives up when the client does
/// (a retry sends the time left, not the call's whole timeout).
pub(crate) fn set(headers: &mut HeaderMap, timeout: Duration) {
    if let Ok(value) = HeaderValue::from_str(&encode(timeout)) {
        headers.insert(GRPC_TIMEOUT.clone(), value);
    }
}

/// Parses `TimeoutValue TimeoutUnit`: at most 8 digits, then one of `HMSmun`.
pub(crate) fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at_checked(value.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Encodes a timeout in the finest unit that fits 8 digits (rounding up).
pub(crate) fn encode(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        ("n", 1u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
        ("M", 60_000_000_000),
    ] {
        let n = nanos.div_ceil(per);
        if n <= MAX {
            return format!("{n}{unit}");
        }
    }
    format!("{}H", nanos.div_ceil(3_600_000_000_000).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(3),
            Duration::from_nanos(7),
            Duration::from_secs(10 * 24 * 3600),
        ] {
            let back = parse(&encode(d)).unwrap();
            assert!(
                back >= d && back - d < d / 1000 + Duration::from_micros(1),
                "{d:?} -> {back:?}"
            );
        }
        assert_eq!(parse("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        for bad in ["", "m", "123456789m", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn set_replaces_the_header_and_from_headers_reads_it() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_headers(&headers), None);
        set(&mut headers, Duration::from_secs(3));
        set(&mut headers, Duration::from_millis(1500));
        assert_eq!(headers.get_all("grpc-timeout").iter().count(), 1);
        assert_eq!(from_headers(&headers), Some(Duration::from_millis(1500)));
    }
}
