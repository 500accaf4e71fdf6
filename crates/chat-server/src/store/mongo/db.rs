//! The connection: a client with the [`consistency`] settings applied, and the
//! collections that every operation uses.

use std::time::Duration;

use mongodb::bson::{Document, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};
use serde::de::DeserializeOwned;

use super::consistency;
use super::error::{Outcome, describe};
use crate::store::StoreError;

/// The database used when the connection string names none.
pub const DEFAULT_DATABASE: &str = "chat";

/// The client, the database and its collections.
pub(super) struct Db {
    pub(super) client: Client,
    pub(super) database: Database,
    pub(super) accounts: Collection<Document>,
    pub(super) sessions: Collection<Document>,
    pub(super) messages: Collection<Document>,
    pub(super) counters: Collection<Document>,
    pub(super) login_failures: Collection<Document>,
    /// The wait that an unreachable server is reported with.
    pub(super) server_selection_timeout: Duration,
}

impl Db {
    /// A client for a connection string (the database is the one the URI's path names,
    /// [`DEFAULT_DATABASE`] when none). Nothing is sent to the server yet.
    pub async fn connect(uri: &str) -> Result<Self, StoreError> {
        let mut client_options = ClientOptions::parse(uri).await.map_err(|error| {
            StoreError::Unavailable(format!(
                "invalid MongoDB connection string: {}",
                describe(&error)
            ))
        })?;
        consistency::apply(&mut client_options);
        let server_selection_timeout = client_options
            .server_selection_timeout
            .unwrap_or(consistency::DEFAULT_SERVER_SELECTION_TIMEOUT);
        let database = client_options
            .default_database
            .clone()
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        let client = Client::with_options(client_options).map_err(|error| {
            StoreError::Unavailable(format!(
                "cannot create a MongoDB client: {}",
                describe(&error)
            ))
        })?;
        let database = client.database(&database);
        Ok(Self {
            accounts: database.collection("accounts"),
            sessions: database.collection("sessions"),
            messages: database.collection("messages"),
            counters: database.collection("counters"),
            login_failures: database.collection("login_failures"),
            client,
            database,
            server_selection_timeout,
        })
    }

    /// A round trip to the server.
    pub async fn ping(&self) -> Outcome<()> {
        self.database.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }
}

/// The first document of `collection` that matches `filter`, read as a `T`.
pub(super) async fn find_one<T>(
    collection: &Collection<Document>,
    filter: Document,
) -> Outcome<Option<T>>
where
    T: DeserializeOwned + Send + Sync,
{
    Ok(collection.clone_with_type::<T>().find_one(filter).await?)
}
