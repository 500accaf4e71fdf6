//! `Login` and `Logout`.

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::ChatService;
use crate::{
    auth,
    store::Account,
    throttle::{self, Decision},
    validate,
};

/// How often a password check retries its compare-and-set when concurrent attempts on
/// the same account keep winning (each loss means another attempt was counted), before
/// it gives up with `RESOURCE_EXHAUSTED`.
const CLAIM_TRIES: usize = 8;

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

    /// Whether `password` is the account's. Every check counts as a login attempt
    /// (see [`crate::throttle`]): it is refused with `RESOURCE_EXHAUSTED` while the
    /// account must wait, and a match forgets the account's failures. `Login`,
    /// `DeleteAccount` and the retry check of `CreateAccount` all go through here, so
    /// none of them is a way around the throttle.
    pub(super) async fn check_password(
        &self,
        account: &Account,
        password: &str,
    ) -> Result<bool, Status> {
        self.count_login_attempt(account).await?;
        let matches = self
            .passwords
            .verify(password, &account.password_hash)
            .await?;
        if matches {
            self.store.clear_login_failures(account.id).await?;
        }
        Ok(matches)
    }

    /// Counts a login attempt against the account before its password is checked, or
    /// refuses it with `RESOURCE_EXHAUSTED` while the account must wait.
    async fn count_login_attempt(&self, account: &Account) -> Result<(), Status> {
        for _ in 0..CLAIM_TRIES {
            let seen = self.store.login_failures(account.id).await?;
            match throttle::decide(seen, crate::now_unix_ms()) {
                Decision::Wait(wait) => {
                    tracing::info!(user = %account.username, ?wait, "login refused: too many failed attempts");
                    let seconds = wait.as_millis().div_ceil(1000);
                    return Err(Status::resource_exhausted(format!(
                        "too many failed logins for {:?}; try again in {seconds}s",
                        account.username
                    )));
                }
                Decision::Count(next) => {
                    if self
                        .store
                        .claim_login_attempt(account.id, seen, next)
                        .await?
                    {
                        return Ok(());
                    }
                    tokio::task::yield_now().await;
                }
            }
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
