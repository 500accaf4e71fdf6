//! Input validation: every field a client sends is checked here before it is used.

use tonic::Status;

use crate::config::limits;

/// Checks a username: 1-32 characters of `[A-Za-z0-9_.-]`.
pub fn username(name: &str) -> Result<(), Status> {
    let len = name.chars().count();
    if !limits::USERNAME_LEN.contains(&len) {
        return Err(Status::invalid_argument(format!(
            "username must be 1 to 32 characters long, not {len}"
        )));
    }
    if let Some(bad) = name.chars().find(|c| !is_username_char(*c)) {
        return Err(Status::invalid_argument(format!(
            "username may only contain letters, digits, '_', '.' and '-', not {bad:?}"
        )));
    }
    Ok(())
}

/// Whether a character may appear in a username.
pub fn is_username_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Checks a password's length (8 to 1024 bytes); any characters are allowed.
pub fn password(password: &str) -> Result<(), Status> {
    if !limits::PASSWORD_LEN.contains(&password.len()) {
        return Err(Status::invalid_argument(format!(
            "password must be {} to {} bytes long",
            limits::PASSWORD_LEN.start(),
            limits::PASSWORD_LEN.end()
        )));
    }
    Ok(())
}

/// Checks an idempotency key: 1-64 characters of `[A-Za-z0-9_.:-]`.
pub fn idempotency_key(key: &str) -> Result<(), Status> {
    let len = key.chars().count();
    if !limits::IDEMPOTENCY_KEY_LEN.contains(&len)
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))
    {
        return Err(Status::invalid_argument(
            "idempotency_key must be 1 to 64 characters of letters, digits, '_', '.', ':' and '-' (a UUID is ideal)",
        ));
    }
    Ok(())
}

/// Checks a message text: not empty, at most `max_bytes` bytes.
pub fn message_text(text: &str, max_bytes: u32) -> Result<(), Status> {
    if text.is_empty() {
        return Err(Status::invalid_argument("message text is empty"));
    }
    if text.len() > max_bytes as usize {
        return Err(Status::invalid_argument(format!(
            "message text is {} bytes; the limit is {max_bytes}",
            text.len()
        )));
    }
    Ok(())
}

/// Resolves a requested page size: 0 means the default, anything above the maximum is
/// lowered to it.
pub fn page_size(requested: u32, (default, max): (u32, u32)) -> u32 {
    match requested {
        0 => default,
        n => n.min(max),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn usernames() {
        for good in ["a", "Alice", "bob.smith", "x_y-z", &"a".repeat(32)] {
            assert!(username(good).is_ok(), "{good:?}");
        }
        for bad in ["", &"a".repeat(33), "al ice", "a/b", "é", "a*", "a?"] {
            assert_eq!(
                username(bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn passwords_and_keys() {
        assert!(password("12345678").is_ok());
        assert!(password("1234567").is_err());
        assert!(password(&"x".repeat(1025)).is_err());
        assert!(idempotency_key("0b9f6c2e-1d4a-4c1e-9a57-3f2d8e6b7a10").is_ok());
        assert!(idempotency_key("").is_err());
        assert!(idempotency_key("a b").is_err());
        assert!(idempotency_key(&"k".repeat(65)).is_err());
    }

    #[test]
    fn texts_and_pages() {
        assert!(message_text("hi", 4).is_ok());
        assert!(message_text("", 4).is_err());
        assert!(message_text("hello", 4).is_err());
        assert_eq!(page_size(0, (50, 200)), 50);
        assert_eq!(page_size(10, (50, 200)), 10);
        assert_eq!(page_size(10_000, (50, 200)), 200);
    }
}
