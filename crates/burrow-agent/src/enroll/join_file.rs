//! The join file of a first boot: `burrow-join.txt` on a Raspberry Pi image's boot partition.

/// A join file (on a Raspberry Pi image's boot partition): the join string on a line of its
/// own, and optionally `name=NAME` or `name-from=hostname|imsi`; `#` starts a comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinFile {
    /// The join string.
    pub join: String,
    /// `name=` given.
    pub name: Option<String>,
    /// `name-from=` given.
    pub name_from: Option<String>,
}

/// Reads a join file's text.
pub fn parse_join_file(text: &str) -> Result<JoinFile, String> {
    let mut file = JoinFile {
        join: String::new(),
        name: None,
        name_from: None,
    };
    for (i, line) in text.lines().enumerate() {
        let line = line.trim().trim_start_matches('\u{feff}');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(v) = line.strip_prefix("name=") {
            file.name = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("name-from=") {
            file.name_from = Some(v.trim().to_string());
        } else if line.starts_with(burrow_proto::join::JOIN_PREFIX) && file.join.is_empty() {
            file.join = line.to_string();
        } else {
            return Err(format!(
                "line {}: expected the join string, name=NAME or name-from=hostname|imsi",
                i + 1
            ));
        }
    }
    if file.join.is_empty() {
        return Err(format!(
            "no join string (a line starting with {})",
            burrow_proto::join::JOIN_PREFIX
        ));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_files() {
        let f =
            parse_join_file("\u{feff}# from the admin\r\nburrow-join1.abc\r\nname-from=imsi\r\n")
                .unwrap();
        assert_eq!(f.join, "burrow-join1.abc");
        assert_eq!(f.name_from.as_deref(), Some("imsi"));
        assert!(
            parse_join_file("name=x\n")
                .unwrap_err()
                .contains("no join string")
        );
        assert!(parse_join_file("hello\n").unwrap_err().contains("line 1"));
    }
}
