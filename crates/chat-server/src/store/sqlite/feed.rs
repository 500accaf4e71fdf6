//! The message feed that live delivery polls.
//!
//! Message ids become visible in increasing order (the reason is at
//! [`send`](super::messages::send)), so nothing with an id at or below a reader's cursor
//! can appear later, and a plain `id > cursor` poll never skips a message.

use rusqlite::params;

use super::messages::{message_columns, message_from_row};
use super::pool::Pool;
use crate::store::keys::to_i64;
use crate::store::{FeedPage, StoreError};

/// See [`Store::message_feed`](crate::store::Store::message_feed).
pub(super) async fn page(
    pool: &Pool,
    after_id: Option<u64>,
    limit: u32,
) -> Result<FeedPage, StoreError> {
    pool.run(move |connection| {
        let Some(after_id) = after_id else {
            let cursor = connection
                .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM messages")?
                .query_row([], |row| row.get(0))?;
            return Ok(FeedPage {
                messages: Vec::new(),
                cursor,
            });
        };
        let messages = connection
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(params![to_i64(after_id), limit], message_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let cursor = messages.last().map_or(after_id, |message| message.id);
        Ok(FeedPage { messages, cursor })
    })
    .await
}
