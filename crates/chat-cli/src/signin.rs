//! How a command gets its session: the one `chat-cli login` keeps for this user
//! on this cluster while the server still takes it, else a login with the
//! password.
//!
//! A kept session the server no longer takes (expired, or revoked: the server
//! answers UNAUTHENTICATED) is replaced by a fresh login, kept in its place,
//! with `--password` when given, else asked for on a terminal; without either,
//! the command fails with exit code 3 and a one-line hint. A session that is
//! not kept ends when its command does ([`Session::finish`]).

use std::io::IsTerminal;

use chat_proto::v1::FetchMessagesRequest;
use tonic::Code;

use crate::{
    args::GlobalArgs,
    connect::{self, ChatClient, Session},
    error::{CliError, ErrorKind},
    output::sanitize,
    session::{KeptSession, SessionStore, StoreError, cluster_key},
};

/// Where sessions are kept, with the cluster and user they are kept for.
pub struct Keeper {
    /// The directory of kept sessions.
    pub store: SessionStore,
    /// The cluster, as [`cluster_key`] names it.
    pub cluster: String,
    /// The user, as `--user` names them.
    pub username: String,
}

impl Keeper {
    /// The store for the flags' cluster and user; a usage error without a user.
    pub fn new(args: &GlobalArgs) -> Result<Self, CliError> {
        let username = connect::username(args)?;
        let store = SessionStore::from_env()?;
        let cluster = cluster_key(&args.servers)
            .ok_or_else(|| CliError::usage("--servers: not a list of HOST:PORT"))?;
        Ok(Self {
            store,
            cluster,
            username,
        })
    }

    /// As [`Keeper::new`], but `None` when there is no config directory.
    pub fn optional(args: &GlobalArgs) -> Result<Option<Self>, CliError> {
        connect::username(args)?;
        if matches!(SessionStore::from_env(), Err(StoreError::NoConfigDir)) {
            return Ok(None);
        }
        Self::new(args).map(Some)
    }

    /// The kept session, if any.
    pub fn load(&self) -> Result<Option<KeptSession>, CliError> {
        Ok(self.store.load(&self.cluster, &self.username)?)
    }

    /// Keeps `session` (replacing any earlier one); returns the file.
    pub fn keep(&self, session: &Session) -> Result<std::path::PathBuf, CliError> {
        let kept = KeptSession::new(
            self.cluster.clone(),
            self.username.clone(),
            session.username.clone(),
            session.token().to_owned(),
            session.expires_at_unix_ms,
        );
        Ok(self.store.save(&kept)?)
    }

    /// The session of a kept entry, marked kept.
    pub fn resume(client: ChatClient, kept: &KeptSession) -> Result<Session, CliError> {
        let mut session = Session::with_token(
            client,
            kept.registered_as.clone(),
            kept.token(),
            kept.expires_at_unix_ms,
        )?;
        session.kept = true;
        Ok(session)
    }

    /// Deletes the kept session; false when there was none.
    pub fn forget(&self) -> Result<bool, CliError> {
        Ok(self.store.remove(&self.cluster, &self.username)?)
    }
}

/// The session for a command: the kept one, else a login with the password
/// (from `--password`, or asked for on a terminal).
pub async fn sign_in(args: &GlobalArgs, client: ChatClient) -> Result<Session, CliError> {
    let keeper = Keeper::optional(args)?;
    let kept = match &keeper {
        Some(keeper) => keeper.load()?,
        None => None,
    };
    let (Some(keeper), Some(kept)) = (keeper, kept) else {
        return connect::login(args, client).await;
    };
    if !kept.expired(now_unix_ms()) {
        let session = Keeper::resume(client.clone(), &kept)?;
        if still_valid(&session).await? {
            return Ok(session);
        }
    }
    let password = password_again(args, &keeper)?;
    let mut session = connect::login_as(client, &keeper.username, &password).await?;
    keeper.keep(&session)?;
    session.kept = true;
    Ok(session)
}

/// Whether the server still takes the session's token: a cheap authenticated
/// call (a page after the last possible message) answered other than
/// UNAUTHENTICATED.
async fn still_valid(session: &Session) -> Result<bool, CliError> {
    let probe = FetchMessagesRequest {
        after_sequence: Some(u64::MAX),
        page_size: 1,
    };
    match session
        .client
        .clone()
        .fetch_messages(session.request(probe))
        .await
    {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::Unauthenticated => Ok(false),
        Err(status) => Err(status.into()),
    }
}

/// The password to replace an expired or revoked kept session with: the
/// flag's, else asked for on a terminal, else an authentication error.
fn password_again(args: &GlobalArgs, keeper: &Keeper) -> Result<String, CliError> {
    let hint = format!(
        "the kept session of {} on {} has expired or was revoked",
        sanitize(&keeper.username),
        sanitize(&keeper.cluster)
    );
    if args.password.is_none() && !std::io::stdin().is_terminal() {
        return Err(CliError::new(
            ErrorKind::Auth,
            format!("{hint}: run `chat-cli login` again, or pass --password"),
        ));
    }
    if args.password.is_none() {
        eprintln!("chat-cli: {hint}; log in again");
    }
    connect::password(args)
}

/// Milliseconds since the Unix epoch.
fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
