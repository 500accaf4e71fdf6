//! The schema version and the indexes, both set up at start-up.
//!
//! Indexes (creating an existing index is a no-op): `username_key` (unique), `state`;
//! `(sender_id, idempotency_key)` (unique), `(recipient_id, seq)` (unique: the inbox),
//! the `_id` index for the feed order, a TTL index on fillers' `expire_at`; sessions'
//! `expires_at` (for purging) and a TTL index on `gc_at` (`expireAfterSeconds: 0`). The
//! unique message indexes are sparse, so fillers (which have none of those fields) do
//! not collide.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Collection, IndexModel};

use super::db::Db;
use super::documents::MetaDoc;
use super::error::{Outcome, is_duplicate_key, map_error};
use crate::store::StoreError;

/// The schema version this build creates and understands (in `meta`, `_id: "schema"`).
/// A database with a higher version was written by a newer release and is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// Records the schema version in a new database; refuses one of a newer release.
pub(super) async fn ensure_version(db: &Db) -> Outcome<()> {
    let meta = db.database.collection::<Document>("meta");
    let insert = meta
        .insert_one(doc! {
            "_id": "schema",
            "version": SCHEMA_VERSION,
            "application": "chat-server",
        })
        .await;
    match insert {
        Ok(_) => return Ok(()),
        Err(error) if is_duplicate_key(&error) => {}
        Err(error) => return Err(error.into()),
    }
    let found = meta
        .clone_with_type::<MetaDoc>()
        .find_one(doc! { "_id": "schema" })
        .await?;
    match found {
        Some(MetaDoc { version }) if version > SCHEMA_VERSION => {
            Err(StoreError::Unavailable(format!(
                "the MongoDB database {} has schema version {version}, which is newer \
                 than the version {SCHEMA_VERSION} this chat-server understands; it was \
                 written by a newer release, so upgrade this server or use another \
                 database",
                db.database.name()
            ))
            .into())
        }
        _ => Ok(()),
    }
}

/// Creates the indexes (see the module documentation).
pub(super) async fn ensure_indexes(db: &Db) -> Outcome<()> {
    let index = |keys: Document, options: IndexOptions| {
        IndexModel::builder().keys(keys).options(options).build()
    };
    let named = |name: &str| IndexOptions::builder().name(name.to_string()).build();
    let unique_sparse = |name: &str| {
        IndexOptions::builder()
            .name(name.to_string())
            .unique(true)
            .sparse(true)
            .build()
    };
    let ttl = |name: &str| {
        IndexOptions::builder()
            .name(name.to_string())
            .expire_after(Duration::ZERO)
            .build()
    };
    let plan: [(&Collection<Document>, Vec<IndexModel>); 3] = [
        (
            &db.accounts,
            vec![
                index(doc! { "username_key": 1 }, unique_sparse("username_key")),
                index(doc! { "state": 1 }, named("state")),
            ],
        ),
        (
            &db.messages,
            vec![
                index(
                    doc! { "sender_id": 1, "idempotency_key": 1 },
                    unique_sparse("idempotency"),
                ),
                index(doc! { "recipient_id": 1, "seq": 1 }, unique_sparse("inbox")),
                index(doc! { "expire_at": 1 }, ttl("filler_ttl")),
            ],
        ),
        (
            &db.sessions,
            vec![
                index(doc! { "expires_at": 1 }, named("expiry")),
                index(doc! { "gc_at": 1 }, ttl("session_ttl")),
            ],
        ),
    ];
    for (collection, models) in plan {
        collection.create_indexes(models).await.map_err(|error| {
            match map_error(&error, db.server_selection_timeout) {
                StoreError::Internal(message) => StoreError::Unavailable(format!(
                    "cannot create the indexes of {}.{}: {message}",
                    db.database.name(),
                    collection.name()
                )),
                other => other,
            }
        })?;
    }
    Ok(())
}
