//! Passwords, session tokens and the check that every authenticated call goes through.
//!
//! - Passwords are hashed with argon2id in [`crate::password`], with bounded memory;
//!   they are never stored or logged in clear.
//! - Session tokens are 256 random bits from the operating system, shown to the client
//!   once as hex and stored only as their SHA-256 hash.

use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Status};

use crate::{
    config::limits,
    store::{Account, SessionLookup, SessionRefusal, Store, TokenHash},
};

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
    let lookup = store
        .lookup_session(&session_token_hash(request)?, crate::now_unix_ms())
        .await?;
    admit(lookup)
}

/// The stored hash of a request's session token, for store operations that resolve
/// the session themselves ([`Store::send_message_as`]); UNAUTHENTICATED without one.
pub fn session_token_hash<T>(request: &Request<T>) -> Result<TokenHash, Status> {
    Ok(hash_token(bearer_token(request)?))
}

/// The account a session lookup found, or UNAUTHENTICATED saying why there is none.
pub fn admit(lookup: SessionLookup) -> Result<Account, Status> {
    lookup.live().map_err(refused)
}

/// UNAUTHENTICATED, saying why the session was refused.
pub fn refused(refusal: SessionRefusal) -> Status {
    match refusal {
        SessionRefusal::AccountDeleted => {
            Status::unauthenticated("the account of this session has been deleted")
        }
        SessionRefusal::Invalid => {
            Status::unauthenticated("session is invalid or has expired; log in again")
        }
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
        let request = Request::new(());
        assert_eq!(
            bearer_token(&request).unwrap_err().code(),
            tonic::Code::Unauthenticated,
            "no header"
        );
        for (header, expected) in [("Basic abc", None), ("Bearer abc123", Some("abc123"))] {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", header.parse().unwrap());
            match expected {
                Some(token) => assert_eq!(bearer_token(&request).unwrap(), token),
                None => assert_eq!(
                    bearer_token(&request).unwrap_err().code(),
                    tonic::Code::Unauthenticated,
                    "{header}"
                ),
            }
        }
    }
}
