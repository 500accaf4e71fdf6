//! `chat_lb_client::parse_address_list`: arbitrary text never panics; an accepted list
//! has one target per comma-separated entry, each with a non-zero port, and each
//! target's display form (`host:port`, no scheme) parses back to the same host and port,
//! and with its scheme written in front (`https://host:port`) to the same target.
#![no_main]

use chat_lb_client::{Host, Target, parse_address_list};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(list) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(targets) = parse_address_list(list) else {
        return;
    };
    assert_eq!(targets.len(), list.split(',').count(), "{list:?}");
    for (entry, target) in list.split(',').zip(&targets) {
        assert_eq!(entry.parse::<Target>().as_ref(), Ok(target), "{entry:?}");
        assert_ne!(target.port(), 0, "{entry:?}");
        if let Host::Name(name) = target.host() {
            assert!(
                !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.')),
                "{entry:?} -> host {name:?}"
            );
        }
        let shown = target.to_string();
        let back: Target = shown
            .parse()
            .unwrap_or_else(|e| panic!("{entry:?} -> {shown:?}: {e}"));
        assert_eq!(
            (back.host(), back.port(), back.scheme()),
            (target.host(), target.port(), None),
            "{entry:?} -> {shown:?}"
        );
        if let Some(scheme) = target.scheme() {
            let with_scheme = format!("{scheme}://{shown}");
            assert_eq!(
                with_scheme.parse::<Target>().as_ref(),
                Ok(target),
                "{entry:?}"
            );
        }
    }
});
