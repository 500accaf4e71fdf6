//! Request validation (`chat_server::validate`): for arbitrary text and numbers, no
//! validator panics, and each accepts exactly what its documented rule allows, checked
//! here independently: usernames are 1-32 characters of `[A-Za-z0-9_.-]`, passwords
//! 8-1024 bytes, idempotency keys 1-64 characters of `[A-Za-z0-9_.:-]`, message texts
//! non-empty and within the byte limit; page sizes are 0 (the default) or capped. The
//! text is also sent as an `authorization` header: `auth::bearer_token` accepts it only
//! as printable ASCII `Bearer ` and a token of 1-128 bytes (surrounding blanks trimmed),
//! returned as written, and refuses everything else with UNAUTHENTICATED.
#![no_main]

use arbitrary::Arbitrary;
use chat_server::{auth, config::limits, validate};
use libfuzzer_sys::fuzz_target;
use tonic::Code;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    requested: u32,
    default: u32,
    max: u32,
    max_bytes: u32,
    /// The text is also checked repeated this many times (plus one), to reach the
    /// length limits.
    repeat: u8,
    text: &'a str,
}

fn check_text(text: &str, max_bytes: u32) {
    let chars = text.chars().count();
    let ascii_only = |extra: &[u8]| {
        text.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let expect = |result: Result<(), tonic::Status>, valid: bool, what: &str| match result {
        Ok(()) => assert!(valid, "{what} accepted {text:?}"),
        Err(status) => {
            assert!(!valid, "{what} refused {text:?}: {status:?}");
            assert_eq!(status.code(), Code::InvalidArgument, "{what}");
        }
    };

    expect(
        validate::username(text),
        (1..=32).contains(&chars) && ascii_only(b"_.-"),
        "username",
    );
    for c in text.chars() {
        assert_eq!(
            validate::is_username_char(c),
            c.is_ascii_alphanumeric() || "_.-".contains(c),
            "{c:?}"
        );
    }
    expect(
        validate::password(text),
        (8..=1024).contains(&text.len()),
        "password",
    );
    expect(
        validate::idempotency_key(text),
        (1..=64).contains(&chars) && ascii_only(b"_.:-"),
        "idempotency_key",
    );
    expect(
        validate::message_text(text, max_bytes),
        !text.is_empty() && text.len() as u64 <= u64::from(max_bytes),
        "message_text",
    );
}

fn check_bearer(header: &str) {
    let Ok(value) = tonic::metadata::AsciiMetadataValue::try_from(header) else {
        return; // not a valid header value: it cannot arrive
    };
    let mut request = tonic::Request::new(());
    request
        .metadata_mut()
        .insert(chat_proto::AUTHORIZATION_HEADER, value);
    match auth::bearer_token(&request) {
        Ok(token) => {
            let rest = header
                .strip_prefix("Bearer ")
                .expect("accepted without `Bearer `");
            assert!(
                !token.is_empty() && token.len() <= limits::MAX_TOKEN_LEN,
                "{header:?}"
            );
            assert_eq!(token, rest.trim(), "{header:?}");
        }
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{header:?}");
            // HTTP allows bytes 0x80-0xff in a value, but such a value is not text.
            let text = header
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
            let token = header.strip_prefix("Bearer ").map(str::trim);
            assert!(
                !text || token.is_none_or(|t| t.is_empty() || t.len() > limits::MAX_TOKEN_LEN),
                "{header:?} refused"
            );
        }
    }
}

fn check_page_size(requested: u32, (default, max): (u32, u32)) {
    let size = validate::page_size(requested, (default, max));
    let want = if requested == 0 {
        default
    } else {
        requested.min(max)
    };
    assert_eq!(size, want, "page_size({requested}, ({default}, {max}))");
}

fuzz_target!(|input: Input<'_>| {
    check_text(input.text, input.max_bytes);
    check_text(
        &input.text.repeat(usize::from(input.repeat) + 1),
        input.max_bytes,
    );
    check_bearer(input.text);
    check_bearer(&format!("Bearer {}", input.text));

    check_page_size(input.requested, (input.default, input.max));
    for (default, max) in [limits::LIST_PAGE, limits::FETCH_PAGE] {
        check_page_size(input.requested, (default, max));
        // With the real limits a page is never empty and never over the maximum.
        let size = validate::page_size(input.requested, (default, max));
        assert!((1..=max).contains(&size), "{size}");
    }
});
