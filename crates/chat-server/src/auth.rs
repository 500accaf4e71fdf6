//! Passwords, session tokens and the check that every authenticated call goes through.
//!
//! - Passwords are hashed with argon2id (the `argon2` crate's defaults: 19 MiB, 2 passes)
//!   on the blocking pool, at most [`limits::CONCURRENT_PASSWORD_HASHES`] at a time so a
//!   burst of logins cannot exhaust memory. They are never stored or logged in clear.
//! - Session tokens are 256 random bits from the operating system, shown to the client
//!   once as hex and stored only as their SHA-256 hash.

use std::sync::Arc;

use argon2::{
    Argon2,
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tonic::{Request, Status};

use crate::{
    config::limits,
    store::{Account, SessionLookup, Store, TokenHash},
};

/// Hashes and verifies passwords off the async threads, with bounded concurrency.
#[derive(Clone)]
pub struct PasswordHasherPool {
    permits: Arc<Semaphore>,
}

impl Default for PasswordHasherPool {
    fn default() -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limits::CONCURRENT_PASSWORD_HASHES)),
        }
    }
}

impl PasswordHasherPool {
    /// Hashes a password into an argon2id PHC string with a fresh random salt.
    pub async fn hash(&self, password: &str) -> Result<String, Status> {
        let password = password.to_owned();
        self.run(move || {
            let mut salt_bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut salt_bytes);
            let salt = SaltString::encode_b64(&salt_bytes).map_err(|error| {
                tracing::error!(%error, "cannot encode a password salt");
                Status::internal("password hashing failed")
            })?;
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
                .map_err(|error| {
                    tracing::error!(%error, "password hashing failed");
                    Status::internal("password hashing failed")
                })
        })
        .await
    }

    /// Whether `password` matches a stored PHC string.
    pub async fn verify(&self, password: &str, phc: &str) -> Result<bool, Status> {
        let (password, phc) = (password.to_owned(), phc.to_owned());
        self.run(move || {
            let parsed = PasswordHash::new(&phc).map_err(|error| {
                tracing::error!(%error, "stored password hash is malformed");
                Status::internal("stored password hash is malformed")
            })?;
            Ok(Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, Status> + Send + 'static,
    ) -> Result<T, Status> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Status::unavailable("server is shutting down"))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|_| Status::internal("password hashing task failed"))?
    }
}

/// A new session token: 256 random bits as 64 hex digits.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The hash under which a token is stored.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of a request's `authorization: Bearer <token>` header.
pub fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let header = request
        .metadata()
        .get(chat_proto::AUTHORIZATION_HEADER)
        .ok_or_else(|| {
            Status::unauthenticated(
                "missing session token: log in and send it as 'authorization: Bearer <token>'",
            )
        })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty() && token.len() <= limits::MAX_TOKEN_LEN)
        .ok_or_else(|| {
            Status::unauthenticated("malformed authorization header: expected 'Bearer <token>'")
        })?;
    Ok(token)
}

/// Resolves a request's token to its account, or fails with UNAUTHENTICATED.
pub async fn authenticate<T>(store: &dyn Store, request: &Request<T>) -> Result<Account, Status> {
    let token_hash = hash_token(bearer_token(request)?);
    match store
        .lookup_session(&token_hash, crate::now_unix_ms())
        .await?
    {
        SessionLookup::Valid(account) => Ok(account),
        SessionLookup::AccountDeleted => Err(Status::unauthenticated(
            "the account of this session has been deleted",
        )),
        SessionLookup::Invalid => Err(Status::unauthenticated(
            "session is invalid or has expired; log in again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(hash_token(&a), hash_token(&b));
        assert_eq!(hash_token(&a), hash_token(&a));
    }

    #[test]
    fn bearer_header_parsing() {
        let mut request = Request::new(());
        assert_eq!(
            bearer_token(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request
            .metadata_mut()
            .insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            bearer_token(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request
            .metadata_mut()
            .insert("authorization", "Bearer abc123".parse().unwrap());
        assert_eq!(bearer_token(&request).unwrap(), "abc123");
    }

    #[tokio::test]
    async fn password_hashes_are_argon2id_and_verify() {
        let pool = PasswordHasherPool::default();
        let phc = pool.hash("correct horse").await.unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(pool.verify("correct horse", &phc).await.unwrap());
        assert!(!pool.verify("wrong horse", &phc).await.unwrap());
    }
}
