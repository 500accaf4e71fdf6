//! The sessions `chat-cli login` keeps: one file per cluster and user in the
//! user's config directory (`$XDG_CONFIG_HOME/chat-cli/`, else
//! `~/.config/chat-cli/`), holding the session token and never the password.
//!
//! The directory is made private (0700) and every file is written private
//! (0600) and atomically: a temporary file in the same directory, synced, then
//! renamed over the old one, so a reader sees the old entry or the new one,
//! never half of one. A cluster is named by its normalised `--servers` list
//! ([`cluster_key`]), so `b:2,a:1` and `A:1, b:2` share their sessions. No error
//! of this module shows a token.

use std::{
    fmt,
    io::{self, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why the kept sessions could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Neither `XDG_CONFIG_HOME` nor `HOME` names a directory.
    #[error("no config directory to keep sessions in: set XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    /// A file operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `write`, ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The file is not a kept session (its content is not shown: it may hold a token).
    #[error("{} is not a kept session; `chat-cli logout` deletes it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
    },
}

/// One kept session: a cluster, a user, and the token the server gave.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptSession {
    /// The cluster, as [`cluster_key`] names it.
    pub cluster: String,
    /// The username as given with `--user` (what the entry is found by).
    pub username: String,
    /// The username as the server registered it.
    pub registered_as: String,
    /// The session token (without `Bearer `).
    token: String,
    /// When the server said the session expires (ms since the Unix epoch; 0: unknown).
    pub expires_at_unix_ms: i64,
}

impl KeptSession {
    /// A session to keep.
    pub fn new(
        cluster: String,
        username: String,
        registered_as: String,
        token: String,
        expires_at_unix_ms: i64,
    ) -> Self {
        Self {
            cluster,
            username,
            registered_as,
            token,
            expires_at_unix_ms,
        }
    }

    /// The session token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the server's expiry time has passed at `now_unix_ms`.
    pub fn expired(&self, now_unix_ms: i64) -> bool {
        self.expires_at_unix_ms > 0 && self.expires_at_unix_ms <= now_unix_ms
    }
}

/// Everything but the token.
impl fmt::Debug for KeptSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeptSession")
            .field("cluster", &self.cluster)
            .field("username", &self.username)
            .field("registered_as", &self.registered_as)
            .field("token", &"<redacted>")
            .field("expires_at_unix_ms", &self.expires_at_unix_ms)
            .finish()
    }
}

/// The name of a cluster: its `--servers` entries without schemes, lowercased,
/// deduplicated and sorted, joined by commas. `None` for a malformed list.
pub fn cluster_key(servers: &str) -> Option<String> {
    let mut entries: Vec<String> = chat_lb_client::parse_address_list(servers)
        .ok()?
        .iter()
        .map(|target| target.to_string().to_ascii_lowercase())
        .collect();
    entries.sort();
    entries.dedup();
    Some(entries.join(","))
}

/// The directory of kept sessions.
#[derive(Debug, Clone)]
pub struct SessionStore {
    dir: PathBuf,
}

impl SessionStore {
    /// The store in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The store in `$XDG_CONFIG_HOME/chat-cli` (an absolute path, as the XDG
    /// spec asks), else `$HOME/.config/chat-cli`.
    pub fn from_env() -> Result<Self, StoreError> {
        let absolute = |var: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
        };
        let config = absolute("XDG_CONFIG_HOME")
            .or_else(|| absolute("HOME").map(|home| home.join(".config")))
            .ok_or(StoreError::NoConfigDir)?;
        Ok(Self::new(config.join("chat-cli")))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `username`'s session on `cluster`: a digest of both, so any
    /// name makes a valid file name.
    pub fn path(&self, cluster: &str, username: &str) -> PathBuf {
        let digest = Sha256::new()
            .chain_update(cluster.as_bytes())
            .chain_update([0])
            .chain_update(username.as_bytes())
            .finalize();
        self.dir
            .join(format!("session-{}.json", &hex::encode(digest)[..32]))
    }

    /// The kept session of `username` on `cluster`, if any.
    pub fn load(&self, cluster: &str, username: &str) -> Result<Option<KeptSession>, StoreError> {
        let path = self.path(cluster, username);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        let kept: KeptSession =
            serde_json::from_str(&text).map_err(|_| StoreError::Corrupt { path })?;
        Ok((kept.cluster == cluster && kept.username == username).then_some(kept))
    }

    /// Keeps `session`, replacing any earlier one of its user on its cluster;
    /// returns the file.
    pub fn save(&self, session: &KeptSession) -> Result<PathBuf, StoreError> {
        self.make_dir()?;
        let path = self.path(&session.cluster, &session.username);
        let io_error = |action, path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        // tempfile creates the file readable and writable by its owner only.
        let mut file = tempfile::NamedTempFile::new_in(&self.dir)
            .map_err(io_error("create a file in", &self.dir))?;
        let text = serde_json::to_string(session)
            .map_err(|_| StoreError::Corrupt { path: path.clone() })?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.as_file().sync_all())
            .map_err(io_error("write", file.path()))?;
        file.persist(&path)
            .map_err(|error| io_error("write", &path)(error.error))?;
        Ok(path)
    }

    /// Deletes the kept session of `username` on `cluster`; false when there was none.
    pub fn remove(&self, cluster: &str, username: &str) -> Result<bool, StoreError> {
        let path = self.path(cluster, username);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io {
                action: "delete",
                path,
                source,
            }),
        }
    }

    /// Creates the directory (and its parents), and makes it private.
    fn make_dir(&self) -> Result<(), StoreError> {
        let error = |action| {
            let path = self.dir.clone();
            move |source| StoreError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&self.dir).map_err(error("create"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
                .map_err(error("make private"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(cluster: &str, user: &str, token: &str) -> KeptSession {
        KeptSession::new(cluster.into(), user.into(), user.into(), token.into(), 0)
    }

    #[test]
    fn the_cluster_key_ignores_order_case_spaces_and_schemes() {
        assert_eq!(
            cluster_key("B.lan:2, a.lan:1,a.lan:1").as_deref(),
            Some("a.lan:1,b.lan:2")
        );
        assert_eq!(
            cluster_key("https://a.lan:1,b.lan:2"),
            cluster_key("b.lan:2,a.lan:1")
        );
        assert_eq!(cluster_key("a.lan"), None);
    }

    #[test]
    fn sessions_are_kept_per_cluster_and_user_privately_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path().join("config/chat-cli"));
        assert_eq!(store.load("a:1", "alice").unwrap(), None);
        let path = store.save(&kept("a:1", "alice", "t1")).unwrap();
        store.save(&kept("a:1", "bob", "t2")).unwrap();
        store.save(&kept("b:1", "alice", "t3")).unwrap();
        store.save(&kept("a:1", "alice", "t4")).unwrap();
        assert_eq!(store.load("a:1", "alice").unwrap().unwrap().token(), "t4");
        assert_eq!(store.load("a:1", "bob").unwrap().unwrap().token(), "t2");
        assert_eq!(store.load("b:1", "alice").unwrap().unwrap().token(), "t3");
        // Three files, no temporary one left behind.
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 3);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            assert_eq!(mode(store.dir()), 0o700);
        }
        assert!(store.remove("a:1", "alice").unwrap());
        assert!(!store.remove("a:1", "alice").unwrap());
        assert_eq!(store.load("a:1", "alice").unwrap(), None);
    }

    #[test]
    fn no_error_or_debug_text_shows_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::new(dir.path());
        let path = store.save(&kept("a:1", "alice", "s3cr3t-t0k3n")).unwrap();
        assert!(!format!("{:?}", store.load("a:1", "alice").unwrap()).contains("s3cr3t"));
        std::fs::write(&path, "{\"token\": \"s3cr3t-t0k3n\"").unwrap();
        let error = store.load("a:1", "alice").unwrap_err();
        assert!(matches!(error, StoreError::Corrupt { .. }));
        assert!(!error.to_string().contains("s3cr3t"), "{error}");
        assert!(store.remove("a:1", "alice").unwrap());
    }

    #[test]
    fn expiry_is_known_only_when_the_server_gave_it() {
        let mut session = kept("a:1", "alice", "t");
        assert!(!session.expired(i64::MAX));
        session.expires_at_unix_ms = 1_000;
        assert!(!session.expired(999));
        assert!(session.expired(1_000));
    }
}
