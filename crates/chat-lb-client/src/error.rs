//! Error types.
//!
//! Errors of the *configuration* (a bad address, a bad duration, an impossible
//! setting) are typed enums. Errors of a *call* follow tonic's conventions: the
//! balancer answers with a gRPC status (see [`crate::Balancer`]) or passes the
//! transport error of the last attempt through as a [`BoxError`].

/// A type-erased error, as tower and tonic use (`tonic::codegen::StdError`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An entry of an address list that cannot be used as an endpoint address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The list held no address at all.
    #[error("the endpoint address list is empty")]
    Empty,
    /// One entry is malformed; `entry` is the entry as written.
    #[error("invalid endpoint address {entry:?}: {reason}")]
    Invalid {
        /// The offending entry, as written (trimmed).
        entry: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// A duration that [`crate::parse_duration`] could not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"250ms\", \"2s\", \"1m 30s\")")]
pub struct DurationError {
    /// The text as given.
    pub input: String,
    /// Why humantime rejected it.
    pub reason: String,
}

/// A setting that is out of range or unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `Builder::set` got a key it does not know.
    #[error("unknown balancer setting {0:?}")]
    UnknownKey(String),
    /// A value could not be parsed for its key.
    #[error("invalid value {value:?} for balancer setting {key:?}: {reason}")]
    InvalidValue {
        /// The setting's key.
        key: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A value parsed but is outside its allowed range.
    #[error("balancer setting {setting} {problem}")]
    OutOfRange {
        /// The setting's name.
        setting: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// Why [`crate::Builder::build`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// An address given to the builder is invalid.
    #[error(transparent)]
    Address(#[from] AddressError),
    /// A setting is out of range.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `build` was called outside a tokio runtime; the balancer needs one for its
    /// connections, probers and resolver.
    #[error("Balancer::build must be called from within a tokio runtime")]
    NoRuntime,
}
