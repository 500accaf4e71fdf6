//! The [`Store`] contract as tests, for every store implementation.
//!
//! Each check is a `pub async fn` that takes a fresh, empty store (as [`SharedStore`], so
//! that concurrency checks can hand it to spawned tasks) and panics when the store breaks
//! the contract documented on [`Store`]. Checks are independent of each other and still
//! use usernames of their own.
//!
//! To run the suite against a store, include this module and expand
//! [`conformance_tests!`] with an async factory of fresh stores; it generates one
//! `#[tokio::test]` per check:
//!
//! ```ignore
//! #[macro_use]
//! mod conformance;
//!
//! async fn fresh_store() -> (std::sync::Arc<dyn Store>, impl Send) {
//!     // The second value is kept alive until the check ends (a temporary directory,
//!     // a container handle...).
//! }
//!
//! conformance_tests!(fresh_store);
//! ```
//!
//! [`run_all`] runs every check in sequence instead, for harnesses that want one test.
//!
//! Names are compared in the order of their lower-case form, character by character
//! (for the ASCII usernames the service accepts, that is byte order: `-` < `.` < digits
//! < `_` < letters).
#![allow(dead_code, unused_macros)] // An includer may use only one form of the macro, or only `run_all`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use chat_server::store::{
    Account, AccountId, AccountQuery, LoginFailures, MessageDraft, NewMessage, SendOutcome,
    SessionLookup, SessionRefusal, SessionSend, Store, StoreError, StoredMessage, TokenHash,
};
use chat_server::wildcard::Pattern;

/// A store under test, shareable with spawned tasks.
pub type SharedStore = Arc<dyn Store>;

/// A check's future.
pub type CheckFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A check: takes a fresh empty store, panics on a contract violation.
pub type Check = fn(SharedStore) -> CheckFuture;

/// Asserts that `$result` is an `Err` matching `$pattern`; shows what came back
/// otherwise.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            other => panic!("expected {}, got {other:?}", stringify!($pattern)),
        }
    };
}

/// Calls `$callback! { { $args } check, check, ... }` with the name of every check:
/// the single list that both [`conformance_tests!`] and [`all_checks`] are built from.
macro_rules! with_conformance_checks {
    ($callback:ident ! { $($args:tt)* }) => {
        $callback! {
            { $($args)* }
            ping_succeeds,
            create_account_keeps_registered_case,
            username_taken_without_regard_to_case,
            find_account_in_any_case,
            account_ids_are_unique,
            concurrent_creation_of_one_name_has_one_winner,
            list_dot_is_literal,
            list_question_mark_is_exactly_one_character,
            list_star_is_any_run,
            list_orders_by_lower_case_form_and_returns_registered_case,
            list_pagination_returns_every_match_once,
            list_limit_is_respected,
            list_prefix_patterns,
            session_create_and_lookup,
            session_expires_at_its_expiry_time,
            delete_session_is_idempotent,
            purge_expired_sessions_counts_and_deletes,
            session_of_deleted_account_is_account_deleted,
            login_failures_are_a_compare_and_set_record,
            login_failures_are_per_account_and_go_with_it,
            concurrent_login_failure_updates_have_one_winner,
            send_returns_the_stored_message,
            sequences_are_per_recipient_and_ids_increase,
            duplicate_key_returns_first_message_and_stores_nothing,
            key_reused_with_different_text_fails,
            key_reused_with_different_recipient_fails,
            same_key_from_different_senders_is_independent,
            unknown_recipient_is_no_such_account,
            recipient_name_in_any_case,
            send_from_deleted_sender,
            send_as_a_live_session_sends_as_its_account,
            send_as_a_refused_session_stores_nothing,
            fetch_empty_inbox,
            fetch_is_oldest_first_with_pagination,
            fetch_after_sequence_overrides_ack,
            ack_is_idempotent_and_never_moves_backwards,
            ack_beyond_latest_fails,
            fetch_after_ack_excludes_acknowledged,
            fetch_and_ack_of_missing_account,
            delete_account_removes_inbox_and_keeps_sent_messages,
            delete_account_frees_username_for_a_new_account,
            delete_missing_account_succeeds,
            message_feed_without_cursor_returns_starting_point,
            message_feed_polls_see_each_message_once_in_id_order,
            concurrent_sends_get_gap_free_sequences,
            concurrent_duplicate_sends_store_one_message,
            purge_history_keeps_undelivered_and_each_latest,
            purge_history_leaves_numbering_and_feed_going,
        }
    };
}

/// Expands to one `#[tokio::test]` per conformance check. `$make_store` is an async
/// function (or closure) returning `(SharedStore, guard)`: a fresh empty store, and
/// anything that must live as long as the store (dropped when the check ends).
///
/// `conformance_tests!(skippable: $make_store)` is for stores that need an external
/// server: `$make_store` takes the check's name and returns
/// `Option<(SharedStore, guard)>`; `None` skips that check, and the factory must say
/// why on stderr (or panic, where skipping is not acceptable).
macro_rules! conformance_tests {
    (skippable: $make_store:expr) => {
        with_conformance_checks!(conformance_skippable_test_functions! { $make_store });
    };
    ($make_store:expr) => {
        with_conformance_checks!(conformance_test_functions! { $make_store });
    };
}

/// Implementation detail of [`conformance_tests!`].
macro_rules! conformance_skippable_test_functions {
    ({ $make_store:expr } $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let Some((store, _guard)) = ($make_store)(stringify!($check)).await else {
                    return;
                };
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

/// Implementation detail of [`conformance_tests!`].
macro_rules! conformance_test_functions {
    ({ $make_store:expr } $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let (store, _guard) = ($make_store)().await;
                $crate::conformance::$check(store).await;
            }
        )*
    };
}

macro_rules! define_check_registry {
    ({} $($check:ident),* $(,)?) => {
        /// Every check with its name.
        pub fn all_checks() -> Vec<(&'static str, Check)> {
            vec![$((stringify!($check), (|store| Box::pin($check(store))) as Check)),*]
        }
    };
}

with_conformance_checks!(define_check_registry! {});

/// Runs every check in sequence, each on a fresh store from `make_store` (see
/// [`conformance_tests!`] for what it returns). Prints each check's name to stderr
/// before running it, so that a failure can be attributed.
pub async fn run_all<F, Fut, G>(mut make_store: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (SharedStore, G)>,
{
    for (name, check) in all_checks() {
        let (store, guard) = make_store().await;
        eprintln!("store conformance: {name}");
        check(store).await;
        drop(guard);
    }
}

// ---------------------------------------------------------------------------------
// Helpers

const PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";
const T0: i64 = 1_700_000_000_000;
/// Enough for every inbox in these checks.
const ALL: u32 = 10_000;

async fn create(store: &dyn Store, username: &str) -> Account {
    store
        .create_account(username, PASSWORD_HASH, T0)
        .await
        .unwrap_or_else(|e| panic!("create_account({username:?}): {e}"))
}

/// Accounts `alice_SUFFIX` and `bob_SUFFIX`.
async fn alice_and_bob(store: &dyn Store, suffix: &str) -> (Account, Account) {
    let alice = create(store, &format!("alice_{suffix}")).await;
    (alice, create(store, &format!("bob_{suffix}")).await)
}

/// Session `token(n)` for `account`, expiring at `T0 + 1_000`.
async fn open_session(store: &dyn Store, n: u8, account: AccountId) {
    let created = store.create_session(&token(n), account, T0 + 1_000).await;
    created.expect("create_session");
}

async fn try_send(
    store: &dyn Store,
    sender: AccountId,
    recipient: &str,
    text: &str,
    key: &str,
) -> Result<SendOutcome, StoreError> {
    store
        .send_message(NewMessage {
            sender_id: sender,
            recipient,
            text,
            idempotency_key: key,
            sent_at_unix_ms: T0,
        })
        .await
}

async fn send(
    store: &dyn Store,
    sender: AccountId,
    recipient: &str,
    text: &str,
    key: &str,
) -> SendOutcome {
    try_send(store, sender, recipient, text, key)
        .await
        .unwrap_or_else(|e| panic!("send_message(to {recipient:?}, key {key:?}): {e}"))
}

/// `send_message_as` of `text` to `recipient` with key `key`, at `now`, on behalf of the
/// session `token(n)`.
async fn send_as(
    store: &dyn Store,
    n: u8,
    now: i64,
    recipient: &str,
    text: &str,
    key: &str,
) -> Result<SessionSend, StoreError> {
    let draft = MessageDraft {
        recipient,
        text,
        idempotency_key: key,
        sent_at_unix_ms: now,
    };
    store.send_message_as(&token(n), now, draft).await
}

/// Every message in the inbox, acknowledged or not.
async fn inbox(store: &dyn Store, recipient: AccountId) -> Vec<StoredMessage> {
    let page = store
        .fetch_messages(recipient, Some(0), ALL)
        .await
        .expect("fetch_messages");
    assert!(!page.has_more);
    page.messages
}

async fn fetch(
    store: &dyn Store,
    recipient: AccountId,
    after: Option<u64>,
    limit: u32,
) -> (Vec<u64>, bool, u64) {
    let page = store
        .fetch_messages(recipient, after, limit)
        .await
        .expect("fetch_messages");
    let sequences = page.messages.iter().map(|m| m.sequence).collect();
    (sequences, page.has_more, page.acked_sequence)
}

async fn list(store: &dyn Store, pattern: &str, after: Option<&str>, limit: u32) -> Vec<String> {
    let pattern = Pattern::parse(pattern).expect("valid pattern");
    store
        .list_accounts(AccountQuery {
            pattern: &pattern,
            after,
            limit,
        })
        .await
        .unwrap_or_else(|e| panic!("list_accounts({pattern}): {e}"))
}

fn token(seed: u8) -> TokenHash {
    let mut hash = [seed; 32];
    hash[0] = 0xa5;
    hash
}

async fn lookup(store: &dyn Store, token: &TokenHash, now: i64) -> SessionLookup {
    store
        .lookup_session(token, now)
        .await
        .expect("lookup_session")
}

fn sequences(messages: &[StoredMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.sequence).collect()
}

fn texts(messages: &[StoredMessage]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

// ---------------------------------------------------------------------------------
// Accounts

/// `ping` answers on a working store.
pub async fn ping_succeeds(store: SharedStore) {
    store.ping().await.expect("ping");
}

/// An account keeps the case it was registered with and its password hash.
pub async fn create_account_keeps_registered_case(store: SharedStore) {
    let account = store
        .create_account("AlIce_Ck", "hash-of-alice", T0)
        .await
        .expect("create");
    assert_eq!(account.username, "AlIce_Ck");
    assert_eq!(account.password_hash, "hash-of-alice");
    let found = store.find_account("alice_ck").await.expect("find");
    assert_eq!(found, Some(account));
}

/// A username is taken by any case variant, and a failed creation changes nothing.
pub async fn username_taken_without_regard_to_case(store: SharedStore) {
    let first = create(&*store, "Bob_Ut").await;
    for variant in ["Bob_Ut", "bob_ut", "BOB_UT", "bOB_uT"] {
        match store.create_account(variant, "other-hash", T0).await {
            Err(StoreError::UsernameTaken(_)) => {}
            other => panic!("creating {variant:?} after \"Bob_Ut\": {other:?}"),
        }
    }
    let found = store.find_account("bob_ut").await.expect("find");
    assert_eq!(found, Some(first.clone()), "the first account is unchanged");
    let other = create(&*store, "bob_ut2").await;
    assert_ne!(other.id, first.id);
}

/// `find_account` ignores case and matches whole names only.
pub async fn find_account_in_any_case(store: SharedStore) {
    let carol = create(&*store, "Carol.Fa").await;
    for variant in ["Carol.Fa", "carol.fa", "CAROL.FA", "cArOl.fA"] {
        let found = store.find_account(variant).await.expect("find");
        assert_eq!(found.as_ref(), Some(&carol), "find_account({variant:?})");
    }
    for missing in ["carol", "carol.fab", "carol_fa", "carolxfa"] {
        let found = store.find_account(missing).await.expect("find");
        assert_eq!(found, None, "find_account({missing:?})");
    }
}

/// Every account gets its own id.
pub async fn account_ids_are_unique(store: SharedStore) {
    let mut ids = HashSet::new();
    for i in 0..10 {
        let account = create(&*store, &format!("uniq{i}")).await;
        assert!(ids.insert(account.id), "id {} handed out twice", account.id);
    }
}

/// Of several concurrent creations of one name (in different cases), exactly one wins.
pub async fn concurrent_creation_of_one_name_has_one_winner(store: SharedStore) {
    let variants = [
        "race", "RACE", "Race", "rAce", "raCe", "racE", "RAce", "raCE",
    ];
    let tasks: Vec<_> = variants
        .iter()
        .map(|&name| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.create_account(name, PASSWORD_HASH, T0).await })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            Ok(account) => winners.push(account),
            Err(StoreError::UsernameTaken(_)) => {}
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let found = store.find_account("RACE").await.expect("find");
    assert_eq!(found.as_ref(), Some(&winners[0]));
}

// ---------------------------------------------------------------------------------
// Login failures (throttling)

fn failures(count: u32, locked_until_unix_ms: i64) -> LoginFailures {
    LoginFailures {
        count,
        locked_until_unix_ms,
    }
}

/// An account starts with no failures; a claim replaces the record only when it is
/// still the one the caller saw; clearing forgets it (and is idempotent).
pub async fn login_failures_are_a_compare_and_set_record(store: SharedStore) {
    let ann = create(&*store, "ann").await;
    // Replaces the record of ann if it is still `seen`; whether it was.
    let claim = |seen, new| store.replace_login_failures(ann.id, seen, new);
    let none = LoginFailures::default();
    assert_eq!(store.login_failures(ann.id).await.expect("read"), none);

    let one = failures(1, T0);
    assert!(claim(none, one).await.expect("claim"));
    assert_eq!(store.login_failures(ann.id).await.expect("read"), one);
    // A claim from a stale view changes nothing.
    assert!(!claim(none, failures(1, T0 + 1)).await.expect("stale claim"));
    let two = failures(2, T0 + 5);
    assert!(claim(one, two).await.expect("claim"));
    assert!(!claim(one, failures(2, T0 + 9)).await.expect("stale claim"));
    // Same count, other lock time: still stale.
    assert!(
        !claim(failures(2, T0), failures(3, T0))
            .await
            .expect("stale claim")
    );
    assert_eq!(store.login_failures(ann.id).await.expect("read"), two);

    store.clear_login_failures(ann.id).await.expect("clear");
    assert_eq!(store.login_failures(ann.id).await.expect("read"), none);
    store
        .clear_login_failures(ann.id)
        .await
        .expect("clear again");
    assert!(
        !claim(two, failures(3, T0)).await.expect("stale claim"),
        "a cleared record is not the one seen before"
    );
    assert!(claim(none, one).await.expect("claim after clear"));
    // A claim back to no failures works like clearing, from the record seen only.
    assert!(!claim(two, none).await.expect("stale"));
    assert!(claim(one, none).await.expect("claim to none"));
    assert_eq!(store.login_failures(ann.id).await.expect("read"), none);
}

/// Records belong to one account, and go when it is deleted: a new account with the
/// same name starts with none.
pub async fn login_failures_are_per_account_and_go_with_it(store: SharedStore) {
    let ann = create(&*store, "ann").await;
    let bob = create(&*store, "bob").await;
    let none = LoginFailures::default();
    assert!(
        store
            .replace_login_failures(ann.id, none, failures(7, T0 + 100))
            .await
            .expect("claim")
    );
    assert_eq!(store.login_failures(bob.id).await.expect("read"), none);

    store.delete_account(ann.id).await.expect("delete");
    assert_eq!(store.login_failures(ann.id).await.expect("read"), none);
    let again = create(&*store, "ann").await;
    assert_ne!(again.id, ann.id);
    assert_eq!(store.login_failures(again.id).await.expect("read"), none);
}

/// Of several concurrent replacements of the same record, exactly one wins, both from no
/// record and from an existing one.
pub async fn concurrent_login_failure_updates_have_one_winner(store: SharedStore) {
    let ann = create(&*store, "ann").await;
    for (seen, count) in [(LoginFailures::default(), 1u32), (failures(1, T0 + 1), 2)] {
        let tasks: Vec<_> = (0..8i64)
            .map(|i| {
                let store = Arc::clone(&store);
                let next = failures(count, T0 + 10 * i64::from(count) + i);
                tokio::spawn(async move {
                    let won = store.replace_login_failures(ann.id, seen, next).await;
                    (won.expect("claim"), next)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            let (won, next) = task.await.expect("task");
            if won {
                winners.push(next);
            }
        }
        assert_eq!(winners.len(), 1, "winners from {seen:?}: {winners:?}");
        assert_eq!(
            store.login_failures(ann.id).await.expect("read"),
            winners[0]
        );
        if count == 1 {
            // Set up the second round's starting record.
            assert!(
                store
                    .replace_login_failures(ann.id, winners[0], failures(1, T0 + 1))
                    .await
                    .expect("claim")
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Listing

/// '.' in a pattern is a literal dot, not "any character".
pub async fn list_dot_is_literal(store: SharedStore) {
    create(&*store, "ld.a.b").await;
    create(&*store, "ld.axb").await;
    assert_eq!(list(&*store, "ld.a.b", None, 100).await, ["ld.a.b"]);
    assert_eq!(list(&*store, "ld.a.*", None, 100).await, ["ld.a.b"]);
    assert_eq!(
        list(&*store, "ld.a?b", None, 100).await,
        ["ld.a.b", "ld.axb"]
    );
}

/// '?' matches exactly one character.
pub async fn list_question_mark_is_exactly_one_character(store: SharedStore) {
    for name in ["qm-a", "qm-ab", "qm-abc", "qm-abcd", "qm-xb"] {
        create(&*store, name).await;
    }
    assert_eq!(list(&*store, "qm-ab?", None, 100).await, ["qm-abc"]);
    assert_eq!(list(&*store, "qm-a??", None, 100).await, ["qm-abc"]);
    assert_eq!(list(&*store, "qm-?b", None, 100).await, ["qm-ab", "qm-xb"]);
    assert_eq!(list(&*store, "?m-a", None, 100).await, ["qm-a"]);
    assert!(list(&*store, "qm-a?bc", None, 100).await.is_empty());
}

/// '*' matches any run of characters, the empty one included.
pub async fn list_star_is_any_run(store: SharedStore) {
    for name in ["st_", "st_x", "st_xy", "st_xyz", "sx_"] {
        create(&*store, name).await;
    }
    assert_eq!(
        list(&*store, "st_*", None, 100).await,
        ["st_", "st_x", "st_xy", "st_xyz"]
    );
    assert_eq!(list(&*store, "*_xy*", None, 100).await, ["st_xy", "st_xyz"]);
    assert_eq!(list(&*store, "st*z", None, 100).await, ["st_xyz"]);
    assert_eq!(list(&*store, "*x*_*", None, 100).await, ["sx_"]);
    assert_eq!(
        list(&*store, "*", None, 100).await,
        ["st_", "st_x", "st_xy", "st_xyz", "sx_"]
    );
}

/// Names come back as registered, ordered by their lower-case form, matched without
/// regard to case.
pub async fn list_orders_by_lower_case_form_and_returns_registered_case(store: SharedStore) {
    for name in [
        "ord_delta",
        "ord_Bravo",
        "ord_alpha",
        "ord_CHARLIE",
        "Ord_echo",
    ] {
        create(&*store, name).await;
    }
    // Ordering by the registered case would put the capitalised names first.
    assert_eq!(
        list(&*store, "ord_*", None, 100).await,
        [
            "ord_alpha",
            "ord_Bravo",
            "ord_CHARLIE",
            "ord_delta",
            "Ord_echo"
        ]
    );
    assert_eq!(list(&*store, "ORD_B*", None, 100).await, ["ord_Bravo"]);
    assert_eq!(list(&*store, "*e?ho", None, 100).await, ["Ord_echo"]);
}

/// Paging with `after` visits every match exactly once, whether the cursor is passed
/// back as returned (registered case) or lowered.
pub async fn list_pagination_returns_every_match_once(store: SharedStore) {
    let mut expected = Vec::new();
    for i in 0..23 {
        let name = if i % 3 == 0 {
            format!("Pg_{i:02}")
        } else {
            format!("pg_{i:02}")
        };
        create(&*store, &name).await;
        expected.push(name);
    }
    create(&*store, "pgx01").await;
    create(&*store, "opg_01").await;
    for lower_cursor in [false, true] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = list(&*store, "pg_*", cursor.as_deref(), 5).await;
            assert!(page.len() <= 5, "page of {}", page.len());
            let Some(last) = page.last() else { break };
            cursor = Some(if lower_cursor {
                last.to_lowercase()
            } else {
                last.clone()
            });
            seen.extend(page);
            pages += 1;
            assert!(pages <= 5, "too many pages: {seen:?}");
        }
        assert_eq!(pages, 5, "23 names in pages of 5");
        assert_eq!(seen, expected, "lower-case cursor: {lower_cursor}");
    }
}

/// No more than `limit` names, and the first ones in order.
pub async fn list_limit_is_respected(store: SharedStore) {
    for i in 0..10 {
        create(&*store, &format!("lim{i}")).await;
    }
    assert_eq!(
        list(&*store, "lim*", None, 3).await,
        ["lim0", "lim1", "lim2"]
    );
    assert_eq!(list(&*store, "lim*", None, 1).await, ["lim0"]);
    assert!(list(&*store, "lim*", None, 0).await.is_empty());
    assert_eq!(list(&*store, "lim*", None, 100).await.len(), 10);
    assert_eq!(
        list(&*store, "lim*", Some("lim4"), 2).await,
        ["lim5", "lim6"]
    );
}

/// Patterns with a literal prefix find exactly the names that start with it, including
/// those with punctuation right after the prefix, and nothing just outside it.
pub async fn list_prefix_patterns(store: SharedStore) {
    for name in [
        "pre", "pre-x", "pre.x", "pre_x", "pre9", "prez", "prf", "pr", "apre", "prd",
    ] {
        create(&*store, name).await;
    }
    let all = ["pre", "pre-x", "pre.x", "pre9", "pre_x", "prez"];
    assert_eq!(list(&*store, "pre*", None, 100).await, all);
    assert_eq!(list(&*store, "pre", None, 100).await, ["pre"]);
    assert_eq!(list(&*store, "pre?", None, 100).await, ["pre9", "prez"]);
    assert_eq!(
        list(&*store, "pre*x", None, 100).await,
        ["pre-x", "pre.x", "pre_x"]
    );
    assert_eq!(
        list(&*store, "pre*", Some("pre.x"), 100).await,
        ["pre9", "pre_x", "prez"]
    );
    assert_eq!(list(&*store, "pre*", Some("a"), 100).await, all);
    assert!(list(&*store, "pre*", Some("zzz"), 100).await.is_empty());
    assert!(list(&*store, "pre*", Some("prez"), 100).await.is_empty());
    assert!(list(&*store, "nomatch*", None, 100).await.is_empty());
}

// ---------------------------------------------------------------------------------
// Sessions

/// A session resolves to its account; an unknown token to `Invalid`.
pub async fn session_create_and_lookup(store: SharedStore) {
    let dora = create(&*store, "dora_s").await;
    let other = create(&*store, "other_s").await;
    open_session(&*store, 1, dora.id).await;
    open_session(&*store, 2, other.id).await;
    assert_eq!(
        lookup(&*store, &token(1), T0).await,
        SessionLookup::Valid(dora)
    );
    assert_eq!(
        lookup(&*store, &token(2), T0).await,
        SessionLookup::Valid(other)
    );
    assert_eq!(lookup(&*store, &token(3), T0).await, SessionLookup::Invalid);
}

/// A session is valid before its expiry time and invalid from it on.
pub async fn session_expires_at_its_expiry_time(store: SharedStore) {
    let erin = create(&*store, "erin_s").await;
    open_session(&*store, 4, erin.id).await;
    assert_eq!(
        lookup(&*store, &token(4), T0 + 999).await,
        SessionLookup::Valid(erin.clone())
    );
    assert_eq!(
        lookup(&*store, &token(4), T0 + 1_000).await,
        SessionLookup::Invalid
    );
    assert_eq!(
        lookup(&*store, &token(4), T0 + 5_000).await,
        SessionLookup::Invalid
    );
    // Expiry is judged by the time given, not stored.
    assert_eq!(
        lookup(&*store, &token(4), T0).await,
        SessionLookup::Valid(erin)
    );
}

/// Deleting a session ends it, only it, and can be repeated.
pub async fn delete_session_is_idempotent(store: SharedStore) {
    let fay = create(&*store, "fay_s").await;
    open_session(&*store, 5, fay.id).await;
    open_session(&*store, 6, fay.id).await;
    store.delete_session(&token(5)).await.expect("delete");
    assert_eq!(lookup(&*store, &token(5), T0).await, SessionLookup::Invalid);
    assert_eq!(
        lookup(&*store, &token(6), T0).await,
        SessionLookup::Valid(fay),
        "the other session lives on"
    );
    store.delete_session(&token(5)).await.expect("delete again");
    store
        .delete_session(&token(99))
        .await
        .expect("delete unknown");
}

/// Purging removes exactly the expired sessions and counts them.
pub async fn purge_expired_sessions_counts_and_deletes(store: SharedStore) {
    let gus = create(&*store, "gus_s").await;
    let gone = create(&*store, "gone_s").await;
    for (seed, expires) in [(10, 10), (20, 20), (30, 30), (40, 100)] {
        store
            .create_session(&token(seed), gus.id, T0 + expires)
            .await
            .expect("create_session");
    }
    // A session of a deleted account is purged like any other once expired.
    store
        .create_session(&token(50), gone.id, T0 + 15)
        .await
        .expect("create_session");
    store.delete_account(gone.id).await.expect("delete account");

    assert_eq!(
        store.purge_expired_sessions(T0 + 20).await.expect("purge"),
        3
    );
    // Purged sessions are gone, not merely expired: an earlier clock no longer finds them.
    for seed in [10, 20, 50] {
        assert_eq!(
            lookup(&*store, &token(seed), T0).await,
            SessionLookup::Invalid
        );
    }
    assert_eq!(
        lookup(&*store, &token(30), T0 + 25).await,
        SessionLookup::Valid(gus.clone())
    );
    assert_eq!(
        store.purge_expired_sessions(T0 + 20).await.expect("purge"),
        0
    );
    assert_eq!(
        store
            .purge_expired_sessions(T0 + 1_000)
            .await
            .expect("purge"),
        2
    );
    assert_eq!(
        lookup(&*store, &token(40), T0).await,
        SessionLookup::Invalid
    );
}

/// Sessions of a deleted account resolve to `AccountDeleted` until they expire.
pub async fn session_of_deleted_account_is_account_deleted(store: SharedStore) {
    let hal = create(&*store, "hal_s").await;
    open_session(&*store, 7, hal.id).await;
    store.delete_account(hal.id).await.expect("delete account");
    assert_eq!(
        lookup(&*store, &token(7), T0).await,
        SessionLookup::AccountDeleted
    );
    assert_eq!(
        lookup(&*store, &token(7), T0 + 1_000).await,
        SessionLookup::Invalid
    );
    store
        .delete_session(&token(7))
        .await
        .expect("delete session");
    assert_eq!(lookup(&*store, &token(7), T0).await, SessionLookup::Invalid);
}

// ---------------------------------------------------------------------------------
// Sending

/// The returned message carries what was sent, with names as registered.
pub async fn send_returns_the_stored_message(store: SharedStore) {
    let alice = create(&*store, "Alice_Sr").await;
    let bob = create(&*store, "Bob_Sr").await;
    let outcome = store
        .send_message(NewMessage {
            sender_id: alice.id,
            recipient: "bob_sr",
            text: "hello, Bob",
            idempotency_key: "k-1",
            sent_at_unix_ms: T0 + 5,
        })
        .await
        .expect("send");
    assert!(!outcome.duplicate);
    let message = outcome.message;
    assert_eq!(message.sequence, 1);
    assert_eq!(message.sender, "Alice_Sr");
    assert_eq!(message.recipient, "Bob_Sr");
    assert_eq!(message.text, "hello, Bob");
    assert_eq!(message.sent_at_unix_ms, T0 + 5);
    assert_eq!(inbox(&*store, bob.id).await, [message]);
    assert!(inbox(&*store, alice.id).await.is_empty());
}

/// Sequence numbers count from 1 per recipient; ids are unique and increase.
pub async fn sequences_are_per_recipient_and_ids_increase(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "seq").await;
    let carol = create(&*store, "carol_seq").await;
    let plan = [
        (alice.id, "bob_seq", 1),
        (alice.id, "carol_seq", 1),
        (alice.id, "bob_seq", 2),
        (bob.id, "carol_seq", 2),
        (carol.id, "bob_seq", 3),
        (bob.id, "alice_seq", 1),
        (alice.id, "carol_seq", 3),
        (carol.id, "carol_seq", 4),
    ];
    let mut last_id = None;
    for (i, (sender, recipient, sequence)) in plan.into_iter().enumerate() {
        let message = send(&*store, sender, recipient, "m", &format!("seq-{i}"))
            .await
            .message;
        assert_eq!(message.sequence, sequence, "send #{i} to {recipient}");
        if let Some(last) = last_id {
            assert!(
                message.id > last,
                "ids increase: {} after {last}",
                message.id
            );
        }
        last_id = Some(message.id);
    }
    assert_eq!(sequences(&inbox(&*store, alice.id).await), [1]);
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [1, 2, 3]);
    assert_eq!(sequences(&inbox(&*store, carol.id).await), [1, 2, 3, 4]);
}

/// A repeated (sender, key) with the same recipient and text returns the first message
/// and stores nothing, not even a sequence number.
pub async fn duplicate_key_returns_first_message_and_stores_nothing(store: SharedStore) {
    let alice = create(&*store, "alice_dk").await;
    let bob = create(&*store, "Bob_Dk").await;
    let first = send(&*store, alice.id, "bob_dk", "once", "key-1").await;
    assert!(!first.duplicate);
    let feed_before = store.message_feed(None, 10).await.expect("feed").cursor;
    // Another case of the recipient name and another send time: still the same message.
    let again = store
        .send_message(NewMessage {
            sender_id: alice.id,
            recipient: "BOB_DK",
            text: "once",
            idempotency_key: "key-1",
            sent_at_unix_ms: T0 + 60_000,
        })
        .await
        .expect("repeat");
    assert!(again.duplicate);
    assert_eq!(again.message, first.message);
    assert_eq!(
        inbox(&*store, bob.id).await,
        std::slice::from_ref(&first.message)
    );
    let feed = store
        .message_feed(Some(feed_before), 10)
        .await
        .expect("feed");
    assert!(feed.messages.is_empty(), "nothing new: {:?}", feed.messages);
    let next = send(&*store, alice.id, "bob_dk", "twice", "key-2").await;
    assert_eq!(
        next.message.sequence, 2,
        "the duplicate took no sequence number"
    );
}

/// The same key for a different text fails and stores nothing.
pub async fn key_reused_with_different_text_fails(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "kt").await;
    let first = send(&*store, alice.id, "bob_kt", "original", "key").await;
    assert_err!(
        try_send(&*store, alice.id, "bob_kt", "changed", "key").await,
        StoreError::IdempotencyKeyReused(_)
    );
    assert_eq!(inbox(&*store, bob.id).await, [first.message]);
}

/// The same key for a different recipient fails and stores nothing.
pub async fn key_reused_with_different_recipient_fails(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "kr").await;
    let carol = create(&*store, "carol_kr").await;
    let first = send(&*store, alice.id, "bob_kr", "same text", "key").await;
    assert_err!(
        try_send(&*store, alice.id, "carol_kr", "same text", "key").await,
        StoreError::IdempotencyKeyReused(_)
    );
    assert!(inbox(&*store, carol.id).await.is_empty());
    assert_eq!(inbox(&*store, bob.id).await, [first.message]);
}

/// Idempotency keys belong to their sender.
pub async fn same_key_from_different_senders_is_independent(store: SharedStore) {
    let alice = create(&*store, "alice_ks").await;
    let carol = create(&*store, "carol_ks").await;
    let bob = create(&*store, "bob_ks").await;
    let from_alice = send(&*store, alice.id, "bob_ks", "same", "shared-key").await;
    let from_carol = send(&*store, carol.id, "bob_ks", "same", "shared-key").await;
    assert!(!from_alice.duplicate && !from_carol.duplicate);
    assert_ne!(from_alice.message.id, from_carol.message.id);
    let messages = inbox(&*store, bob.id).await;
    assert_eq!(sequences(&messages), [1, 2]);
    assert_eq!(messages[0].sender, "alice_ks");
    assert_eq!(messages[1].sender, "carol_ks");
}

/// Sending to a name nobody has fails, stores nothing and leaves the key unused.
pub async fn unknown_recipient_is_no_such_account(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "ur").await;
    let start = store.message_feed(None, 10).await.expect("feed").cursor;
    assert_err!(
        try_send(&*store, alice.id, "nobody_ur", "hello?", "key").await,
        StoreError::NoSuchAccount(_)
    );
    let feed = store.message_feed(Some(start), 10).await.expect("feed");
    assert!(feed.messages.is_empty());
    // The key was not consumed by the failed send.
    let sent = send(&*store, alice.id, "bob_ur", "hello", "key").await;
    assert!(!sent.duplicate);
    assert_eq!(sent.message.sequence, 1);
    // A deleted account is not a recipient either.
    store.delete_account(bob.id).await.expect("delete");
    assert_err!(
        try_send(&*store, alice.id, "bob_ur", "still there?", "key-2").await,
        StoreError::NoSuchAccount(_)
    );
}

/// The recipient may be named in any case.
pub async fn recipient_name_in_any_case(store: SharedStore) {
    let alice = create(&*store, "alice_rc").await;
    let bob = create(&*store, "Bob_Rc").await;
    for (i, name) in ["BOB_RC", "bob_rc", "BoB_rC"].into_iter().enumerate() {
        let message = send(&*store, alice.id, name, "hi", &format!("k{i}"))
            .await
            .message;
        assert_eq!(message.recipient, "Bob_Rc");
    }
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [1, 2, 3]);
}

/// A deleted sender sends nothing new, but a repeat of a message it had sent is still
/// answered with that message.
pub async fn send_from_deleted_sender(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "ds").await;
    let first = send(&*store, alice.id, "bob_ds", "before", "k1").await;
    store.delete_account(alice.id).await.expect("delete");
    let repeat = send(&*store, alice.id, "bob_ds", "before", "k1").await;
    assert!(repeat.duplicate);
    assert_eq!(repeat.message, first.message);
    assert_err!(
        try_send(&*store, alice.id, "bob_ds", "after", "k2").await,
        StoreError::NoSuchAccount(_)
    );
    assert_eq!(inbox(&*store, bob.id).await, [first.message]);
}

/// A send on behalf of a live session is sent by the session's account, and a repeat
/// of its key is answered with the first message, like `send_message`'s.
pub async fn send_as_a_live_session_sends_as_its_account(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "sa").await;
    open_session(&*store, 11, alice.id).await;
    let Ok(SessionSend::Sent(first)) = send_as(&*store, 11, T0 + 7, "BOB_sa", "hi", "k").await
    else {
        panic!("a live session's send was not sent");
    };
    assert!(!first.duplicate);
    assert_eq!(first.message.sender, alice.username);
    assert_eq!(first.message.recipient, bob.username);
    assert_eq!(first.message.sent_at_unix_ms, T0 + 7);
    let repeat = send_as(&*store, 11, T0 + 8, "bob_sa", "hi", "k").await;
    let Ok(SessionSend::Sent(repeat)) = repeat else {
        panic!("the repeat was not answered: {repeat:?}");
    };
    assert!(repeat.duplicate);
    assert_eq!(repeat.message, first.message);
    assert_err!(
        send_as(&*store, 11, T0, "nobody_sa", "hi", "k2").await,
        StoreError::NoSuchAccount(_)
    );
    assert_eq!(inbox(&*store, bob.id).await, [first.message]);
}

/// A send on behalf of a session that is unknown, expired or of a deleted account is
/// refused with the reason `lookup_session` gives, and stores nothing.
pub async fn send_as_a_refused_session_stores_nothing(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "sr").await;
    let carol = create(&*store, "carol_sr").await;
    open_session(&*store, 12, alice.id).await;
    open_session(&*store, 13, carol.id).await;
    store
        .delete_account(carol.id)
        .await
        .expect("delete account");
    let refused = [
        (14, T0, SessionRefusal::Invalid),         // no such session
        (12, T0 + 1_000, SessionRefusal::Invalid), // expired
        (13, T0, SessionRefusal::AccountDeleted),  // its account is gone
    ];
    for (n, now, refusal) in refused {
        let sent = send_as(&*store, n, now, "bob_sr", "hi", &format!("k{n}")).await;
        assert!(
            matches!(sent, Ok(SessionSend::Refused(r)) if r == refusal),
            "session {n} at {now}: expected {refusal:?}, got {sent:?}"
        );
    }
    assert!(inbox(&*store, bob.id).await.is_empty());
    // Nothing was numbered either: the next message is the recipient's first.
    let sent = send(&*store, alice.id, "bob_sr", "now", "k").await;
    assert_eq!(sent.message.sequence, 1);
}

// ---------------------------------------------------------------------------------
// Fetching and acknowledging

/// A new inbox is empty with nothing acknowledged.
pub async fn fetch_empty_inbox(store: SharedStore) {
    let ivy = create(&*store, "ivy_f").await;
    assert_eq!(fetch(&*store, ivy.id, None, 10).await, (vec![], false, 0));
    assert_eq!(
        fetch(&*store, ivy.id, Some(0), 10).await,
        (vec![], false, 0)
    );
}

/// Pages come oldest first, with `has_more` telling whether more follow.
pub async fn fetch_is_oldest_first_with_pagination(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "fp").await;
    for i in 1..=7 {
        send(
            &*store,
            alice.id,
            "bob_fp",
            &format!("text {i}"),
            &format!("k{i}"),
        )
        .await;
    }
    assert_eq!(
        fetch(&*store, bob.id, None, 3).await,
        (vec![1, 2, 3], true, 0)
    );
    assert_eq!(
        fetch(&*store, bob.id, Some(3), 3).await,
        (vec![4, 5, 6], true, 0)
    );
    assert_eq!(
        fetch(&*store, bob.id, Some(6), 3).await,
        (vec![7], false, 0)
    );
    assert_eq!(fetch(&*store, bob.id, Some(7), 3).await, (vec![], false, 0));
    // Exactly `limit` left: no more follow.
    assert_eq!(
        fetch(&*store, bob.id, Some(4), 3).await,
        (vec![5, 6, 7], false, 0)
    );
    assert!(!fetch(&*store, bob.id, Some(0), 7).await.1);
    assert!(fetch(&*store, bob.id, Some(0), 6).await.1);
    let page = store
        .fetch_messages(bob.id, None, 100)
        .await
        .expect("fetch");
    assert_eq!(
        texts(&page.messages),
        (1..=7).map(|i| format!("text {i}")).collect::<Vec<_>>()
    );
}

/// An explicit `after_sequence` overrides the acknowledged one (acknowledged messages
/// are still there), and the acknowledged sequence is reported either way.
pub async fn fetch_after_sequence_overrides_ack(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "fo").await;
    for i in 1..=5 {
        send(&*store, alice.id, "bob_fo", "m", &format!("k{i}")).await;
    }
    assert_eq!(store.ack_messages(bob.id, 3).await.expect("ack"), 3);
    assert_eq!(
        fetch(&*store, bob.id, None, 10).await,
        (vec![4, 5], false, 3)
    );
    assert_eq!(
        fetch(&*store, bob.id, Some(1), 10).await,
        (vec![2, 3, 4, 5], false, 3)
    );
    assert_eq!(
        fetch(&*store, bob.id, Some(0), 10).await,
        (vec![1, 2, 3, 4, 5], false, 3)
    );
    assert_eq!(
        fetch(&*store, bob.id, Some(4), 10).await,
        (vec![5], false, 3)
    );
}

/// Acknowledging twice, or an older sequence, changes nothing.
pub async fn ack_is_idempotent_and_never_moves_backwards(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "ai").await;
    for i in 1..=5 {
        send(&*store, alice.id, "bob_ai", "m", &format!("k{i}")).await;
    }
    for (up_to, expected) in [(3, 3), (3, 3), (1, 3), (0, 3), (4, 4), (2, 4), (5, 5)] {
        let acked = store.ack_messages(bob.id, up_to).await.expect("ack");
        assert_eq!(acked, expected, "ack {up_to}");
        assert_eq!(fetch(&*store, bob.id, None, 10).await.2, expected);
    }
    assert_eq!(fetch(&*store, bob.id, None, 10).await, (vec![], false, 5));
}

/// Acknowledging past the latest message fails and changes nothing.
pub async fn ack_beyond_latest_fails(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "ab").await;
    assert_eq!(store.ack_messages(bob.id, 0).await.expect("ack 0"), 0);
    assert_err!(
        store.ack_messages(bob.id, 1).await,
        StoreError::AckBeyondLatest {
            requested: 1,
            latest: 0
        }
    );
    send(&*store, alice.id, "bob_ab", "m", "k1").await;
    send(&*store, alice.id, "bob_ab", "m", "k2").await;
    assert_err!(
        store.ack_messages(bob.id, 3).await,
        StoreError::AckBeyondLatest {
            requested: 3,
            latest: 2
        }
    );
    assert_err!(
        store.ack_messages(bob.id, u64::MAX).await,
        StoreError::AckBeyondLatest {
            requested: u64::MAX,
            latest: 2
        }
    );
    assert_eq!(
        fetch(&*store, bob.id, None, 10).await,
        (vec![1, 2], false, 0)
    );
    assert_eq!(store.ack_messages(bob.id, 2).await.expect("ack 2"), 2);
}

/// A fetch without `after_sequence` skips what was acknowledged.
pub async fn fetch_after_ack_excludes_acknowledged(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "fa").await;
    for i in 1..=4 {
        send(&*store, alice.id, "bob_fa", "m", &format!("k{i}")).await;
    }
    store.ack_messages(bob.id, 2).await.expect("ack");
    assert_eq!(
        fetch(&*store, bob.id, None, 10).await,
        (vec![3, 4], false, 2)
    );
    send(&*store, alice.id, "bob_fa", "m", "k5").await;
    assert_eq!(
        fetch(&*store, bob.id, None, 10).await,
        (vec![3, 4, 5], false, 2)
    );
    assert_eq!(fetch(&*store, bob.id, None, 2).await, (vec![3, 4], true, 2));
    store.ack_messages(bob.id, 5).await.expect("ack");
    assert_eq!(fetch(&*store, bob.id, None, 10).await, (vec![], false, 5));
}

/// Fetching or acknowledging for an account that does not exist fails.
pub async fn fetch_and_ack_of_missing_account(store: SharedStore) {
    let gone = create(&*store, "gone_fm").await;
    store.delete_account(gone.id).await.expect("delete");
    assert_err!(
        store.fetch_messages(gone.id, None, 10).await,
        StoreError::NoSuchAccount(_)
    );
    assert_err!(
        store.ack_messages(gone.id, 0).await,
        StoreError::NoSuchAccount(_)
    );
}

// ---------------------------------------------------------------------------------
// Deleting accounts

/// Deleting an account deletes its inbox, but messages it sent stay with their
/// recipients.
pub async fn delete_account_removes_inbox_and_keeps_sent_messages(store: SharedStore) {
    let alice = create(&*store, "alice_dl").await;
    let bob = create(&*store, "Bob_Dl").await;
    let start = store.message_feed(None, 10).await.expect("feed").cursor;
    send(&*store, alice.id, "bob_dl", "to bob 1", "a1").await;
    send(&*store, alice.id, "bob_dl", "to bob 2", "a2").await;
    let from_bob = send(&*store, bob.id, "alice_dl", "from bob", "b1").await;
    store.delete_account(bob.id).await.expect("delete");

    assert_eq!(store.find_account("bob_dl").await.expect("find"), None);
    assert!(list(&*store, "*_dl", None, 10).await == ["alice_dl"]);
    assert_eq!(
        inbox(&*store, alice.id).await,
        std::slice::from_ref(&from_bob.message)
    );
    assert_eq!(from_bob.message.sender, "Bob_Dl");
    // Bob's inbox is gone everywhere, the feed included.
    let feed = store.message_feed(Some(start), 10).await.expect("feed");
    assert_eq!(feed.messages, [from_bob.message]);
}

/// A deleted username can be registered again: a new account with a new id, an empty
/// inbox starting at sequence 1, and none of the old sessions or idempotency keys.
pub async fn delete_account_frees_username_for_a_new_account(store: SharedStore) {
    let alice = create(&*store, "alice_re").await;
    let old = create(&*store, "bob_re").await;
    let mut ids_ever: HashSet<AccountId> = [alice.id, old.id].into();
    send(&*store, alice.id, "bob_re", "old 1", "a1").await;
    send(&*store, alice.id, "bob_re", "old 2", "a2").await;
    store.ack_messages(old.id, 1).await.expect("ack");
    send(&*store, old.id, "alice_re", "from old bob", "b1").await;
    store
        .create_session(&token(8), old.id, T0 + 1_000)
        .await
        .expect("session");
    store.delete_account(old.id).await.expect("delete");

    let new = create(&*store, "Bob_Re").await;
    assert!(ids_ever.insert(new.id), "id {} was reused", new.id);
    assert_eq!(new.username, "Bob_Re");
    assert_eq!(fetch(&*store, new.id, None, 10).await, (vec![], false, 0));
    assert_eq!(
        fetch(&*store, new.id, Some(0), 10).await,
        (vec![], false, 0)
    );
    let first = send(&*store, alice.id, "bob_re", "new 1", "a3").await;
    assert_eq!(first.message.sequence, 1);
    assert_eq!(first.message.recipient, "Bob_Re");
    assert_eq!(
        lookup(&*store, &token(8), T0).await,
        SessionLookup::AccountDeleted,
        "the old session must not open the new account"
    );
    store
        .create_session(&token(9), new.id, T0 + 1_000)
        .await
        .expect("session");
    assert_eq!(
        lookup(&*store, &token(9), T0).await,
        SessionLookup::Valid(new.clone())
    );
    // The old account's idempotency keys are not the new account's.
    let reused_key = send(&*store, new.id, "alice_re", "from new bob", "b1").await;
    assert!(!reused_key.duplicate);
    assert_eq!(
        texts(&inbox(&*store, alice.id).await),
        ["from old bob", "from new bob"]
    );
    // Ids are never reused, even for the most recent account.
    store.delete_account(new.id).await.expect("delete");
    let newest = create(&*store, "bob_re").await;
    assert!(ids_ever.insert(newest.id), "id {} was reused", newest.id);
}

/// Deleting an account that does not exist (any more) succeeds and touches nothing else.
pub async fn delete_missing_account_succeeds(store: SharedStore) {
    let keep = create(&*store, "keep_dm").await;
    let gone = create(&*store, "gone_dm").await;
    store.delete_account(gone.id).await.expect("delete");
    store.delete_account(gone.id).await.expect("delete again");
    store
        .delete_account(gone.id.max(keep.id) + 1_000)
        .await
        .expect("delete never-existing");
    assert_eq!(
        store.find_account("keep_dm").await.expect("find"),
        Some(keep)
    );
}

// ---------------------------------------------------------------------------------
// The message feed

/// Without a cursor the feed returns no messages, only a starting point at or after the
/// latest message.
pub async fn message_feed_without_cursor_returns_starting_point(store: SharedStore) {
    let alice = create(&*store, "alice_fs").await;
    create(&*store, "bob_fs").await;
    let empty = store.message_feed(None, 10).await.expect("feed");
    assert!(empty.messages.is_empty());
    let sent = send(&*store, alice.id, "bob_fs", "m1", "k1").await;
    let after_empty = store
        .message_feed(Some(empty.cursor), 10)
        .await
        .expect("feed");
    assert_eq!(after_empty.messages, std::slice::from_ref(&sent.message));

    let start = store.message_feed(None, 10).await.expect("feed");
    assert!(start.messages.is_empty(), "None returns no messages");
    assert!(start.cursor >= sent.message.id);
    let nothing_new = store
        .message_feed(Some(start.cursor), 10)
        .await
        .expect("feed");
    assert!(nothing_new.messages.is_empty());
    assert_eq!(nothing_new.cursor, start.cursor);
}

/// Polling with the returned cursor sees every later message once, in id order, at most
/// `limit` at a time.
pub async fn message_feed_polls_see_each_message_once_in_id_order(store: SharedStore) {
    let (alice, bob) = alice_and_bob(&*store, "fd").await;
    create(&*store, "carol_fd").await;
    send(&*store, alice.id, "bob_fd", "before the start", "k0").await;
    let mut cursor = store.message_feed(None, 10).await.expect("feed").cursor;

    let mut expected = Vec::new();
    let mut seen = Vec::new();
    let poll = async |cursor: &mut u64, seen: &mut Vec<StoredMessage>, limit: u32| {
        let page = store
            .message_feed(Some(*cursor), limit)
            .await
            .expect("feed");
        assert!(page.messages.len() <= limit as usize, "limit {limit}");
        match page.messages.last() {
            Some(last) => assert_eq!(page.cursor, last.id),
            None => assert_eq!(page.cursor, *cursor),
        }
        *cursor = page.cursor;
        let count = page.messages.len();
        seen.extend(page.messages);
        count
    };

    for (i, (from, to)) in [
        (alice.id, "bob_fd"),
        (bob.id, "carol_fd"),
        (alice.id, "carol_fd"),
    ]
    .into_iter()
    .enumerate()
    {
        expected.push(
            send(&*store, from, to, "m", &format!("k{}", i + 1))
                .await
                .message,
        );
    }
    assert_eq!(poll(&mut cursor, &mut seen, 2).await, 2);
    assert_eq!(poll(&mut cursor, &mut seen, 2).await, 1);
    assert_eq!(poll(&mut cursor, &mut seen, 2).await, 0);
    // A duplicate send adds nothing to the feed.
    send(&*store, alice.id, "bob_fd", "m", "k1").await;
    assert_eq!(poll(&mut cursor, &mut seen, 2).await, 0);
    for i in 4..=5 {
        expected.push(
            send(&*store, bob.id, "alice_fd", "m", &format!("k{i}"))
                .await
                .message,
        );
    }
    assert_eq!(poll(&mut cursor, &mut seen, 10).await, 2);
    assert_eq!(poll(&mut cursor, &mut seen, 10).await, 0);
    assert_eq!(seen, expected);
}

// ---------------------------------------------------------------------------------
// Concurrency

/// Concurrent senders to one recipient get sequence numbers 1..=n with no gap and no
/// duplicate, each sender's messages in its own order.
pub async fn concurrent_sends_get_gap_free_sequences(store: SharedStore) {
    const TASKS: usize = 8;
    const SENDS: usize = 25;
    let recipient = create(&*store, "inbox_cs").await;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let sender = create(&*store, &format!("sender{t}_cs")).await;
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..SENDS {
                let outcome = send(
                    &*store,
                    sender.id,
                    "inbox_cs",
                    &format!("{t}:{i}"),
                    &format!("k{i}"),
                )
                .await;
                assert!(!outcome.duplicate);
                outcomes.push(outcome.message);
            }
            outcomes
        }));
    }
    let mut returned = Vec::new();
    for task in tasks {
        let outcomes = task.await.expect("sending task");
        let own: Vec<u64> = sequences(&outcomes);
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "one task's order: {own:?}"
        );
        returned.extend(outcomes);
    }
    let total = (TASKS * SENDS) as u64;
    let stored = inbox(&*store, recipient.id).await;
    assert_eq!(sequences(&stored), (1..=total).collect::<Vec<_>>());
    let ids: HashSet<u64> = stored.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), stored.len(), "ids are unique");
    returned.sort_by_key(|m| m.sequence);
    assert_eq!(
        returned, stored,
        "what the senders were told is what was stored"
    );
}

/// Concurrent sends with one idempotency key store one message, and every caller is
/// told about that one.
pub async fn concurrent_duplicate_sends_store_one_message(store: SharedStore) {
    const TASKS: usize = 8;
    let (alice, bob) = alice_and_bob(&*store, "cd").await;
    for round in 0..5 {
        let key = format!("key-{round}");
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let store = Arc::clone(&store);
                let key = key.clone();
                tokio::spawn(async move {
                    send(&*store, alice.id, "bob_cd", "exactly once", &key).await
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await.expect("sending task"));
        }
        let originals = outcomes.iter().filter(|o| !o.duplicate).count();
        assert_eq!(originals, 1, "round {round}: exactly one send stores");
        let distinct: HashMap<u64, &StoredMessage> = outcomes
            .iter()
            .map(|o| (o.message.id, &o.message))
            .collect();
        assert_eq!(
            distinct.len(),
            1,
            "round {round}: everyone sees one message"
        );
    }
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [1, 2, 3, 4, 5]);
}

// ---------------------------------------------------------------------------------
// History retention

/// Sends a message with a chosen send time.
async fn send_at(store: &dyn Store, sender: AccountId, recipient: &str, key: &str, at: i64) {
    store
        .send_message(NewMessage {
            sender_id: sender,
            recipient,
            text: "old news",
            idempotency_key: key,
            sent_at_unix_ms: at,
        })
        .await
        .unwrap_or_else(|e| panic!("send_message({key}): {e}"));
}

/// Retention deletes acknowledged messages sent before the cutoff, and nothing else:
/// not an unacknowledged message, not a newer one, not an inbox's latest message.
pub async fn purge_history_keeps_undelivered_and_each_latest(store: SharedStore) {
    let ann = create(&*store, "ann").await;
    let bob = create(&*store, "bob").await;
    let cat = create(&*store, "cat").await;
    for (i, at) in [T0, T0 + 1, T0 + 2, T0 + 3].into_iter().enumerate() {
        send_at(&*store, ann.id, "bob", &format!("b{i}"), at).await;
    }
    send_at(&*store, ann.id, "cat", "c0", T0).await;
    send_at(&*store, ann.id, "cat", "c1", T0).await;
    store.ack_messages(bob.id, 2).await.expect("ack bob");
    store.ack_messages(cat.id, 2).await.expect("ack cat");

    // bob 1 and 2 (acknowledged), cat 1 (cat 2 is its latest).
    assert_eq!(store.purge_history(T0 + 10).await.expect("purge"), 3);
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [3, 4]);
    assert_eq!(sequences(&inbox(&*store, cat.id).await), [2]);
    assert_eq!(sequences(&inbox(&*store, ann.id).await), Vec::<u64>::new());
    assert_eq!(store.purge_history(T0 + 10).await.expect("purge again"), 0);

    // Only messages sent before the cutoff go: bob 3 (sent T0 + 2) but not bob 4, the
    // latest, even when acknowledged.
    store.ack_messages(bob.id, 4).await.expect("ack bob");
    assert_eq!(store.purge_history(T0 + 3).await.expect("purge"), 1);
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [4]);
    // The acknowledged sequence is untouched.
    assert_eq!(fetch(&*store, bob.id, None, ALL).await, (vec![], false, 4));
}

/// After a purge the inbox numbering goes on where it was (no number handed out
/// twice), acknowledgements still work, and the feed still delivers new messages.
pub async fn purge_history_leaves_numbering_and_feed_going(store: SharedStore) {
    let ann = create(&*store, "ann").await;
    let bob = create(&*store, "bob").await;
    for i in 0..3 {
        send_at(&*store, ann.id, "bob", &format!("k{i}"), T0).await;
    }
    store.ack_messages(bob.id, 3).await.expect("ack");
    let cursor = store.message_feed(None, 10).await.expect("feed").cursor;
    assert_eq!(store.purge_history(T0 + 1).await.expect("purge"), 2);

    let next = send(&*store, ann.id, "bob", "fresh", "k3").await;
    assert_eq!(next.message.sequence, 4);
    assert!(!next.duplicate);
    assert_eq!(sequences(&inbox(&*store, bob.id).await), [3, 4]);
    assert_eq!(store.ack_messages(bob.id, 4).await.expect("ack"), 4);
    let fed = store.message_feed(Some(cursor), 10).await.expect("feed");
    assert_eq!(
        fed.messages.iter().map(|m| m.sequence).collect::<Vec<_>>(),
        [4]
    );
}
