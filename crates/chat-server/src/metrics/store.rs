//! Store operation latency: a [`Store`] that times every call of the store it wraps
//! ([`STORE_OPERATION_SECONDS`](super::STORE_OPERATION_SECONDS), by operation and
//! outcome) and otherwise delegates. The one place store calls are measured.

use std::{future::Future, sync::Arc, time::Instant};

use async_trait::async_trait;

use crate::store::{
    Account, AccountId, AccountQuery, FeedPage, InboxPage, LoginFailures, NewMessage, SendOutcome,
    SessionLookup, Store, StoreError, TokenHash,
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

/// Runs one store operation and records its latency and outcome.
async fn timed<T>(
    operation: &'static str,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let start = Instant::now();
    let result = call.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::UsernameTaken(_) | StoreError::IdempotencyKeyReused(_)) => "conflict",
        Err(StoreError::NoSuchAccount(_)) => "not_found",
        Err(StoreError::AckBeyondLatest { .. }) => "invalid",
        Err(StoreError::Internal(_)) => "internal",
    };
    ::metrics::histogram!(super::STORE_OPERATION_SECONDS, "operation" => operation, "outcome" => outcome)
        .record(start.elapsed());
    result
}

#[async_trait]
impl Store for MeteredStore {
    async fn ping(&self) -> Result<(), StoreError> {
        timed("ping", self.inner.ping()).await
    }

    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError> {
        let call = self
            .inner
            .create_account(username, password_hash, created_at_unix_ms);
        timed("create_account", call).await
    }

    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError> {
        timed("find_account", self.inner.find_account(username)).await
    }

    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError> {
        timed("list_accounts", self.inner.list_accounts(query)).await
    }

    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError> {
        timed("delete_account", self.inner.delete_account(id)).await
    }

    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError> {
        timed("login_failures", self.inner.login_failures(account)).await
    }

    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError> {
        let call = self.inner.replace_login_failures(account, seen, next);
        timed("replace_login_failures", call).await
    }

    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError> {
        timed(
            "clear_login_failures",
            self.inner.clear_login_failures(account),
        )
        .await
    }

    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError> {
        let call = self
            .inner
            .create_session(token_hash, account, expires_at_unix_ms);
        timed("create_session", call).await
    }

    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError> {
        timed(
            "lookup_session",
            self.inner.lookup_session(token_hash, now_unix_ms),
        )
        .await
    }

    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError> {
        timed("delete_session", self.inner.delete_session(token_hash)).await
    }

    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError> {
        let call = self.inner.purge_expired_sessions(now_unix_ms);
        timed("purge_expired_sessions", call).await
    }

    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError> {
        timed("send_message", self.inner.send_message(message)).await
    }

    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError> {
        let call = self.inner.fetch_messages(recipient, after_sequence, limit);
        timed("fetch_messages", call).await
    }

    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError> {
        timed(
            "ack_messages",
            self.inner.ack_messages(recipient, up_to_sequence),
        )
        .await
    }

    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError> {
        timed(
            "purge_history",
            self.inner.purge_history(sent_before_unix_ms),
        )
        .await
    }

    async fn message_feed(
        &self,
        after_id: Option<u64>,
        limit: u32,
    ) -> Result<FeedPage, StoreError> {
        timed("message_feed", self.inner.message_feed(after_id, limit)).await
    }
}
