//! Store operation latency: a [`Store`] that times every call of the store it wraps
//! ([`STORE_OPERATION_SECONDS`](super::STORE_OPERATION_SECONDS), by operation and
//! outcome) and otherwise delegates. The one place store calls are measured.

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Instant,
};

use ::metrics::Histogram;

use async_trait::async_trait;

use crate::store::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, MessageDraft, NewMessage,
    SendOutcome, SessionLookup, SessionSend, Store, StoreError, TokenHash,
};

/// A store whose every operation is timed.
pub struct MeteredStore {
    inner: Arc<dyn Store>,
}

impl MeteredStore {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Self { inner })
    }
}

/// The `outcome` label values.
const OUTCOMES: [&str; 6] = [
    "ok",
    "unavailable",
    "conflict",
    "not_found",
    "invalid",
    "internal",
];

/// One operation's histograms by outcome, each registered on first use and then kept.
type Histograms = [OnceLock<Histogram>; OUTCOMES.len()];

/// Runs one store operation and records its latency and outcome.
async fn timed<T>(
    operation: &'static str,
    histograms: &Histograms,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => 0,
        Err(StoreError::Unavailable(_)) => 1,
        Err(StoreError::UsernameTaken(_) | StoreError::IdempotencyKeyReused(_)) => 2,
        Err(StoreError::NoSuchAccount(_)) => 3,
        Err(StoreError::AckBeyondLatest { .. }) => 4,
        Err(StoreError::Internal(_)) => 5,
    };
    histograms[outcome]
        .get_or_init(|| {
            let outcome = OUTCOMES[outcome];
            ::metrics::histogram!(super::STORE_OPERATION_SECONDS, "operation" => operation, "outcome" => outcome)
        })
        .record(start.elapsed());
    result
}

/// Implements [`Store`] for [`MeteredStore`]: each listed operation (the trait's
/// signature, on one line) delegates to the inner store through [`timed`], labelled
/// with its own name, or with the name after `as`.
macro_rules! timed_operations {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $out:ty $(as $label:literal)?;)*) => {
        #[async_trait]
        impl Store for MeteredStore {
            $(
                async fn $name(&self, $($arg: $ty),*) -> Result<$out, StoreError> {
                    static HISTOGRAMS: Histograms = [const { OnceLock::new() }; OUTCOMES.len()];
                    let label = operation_label!($name $($label)?);
                    timed(label, &HISTOGRAMS, self.inner.$name($($arg),*)).await
                }
            )*
        }
    };
}

/// An operation's `operation` label: its name, unless another is given.
macro_rules! operation_label {
    ($name:ident) => {
        stringify!($name)
    };
    ($name:ident $label:literal) => {
        $label
    };
}

#[rustfmt::skip]
timed_operations! {
    fn ping() -> ();
    fn create_account(username: &str, password_hash: &str, created_at_unix_ms: i64) -> Account;
    fn find_account(username: &str) -> Option<Account>;
    fn list_accounts(query: AccountQuery<'_>) -> Vec<String>;
    fn delete_account(id: AccountId) -> ();
    fn login_failures(account: AccountId) -> LoginFailures;
    fn replace_login_failures(account: AccountId, seen: LoginFailures, next: LoginFailures) -> bool;
    fn clear_login_failures(account: AccountId) -> ();
    fn create_session(token_hash: &TokenHash, account: AccountId, expires_at_unix_ms: i64) -> ();
    fn lookup_session(token_hash: &TokenHash, now_unix_ms: i64) -> SessionLookup;
    fn delete_session(token_hash: &TokenHash) -> ();
    fn purge_expired_sessions(now_unix_ms: i64) -> u64;
    fn send_message(message: NewMessage<'_>) -> SendOutcome;
    // A send, whichever way the caller is known (a refused session is an `ok` outcome,
    // as for `lookup_session`): dashboards count sends under one name.
    fn send_message_as(token_hash: &TokenHash, now_unix_ms: i64, message: MessageDraft<'_>) -> SessionSend as "send_message";
    fn fetch_messages(recipient: AccountId, after_sequence: Option<u64>, limit: u32) -> InboxPage;
    fn ack_messages(recipient: AccountId, up_to_sequence: u64) -> u64;
    fn purge_history(sent_before_unix_ms: i64) -> u64;
    fn message_feed(after_id: Option<u64>, limit: u32) -> FeedPage;
}
