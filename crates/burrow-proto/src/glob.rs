//! Glob patterns over device names, as used by operator policy (`--allow 'site-a-*'`).

/// Matches `name` against `pattern`, where `*` is any run of characters and `?` is one.
///
/// Iterative with one backtrack point, so hostile patterns cost O(len(pattern) * len(name)).
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || Some(c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

/// Why an `--allow` pattern was refused: it can never match a device name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "pattern {pattern:?} can never match a device name: {why}; device names are 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit ('*' matches any run, '?' one character)"
)]
pub struct UselessPattern {
    /// The refused pattern.
    pub pattern: String,
    /// What is wrong with it.
    pub why: String,
}

/// Checks that `pattern` can match at least one valid device name (see [`crate::name`]).
pub fn check_pattern(pattern: &str) -> Result<(), UselessPattern> {
    let refuse = |why: String| {
        Err(UselessPattern {
            pattern: pattern.to_string(),
            why,
        })
    };
    if pattern.is_empty() {
        return refuse("it is empty".into());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?')))
    {
        return refuse(format!("it contains {c:?}"));
    }
    if pattern.starts_with('-') {
        return refuse("it starts with '-'".into());
    }
    let least = pattern.chars().filter(|c| *c != '*').count();
    if least > crate::name::MAX_NAME_LEN {
        return refuse(format!("it needs at least {least} characters"));
    }
    Ok(())
}

/// True when any of `patterns` matches `name`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], name: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_that_can_never_match_are_refused() {
        for good in ["*", "garage-*", "site-a-?", "*-pi", "?", "a", "pi-01"] {
            assert_eq!(check_pattern(good), Ok(()), "{good}");
        }
        let long = "a".repeat(64);
        for (bad, why) in [
            ("Garage-*", "'G'"),
            ("garage_pi", "'_'"),
            ("", "empty"),
            ("-pi", "starts with '-'"),
            (long.as_str(), "at least 64"),
            ("site a", "' '"),
        ] {
            let e = check_pattern(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("a-z, 0-9 and '-'"), "{e}");
        }
    }

    #[test]
    fn table() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("garage-pi", "garage-pi", true),
            ("garage-pi", "garage-pi2", false),
            ("site-a-*", "site-a-router", true),
            ("site-a-*", "site-b-router", false),
            ("*-pi", "garage-pi", true),
            ("*-pi", "garage-pc", false),
            ("pi-??", "pi-01", true),
            ("pi-??", "pi-1", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(matches(pattern, name), want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn any() {
        assert!(any_matches(&["x", "garage-*"], "garage-pi"));
        assert!(!any_matches::<&str>(&[], "garage-pi"));
    }
}
