//! Stores that replicas can be started on, shared by every replica started with them.

use crate::nx27017;

/// A store that replicas can be started on: anything that names one with a `--store`
/// argument (a fixture below, or the argument itself).
pub trait StoreFixture {
    /// The `--store` argument naming it.
    fn uri(&self) -> String;
}

impl StoreFixture for str {
    fn uri(&self) -> String {
        self.to_owned()
    }
}

impl StoreFixture for String {
    fn uri(&self) -> String {
        self.clone()
    }
}

/// A temporary embedded (SQLite) store, removed on drop.
pub struct SharedStore {
    dir: tempfile::TempDir,
}

impl SharedStore {
    /// A fresh, empty store in a new temporary directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    /// The database file (it exists once a replica has opened the store).
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("chat.db")
    }
}

impl Default for SharedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl StoreFixture for SharedStore {
    fn uri(&self) -> String {
        format!("sqlite:{}", self.path().display())
    }
}

/// A MongoDB store on a private nx-27017 server (a MongoDB wire-protocol server, see
/// [`nx27017`]). The server can be killed and restarted (same port, same data) under
/// running replicas.
pub struct MongoFixture {
    server: nx27017::NxServer,
}

impl MongoFixture {
    /// Starts a server, or returns `None` when nx-27017 is not installed (after a loud
    /// banner; under CI this fails instead).
    pub fn start(test: &str) -> Option<Self> {
        let executable = nx27017::nx_executable(test)?;
        Some(Self {
            server: nx27017::NxServer::start(&executable),
        })
    }

    /// SIGKILLs the database server.
    pub fn kill_server(&mut self) {
        self.server.kill();
    }

    /// Starts the database server again, on the same port with the same data.
    pub fn restart_server(&mut self) {
        self.server.restart();
    }

    /// The server's output, for failure messages.
    pub fn server_output(&self) -> String {
        self.server.output()
    }
}

impl StoreFixture for MongoFixture {
    fn uri(&self) -> String {
        self.server.uri("chat")
    }
}
