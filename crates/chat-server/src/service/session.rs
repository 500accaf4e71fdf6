//! `Login` and `Logout`.

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::ChatService;
use crate::{auth, validate};

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
        if !self
            .passwords
            .verify(&password, &account.password_hash)
            .await?
        {
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
