//! `sqlite-ceiling`: what the disk allows one writer committing one row at a time.
//!
//! In the directory of `store-throughput`'s store, a file of its own with the store's
//! pragmas (`journal_mode=WAL`, `synchronous=FULL`, `foreign_keys=ON`, a busy timeout),
//! and one loop on one thread: `BEGIN IMMEDIATE`, one `INSERT`, `COMMIT`, for
//! `--duration`. Each transaction counts as a call (its time as the call's latency),
//! so its `calls_per_sec` is the disk's single-transaction commit rate: a store that
//! commits one transaction per send cannot beat it, one that shares commits can.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use rusqlite::{Connection, TransactionBehavior};

use crate::{stats::Measured, workload::Rpc};

/// Measures raw single-INSERT transactions in `dir` for `length`.
pub async fn measure(dir: &Path, length: Duration) -> anyhow::Result<Measured> {
    let path = dir.join("ceiling.db");
    tokio::task::spawn_blocking(move || run(&path, length))
        .await
        .context("the sqlite-ceiling thread failed")?
}

fn run(path: &Path, length: Duration) -> anyhow::Result<Measured> {
    let mut connection =
        Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    connection.busy_timeout(Duration::from_secs(5))?;
    let mode: String =
        connection.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    anyhow::ensure!(mode.eq_ignore_ascii_case("wal"), "journal mode {mode}");
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "foreign_keys", "ON")?;
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS rows (
             id   INTEGER PRIMARY KEY AUTOINCREMENT,
             text TEXT    NOT NULL
         )",
    )?;
    let mut measured = Measured::default();
    let start = Instant::now();
    while start.elapsed() < length {
        let began = Instant::now();
        let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        transaction
            .prepare_cached("INSERT INTO rows (text) VALUES (?1)")?
            .execute(["a benchmark message"])?;
        transaction.commit()?;
        measured
            .samples
            .record(Rpc::SendMessage, Ok(()), began.elapsed());
    }
    measured.seconds = start.elapsed().as_secs_f64();
    Ok(measured)
}
