//! `Login` and `Logout`.

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::ChatService;
use crate::{
    auth,
    store::{Account, LoginFailures},
    throttle, validate,
};

/// How often a failed check retries counting itself when concurrent failures of the
/// same account keep winning the compare-and-set (each loss means another failure was
/// counted), before the check gives up with `RESOURCE_EXHAUSTED`.
const COUNT_TRIES: usize = 16;

impl ChatService {
    pub(super) async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let pb::LoginRequest { username, password } = request.into_inner();
        validate::username(&username)?;
        validate::password(&password)?;
        let account = self
            .store
            .find_account(&username)
            .await?
            .ok_or_else(|| Status::not_found(format!("no account named {username:?}")))?;
        if !self.check_password(&account, &password).await? {
            return Err(Status::unauthenticated(format!(
                "wrong password for {:?}",
                account.username
            )));
        }
        let token = auth::new_token();
        let expires_at = crate::now_unix_ms().saturating_add(
            i64::try_from(self.settings.session_ttl.as_millis()).unwrap_or(i64::MAX),
        );
        self.store
            .create_session(&auth::hash_token(&token), account.id, expires_at)
            .await?;
        tracing::debug!(user = %account.username, "logged in");
        Ok(Response::new(pb::LoginResponse {
            token,
            expires_at_unix_ms: expires_at,
            username: account.username,
        }))
    }

    /// Whether `password` is the account's, under login throttling (see
    /// [`crate::throttle`]): refused with `RESOURCE_EXHAUSTED` while the account must
    /// wait; a failure is counted before the next check of the account on this replica
    /// starts; a success forgets the account's failures. `Login`, `DeleteAccount` and
    /// the retry check of `CreateAccount` all go through here, so none of them is a way
    /// around the throttle.
    pub(super) async fn check_password(
        &self,
        account: &Account,
        password: &str,
    ) -> Result<bool, Status> {
        let _turn = self.password_checks.take(account.id).await;
        let seen = self.store.login_failures(account.id).await?;
        if let Some(wait) = throttle::wait_before_check(seen, crate::now_unix_ms()) {
            tracing::info!(user = %account.username, ?wait, "password check refused: too many failures");
            ::metrics::counter!(crate::metrics::LOGIN_THROTTLED).increment(1);
            let seconds = wait.as_millis().div_ceil(1000);
            return Err(Status::resource_exhausted(format!(
                "too many failed logins for {:?}; try again in {seconds}s",
                account.username
            )));
        }
        let matches = self
            .passwords
            .verify(password, &account.password_hash)
            .await?;
        if !matches {
            self.count_failure(account).await?;
        } else if seen != LoginFailures::default() {
            self.store.clear_login_failures(account.id).await?;
        }
        Ok(matches)
    }

    /// Counts one failed password check against the account.
    async fn count_failure(&self, account: &Account) -> Result<(), Status> {
        for _ in 0..COUNT_TRIES {
            let seen = self.store.login_failures(account.id).await?;
            let next = throttle::after_failure(seen, crate::now_unix_ms());
            if self
                .store
                .replace_login_failures(account.id, seen, next)
                .await?
            {
                return Ok(());
            }
            tokio::task::yield_now().await;
        }
        Err(Status::resource_exhausted(format!(
            "too many concurrent logins for {:?}; try again",
            account.username
        )))
    }

    /// Ends the session. A token that is already gone (logged out, expired or of a
    /// deleted account) succeeds too, so a retry after a lost response is harmless.
    pub(super) async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let token = auth::bearer_token(&request)?;
        self.store.delete_session(&auth::hash_token(token)).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }
}
