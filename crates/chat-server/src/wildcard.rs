//! Wildcard patterns for account listing: `*` matches any run of characters, `?` exactly
//! one, and every other character is literal.
//!
//! A [`Pattern`] is validated before it reaches a store: it may only contain username
//! characters (`[A-Za-z0-9_.-]`) and the two wildcards, so it cannot carry a query
//! operator into any query language. It is lowered, because usernames match without
//! regard to case, and runs of `*` are folded into one, so matching stays linear.
//! Stores translate it with [`Pattern::literal_prefix`] (for an index range scan) and
//! [`Pattern::to_sqlite_glob`] or [`Pattern::to_anchored_regex`], both of which escape
//! everything that is not a wildcard.

use std::fmt;

/// The longest pattern accepted, in characters.
pub const MAX_PATTERN_LEN: usize = 64;

/// A validated, lower-cased wildcard pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is longer than [`MAX_PATTERN_LEN`].
    #[error("pattern is longer than {MAX_PATTERN_LEN} characters")]
    TooLong,
    /// The pattern has a character that can never appear in a username.
    #[error(
        "pattern has {0:?} at position {1}; use only letters, digits, '_', '.', '-' and the wildcards '*' and '?'"
    )]
    BadCharacter(char, usize),
}

impl Pattern {
    /// Parses a user-supplied pattern. The empty pattern means `*` (everything).
    pub fn parse(raw: &str) -> Result<Self, PatternError> {
        if raw.chars().count() > MAX_PATTERN_LEN {
            return Err(PatternError::TooLong);
        }
        let mut text = String::with_capacity(raw.len().max(1));
        for (position, c) in raw.chars().enumerate() {
            match c {
                '*' if text.ends_with('*') => {}
                '*' | '?' | '_' | '.' | '-' => text.push(c),
                c if c.is_ascii_alphanumeric() => text.push(c.to_ascii_lowercase()),
                c => return Err(PatternError::BadCharacter(c, position + 1)),
            }
        }
        if text.is_empty() {
            text.push('*');
        }
        Ok(Self { text })
    }

    /// The normalised pattern text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The literal characters before the first wildcard: every match starts with them.
    pub fn literal_prefix(&self) -> &str {
        let end = self.text.find(['*', '?']).unwrap_or(self.text.len());
        &self.text[..end]
    }

    /// The smallest string above every string that starts with the literal prefix, when
    /// there is one that is easy to compute: the prefix with its last byte incremented
    /// (`None` for an empty prefix). Every match sorts at or above the prefix and below
    /// this, which bounds a store's index scan. Patterns are ASCII, so the bound is
    /// valid UTF-8.
    pub fn literal_prefix_end(&self) -> Option<String> {
        let mut bytes = self.literal_prefix().as_bytes().to_vec();
        let last = bytes.last_mut()?;
        if *last >= 0x7f {
            return None;
        }
        *last += 1;
        String::from_utf8(bytes).ok()
    }

    /// True when the pattern has no wildcard, so it matches exactly one name.
    pub fn is_literal(&self) -> bool {
        self.literal_prefix().len() == self.text.len()
    }

    /// Whether a lower-case name matches. Linear in `name.len() * pattern.len()` at
    /// worst (the classic greedy algorithm with one backtrack point), never exponential.
    pub fn matches(&self, name: &str) -> bool {
        let pattern = self.text.as_bytes();
        let name = name.as_bytes();
        let (mut p, mut n) = (0, 0);
        let mut backtrack: Option<(usize, usize)> = None;
        while n < name.len() {
            match pattern.get(p) {
                Some(b'*') => {
                    backtrack = Some((p, n));
                    p += 1;
                }
                Some(&c) if c == b'?' || c == name[n] => {
                    p += 1;
                    n += 1;
                }
                _ => match backtrack {
                    Some((star, matched)) => {
                        p = star + 1;
                        n = matched + 1;
                        backtrack = Some((star, matched + 1));
                    }
                    None => return false,
                },
            }
        }
        pattern[p..].iter().all(|&c| c == b'*')
    }

    /// The pattern as an SQLite `GLOB` operand. GLOB's own wildcards are `*` and `?`,
    /// and its only other special characters (`[`, `]`, `^`) cannot occur in a valid
    /// pattern, so the text carries over unchanged. Bind it as a parameter.
    pub fn to_sqlite_glob(&self) -> &str {
        &self.text
    }

    /// The pattern as a regular expression anchored at both ends, with every literal
    /// character escaped (for stores such as MongoDB's `$regex`).
    pub fn to_anchored_regex(&self) -> String {
        let mut regex = String::with_capacity(self.text.len() * 2 + 2);
        regex.push('^');
        for c in self.text.chars() {
            match c {
                '*' => regex.push_str(".*"),
                '?' => regex.push('.'),
                '.' => regex.push_str("\\."),
                // Letters, digits, '_' and '-' mean themselves outside a character class.
                c => regex.push(c),
            }
        }
        regex.push('$');
        regex
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_prefix_ends_at_its_last_byte_incremented() {
        let end = |pattern: &str| {
            Pattern::parse(pattern)
                .expect("pattern")
                .literal_prefix_end()
        };
        assert_eq!(end("pre*").as_deref(), Some("prf"));
        assert_eq!(end("a-?").as_deref(), Some("a."));
        assert_eq!(end("*x"), None);
    }

    fn matches(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern)
            .expect("valid pattern")
            .matches(name)
    }

    #[test]
    fn literal_characters_are_literal() {
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "axb"), "'.' must not act as a regex dot");
        assert!(matches("a-b_c", "a-b_c"));
        assert!(!matches("ab", "abc"));
    }

    #[test]
    fn wildcards() {
        assert!(matches("*", ""));
        assert!(matches("*", "anything"));
        assert!(matches("a*", "a"));
        assert!(matches("a*", "alice"));
        assert!(!matches("a*", "bob"));
        assert!(matches("*ce", "alice"));
        assert!(matches("a?ice", "alice"));
        assert!(!matches("a?ice", "aice"));
        assert!(matches("*l*e*", "alice"));
        assert!(matches("a*b*c", "aXXbYYc"));
        assert!(!matches("a*b*c", "aXXbYY"));
    }

    #[test]
    fn case_is_ignored_by_lowering_the_pattern() {
        assert_eq!(Pattern::parse("AlIcE*").unwrap().as_str(), "alice*");
    }

    #[test]
    fn empty_means_everything_and_stars_fold() {
        assert_eq!(Pattern::parse("").unwrap().as_str(), "*");
        assert_eq!(Pattern::parse("a***b**").unwrap().as_str(), "a*b*");
    }

    #[test]
    fn query_syntax_is_refused() {
        for bad in [
            "a[bc]",
            "^a",
            "a$",
            "a|b",
            "(a)",
            "a+",
            "{\"$ne\":1}",
            "a%",
            "a\\",
            "é",
        ] {
            assert!(
                matches!(Pattern::parse(bad), Err(PatternError::BadCharacter(..))),
                "{bad:?} must be refused"
            );
        }
        assert_eq!(
            Pattern::parse(&"a".repeat(MAX_PATTERN_LEN + 1)),
            Err(PatternError::TooLong)
        );
    }

    #[test]
    fn literal_prefix_for_index_scans() {
        assert_eq!(Pattern::parse("ali*").unwrap().literal_prefix(), "ali");
        assert_eq!(Pattern::parse("?li").unwrap().literal_prefix(), "");
        assert!(Pattern::parse("bob").unwrap().is_literal());
        assert!(!Pattern::parse("b?b").unwrap().is_literal());
    }

    #[test]
    fn regex_translation_escapes_literals() {
        assert_eq!(
            Pattern::parse("a.b-*?").unwrap().to_anchored_regex(),
            r"^a\.b-.*.$"
        );
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let pattern = Pattern::parse(&"*a".repeat(30)).unwrap();
        let name = "a".repeat(29) + "b";
        // A backtracking matcher would take ~2^30 steps here; this one finishes at once.
        assert!(!pattern.matches(&name));
        assert!(pattern.matches(&"a".repeat(30)));
    }
}
