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

/// True when any of `patterns` matches `name`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], name: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

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
