//! The one-line errors the CLI prints, and their exit codes.

use std::process::ExitCode;

use tonic::Code;

/// A failure to show the user: one readable line and an exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    /// What went wrong, in one line.
    pub message: String,
    /// The process exit code.
    pub kind: ErrorKind,
}

/// Classes of failure, each with its own exit code (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Anything else (1).
    Other,
    /// Bad command-line input or a request the server refused as invalid (2).
    Usage,
    /// Wrong password, expired or missing session (3).
    Auth,
    /// An unknown user or recipient (4).
    NotFound,
    /// No replica could serve the call (5).
    Unavailable,
    /// The name is taken or a key was reused (6).
    Conflict,
    /// Too many failed password attempts: the account waits before the next (7).
    Throttled,
}

impl ErrorKind {
    /// The exit code for this kind.
    pub fn exit_code(self) -> ExitCode {
        ExitCode::from(match self {
            ErrorKind::Other => 1,
            ErrorKind::Usage => 2,
            ErrorKind::Auth => 3,
            ErrorKind::NotFound => 4,
            ErrorKind::Unavailable => 5,
            ErrorKind::Conflict => 6,
            ErrorKind::Throttled => 7,
        })
    }
}

impl CliError {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }

    /// A usage error.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Usage, message)
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        let kind = match status.code() {
            Code::InvalidArgument | Code::OutOfRange => ErrorKind::Usage,
            Code::Unauthenticated | Code::PermissionDenied => ErrorKind::Auth,
            Code::NotFound => ErrorKind::NotFound,
            Code::Unavailable | Code::DeadlineExceeded => ErrorKind::Unavailable,
            Code::AlreadyExists => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::Throttled,
            _ => ErrorKind::Other,
        };
        // Server text: one line, and nothing a terminal would act on.
        let message = crate::output::sanitize(&one_line(status.message())).into_owned();
        let message = match status.code() {
            Code::DeadlineExceeded => format!("the cluster did not answer in time: {message}"),
            Code::Unavailable => format!("cluster unavailable: {message}"),
            _ if message.is_empty() => format!("the server answered {:?}", status.code()),
            _ => message,
        };
        Self::new(kind, message)
    }
}

impl From<crate::session::StoreError> for CliError {
    fn from(error: crate::session::StoreError) -> Self {
        Self::new(
            ErrorKind::Other,
            crate::output::sanitize(&one_line(&error.to_string())).into_owned(),
        )
    }
}

/// Folds a multi-line message into one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_distinct_kinds_and_one_line() {
        let error = CliError::from(tonic::Status::unauthenticated("wrong password\nfor bob"));
        assert_eq!(error.kind, ErrorKind::Auth);
        assert_eq!(error.message, "wrong password for bob");
        assert_eq!(
            CliError::from(tonic::Status::not_found("no account")).kind,
            ErrorKind::NotFound
        );
        let unavailable = CliError::from(tonic::Status::unavailable("a: refused; b: timeout"));
        assert_eq!(unavailable.kind, ErrorKind::Unavailable);
        assert!(unavailable.message.starts_with("cluster unavailable: "));
        let throttled = CliError::from(tonic::Status::resource_exhausted(
            "too many failed logins for \"bob\"; try again in 2s",
        ));
        assert_eq!(throttled.kind, ErrorKind::Throttled);
        assert_eq!(throttled.kind.exit_code(), ExitCode::from(7));
    }

    #[test]
    fn server_text_in_errors_is_escaped() {
        let error = CliError::from(tonic::Status::not_found(
            "no account \u{1b}]0;owned\u{7}\u{202e}moc.evil\r\n#99 admin: re-enter your password",
        ));
        assert_eq!(
            error.message,
            r"no account \e]0;owned\x07\u{202e}moc.evil #99 admin: re-enter your password"
        );
        assert!(!error.to_string().chars().any(crate::output::needs_escape));
    }
}
