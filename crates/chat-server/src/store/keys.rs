//! What both stores key, order and scan by: the username key, the range of keys a
//! listing scans, and numbers as the databases' signed integers.

use super::AccountQuery;

/// The key that usernames are unique by, compared by and sorted by.
pub(super) fn username_key(username: &str) -> String {
    username.to_lowercase()
}

/// A `u64` as the databases' `i64`, saturating (no stored value is near `i64::MAX`).
pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The range of username keys that a listing scans.
///
/// Every match starts with the pattern's literal prefix, so the scan of the username
/// key index starts at the prefix (or just after the cursor, whichever is later) and
/// stops at the first key that no longer starts with the prefix. The pattern itself,
/// bound as a query parameter, does the rest: no user text reaches a query in any
/// other form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ListingRange {
    /// Where the scan starts.
    pub start: RangeStart,
    /// Every key in the range is below this one, when it is easy to compute
    /// ([`Pattern::literal_prefix_end`](crate::wildcard::Pattern::literal_prefix_end)).
    pub below: Option<String>,
}

/// Where a listing's scan starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RangeStart {
    /// Just after this key (the page cursor's).
    After(String),
    /// At this key (the literal prefix).
    From(String),
}

impl ListingRange {
    /// The range that `query` scans.
    pub fn of(query: &AccountQuery<'_>) -> Self {
        let prefix = query.pattern.literal_prefix();
        let start = match query
            .after
            .map(username_key)
            .filter(|after| after.as_str() >= prefix)
        {
            Some(after) => RangeStart::After(after),
            None => RangeStart::From(prefix.to_string()),
        };
        Self {
            start,
            below: query.pattern.literal_prefix_end(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wildcard::Pattern;

    #[test]
    fn a_cursor_before_the_prefix_starts_the_scan_at_the_prefix() {
        let pattern = Pattern::parse("bo*").expect("pattern");
        let query = |after| AccountQuery {
            pattern: &pattern,
            after,
            limit: 10,
        };
        let from_prefix = ListingRange {
            start: RangeStart::From("bo".into()),
            below: Some("bp".into()),
        };
        assert_eq!(ListingRange::of(&query(None)), from_prefix);
        assert_eq!(ListingRange::of(&query(Some("Alice"))), from_prefix);
        assert_eq!(
            ListingRange::of(&query(Some("BOB"))).start,
            RangeStart::After("bob".into())
        );
    }
}
