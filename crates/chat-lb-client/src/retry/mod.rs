//! Which calls may be retried, and how a failed attempt is classified.
//!
//! Two kinds of retry exist:
//!
//! * **Transparent** — the attempt never reached a server (what proves that:
//!   see `classify`). Every call is retried on another endpoint, each endpoint at most once per
//!   call (again only if it recovered meanwhile). These retries do not draw on
//!   the budget: they put no load on any server.
//! * **Retry-safe** — the attempt may have reached a server: it failed with a
//!   transport error, answered `UNAVAILABLE`, or sent no response headers
//!   within `per_try_timeout`. Only calls marked safe (by [`RetrySafe`] or a
//!   [`SafeToRetry`] request extension) are retried, on another endpoint, at
//!   most `max_attempts` attempts in all, each retry drawing on the retry
//!   budget ([`budget`]).
//! * **After a shed** — the server answered `RESOURCE_EXHAUSTED` with a retry
//!   pushback (it shed the call before handling it). A retry-safe call is
//!   retried like the above (within `max_attempts` and the budget) on another
//!   endpoint at once; when no endpoint can take it now, after a wait
//!   ([`backoff`]). A negative pushback means "do not retry": the answer is
//!   passed on.
//!
//! How a call runs its attempts and retries is the call state machine's job
//! (see `call`).

pub(crate) mod backoff;
pub(crate) mod budget;

use std::{fmt, sync::Arc};

/// Which calls are safe to retry after they may have reached a server.
///
/// ```
/// use chat_lb_client::RetrySafe;
/// let chat = RetrySafe::prefix("/chat.v1.ChatService/");
/// let reads = RetrySafe::predicate(|path| path.ends_with("/Get") || path.ends_with("/List"));
/// # let _ = (chat, reads);
/// ```
#[derive(Clone, Default)]
pub enum RetrySafe {
    /// No call (the default): only attempts that never reached a server are
    /// retried.
    #[default]
    None,
    /// Every call.
    All,
    /// Calls whose gRPC method path (`/package.Service/Method`) starts with
    /// this prefix.
    Prefix(Arc<str>),
    /// Calls whose method path satisfies the predicate.
    Predicate(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl RetrySafe {
    /// Calls whose method path starts with `prefix`, e.g.
    /// `"/chat.v1.ChatService/"` for a whole service.
    pub fn prefix(prefix: impl Into<Arc<str>>) -> Self {
        Self::Prefix(prefix.into())
    }

    /// Calls whose method path satisfies `f`.
    pub fn predicate(f: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self::Predicate(Arc::new(f))
    }

    /// Whether a call to `path` is safe to retry.
    pub fn is_safe(&self, path: &str) -> bool {
        match self {
            RetrySafe::None => false,
            RetrySafe::All => true,
            RetrySafe::Prefix(prefix) => path.starts_with(&**prefix),
            RetrySafe::Predicate(f) => f(path),
        }
    }
}

impl fmt::Debug for RetrySafe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetrySafe::None => f.write_str("None"),
            RetrySafe::All => f.write_str("All"),
            RetrySafe::Prefix(p) => f.debug_tuple("Prefix").field(p).finish(),
            RetrySafe::Predicate(_) => f.write_str("Predicate(..)"),
        }
    }
}

/// A request extension overriding [`RetrySafe`] for one call.
///
/// ```
/// use chat_lb_client::SafeToRetry;
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(SafeToRetry(true));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafeToRetry(pub bool);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety_rules() {
        assert!(!RetrySafe::None.is_safe("/a.B/C"));
        assert!(RetrySafe::All.is_safe("/a.B/C"));
        let p = RetrySafe::prefix("/chat.v1.ChatService/");
        assert!(p.is_safe("/chat.v1.ChatService/SendMessage"));
        assert!(!p.is_safe("/grpc.health.v1.Health/Check"));
        let f = RetrySafe::predicate(|m| m.ends_with("/Get"));
        assert!(f.is_safe("/kv.Kv/Get") && !f.is_safe("/kv.Kv/Put"));
    }
}
