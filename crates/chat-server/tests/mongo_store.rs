//! The store conformance suite against [`MongoStore`], one test per check, each on a
//! database of its own (dropped afterwards), plus what only the MongoDB store has: the
//! feed's handling of out-of-order commits, resumable deletion, unavailability and
//! recovery, index and schema set-up.
//!
//! The server is nx-27017 (see `chat_testkit::nx27017`; `scripts/test` installs it), one
//! per test binary. When `CHAT_TEST_MONGODB_URI` names a real MongoDB (a replica set,
//! for instance the one in `deploy/mongo-replica-set/`), the whole suite runs against it
//! too, in the `real_mongodb` module.

#[macro_use]
mod conformance;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chat_server::store::mongo::{MongoOptions, MongoStore};
use chat_server::store::{AccountId, NewMessage, SessionLookup, Store, StoreError, StoredMessage};
use chat_testkit::nx27017::{self, NxServer, nx_executable};
use mongodb::bson::{Document, doc};

/// Conformance checks that cannot pass against nx-27017 because of one of its
/// documented gaps, with the reason. They still run against a real MongoDB.
const NX_GAPS: &[(&str, &str)] = &[];

/// The nx-27017 server shared by every test of this binary, or `None` when it is not
/// installed (the caller skips; under CI, `nx_executable` fails instead).
fn nx() -> Option<&'static NxServer> {
    static SERVER: OnceLock<Option<NxServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            nx_executable("the MongoDB store conformance suite and MongoDB store tests")
                .map(|executable| NxServer::start(&executable))
        })
        .as_ref()
}

/// A database name that no other test (of this or another run) uses.
fn unique_database(label: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let mut name = format!(
        "t{}_{}_{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    name.truncate(60);
    name
}

/// `uri` with its database path replaced by `database`.
fn with_database(uri: &str, database: &str) -> String {
    let (scheme, rest) = uri.split_once("://").expect("a mongodb:// URI");
    let hosts_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(hosts_end);
    let query = tail.find('?').map_or("", |q| &tail[q..]);
    format!("{scheme}://{hosts}/{database}{query}")
}

/// Drops its database when the check ends (so a real MongoDB is left clean).
struct DropDatabase(Option<MongoStore>);

impl Drop for DropDatabase {
    fn drop(&mut self) {
        let Some(store) = self.0.take() else { return };
        let drop = async move {
            if let Err(error) = store.database().drop().await {
                eprintln!(
                    "cannot drop test database {}: {error}",
                    store.database().name()
                );
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(drop)),
            Err(_) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(drop);
            }
        }
    }
}

async fn open(uri: &str, options: MongoOptions) -> MongoStore {
    MongoStore::open_with(uri, options)
        .await
        .unwrap_or_else(|e| panic!("open MongoStore at {uri}: {e}"))
}

/// A fresh store on nx-27017 for one conformance check.
async fn nx_store(check: &'static str) -> Option<(Arc<dyn Store>, DropDatabase)> {
    let server = nx()?;
    if let Some((_, why)) = NX_GAPS.iter().find(|(name, _)| *name == check) {
        nx27017::loud(&format!(
            "\n*** SKIPPED against nx-27017 (still runs against a real MongoDB): {check}: {why}\n"
        ));
        return None;
    }
    let store = open(
        &server.uri(&unique_database(check)),
        MongoOptions::default(),
    )
    .await;
    Some((Arc::new(store.clone()), DropDatabase(Some(store))))
}

conformance_tests!(skippable: nx_store);

/// The suite again, against a real MongoDB named by `CHAT_TEST_MONGODB_URI` (skipped,
/// quietly, when it is unset: nx-27017 covers CI).
mod real_mongodb {
    use super::*;

    async fn real_store(check: &'static str) -> Option<(Arc<dyn Store>, DropDatabase)> {
        let uri = std::env::var("CHAT_TEST_MONGODB_URI")
            .ok()
            .filter(|uri| !uri.is_empty())?;
        let uri = with_database(&uri, &unique_database(check));
        let store = open(&uri, MongoOptions::default()).await;
        Some((Arc::new(store.clone()), DropDatabase(Some(store))))
    }

    conformance_tests!(skippable: real_store);
}

// ---------------------------------------------------------------------------------
// MongoDB-specific behaviour

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo";

/// A fresh database on the shared server (or on a real MongoDB when one is named, so
/// that these tests also run there).
fn fresh_uri(label: &str) -> Option<String> {
    if let Some(uri) = std::env::var("CHAT_TEST_MONGODB_URI")
        .ok()
        .filter(|uri| !uri.is_empty())
    {
        return Some(with_database(&uri, &unique_database(label)));
    }
    Some(nx()?.uri(&unique_database(label)))
}

async fn send(store: &MongoStore, from: AccountId, to: &str, key: &str) -> StoredMessage {
    store
        .send_message(NewMessage {
            sender_id: from,
            recipient: to,
            text: &format!("text of {key}"),
            idempotency_key: key,
            sent_at_unix_ms: 1_000,
        })
        .await
        .unwrap_or_else(|e| panic!("send {key} to {to}: {e}"))
        .message
}

/// Takes a message id the way a sender does, as a sender that then stalls or dies.
async fn take_message_id(store: &MongoStore) -> i64 {
    let counter = store
        .database()
        .collection::<Document>("counters")
        .find_one_and_update(
            doc! { "_id": "message_id" },
            doc! { "$inc": { "value": 1_i64 } },
        )
        .upsert(true)
        .return_document(mongodb::options::ReturnDocument::After)
        .await
        .expect("take an id")
        .expect("counter");
    counter
        .get_i64("value")
        .unwrap_or_else(|_| i64::from(counter.get_i32("value").expect("numeric counter")))
}

/// Polls the feed (for up to ten seconds) from `cursor`, collecting every message in
/// `seen`, until `seen` holds `count` messages.
async fn poll_until(
    store: &MongoStore,
    cursor: &mut u64,
    seen: &mut Vec<StoredMessage>,
    count: usize,
) {
    let within = Duration::from_secs(10);
    let deadline = Instant::now() + within;
    loop {
        let page = store.message_feed(Some(*cursor), 3).await.expect("feed");
        assert!(page.cursor >= *cursor, "the cursor never moves back");
        *cursor = page.cursor;
        seen.extend(page.messages);
        if seen.len() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "feed did not deliver within {within:?}; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A message whose insert lands after a later id's (a slow sender) is still delivered,
/// in id order, exactly once; an id whose sender died is released after the grace
/// period, and a sender slower than that retries with a new id instead of being lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feed_sees_out_of_order_commits_exactly_once() {
    let Some(uri) = fresh_uri("feed_order") else {
        return;
    };
    let grace = Duration::from_millis(300);
    let store = open(
        &uri,
        MongoOptions {
            feed_hole_grace: grace,
            ..MongoOptions::default()
        },
    )
    .await;
    let _drop = DropDatabase(Some(store.clone()));
    let alice = store.create_account("alice", HASH, 1).await.expect("alice");
    let bob = store.create_account("bob", HASH, 1).await.expect("bob");
    let carol = store.create_account("carol", HASH, 1).await.expect("carol");
    send(&store, bob.id, "alice", "warm-up").await;
    let mut cursor = store.message_feed(None, 10).await.expect("feed").cursor;
    let mut seen = Vec::new();

    // A slow sender takes id k; a later send to another recipient commits k+1 first.
    // A reader starting now starts below k, so that k is not behind it when it lands.
    let slow_id = take_message_id(&store).await;
    let fast = send(&store, alice.id, "bob", "fast").await;
    assert_eq!(fast.id, slow_id as u64 + 1);
    let late_reader = store.message_feed(None, 10).await.expect("feed").cursor;
    assert_eq!(late_reader, slow_id as u64 - 1, "starts below the hole");
    // Polls do not move past the hole (and well within the grace nobody fills it).
    for _ in 0..3 {
        let page = store.message_feed(Some(cursor), 10).await.expect("feed");
        assert!(page.messages.is_empty(), "{:?}", page.messages);
        assert_eq!(page.cursor, cursor);
    }
    // The slow sender's insert lands: both come, in id order.
    store
        .database()
        .collection::<Document>("messages")
        .insert_one(doc! {
            "_id": slow_id, "recipient_id": carol.id, "seq": 1_i64, "sender_id": alice.id,
            "idempotency_key": "slow", "sender": "alice", "recipient": "carol",
            "text": "slow", "sent_at": 1_000_i64,
        })
        .await
        .expect("the slow insert");
    poll_until(&store, &mut cursor, &mut seen, 2).await;
    let ids: Vec<u64> = seen.iter().map(|m| m.id).collect();
    assert_eq!(ids, [slow_id as u64, fast.id]);
    let late_page = store
        .message_feed(Some(late_reader), 10)
        .await
        .expect("feed");
    assert_eq!(late_page.messages, seen, "the late reader sees both too");
    assert_eq!(
        store.message_feed(None, 10).await.expect("feed").cursor,
        fast.id,
        "no hole: a new reader starts at the highest id"
    );

    // A sender dies after taking id j: the feed waits for the grace period, then
    // releases j and goes on.
    let dead_id = take_message_id(&store).await;
    let after_dead = send(&store, alice.id, "bob", "after-dead").await;
    let stalled_at = Instant::now();
    poll_until(&store, &mut cursor, &mut seen, 3).await;
    assert!(
        stalled_at.elapsed() >= grace,
        "released the hole before the grace period"
    );
    assert_eq!(seen[2], after_dead);
    // The dead sender, had it been merely slow, now finds its id taken: its insert
    // fails, so it can never appear behind the cursor (the store then retries with a
    // new id, as the next send shows).
    let late = store
        .database()
        .collection::<Document>("messages")
        .insert_one(doc! { "_id": dead_id, "recipient_id": bob.id, "seq": 99_i64 })
        .await;
    assert!(late.is_err(), "the released id must stay released");
    let next = send(&store, bob.id, "alice", "next").await;
    poll_until(&store, &mut cursor, &mut seen, 4).await;
    assert_eq!(seen[3], next);
    let unique: HashSet<u64> = seen.iter().map(|m| m.id).collect();
    assert_eq!(unique.len(), seen.len(), "each message exactly once");
}

/// Many concurrent senders on two store instances (two "replicas") to a few recipients,
/// with a poller running all along: the poller sees every stored message exactly once,
/// in id order, and each recipient's sequence numbers in order, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_reach_a_live_poller_exactly_once_in_order() {
    const SENDERS: usize = 6;
    const SENDS: usize = 15;
    const RECIPIENTS: [&str; 3] = ["r0", "r1", "r2"];
    let Some(uri) = fresh_uri("feed_stress") else {
        return;
    };
    let stores = [
        open(&uri, MongoOptions::default()).await,
        open(&uri, MongoOptions::default()).await,
    ];
    let _drop = DropDatabase(Some(stores[0].clone()));
    let mut recipients = HashMap::new();
    for name in RECIPIENTS {
        let account = stores[0]
            .create_account(name, HASH, 1)
            .await
            .expect("recipient");
        recipients.insert(name.to_string(), account.id);
    }
    let start = stores[1].message_feed(None, 1).await.expect("feed").cursor;

    let poller = {
        let store = stores[1].clone();
        tokio::spawn(async move {
            let mut cursor = start;
            let mut seen: Vec<StoredMessage> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < SENDERS * SENDS {
                let page = store.message_feed(Some(cursor), 7).await.expect("feed");
                cursor = page.cursor;
                seen.extend(page.messages);
                assert!(Instant::now() < deadline, "poller saw only {}", seen.len());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let store = stores[s % 2].clone();
        let sender = store
            .create_account(&format!("sender{s}"), HASH, 1)
            .await
            .expect("sender");
        tasks.push(tokio::spawn(async move {
            for i in 0..SENDS {
                let to = RECIPIENTS[(s + i) % RECIPIENTS.len()];
                send(&store, sender.id, to, &format!("{s}-{i}")).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("sender task");
    }
    let seen = tokio::time::timeout(Duration::from_secs(90), poller)
        .await
        .expect("poller finishes")
        .expect("poller task");

    let ids: Vec<u64> = seen.iter().map(|m| m.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "id order: {ids:?}");
    let mut per_recipient: HashMap<&str, Vec<u64>> = HashMap::new();
    for message in &seen {
        per_recipient
            .entry(message.recipient.as_str())
            .or_default()
            .push(message.sequence);
    }
    let mut total = 0;
    for (name, id) in &recipients {
        let live = per_recipient
            .get(name.as_str())
            .cloned()
            .unwrap_or_default();
        let expected: Vec<u64> = (1..=live.len() as u64).collect();
        assert_eq!(
            live, expected,
            "{name}: live order is sequence order, no gap"
        );
        let page = stores[0]
            .fetch_messages(*id, Some(0), 1_000)
            .await
            .expect("fetch");
        let stored: Vec<u64> = page.messages.iter().map(|m| m.sequence).collect();
        assert_eq!(
            stored, expected,
            "{name}: the inbox is what the feed delivered"
        );
        total += live.len();
    }
    assert_eq!(total, SENDERS * SENDS);
    let fillers = stores[0]
        .database()
        .collection::<Document>("messages")
        .count_documents(doc! { "filler": { "$exists": true } })
        .await
        .expect("count fillers");
    eprintln!("{total} messages; {fillers} ids released by senders that lost a race");
}

/// A deletion interrupted after its first step (the process died) is finished by the
/// next reader that meets the account, and by every store at start-up; meanwhile the
/// account is deleted for every purpose and its name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_deletion_is_finished_by_readers_and_at_start_up() {
    let Some(uri) = fresh_uri("resume_delete") else {
        return;
    };
    let store = open(&uri, MongoOptions::default()).await;
    let _drop = DropDatabase(Some(store.clone()));
    let alice = store.create_account("alice", HASH, 1).await.expect("alice");
    let bob = store.create_account("Bob", HASH, 1).await.expect("bob");
    let carol = store.create_account("carol", HASH, 1).await.expect("carol");
    send(&store, alice.id, "bob", "to-bob-1").await;
    send(&store, alice.id, "carol", "to-carol-1").await;
    let from_bob = send(&store, bob.id, "alice", "from-bob").await;
    let token = [7u8; 32];
    store
        .create_session(&token, bob.id, i64::MAX)
        .await
        .expect("session");

    let accounts = store.database().collection::<Document>("accounts");
    let messages = store.database().collection::<Document>("messages");
    // Step 1 of a deletion, then the process "dies".
    let interrupt = |id: AccountId| {
        let accounts = accounts.clone();
        async move {
            accounts
                .update_one(
                    doc! { "_id": id },
                    doc! { "$set": { "state": "deleting" }, "$unset": { "username_key": "" } },
                )
                .await
                .expect("mark");
        }
    };
    interrupt(bob.id).await;
    // How many documents of `collection` match `filter`.
    let count = |collection: &mongodb::Collection<Document>, filter: Document| {
        let collection = collection.clone();
        async move { collection.count_documents(filter).await.expect("count") }
    };

    // Deleted for every purpose, and the name is free.
    assert_eq!(store.find_account("bob").await.expect("find"), None);
    assert!(matches!(
        store.fetch_messages(bob.id, None, 10).await,
        Err(StoreError::NoSuchAccount(_))
    ));
    let new_bob = store
        .create_account("bob", HASH, 1)
        .await
        .expect("name is free");
    assert_ne!(new_bob.id, bob.id);
    // The fetch above finished the deletion: the old inbox is gone, the account too.
    assert_eq!(count(&messages, doc! { "recipient_id": bob.id }).await, 0);
    assert_eq!(count(&accounts, doc! { "_id": bob.id }).await, 0);
    assert_eq!(
        store.lookup_session(&token, 0).await.expect("lookup"),
        SessionLookup::AccountDeleted
    );
    let alice_inbox = store
        .fetch_messages(alice.id, Some(0), 10)
        .await
        .expect("fetch");
    assert_eq!(alice_inbox.messages, [from_bob], "what bob sent stays");

    // Interrupted again, for carol; a new replica starting up finishes it.
    interrupt(carol.id).await;
    let _second = open(&uri, MongoOptions::default()).await;
    assert_eq!(count(&messages, doc! { "recipient_id": carol.id }).await, 0);
    assert_eq!(count(&accounts, doc! { "_id": carol.id }).await, 0);
    // And a repeated delete_account of a half-deleted account succeeds.
    interrupt(alice.id).await;
    store
        .delete_account(alice.id)
        .await
        .expect("finish by delete");
    assert_eq!(count(&accounts, doc! { "_id": alice.id }).await, 0);
}

/// With the server gone, calls fail quickly with a readable `Unavailable`; when it is
/// back (same port, same data), the same store works again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_server_is_unavailable_then_recovers_by_itself() {
    let Some(executable) = nx_executable("MongoDB store unavailability test") else {
        return;
    };
    let mut server = NxServer::start(&executable);
    let store = open(&server.uri("outage"), MongoOptions::default()).await;
    let alice = store.create_account("alice", HASH, 1).await.expect("alice");
    let bob = store.create_account("bob", HASH, 1).await.expect("bob");
    let before = send(&store, alice.id, "bob", "before").await;

    server.kill();
    for attempt in 0..2 {
        let started = Instant::now();
        match store.ping().await {
            Err(StoreError::Unavailable(message)) => {
                assert!(
                    message.contains("127.0.0.1") || message.contains("connection"),
                    "readable: {message}"
                );
            }
            other => panic!("ping #{attempt} with the server down: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(6), "fails quickly");
    }
    match store.find_account("alice").await {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("find with the server down: {other:?}"),
    }

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page = store
        .fetch_messages(bob.id, Some(0), 10)
        .await
        .expect("fetch");
    assert_eq!(
        page.messages,
        [before],
        "data written before the outage is there"
    );
    send(&store, alice.id, "bob", "after").await;
}

/// `store::open` selects the MongoDB store by scheme; start-up is idempotent (indexes
/// and schema marker), creates the TTL index, and refuses a newer schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn open_by_uri_is_idempotent_and_checks_the_schema() {
    let Some(uri) = fresh_uri("open") else { return };
    let store = chat_server::store::open(&uri).await.expect("open by URI");
    store.ping().await.expect("ping");
    let again = open(&uri, MongoOptions::default()).await;
    let _drop = DropDatabase(Some(again.clone()));
    let indexes: Vec<Document> = {
        use futures::TryStreamExt;
        let cursor = again
            .database()
            .collection::<Document>("sessions")
            .list_indexes()
            .await
            .expect("list indexes");
        cursor
            .try_collect::<Vec<_>>()
            .await
            .expect("indexes")
            .into_iter()
            .map(|model| {
                let mut description = model.keys.clone();
                if let Some(ttl) = model.options.and_then(|o| o.expire_after) {
                    description.insert("ttl", ttl.as_secs() as i64);
                }
                description
            })
            .collect()
    };
    assert!(
        indexes
            .iter()
            .any(|index| index.get("gc_at").is_some() && index.get_i64("ttl").ok() == Some(0)),
        "a TTL index on sessions.gc_at: {indexes:?}"
    );

    again
        .database()
        .collection::<Document>("meta")
        .update_one(
            doc! { "_id": "schema" },
            doc! { "$set": { "version": 99_i64 } },
        )
        .await
        .expect("bump");
    match MongoStore::open(&uri).await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("newer"), "{message}")
        }
        other => panic!("expected a refusal of schema 99, got {other:?}"),
    }
    match chat_server::store::open("mongodb:nonsense").await {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("connection string"), "{message}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a malformed URI was accepted"),
    }
}

#[test]
fn database_is_replaced_in_uris() {
    assert_eq!(
        with_database("mongodb://a:1,b:2/?replicaSet=rs0", "x"),
        "mongodb://a:1,b:2/x?replicaSet=rs0"
    );
    assert_eq!(with_database("mongodb://a/old", "x"), "mongodb://a/x");
    assert_eq!(
        with_database("mongodb+srv://c.example/old?tls=true", "x"),
        "mongodb+srv://c.example/x?tls=true"
    );
    assert_eq!(with_database("mongodb://a?w=1", "x"), "mongodb://a/x?w=1");
}
