//! The writer's tests: group commit, urgent requests, waiting for other processes.

use std::sync::atomic::AtomicUsize;
use std::sync::mpsc as std_mpsc;

use rusqlite::TransactionBehavior;

use super::super::process_lock::ProcessLock;
use super::super::test_support::{account, open};
use super::super::{SqliteOptions, SqliteStore};
use super::*;
use crate::store::{NewMessage, SendOutcome, Store};

/// A send of "hi" from `sender` with `key`, as a future to spawn.
fn send(
    store: &SqliteStore,
    sender: i64,
    to: &'static str,
    key: &'static str,
) -> tokio::task::JoinHandle<Result<SendOutcome, StoreError>> {
    let store = store.clone();
    tokio::spawn(async move {
        store
            .send_message(NewMessage {
                sender_id: sender,
                recipient: to,
                text: "hi",
                idempotency_key: key,
                sent_at_unix_ms: 1,
            })
            .await
    })
}

/// Holds the writer in a write of its own until the returned sender is dropped, so
/// that the requests sent meanwhile queue up for one batch.
async fn hold_writer(store: &SqliteStore) -> (std_mpsc::Sender<()>, tokio::task::JoinHandle<()>) {
    let (started_tx, started) = oneshot::channel();
    let (release, released) = std_mpsc::channel::<()>();
    let pool = store.pool.clone();
    let holder = tokio::spawn(async move {
        pool.write(move |_| {
            let _ = started_tx.send(());
            let _ = released.recv();
            Ok(())
        })
        .await
        .expect("the holding write");
    });
    started.await.expect("the writer runs the holding write");
    (release, holder)
}

/// Waits until `n` requests are queued behind the held writer.
async fn until_queued(store: &SqliteStore, n: usize) {
    while store.pool.writer().queued() < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_batch_does_not_fail_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("chat.db"));
    let (alice, bob) = (account(&store, "alice").await, account(&store, "bob").await);
    let (release, holder) = hold_writer(&store).await;
    let before = store.pool.writer().batches_committed();

    let first = send(&store, alice.id, "bob", "k1");
    until_queued(&store, 1).await;
    let unknown = send(&store, alice.id, "nobody", "k2");
    until_queued(&store, 2).await;
    // A request that writes, then fails at the database: its write is undone.
    let pool = store.pool.clone();
    let broken = tokio::spawn(async move {
        pool.write(|connection| {
            connection.execute(
                "INSERT INTO accounts (username, username_key, password_hash, created_at)
                 VALUES ('carol', 'carol', 'h', 1)",
                [],
            )?;
            connection.execute("INSERT INTO no_such_table VALUES (1)", [])?;
            Ok(())
        })
        .await
    });
    until_queued(&store, 3).await;
    let second = send(&store, alice.id, "bob", "k3");
    until_queued(&store, 4).await;
    let retry = send(&store, alice.id, "bob", "k1");
    until_queued(&store, 5).await;
    drop(release);
    holder.await.expect("holder");

    let first = first.await.expect("task").expect("first send");
    assert!(matches!(
        unknown.await.expect("task"),
        Err(StoreError::NoSuchAccount(_))
    ));
    assert!(matches!(
        broken.await.expect("task"),
        Err(StoreError::Internal(_))
    ));
    let second = second.await.expect("task").expect("second send");
    let retry = retry.await.expect("task").expect("retried send");
    // The holding write, then the five requests together.
    assert_eq!(store.pool.writer().batches_committed(), before + 2);
    assert!(!first.duplicate && !second.duplicate);
    assert_eq!((first.message.sequence, second.message.sequence), (1, 2));
    assert!(first.message.id < second.message.id);
    assert!(
        retry.duplicate,
        "the key was seen earlier in the same batch"
    );
    assert_eq!(retry.message, first.message);
    let inbox = store.fetch_messages(bob.id, None, 10).await.expect("fetch");
    assert_eq!(inbox.messages, vec![first.message, second.message]);
    assert_eq!(store.find_account("carol").await.expect("find"), None);
    assert_eq!(store.pool.writer().connections_opened(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_transaction_fails_every_request_of_its_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("chat.db"));
    let alice = account(&store, "alice").await;
    account(&store, "bob").await;
    let (release, holder) = hold_writer(&store).await;
    let lost = send(&store, alice.id, "bob", "k1");
    until_queued(&store, 1).await;
    // Stands for SQLite rolling the whole transaction back (as after an I/O error).
    let pool = store.pool.clone();
    let rollback = tokio::spawn(async move {
        pool.write(|connection| {
            connection.execute_batch("ROLLBACK")?;
            Err(StoreError::Internal("gave up".into()).into())
        })
        .await
    });
    until_queued(&store, 2).await;
    drop(release);
    holder.await.expect("holder");
    for outcome in [
        lost.await.expect("task").map(drop),
        rollback.await.expect("task"),
    ] {
        assert!(
            matches!(outcome, Err(StoreError::Unavailable(_))),
            "{outcome:?}"
        );
    }
    // Nothing of the batch was stored, and the writer goes on.
    let sent = send(&store, alice.id, "bob", "k1")
        .await
        .expect("task")
        .expect("send");
    assert!(!sent.duplicate);
    assert_eq!(sent.message.sequence, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_check_is_answered_before_queued_writes() {
    const WRITES: usize = MAX_BATCH + 44;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("chat.db"));
    let (release, holder) = hold_writer(&store).await;
    // First in the queue, a write that holds its batch (and every write in it, and every
    // batch after it) until it is released.
    let (release_second, second_released) = std_mpsc::channel::<()>();
    let pool = store.pool.clone();
    let second = tokio::spawn(async move {
        pool.write(move |_| {
            let _ = second_released.recv();
            Ok(())
        })
        .await
    });
    until_queued(&store, 1).await;
    let ran = Arc::new(AtomicUsize::new(0));
    let writes: Vec<_> = (0..WRITES)
        .map(|_| {
            let (pool, ran) = (store.pool.clone(), Arc::clone(&ran));
            tokio::spawn(async move {
                pool.write(move |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await
            })
        })
        .collect();
    until_queued(&store, WRITES + 1).await;
    let pinger = store.clone();
    let ping = tokio::spawn(async move { pinger.ping().await });
    while store.pool.writer().urgent_waiting() == 0 {
        tokio::task::yield_now().await;
    }
    drop(release);
    holder.await.expect("holder");

    let answered = tokio::time::timeout(Duration::from_secs(10), ping)
        .await
        .expect("the health check waited behind the queued writes");
    answered.expect("task").expect("the store is healthy");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "no queued write ran before it"
    );
    drop(release_second);
    second.await.expect("task").expect("second write");
    for write in writes {
        write.await.expect("task").expect("queued write");
    }
    assert_eq!(ran.load(Ordering::SeqCst), WRITES);
}

#[tokio::test]
async fn a_replica_holding_the_replicas_lock_delays_writes_up_to_the_busy_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let options = SqliteOptions {
        busy_timeout: Duration::from_millis(100),
        pool_size: 1,
    };
    let store = SqliteStore::open(&path, options).expect("open");
    // Another replica (frozen, say) holds the side file's lock, not SQLite's.
    let mut other = ProcessLock::open(&path).expect("the other replica's lock");
    let held = other
        .acquire(Instant::now() + Duration::from_secs(5), false)
        .expect("free lock");
    let started = Instant::now();
    match store.create_account("blocked", "h", 1).await {
        Err(StoreError::Unavailable(message)) => assert!(message.contains("locked"), "{message}"),
        other => panic!("expected Unavailable while locked, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(100));
    // Released: the writer's abandoned request is served, and writes go on.
    drop(held);
    account(&store, "blocked").await;
    assert_eq!(store.pool.writer().connections_opened(), 1);
}

#[tokio::test]
async fn a_panicking_request_fails_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("chat.db"));
    let outcome: Result<(), StoreError> = store.pool.write(|_| panic!("a bug in a body")).await;
    assert!(
        matches!(outcome, Err(StoreError::Internal(_))),
        "{outcome:?}"
    );
    account(&store, "alice").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_writer_gets_the_lock_soon_after_its_release() {
    // SQLite's default handler retries 228 ms after its first try, then 328 ms:
    // about 80 ms late for a lock held 240 ms.
    const HOLD: Duration = Duration::from_millis(240);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("chat.db");
    let store = open(&path);
    account(&store, "alice").await;
    let (locked_tx, locked) = std_mpsc::channel();
    let other_process = std::thread::spawn(move || {
        let mut raw = Connection::open(&path).expect("raw open");
        let lock = raw
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .expect("take the write lock");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(HOLD);
        lock.commit().expect("release the lock");
        Instant::now()
    });
    locked.recv().expect("the lock is held");
    let started = Instant::now();
    // When the writer got the lock: its transaction has begun when the body runs
    // (what follows, the commit's fsync, is not waiting for the lock).
    let got_lock = store
        .pool
        .write(|_| Ok(Instant::now()))
        .await
        .expect("the write");
    let released = other_process.join().expect("lock holder");
    assert!(
        got_lock - started >= HOLD / 2,
        "the write waited for the lock"
    );
    let late = got_lock.saturating_duration_since(released);
    assert!(
        late < Duration::from_millis(40),
        "got the lock {late:?} after its release"
    );
    // Installing a busy handler clears `busy_timeout` (SQLite's sleeping handler):
    // the writer's connection has none, the readers' keep theirs.
    assert_eq!(
        store.pool.write(busy_timeout_ms).await.expect("writer's"),
        0
    );
    let reader = store.pool.run(|connection| busy_timeout_ms(connection));
    assert_eq!(reader.await.expect("reader's"), 5_000);
}

/// The connection's `busy_timeout` pragma, in ms.
fn busy_timeout_ms(connection: &Connection) -> Outcome<i64> {
    Ok(connection.pragma_query_value(None, "busy_timeout", |row| row.get(0))?)
}
