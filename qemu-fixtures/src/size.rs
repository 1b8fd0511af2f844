//! Sizes as people type them (`64M`, `1G`, `32MiB`) for `--target-size`, the
//! demo's disks and fault offsets. Printing a size is
//! `flasher_format::units::iec`, the project's one byte formatter.

use crate::{Error, Result};

/// `64M`, `1G`, `512K`, `4096`, `32MiB` → bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::BadSize { text: text.into() };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(matches!(parse_size("lots"), Err(Error::BadSize { .. })));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(Error::BadSize { .. })
        ));
    }
}
