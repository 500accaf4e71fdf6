//! `ListAccounts` page tokens, through the real SQLite store.
//!
//! A page token is the lower-cased last name of a full page; the service accepts a
//! token that is a valid username and uses its lower-case form as the cursor (see
//! `service/accounts.rs`, mirrored here). Input: one byte of page size, then a pattern
//! line and a token line. Properties: decoding arbitrary text never panics; a decoded
//! token is a valid username and decodes to itself (it re-encodes unchanged); and paging
//! through a store of a few hundred accounts with the pattern, from the token, following
//! each returned token, yields exactly the matching names after the token, in order,
//! each once, with every page within its limit.
#![no_main]

use std::{collections::BTreeMap, path::PathBuf, sync::OnceLock};

use chat_fuzz::wildcard_matches;
use chat_server::{
    config::limits,
    store::{
        AccountQuery, Store, StoreError,
        sqlite::{SqliteOptions, SqliteStore},
    },
    validate,
    wildcard::Pattern,
};
use libfuzzer_sys::fuzz_target;

/// How `service/accounts.rs` reads a page token: `None` means it is refused.
fn decode(token: &str) -> Option<String> {
    validate::username(token).ok()?;
    Some(token.to_ascii_lowercase())
}

/// How `service/accounts.rs` writes the token after a page of `limit` names.
fn encode(page: &[String], limit: u32) -> String {
    match page.last() {
        Some(last) if page.len() as u32 == limit => last.to_ascii_lowercase(),
        _ => String::new(),
    }
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: SqliteStore,
    /// The accounts, by lower-case key.
    accounts: BTreeMap<String, String>,
}

fn database_dir() -> PathBuf {
    std::env::temp_dir().join(format!("chat-fuzz-page-token-{}", std::process::id()))
}

extern "C" fn remove_database() {
    let _ = std::fs::remove_dir_all(database_dir());
}

/// A store holding every name of up to three characters from `ab0._-`, and a few
/// longer ones in mixed case (some clash with those without regard to case).
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = database_dir();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temporary directory");
        // SAFETY: registers a plain function with no preconditions.
        unsafe { libc::atexit(remove_database) };
        let store = SqliteStore::open(dir.join("chat.db"), SqliteOptions::default())
            .expect("open the store");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let alphabet = ["a", "b", "0", ".", "_", "-"];
        let mut names: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        for _ in 0..2 {
            let longer: Vec<String> = names
                .iter()
                .filter(|n| n.len() == names.last().unwrap().len())
                .flat_map(|n| alphabet.iter().map(move |c| format!("{n}{c}")))
                .collect();
            names.extend(longer);
        }
        names.extend(
            [
                "Alice",
                "BOB",
                "Carol.Smith",
                "x-y_Z.0",
                "A_b",
                "B",
                "zz",
                "Z9",
            ]
            .map(String::from),
        );
        names.push("a".repeat(32));
        let mut accounts = BTreeMap::new();
        for name in names {
            match runtime.block_on(store.create_account(&name, "not-a-hash", 0)) {
                Ok(_) => assert!(accounts.insert(name.to_lowercase(), name).is_none()),
                Err(StoreError::UsernameTaken(_)) => {
                    assert!(accounts.contains_key(&name.to_lowercase()))
                }
                Err(e) => panic!("create {name:?}: {e}"),
            }
        }
        Fixture {
            runtime,
            store,
            accounts,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split('\n');
    let raw_pattern = lines.next().unwrap_or_default();
    let token = lines.next().unwrap_or_default();

    let cursor = decode(token);
    if let Some(cursor) = &cursor {
        assert_eq!(*cursor, token.to_lowercase());
        assert!(validate::username(cursor).is_ok(), "{token:?}");
        assert_eq!(decode(cursor).as_ref(), Some(cursor), "{token:?}");
    }
    if !token.is_empty() && cursor.is_none() {
        return; // refused with INVALID_ARGUMENT
    }
    let Ok(pattern) = Pattern::parse(raw_pattern) else {
        return;
    };

    let Fixture {
        runtime,
        store,
        accounts,
    } = fixture();
    let want: Vec<&String> = accounts
        .iter()
        .filter(|(key, _)| cursor.as_ref().is_none_or(|c| *key > c))
        .filter(|(_, name)| {
            wildcard_matches(
                if raw_pattern.is_empty() {
                    "*"
                } else {
                    raw_pattern
                },
                name,
            )
        })
        .map(|(_, name)| name)
        .collect();

    let limit = validate::page_size(u32::from(size % 8), limits::LIST_PAGE);
    let mut got = Vec::new();
    let mut after = cursor;
    for pages in 1.. {
        assert!(pages <= accounts.len() + 1, "paging does not end");
        let page = runtime
            .block_on(store.list_accounts(AccountQuery {
                pattern: &pattern,
                after: after.as_deref(),
                limit,
            }))
            .unwrap_or_else(|e| panic!("{pattern} after {after:?}: {e}"));
        assert!(page.len() <= limit as usize);
        let next = encode(&page, limit);
        got.extend(page);
        if next.is_empty() {
            break;
        }
        after = Some(decode(&next).unwrap_or_else(|| panic!("own token {next:?} refused")));
    }
    assert_eq!(
        got.iter().collect::<Vec<_>>(),
        want,
        "pattern {pattern}, token {token:?}, pages of {limit}"
    );
});
