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

use std::{collections::HashMap, hash::Hash, net::SocketAddr, sync::Arc};

use futures::{Stream, StreamExt};
pub use tower::discover::Change;

use crate::{
    error::BoxError,
    retry::describe,
    shared::{Shared, Source},
};

pub(crate) async fn run<S, K, E>(shared: Arc<Shared>, stream: S)
where
    S: Stream<Item = Result<Change<K, SocketAddr>, E>> + Send + 'static,
    K: Hash + Eq + Send + 'static,
    E: Into<BoxError>,
{
    let id = shared.stream_id();
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
                shared.set_source(Source::Discovered { stream: id, key }, vec![addr]);
            }
            Ok(Change::Remove(key)) => {
                if let Some(key) = keys.remove(&key) {
                    shared.remove_source(&Source::Discovered { stream: id, key });
                }
            }
            Err(error) => {
                let error: BoxError = error.into();
                tracing::warn!(error = %describe(&*error), "endpoint discovery stream error; skipped");
            }
        }
        if !settled {
            settled = true;
            shared.settle_expected();
        }
    }
    if !settled {
        shared.settle_expected();
    }
    tracing::debug!("endpoint discovery stream ended; its endpoints stay");
}
