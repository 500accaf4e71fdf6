//! Endpoint sets driven by a stream of changes, in the manner of
//! `tower::discover::Discover`.
//!
//! The stream yields `Change::Insert(key, address)` and `Change::Remove(key)`;
//! the key identifies an endpoint to the stream's producer (a service-registry
//! id, say), the address says where it is. Inserting an existing key moves it.
//! A stream error is logged and skipped; when the stream ends, the endpoints it
//! inserted stay. The balancer treats the stream as *settling* (calls made
//! before its first item wait for it, up to `resolve_timeout`) until it yields
//! its first item.

use std::{collections::HashMap, hash::Hash, net::SocketAddr};

use futures::{Stream, StreamExt};
pub use tower::discover::Change;

use crate::{
    classify::describe,
    error::BoxError,
    update::{Update, Updates, report},
};

/// Follows one discovery stream (`stream`: its id), reporting its changes.
pub(crate) async fn run<S, K, E>(stream_id: u64, updates: Updates, stream: S)
where
    S: Stream<Item = Result<Change<K, SocketAddr>, E>> + Send + 'static,
    K: Hash + Eq + Send + 'static,
    E: Into<BoxError>,
{
    let mut keys: HashMap<K, u64> = HashMap::new();
    let mut next_key = 0u64;
    let mut settled = false;
    let mut stream = std::pin::pin!(stream);
    while let Some(item) = stream.next().await {
        match item {
            Ok(Change::Insert(key, addr)) => {
                let key = *keys.entry(key).or_insert_with(|| {
                    next_key += 1;
                    next_key
                });
                let stream = stream_id;
                report(&updates, Update::Discovered { stream, key, addr });
            }
            Ok(Change::Remove(key)) => {
                if let Some(key) = keys.remove(&key) {
                    let stream = stream_id;
                    report(&updates, Update::Undiscovered { stream, key });
                }
            }
            Err(error) => {
                let error: BoxError = error.into();
                tracing::warn!(error = %describe(&*error), "endpoint discovery stream error; skipped");
            }
        }
        if !settled {
            settled = true;
            report(&updates, Update::StreamSettled);
        }
    }
    if !settled {
        report(&updates, Update::StreamSettled);
    }
    tracing::debug!("endpoint discovery stream ended; its endpoints stay");
}
