//! A small CSV reader (RFC 4180: commas, double-quoted fields with `""` for a quote, CRLF or
//! LF) for `device import FILE.csv`.

/// One record's fields, with the line it started on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1-based line number where the record starts.
    pub line: usize,
    /// Its fields.
    pub fields: Vec<String>,
}

/// Longest field accepted (a public key line with a long comment fits).
const MAX_FIELD: usize = 16 * 1024;

/// Reads every record; blank lines are skipped. An error names the line.
pub fn parse(text: &str) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(format!("line {start}: a quoted field is never closed"));
                }
                break;
            };
            if field.len() > MAX_FIELD {
                return Err(format!(
                    "line {start}: a field longer than {MAX_FIELD} bytes"
                ));
            }
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' if quoted => quoted = false,
                '"' if field.is_empty() && !was_quoted => {
                    quoted = true;
                    was_quoted = true;
                }
                '\n' if quoted => {
                    line += 1;
                    field.push(c);
                }
                ',' if !quoted => {
                    fields.push(std::mem::take(&mut field));
                    was_quoted = false;
                }
                '\r' if !quoted && chars.peek() == Some(&'\n') => {}
                '\n' if !quoted => {
                    line += 1;
                    break;
                }
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        out.push(Record {
            line: start,
            fields: fields.into_iter().map(|f| f.trim().to_string()).collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_quotes_and_lines() {
        let text = "name,public_key,labels\r\npi-1,\"ssh-ed25519 AAAA c\",\"site=osaka,role=x\"\n\n\"a \"\"q\"\"\",b\n";
        let r = parse(text).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].line, 2);
        assert_eq!(
            r[1].fields,
            ["pi-1", "ssh-ed25519 AAAA c", "site=osaka,role=x"]
        );
        assert_eq!(r[2].line, 4);
        assert_eq!(r[2].fields, ["a \"q\"", "b"]);
        assert!(parse("\"open").unwrap_err().contains("line 1"));
        assert_eq!(parse("x").unwrap()[0].fields, ["x"]);
    }

    #[test]
    fn hostile_input_never_panics() {
        let mut seed = 7u64;
        for _ in 0..2000 {
            let len = (crate::xorshift(&mut seed) % 40) as usize;
            let s: String = (0..len)
                .map(|_| char::from(b"\",\r\na "[(crate::xorshift(&mut seed) % 6) as usize]))
                .collect();
            let _ = parse(&s);
        }
    }
}
