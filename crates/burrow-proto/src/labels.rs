//! Device labels (`site=osaka`) and the selectors of operator policy and listings.
//!
//! An operator's `--allow` entry is either a name glob (`garage-*`) or a label selector
//! (`site=osaka`, `site=osaka,role=router`: every pair must match, and a value may be a glob).
//! Entries are alternatives: a device is allowed when any entry matches it.

use std::collections::BTreeMap;

/// A device's labels, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// Longest label key or value.
pub const MAX_LABEL_LEN: usize = 63;
/// Most labels one device carries.
pub const MAX_LABELS: usize = 32;

/// Why a label or selector was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label {text:?}: {why}")]
pub struct InvalidLabel {
    /// The refused input.
    pub text: String,
    /// What is wrong, and the form to use.
    pub why: String,
}

fn refuse<T>(text: &str, why: impl Into<String>) -> Result<T, InvalidLabel> {
    Err(InvalidLabel {
        text: text.to_string(),
        why: why.into(),
    })
}

/// Keys: `[a-z0-9][a-z0-9_.-]{0,62}`.
fn key_ok(key: &str) -> bool {
    let b = key.as_bytes();
    b.first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= MAX_LABEL_LEN
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_.-".contains(c))
}

/// Values: up to 63 of `A-Z a-z 0-9 _ . : / -` (no spaces, commas or `=`: they stay one word
/// in a shell, a CSV field and a selector).
fn value_ok(value: &str, glob: bool) -> bool {
    value.len() <= MAX_LABEL_LEN
        && value.bytes().all(|c| {
            c.is_ascii_alphanumeric() || b"_.:/-".contains(&c) || (glob && b"*?".contains(&c))
        })
}

const FORM: &str = "write KEY=VALUE: a key of a-z, 0-9, '_', '.', '-' (starting with a letter or digit, at most 63), a value of letters, digits, '_', '.', ':', '/', '-' (at most 63)";

/// Parses one `KEY=VALUE` label.
pub fn parse_label(text: &str) -> Result<(String, String), InvalidLabel> {
    let Some((key, value)) = text.split_once('=') else {
        return refuse(text, format!("no '='; {FORM}"));
    };
    if !key_ok(key) {
        return refuse(text, format!("bad key {key:?}; {FORM}"));
    }
    if !value_ok(value, false) {
        return refuse(text, format!("bad value {value:?}; {FORM}"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Parses labels given as repeated `KEY=VALUE` words (or one word with `,` between pairs).
pub fn parse_labels<S: AsRef<str>>(items: &[S]) -> Result<Labels, InvalidLabel> {
    let mut out = Labels::new();
    for item in items {
        for pair in item.as_ref().split([',', ';']).filter(|p| !p.is_empty()) {
            let (k, v) = parse_label(pair)?;
            out.insert(k, v);
        }
    }
    if out.len() > MAX_LABELS {
        return refuse(
            &format!("{} labels", out.len()),
            format!("a device carries at most {MAX_LABELS} labels"),
        );
    }
    Ok(out)
}

/// Labels as one word, `k=v,k2=v2` (empty for none).
pub fn format_labels(labels: &Labels) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A label selector: every `KEY=VALUE` pair must match (a value may use `*` and `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pairs: Vec<(String, String)>,
}

impl Selector {
    /// Parses `KEY=VALUE[,KEY=VALUE...]`.
    pub fn parse(text: &str) -> Result<Selector, InvalidLabel> {
        let mut pairs = Vec::new();
        for pair in text.split(',') {
            let Some((key, value)) = pair.split_once('=') else {
                return refuse(text, format!("{pair:?} has no '='; {FORM}"));
            };
            if !key_ok(key) {
                return refuse(text, format!("bad key {key:?}; {FORM}"));
            }
            if !value_ok(value, true) {
                return refuse(text, format!("bad value {value:?}; {FORM}"));
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        Ok(Selector { pairs })
    }

    /// Whether `labels` satisfy every pair.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.pairs.iter().all(|(k, pattern)| {
            labels
                .get(k)
                .is_some_and(|v| crate::glob::matches(pattern, v))
        })
    }
}

/// Whether an `--allow` entry is a label selector rather than a name glob.
pub fn is_selector(entry: &str) -> bool {
    entry.contains('=')
}

/// Checks an `--allow` entry: a name glob that can match a device name, or a label selector.
pub fn check_allow(entry: &str) -> Result<(), String> {
    if is_selector(entry) {
        Selector::parse(entry)
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        crate::glob::check_pattern(entry).map_err(|e| e.to_string())
    }
}

/// Whether operator policy `allow` (name globs and label selectors) lets it reach the device
/// `name` carrying `labels`. A selector that does not parse matches nothing.
pub fn allows<S: AsRef<str>>(allow: &[S], name: &str, labels: &Labels) -> bool {
    allow.iter().any(|entry| {
        let entry = entry.as_ref();
        if is_selector(entry) {
            Selector::parse(entry).is_ok_and(|s| s.matches(labels))
        } else {
            crate::glob::matches(entry, name)
        }
    })
}

/// Whether any entry of `allow` is a label selector (then the device's labels are needed).
pub fn needs_labels<S: AsRef<str>>(allow: &[S]) -> bool {
    allow.iter().any(|e| is_selector(e.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_parse_and_refuse_with_the_form() {
        assert_eq!(
            parse_labels(&["site=osaka", "role=router,rack=3"]).unwrap(),
            labels(&[("site", "osaka"), ("role", "router"), ("rack", "3")])
        );
        assert_eq!(
            parse_label("zone=ap-northeast-1a").unwrap().1,
            "ap-northeast-1a"
        );
        assert_eq!(parse_label("empty=").unwrap().1, "");
        for bad in [
            "site", "Site=x", "=x", "site=a b", "site=a=b", "-x=1", "site=*",
        ] {
            let e = parse_label(bad).unwrap_err().to_string();
            assert!(e.contains("KEY=VALUE"), "{bad}: {e}");
        }
        let many: Vec<String> = (0..40).map(|i| format!("k{i}=v")).collect();
        assert!(parse_labels(&many).is_err());
        assert_eq!(format_labels(&labels(&[("b", "2"), ("a", "1")])), "a=1,b=2");
    }

    #[test]
    fn policy_mixes_globs_and_selectors() {
        let osaka = labels(&[("site", "osaka"), ("role", "router")]);
        let tokyo = labels(&[("site", "tokyo")]);
        let allow = ["garage-*", "site=osaka"];
        assert!(allows(&allow, "garage-pi", &tokyo));
        assert!(allows(&allow, "rtr-1", &osaka));
        assert!(!allows(&allow, "rtr-2", &tokyo));
        assert!(allows(&["site=osaka,role=router"], "x", &osaka));
        assert!(!allows(&["site=osaka,role=switch"], "x", &osaka));
        assert!(allows(&["site=o*"], "x", &osaka));
        assert!(!allows(&["site=o*"], "x", &Labels::new()));
        assert!(needs_labels(&allow) && !needs_labels(&["*"]));
        assert!(check_allow("site=osaka").is_ok() && check_allow("Site=x").is_err());
        assert!(check_allow("garage-*").is_ok() && check_allow("Garage").is_err());
    }
}
