//! The durability and consistency settings of every connection, in one place. They are
//! applied over whatever the connection string says, because the store's guarantees
//! depend on them; only timeouts can be tuned from the URI.
//!
//! Writes are acknowledged only once a majority of the replica set has them in its
//! journal (`w: majority, j: true`), reads only return majority-committed data
//! (`readConcern: majority`, from the primary), and the driver retries a read or a write
//! once on another primary after a failover (retryable reads and writes). So an
//! acknowledged call is never rolled back, and a reader never sees anything that could
//! still be rolled back.

use std::time::Duration;

use mongodb::options::{
    Acknowledgment, ClientOptions, ReadConcern, ReadPreference, SelectionCriteria, WriteConcern,
};

/// How long an operation waits for a suitable server (the primary) before failing
/// with [`StoreError::Unavailable`](crate::store::StoreError::Unavailable), unless
/// the URI sets `serverSelectionTimeoutMS`. Short, so that callers learn quickly
/// that the store is down; an election longer than this fails the call, and the
/// client's retry (idempotent by design) succeeds on the new primary.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(3);

/// How long opening a connection may take, unless the URI sets `connectTimeoutMS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a write waits for the majority before it fails (the write may still
/// commit; every write of this store is safe to retry).
pub const MAJORITY_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes: acknowledged once a majority of the replica set has written them to its
/// journal (`w: "majority", j: true`). Such a write survives the loss of any
/// minority of members and any failover: it is never rolled back. (On a standalone
/// server, majority is that server and `j: true` still means "on disk".)
pub fn write_concern() -> WriteConcern {
    WriteConcern::builder()
        .w(Acknowledgment::Majority)
        .journal(true)
        .w_timeout(MAJORITY_WRITE_TIMEOUT)
        .build()
}

/// Reads: only data acknowledged by a majority (`readConcern: "majority"`), so a
/// reader never acts on a write that a failover could roll back (for example, it
/// never delivers a message that then disappears).
pub fn read_concern() -> ReadConcern {
    ReadConcern::majority()
}

/// Every read goes to the primary, so a replica reads what it has just written
/// (with majority reads, a secondary could lag behind by a replication delay).
pub fn selection_criteria() -> SelectionCriteria {
    SelectionCriteria::ReadPreference(ReadPreference::Primary)
}

/// Retryable writes, the driver's default, stated explicitly: a write interrupted by
/// a failover or a network error is retried once on the new primary with the same
/// transaction number, so the server applies it exactly once. Together with the
/// unique indexes (a retried insert of an existing message is a harmless duplicate
/// key, which the store answers as an idempotent repeat) a failover during a send
/// neither loses nor duplicates the message.
pub const RETRY_WRITES: bool = true;

/// Retryable reads, the driver's default, stated explicitly: a read interrupted by
/// a failover is retried once.
pub const RETRY_READS: bool = true;

/// Applies every setting above to `options`, keeping timeouts the URI set.
pub fn apply(options: &mut ClientOptions) {
    let weaker = |what: &str| {
        tracing::warn!(
            "the MongoDB connection string sets {what}; chat-server overrides it \
             (see the consistency settings of the MongoDB store)"
        )
    };
    let wanted = write_concern();
    if options
        .write_concern
        .as_ref()
        .is_some_and(|w| w.w != wanted.w || w.journal == Some(false))
    {
        weaker("a write concern");
    }
    if options
        .read_concern
        .as_ref()
        .is_some_and(|r| *r != read_concern())
    {
        weaker("a read concern");
    }
    if !matches!(
        options.selection_criteria,
        None | Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
    ) {
        weaker("a read preference");
    }
    if options.retry_writes == Some(false) || options.retry_reads == Some(false) {
        weaker("retryWrites/retryReads=false");
    }
    options.write_concern = Some(write_concern());
    options.read_concern = Some(read_concern());
    options.selection_criteria = Some(selection_criteria());
    options.retry_writes = Some(RETRY_WRITES);
    options.retry_reads = Some(RETRY_READS);
    options
        .server_selection_timeout
        .get_or_insert(DEFAULT_SERVER_SELECTION_TIMEOUT);
    options
        .connect_timeout
        .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
    options.app_name.get_or_insert_with(|| "chat-server".into());
}

#[cfg(test)]
mod tests {
    use mongodb::options::{Acknowledgment, ReadConcernLevel, ReadPreference};

    use super::*;

    #[tokio::test]
    async fn consistency_overrides_the_uri_but_keeps_its_timeouts() {
        let mut options = ClientOptions::parse(
            "mongodb://h1:1,h2:2/db?replicaSet=rs0&w=1&readConcernLevel=local\
             &readPreference=secondary&retryWrites=false&serverSelectionTimeoutMS=1234",
        )
        .await
        .expect("parse");
        apply(&mut options);
        let write = options.write_concern.expect("write concern");
        assert_eq!(write.w, Some(Acknowledgment::Majority));
        assert_eq!(write.journal, Some(true));
        assert_eq!(
            options.read_concern.expect("read concern").level,
            ReadConcernLevel::Majority
        );
        assert!(matches!(
            options.selection_criteria,
            Some(mongodb::options::SelectionCriteria::ReadPreference(
                ReadPreference::Primary
            ))
        ));
        assert_eq!(options.retry_writes, Some(true));
        assert_eq!(options.retry_reads, Some(true));
        assert_eq!(
            options.server_selection_timeout,
            Some(Duration::from_millis(1234))
        );
        assert_eq!(options.connect_timeout, Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(options.default_database.as_deref(), Some("db"));
    }
}
