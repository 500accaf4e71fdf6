//! Helpers shared by the fuzz targets in `fuzz_targets/`: independent reference
//! implementations that the code under test is checked against.

/// Whether `name` matches the wildcard `pattern` (`*` any run of characters, `?` one
/// character, anything else itself, without regard to ASCII case), by dynamic
/// programming over characters. The empty pattern matches only the empty name.
pub fn wildcard_matches(pattern: &str, name: &str) -> bool {
    let name: Vec<char> = name.chars().collect();
    // matched[j]: the pattern so far matches name[..j].
    let mut matched = vec![false; name.len() + 1];
    matched[0] = true;
    for p in pattern.chars() {
        let mut next = vec![false; name.len() + 1];
        match p {
            '*' => {
                let mut any = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    any |= matched[j];
                    *slot = any;
                }
            }
            '?' => next[1..].copy_from_slice(&matched[..name.len()]),
            c => {
                for j in 1..=name.len() {
                    next[j] = matched[j - 1] && name[j - 1].eq_ignore_ascii_case(&c);
                }
            }
        }
        matched = next;
    }
    matched[name.len()]
}

#[cfg(test)]
mod tests {
    use super::wildcard_matches as m;

    #[test]
    fn reference_matcher() {
        assert!(m("", ""));
        assert!(!m("", "a"));
        assert!(m("*", ""));
        assert!(m("a*C", "AbbC"));
        assert!(m("?", "x"));
        assert!(!m("?", ""));
        assert!(!m("a.b", "axb"));
        assert!(m("*a*a", "banana"));
        assert!(!m("*a*b", "banana"));
    }
}
