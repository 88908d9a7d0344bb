//! Byte sizes as people write them in flags and config files (`512K`, `64M`, `1G`), as
//! OpenSSH's `RekeyLimit` takes them.

/// Parses a size: a whole number of bytes, optionally followed by `K`, `M` or `G` (powers of
/// 1024; a trailing `B` or `iB` is accepted too).
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let upper = t.to_ascii_uppercase();
    let upper = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = [('K', 10), ('M', 20), ('G', 30)]
        .into_iter()
        .find_map(|(unit, shift)| upper.strip_suffix(unit).map(|d| (d, shift)))
        .unwrap_or((upper, 0));
    let n: u64 = digits.trim().parse().map_err(|_| {
        format!("{text:?} is not a size: give bytes, or a number with K, M or G (e.g. 64M)")
    })?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_with_and_without_units() {
        for (text, bytes) in [
            ("4096", 4096),
            ("512K", 512 << 10),
            ("64m", 64 << 20),
            ("1G", 1 << 30),
            ("2GiB", 2 << 30),
            (" 8 MB ", 8 << 20),
        ] {
            assert_eq!(super::parse(text), Ok(bytes), "{text}");
        }
        for bad in ["", "G", "1T", "-1K", "1.5G", "99999999999999999999G"] {
            assert!(super::parse(bad).is_err(), "{bad}");
        }
    }
}
