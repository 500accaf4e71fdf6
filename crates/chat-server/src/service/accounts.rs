//! `CreateAccount`, `ListAccounts` and `DeleteAccount`.

use chat_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::ChatService;
use crate::{
    auth,
    config::limits,
    store::{AccountQuery, SessionLookup, StoreError},
    validate,
    wildcard::Pattern,
};

impl ChatService {
    /// Creates an account. Creating one that exists with the same name (same case) and
    /// password succeeds again, so a retry after a lost response is harmless.
    pub(super) async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let pb::CreateAccountRequest { username, password } = request.into_inner();
        validate::username(&username)?;
        validate::password(&password)?;
        if self.is_retry_of_create(&username, &password).await? {
            return Ok(Response::new(pb::CreateAccountResponse { username }));
        }
        let hash = self.passwords.hash(&password).await?;
        match self
            .store
            .create_account(&username, &hash, crate::now_unix_ms())
            .await
        {
            Ok(account) => {
                tracing::info!(user = %account.username, "account created");
                Ok(Response::new(pb::CreateAccountResponse {
                    username: account.username,
                }))
            }
            // Another replica created it meanwhile: perhaps our own earlier attempt.
            Err(StoreError::UsernameTaken(_))
                if self.is_retry_of_create(&username, &password).await? =>
            {
                Ok(Response::new(pb::CreateAccountResponse { username }))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Whether an account with exactly this name and password already exists.
    async fn is_retry_of_create(&self, username: &str, password: &str) -> Result<bool, Status> {
        match self.store.find_account(username).await? {
            Some(existing) if existing.username == username => {
                self.check_password(&existing, password).await
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn list_accounts(
        &self,
        request: Request<pb::ListAccountsRequest>,
    ) -> Result<Response<pb::ListAccountsResponse>, Status> {
        auth::authenticate(self.store.as_ref(), &request).await?;
        let pb::ListAccountsRequest {
            pattern,
            page_size,
            page_token,
        } = request.into_inner();
        let pattern = Pattern::parse(&pattern)
            .map_err(|error| Status::invalid_argument(error.to_string()))?;
        let after = if page_token.is_empty() {
            None
        } else {
            validate::username(&page_token)
                .map_err(|_| Status::invalid_argument("malformed page_token"))?;
            Some(page_token.to_ascii_lowercase())
        };
        let limit = validate::page_size(page_size, limits::LIST_PAGE);
        let usernames = self
            .store
            .list_accounts(AccountQuery {
                pattern: &pattern,
                after: after.as_deref(),
                limit,
            })
            .await?;
        let next_page_token = match usernames.last() {
            Some(last) if usernames.len() as u32 == limit => last.to_ascii_lowercase(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListAccountsResponse {
            usernames,
            next_page_token,
        }))
    }

    /// Deletes the caller's account after checking the password again. Deleting with a
    /// session of an already deleted account succeeds, so a retry is harmless.
    pub(super) async fn delete_account(
        &self,
        request: Request<pb::DeleteAccountRequest>,
    ) -> Result<Response<pb::DeleteAccountResponse>, Status> {
        let token_hash = auth::hash_token(auth::bearer_token(&request)?);
        let account = match self
            .store
            .lookup_session(&token_hash, crate::now_unix_ms())
            .await?
        {
            SessionLookup::Valid(account) => account,
            SessionLookup::AccountDeleted => {
                return Ok(Response::new(pb::DeleteAccountResponse {}));
            }
            SessionLookup::Invalid => {
                return Err(Status::unauthenticated(
                    "session is invalid or has expired; log in again",
                ));
            }
        };
        let password = request.into_inner().password;
        if password.len() > *limits::PASSWORD_LEN.end()
            || !self.check_password(&account, &password).await?
        {
            return Err(Status::unauthenticated(format!(
                "wrong password for {:?}; the account was not deleted",
                account.username
            )));
        }
        self.store.delete_account(account.id).await?;
        tracing::info!(user = %account.username, "account deleted");
        Ok(Response::new(pb::DeleteAccountResponse {}))
    }
}
