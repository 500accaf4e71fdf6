//! Wildcard patterns (`chat_server::wildcard::Pattern`) and their translations.
//!
//! Input: a pattern, then candidate usernames, one per line. Properties:
//! - parsing never panics, and accepts exactly the patterns of at most 64 characters of
//!   `[A-Za-z0-9_.-*?]` (a refusal names the first bad character and its position);
//!   the normal form is the pattern lowered with runs of `*` folded (`""` is `*`);
//! - for every valid username, each of these agrees with the reference matcher in
//!   `src/lib.rs` (case-insensitive; `*` any run, `?` one character) on the raw pattern:
//!   `Pattern::matches`; SQLite's `username_key GLOB pattern` (evaluated by SQLite,
//!   with the key lowered as the SQLite store does) together with the literal-prefix
//!   range the store scans (`key >= prefix AND key < Pattern::literal_prefix_end()`);
//!   and the anchored regex MongoDB gets (it must compile), with the same range.
//!
//! Candidates are the input lines and, so that matches are common, the pattern itself
//! with its wildcards filled in from each line and its letters' case flipped.
#![no_main]

use std::{cell::RefCell, collections::HashMap};

use chat_fuzz::wildcard_matches as reference;
use chat_server::{
    validate,
    wildcard::{MAX_PATTERN_LEN, Pattern, PatternError},
};
use libfuzzer_sys::fuzz_target;
use rusqlite::Connection;

thread_local! {
    static SQLITE: RefCell<Connection> =
        RefCell::new(Connection::open_in_memory().expect("in-memory SQLite"));
}

/// SQLite's verdict: (`key GLOB pattern`, `key` inside the scanned prefix range).
fn sqlite(key: &str, glob: &str, prefix: &str, upper: Option<&str>) -> (bool, bool) {
    SQLITE.with(|db| {
        db.borrow()
            .prepare_cached("SELECT ?1 GLOB ?2, ?1 >= ?3 AND (?4 IS NULL OR ?1 < ?4)")
            .and_then(|mut s| {
                s.query_row(rusqlite::params![key, glob, prefix, upper], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
            })
            .unwrap_or_else(|e| panic!("SQLite refused GLOB {glob:?}: {e}"))
    })
}

/// The pattern's MongoDB regex, compiled (it must compile), from a cache: compiling
/// is most of the work, and mutated inputs often keep the pattern.
fn compiled(pattern: &Pattern) -> regex::Regex {
    thread_local! {
        static CACHE: RefCell<HashMap<String, regex::Regex>> = RefCell::default();
    }
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.len() > 4096 {
            cache.clear();
        }
        let translated = pattern.to_anchored_regex();
        cache
            .entry(translated)
            .or_insert_with_key(|translated| {
                regex::Regex::new(translated)
                    .unwrap_or_else(|e| panic!("{pattern} -> regex {translated:?}: {e}"))
            })
            .clone()
    })
}

fn check_parse(raw: &str) -> Option<Pattern> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || "_.-*?".contains(c);
    match Pattern::parse(raw) {
        Ok(pattern) => {
            assert!(raw.chars().count() <= MAX_PATTERN_LEN && raw.chars().all(valid_char));
            let mut normal = String::new();
            for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
                if !(c == '*' && normal.ends_with('*')) {
                    normal.push(c);
                }
            }
            if normal.is_empty() {
                normal.push('*');
            }
            assert_eq!(pattern.as_str(), normal, "{raw:?}");
            let prefix: String = normal.chars().take_while(|c| !"*?".contains(*c)).collect();
            assert_eq!(pattern.literal_prefix(), prefix);
            assert_eq!(pattern.is_literal(), prefix == normal);
            Some(pattern)
        }
        Err(PatternError::TooLong) => {
            assert!(raw.chars().count() > MAX_PATTERN_LEN, "{raw:?}");
            None
        }
        Err(PatternError::BadCharacter(c, position)) => {
            assert!(raw.chars().count() <= MAX_PATTERN_LEN, "{raw:?}");
            let first_bad = raw.chars().enumerate().find(|(_, c)| !valid_char(*c));
            assert_eq!(first_bad, Some((position - 1, c)), "{raw:?}");
            None
        }
    }
}

fn check_name(raw: &str, pattern: &Pattern, regex: &regex::Regex, name: &str) {
    if validate::username(name).is_err() {
        return; // no store holds such a name
    }
    let key = name.to_lowercase(); // the stores' username_key
    let want = reference(if raw.is_empty() { "*" } else { raw }, name);
    assert_eq!(pattern.matches(&key), want, "matches: {raw:?} vs {name:?}");

    let prefix = pattern.literal_prefix();
    let upper = pattern.literal_prefix_end();
    let (glob, in_range) = sqlite(&key, pattern.to_sqlite_glob(), prefix, upper.as_deref());
    assert_eq!(glob, want, "SQLite GLOB {pattern} vs {name:?}");
    assert!(
        !want || in_range,
        "{name:?} matches {raw:?} but is outside the scanned range"
    );
    assert_eq!(regex.is_match(&key), want, "regex {regex} vs {name:?}");
}

/// The pattern with `*` replaced by `fill`, `?` by its first character (or `x`), and
/// the case of letters flipped.
fn instantiate(raw: &str, fill: &str) -> String {
    let one = fill.chars().next().unwrap_or('x').to_string();
    raw.chars()
        .map(|c| match c {
            '*' => fill.to_string(),
            '?' => one.clone(),
            c if c.is_ascii_lowercase() => c.to_ascii_uppercase().to_string(),
            c => c.to_ascii_lowercase().to_string(),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let raw = lines.next().unwrap_or_default();
    let Some(pattern) = check_parse(raw) else {
        return;
    };
    let regex = compiled(&pattern);
    check_name(raw, &pattern, &regex, &instantiate(raw, ""));
    for line in lines {
        check_name(raw, &pattern, &regex, line);
        check_name(raw, &pattern, &regex, &instantiate(raw, line));
    }
});
