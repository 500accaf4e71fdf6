//! The shared store: the only place a chat server keeps state.
//!
//! A [`Store`] holds accounts, password hashes, sessions and messages for every replica
//! at once, so any replica can serve any call and any replica can die. Implementations:
//!
//! - [`sqlite::SqliteStore`], the embedded default: one SQLite database file in WAL mode
//!   that several server processes on one host share;
//! - [`mongo::MongoStore`]: a MongoDB database (a replica set, typically), that replicas
//!   on any number of hosts share.
//!
//! Every implementation must pass the conformance suite in
//! `crates/chat-server/tests/conformance/`, which states the contract below as tests.
//!
//! Each implementation is a folder with a file per concern (its module documentation
//! lists them; each file explains its part of the design), and implements [`Store`] by
//! delegating every method to the operation in its file. What both share is here:
//! `keys.rs` (the username key and the range a listing scans) and `failure.rs` (how an
//! operation fails, and the one place a database error becomes a [`StoreError`]).
//!
//! The store knows nothing of passwords or tokens in clear: callers hand it argon2 PHC
//! strings and SHA-256 token hashes. It validates nothing that the service layer
//! validates (name syntax, text length); it enforces uniqueness, idempotency and order.

mod failure;
mod keys;
pub mod mongo;
pub mod sqlite;

use async_trait::async_trait;

/// The numeric id of an account. Ids are never reused, so a deleted account's id never
/// names a later account that registers the same username.
pub type AccountId = i64;

/// SHA-256 of a session token. The token itself is never stored.
pub type TokenHash = [u8; 32];

/// An account as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The account's id.
    pub id: AccountId,
    /// The username with the case it was registered with.
    pub username: String,
    /// The argon2id PHC string of the password.
    pub password_hash: String,
}

/// An account's failed login attempts in a row, as the store keeps them for login
/// throttling. The default (no failures, not locked) is what an account without a
/// record has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoginFailures {
    /// Login attempts counted against the account since its last successful login.
    pub count: u32,
    /// No login attempt is taken before this time (milliseconds since the Unix epoch).
    pub locked_until_unix_ms: i64,
}

/// What a session token resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionLookup {
    /// A live session of an existing account.
    Valid(Account),
    /// The session exists but its account has been deleted.
    AccountDeleted,
    /// No such session, or it has expired.
    Invalid,
}

impl SessionLookup {
    /// The live session's account, or why there is none.
    pub fn live(self) -> Result<Account, SessionRefusal> {
        match self {
            Self::Valid(account) => Ok(account),
            Self::AccountDeleted => Err(SessionRefusal::AccountDeleted),
            Self::Invalid => Err(SessionRefusal::Invalid),
        }
    }
}

/// Why a session token does not resolve to a live account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefusal {
    /// The session exists but its account has been deleted.
    AccountDeleted,
    /// No such session, or it has expired.
    Invalid,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique across the store.
    pub id: u64,
    /// Position in the recipient's inbox: strictly increasing per recipient, from 1.
    pub sequence: u64,
    /// The sender's username at send time.
    pub sender: String,
    /// The recipient's username as registered.
    pub recipient: String,
    /// The message text.
    pub text: String,
    /// Milliseconds since the Unix epoch when the message was stored.
    pub sent_at_unix_ms: i64,
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage<'a> {
    /// The sending account.
    pub sender_id: AccountId,
    /// The recipient's username, in any case.
    pub recipient: &'a str,
    /// The text.
    pub text: &'a str,
    /// The sender's idempotency key for this message.
    pub idempotency_key: &'a str,
    /// The time to record as the send time, in milliseconds since the Unix epoch.
    pub sent_at_unix_ms: i64,
}

/// A message to store on behalf of whoever holds a session: a [`NewMessage`] before its
/// sender is known (see [`Store::send_message_as`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageDraft<'a> {
    /// The recipient's username, in any case.
    pub recipient: &'a str,
    /// The text.
    pub text: &'a str,
    /// The sender's idempotency key for this message.
    pub idempotency_key: &'a str,
    /// The time to record as the send time, in milliseconds since the Unix epoch.
    pub sent_at_unix_ms: i64,
}

impl<'a> MessageDraft<'a> {
    /// The message as sent by `sender_id`.
    pub fn sent_by(self, sender_id: AccountId) -> NewMessage<'a> {
        NewMessage {
            sender_id,
            recipient: self.recipient,
            text: self.text,
            idempotency_key: self.idempotency_key,
            sent_at_unix_ms: self.sent_at_unix_ms,
        }
    }
}

/// What [`Store::send_message_as`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionSend {
    /// The session was live and its account sent the message (or, for a repeated
    /// idempotency key, had sent it before).
    Sent(SendOutcome),
    /// The session did not resolve to a live account: nothing was stored.
    Refused(SessionRefusal),
}

/// The outcome of [`Store::send_message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendOutcome {
    /// The stored message (the earlier one when the key was seen before).
    pub message: StoredMessage,
    /// True when the idempotency key had been used before and nothing new was stored.
    pub duplicate: bool,
}

/// One page of undelivered messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxPage {
    /// Messages with sequence above the requested one, oldest first.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages follow the last one returned.
    pub has_more: bool,
    /// The recipient's acknowledged sequence number.
    pub acked_sequence: u64,
}

impl InboxPage {
    /// The page of at most `limit` messages, from `messages` read with a limit of one
    /// more, which tells whether more follow.
    pub(crate) fn from_one_more(
        mut messages: Vec<StoredMessage>,
        limit: u32,
        acked_sequence: u64,
    ) -> Self {
        let has_more = messages.len() > limit as usize;
        messages.truncate(limit as usize);
        Self {
            messages,
            has_more,
            acked_sequence,
        }
    }
}

/// A wildcard pattern already validated and lowered by the service layer: only
/// `[a-z0-9_.-]`, `*` and `?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountQuery<'a> {
    /// The lower-case wildcard pattern (`*` any run, `?` one character).
    pub pattern: &'a crate::wildcard::Pattern,
    /// Only names whose lower-case form sorts after this one (the page cursor). It is
    /// compared by its own lower-case form, so the last name of the previous page can be
    /// passed back as returned (with its registered case).
    pub after: Option<&'a str>,
    /// At most this many names.
    pub limit: u32,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or is not answering (maps to UNAVAILABLE).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A username is already taken, without regard to case.
    #[error("username {0:?} is already taken")]
    UsernameTaken(String),
    /// No account has that username.
    #[error("no account named {0:?}")]
    NoSuchAccount(String),
    /// The idempotency key was already used by this sender for a different message.
    #[error("idempotency key {0:?} was already used for a different message")]
    IdempotencyKeyReused(String),
    /// An acknowledgement names a sequence number the recipient has not reached.
    #[error("cannot acknowledge sequence {requested}: the latest message is {latest}")]
    AckBeyondLatest {
        /// The sequence number asked for.
        requested: u64,
        /// The recipient's latest sequence number.
        latest: u64,
    },
    /// Anything else: a bug or corrupt data (maps to INTERNAL).
    #[error("store error: {0}")]
    Internal(String),
}

impl StoreError {
    /// The error for an account id that names no (active) account.
    pub(crate) fn no_such_id(id: AccountId) -> Self {
        Self::NoSuchAccount(format!("#{id}"))
    }

    /// Refuses to acknowledge `requested` past the recipient's `latest` sequence number
    /// ([`StoreError::AckBeyondLatest`]).
    pub(crate) fn check_ack(requested: u64, latest: u64) -> Result<(), Self> {
        if requested > latest {
            return Err(Self::AckBeyondLatest { requested, latest });
        }
        Ok(())
    }
}

/// The shared state of a chat cluster. All methods are safe to call concurrently from
/// many tasks and many processes, and each is atomic: it happens entirely or not at all.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A cheap round trip that fails with [`StoreError::Unavailable`] when the store is down.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates an account. Fails with [`StoreError::UsernameTaken`] when the lower-case
    /// form of `username` is taken.
    async fn create_account(
        &self,
        username: &str,
        password_hash: &str,
        created_at_unix_ms: i64,
    ) -> Result<Account, StoreError>;

    /// Finds an account by username, without regard to case.
    async fn find_account(&self, username: &str) -> Result<Option<Account>, StoreError>;

    /// Lists usernames (as registered) whose lower-case form matches the query, in
    /// order of that lower-case form.
    async fn list_accounts(&self, query: AccountQuery<'_>) -> Result<Vec<String>, StoreError>;

    /// Deletes an account with every message waiting for it. Its sessions stay, so that
    /// they resolve to [`SessionLookup::AccountDeleted`] until they expire; messages it
    /// sent stay. Deleting an account that no longer exists succeeds.
    async fn delete_account(&self, id: AccountId) -> Result<(), StoreError>;

    /// The failed-login record of an account ([`LoginFailures::default`] when it has
    /// none, or does not exist).
    async fn login_failures(&self, account: AccountId) -> Result<LoginFailures, StoreError>;

    /// Compare-and-set of an account's failed-login record: when it still is `seen`,
    /// replaces it with `next` and returns true; when anything changed it since (another
    /// replica counted a failure first), changes nothing and returns false. So failures
    /// counted at once, on any replicas, are all counted.
    async fn replace_login_failures(
        &self,
        account: AccountId,
        seen: LoginFailures,
        next: LoginFailures,
    ) -> Result<bool, StoreError>;

    /// Forgets an account's failed logins (after a successful one); succeeds when there
    /// are none. Deleting an account forgets them too.
    async fn clear_login_failures(&self, account: AccountId) -> Result<(), StoreError>;

    /// Records a session that expires at the given time.
    async fn create_session(
        &self,
        token_hash: &TokenHash,
        account: AccountId,
        expires_at_unix_ms: i64,
    ) -> Result<(), StoreError>;

    /// Resolves a session token hash as of `now_unix_ms`. A session has expired once
    /// `now_unix_ms >= expires_at_unix_ms`.
    async fn lookup_session(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
    ) -> Result<SessionLookup, StoreError>;

    /// Deletes a session; deleting one that does not exist succeeds.
    async fn delete_session(&self, token_hash: &TokenHash) -> Result<(), StoreError>;

    /// Deletes sessions that have expired as of `now_unix_ms` (in the sense of
    /// [`Store::lookup_session`]); returns how many.
    async fn purge_expired_sessions(&self, now_unix_ms: i64) -> Result<u64, StoreError>;

    /// Stores a message for its recipient, durably, with the recipient's next sequence
    /// number. A second call with the same sender and idempotency key stores nothing and
    /// returns the first message (`duplicate: true`), provided the recipient and text are
    /// the same; otherwise it fails with [`StoreError::IdempotencyKeyReused`]. Fails with
    /// [`StoreError::NoSuchAccount`] when the recipient does not exist, or when the sender
    /// no longer does (a repeated key is still answered with its earlier message).
    async fn send_message(&self, message: NewMessage<'_>) -> Result<SendOutcome, StoreError>;

    /// [`lookup_session`](Self::lookup_session) as of `now_unix_ms`, then, when the
    /// session is live, [`send_message`](Self::send_message) as its account: the send of
    /// a signed-in caller, with the same errors. It is one method so that a store can do
    /// both in one step: the SQLite store checks the session inside the send's write
    /// transaction, which makes the check and the send atomic and saves the read (a
    /// pooled connection, a blocking thread and their wake-ups cost about as much CPU as
    /// the rest of the send: one replica's sends/s at 32 senders rose 1.6-2.2x without
    /// it). This default does one after the other.
    async fn send_message_as(
        &self,
        token_hash: &TokenHash,
        now_unix_ms: i64,
        message: MessageDraft<'_>,
    ) -> Result<SessionSend, StoreError> {
        match self.lookup_session(token_hash, now_unix_ms).await?.live() {
            Ok(account) => self
                .send_message(message.sent_by(account.id))
                .await
                .map(SessionSend::Sent),
            Err(refusal) => Ok(SessionSend::Refused(refusal)),
        }
    }

    /// Returns up to `limit` of the recipient's messages with a sequence number above
    /// `after_sequence` (or above the acknowledged one when `None`), oldest first.
    /// Acknowledged messages are still returned when `after_sequence` is below them.
    /// Fails with [`StoreError::NoSuchAccount`] when the recipient does not exist.
    async fn fetch_messages(
        &self,
        recipient: AccountId,
        after_sequence: Option<u64>,
        limit: u32,
    ) -> Result<InboxPage, StoreError>;

    /// Marks the recipient's messages up to `up_to_sequence` delivered. Never moves the
    /// acknowledged sequence backwards; returns it after the call. Fails with
    /// [`StoreError::AckBeyondLatest`] past the recipient's latest message, and with
    /// [`StoreError::NoSuchAccount`] when the recipient does not exist.
    async fn ack_messages(
        &self,
        recipient: AccountId,
        up_to_sequence: u64,
    ) -> Result<u64, StoreError>;

    /// History retention: deletes acknowledged messages sent before
    /// `sent_before_unix_ms`, except each inbox's latest message (which carries the
    /// inbox's numbering on); returns how many. Unacknowledged messages are never
    /// deleted. The idempotency keys of deleted messages are forgotten with them.
    async fn purge_history(&self, sent_before_unix_ms: i64) -> Result<u64, StoreError>;

    /// The feed that live delivery is built on: up to `limit` messages (for any
    /// recipient) with an id above `after_id`, in id order. Ids must become visible in
    /// increasing order, so that a reader polling with the highest id it has seen never
    /// skips a message. `None` as `after_id` returns no messages, only the current
    /// highest id as a starting point.
    async fn message_feed(&self, after_id: Option<u64>, limit: u32)
    -> Result<FeedPage, StoreError>;
}

/// One page of the message feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// New messages, in id order.
    pub messages: Vec<StoredMessage>,
    /// The id to pass as `after_id` next time.
    pub cursor: u64,
}

/// Opens the store a URI names: a MongoDB connection string (`mongodb://...` or
/// `mongodb+srv://...`) for [`mongo::MongoStore`]; `sqlite:PATH` or a plain file path
/// for the embedded store.
///
/// Anything else that starts with a scheme (`postgres://...`, `mongo://...`, `sqlit:x`)
/// is refused: read as a file name it would silently create a new, empty database, and
/// with several hosts each mistyped replica would serve data of its own. For the same
/// reason the embedded store's directory must exist (the server creates only the
/// default store's directory, deliberately), and a new database file is created
/// readable by its owner only (it holds password hashes and messages).
pub async fn open(uri: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") {
        return Ok(std::sync::Arc::new(mongo::MongoStore::open(uri).await?));
    }
    if uri.starts_with("mongodb:") || uri.starts_with("mongodb+srv:") {
        return Err(StoreError::Unavailable(format!(
            "malformed MongoDB connection string {:?}: expected mongodb://HOST[:PORT][,...]/DATABASE?OPTIONS \
             or mongodb+srv://HOST/DATABASE?OPTIONS",
            redacted_uri(uri)
        )));
    }
    let path = sqlite_path(uri)?;
    // Opening may wait on another process creating the schema: keep it off the runtime.
    let path = path.to_owned();
    let store = tokio::task::spawn_blocking(move || {
        sqlite::SqliteStore::open(path, sqlite::SqliteOptions::default())
    })
    .await
    .map_err(|error| StoreError::Internal(format!("store opening task failed: {error}")))??;
    Ok(std::sync::Arc::new(store))
}

/// The database file of an embedded-store URI (as [`open`] reads it); `None` for a
/// MongoDB connection string or a URI that [`open`] refuses.
pub fn embedded_path(uri: &str) -> Option<&std::path::Path> {
    if uri.starts_with("mongodb:") || uri.starts_with("mongodb+srv:") {
        return None;
    }
    sqlite_path(uri).ok().map(std::path::Path::new)
}

/// The file path of an embedded-store URI (`sqlite:PATH` or a plain path), refusing
/// URIs with any other scheme.
fn sqlite_path(uri: &str) -> Result<&str, StoreError> {
    let expected = "expected sqlite:PATH, a file path, mongodb://... or mongodb+srv://...";
    let path = match uri.strip_prefix("sqlite:") {
        Some(path) => path,
        None => {
            if let Some(scheme) = scheme(uri) {
                let uri = redacted_uri(uri);
                return Err(StoreError::Unavailable(format!(
                    "unsupported store {uri:?}: unknown scheme \"{scheme}:\"; {expected} \
                     (a file name with a colon: write sqlite:{uri})"
                )));
            }
            uri
        }
    };
    if path.is_empty() {
        return Err(StoreError::Unavailable(format!(
            "empty store path; {expected}"
        )));
    }
    Ok(path)
}

/// `uri` fit for logs and error messages: the password of a URI with user information
/// (`mongodb://USER:PASSWORD@HOSTS/...`) replaced by `***`; any other URI unchanged.
/// The user information is everything before the last `@` ahead of the options (`?`),
/// so that a password with a stray `/` or `@` is masked whole.
pub fn redacted_uri(uri: &str) -> std::borrow::Cow<'_, str> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.into();
    };
    let before_options = rest.split_once('?').map_or(rest, |(head, _)| head);
    let Some(at) = before_options.rfind('@') else {
        return uri.into();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{}", &rest[at..]).into(),
        None => uri.into(),
    }
}

/// The URI scheme `uri` starts with (`NAME:` with `NAME` a letter followed by letters,
/// digits, `+`, `-` or `.`), if any.
fn scheme(uri: &str) -> Option<&str> {
    let (name, _) = uri.split_once(':')?;
    let mut chars = name.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
    .then_some(name)
}

#[cfg(test)]
mod uri_tests {
    use super::*;

    #[test]
    fn only_sqlite_paths_and_mongodb_uris_are_stores() {
        assert_eq!(
            sqlite_path("sqlite:chat-data/chat.db").ok(),
            Some("chat-data/chat.db")
        );
        assert_eq!(
            sqlite_path("/var/lib/chat/chat.db").ok(),
            Some("/var/lib/chat/chat.db")
        );
        assert_eq!(sqlite_path("./odd:name.db").ok(), Some("./odd:name.db"));
        assert_eq!(sqlite_path("sqlite:odd:name.db").ok(), Some("odd:name.db"));
        for bad in [
            "postgres://x/y",
            "mongo://h/db",
            "sqlit:chat.db",
            "file:chat.db",
            "s3+x.y-z:a",
        ] {
            let error = sqlite_path(bad).expect_err(bad).to_string();
            assert!(error.contains("unknown scheme"), "{bad}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
        assert!(sqlite_path("sqlite:").is_err());
        assert!(sqlite_path("").is_err());
        assert_eq!(
            embedded_path("sqlite:chat-data/chat.db"),
            Some(std::path::Path::new("chat-data/chat.db"))
        );
        assert_eq!(embedded_path("mongodb://h1/chat"), None);
        assert_eq!(embedded_path("mongodb+srv://h/chat"), None);
        assert_eq!(embedded_path("postgres://x/y"), None);
    }

    #[test]
    fn passwords_in_uris_are_masked_and_the_rest_kept() {
        for (uri, shown) in [
            (
                "mongodb://chat:s3cret@h1,h2/chat?replicaSet=rs0",
                "mongodb://chat:***@h1,h2/chat?replicaSet=rs0",
            ),
            (
                "mongodb+srv://chat:pa/ss@wo@rd@cluster.example/chat",
                "mongodb+srv://chat:***@cluster.example/chat",
            ),
            ("mongodb://user@h1/chat", "mongodb://user@h1/chat"),
            ("mongodb://h1/chat?x=a@b", "mongodb://h1/chat?x=a@b"),
            ("sqlite:chat-data/chat.db", "sqlite:chat-data/chat.db"),
        ] {
            assert_eq!(redacted_uri(uri), shown);
        }
        let error = sqlite_path("postgres://u:s3cret@x/y").expect_err("refused");
        assert!(!error.to_string().contains("s3cret"), "{error}");
    }
}
