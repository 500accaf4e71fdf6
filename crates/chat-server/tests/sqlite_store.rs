//! The store conformance suite against [`SqliteStore`], one test per check, each on a
//! new database file in its own temporary directory.

#[macro_use]
mod conformance;

use std::sync::Arc;

use chat_server::store::Store;
use chat_server::store::sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// A fresh, empty store; the directory lives as long as the returned guard.
async fn fresh_sqlite_store() -> (Arc<dyn Store>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("chat.db"), SqliteOptions::default())
        .expect("open SqliteStore");
    (Arc::new(store), dir)
}

conformance_tests!(fresh_sqlite_store);

/// `run_all`, the one-test form of the suite that other harnesses may use, works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_checks_in_sequence() {
    conformance::run_all(fresh_sqlite_store).await;
}
