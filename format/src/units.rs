//! Byte counts for people, in one place: IEC units (KiB, MiB) for what the
//! flasher reads and writes, SI units (kB, GB) to match the labels on disks.
//!
//! Integer arithmetic only: the board binary then carries no float formatting
//! (tens of KiB of `core::fmt::float`), which keeps `/init` within its size.

/// `value / scale` with one decimal, rounded half up: `tenths(1536, 1024)` is "1.5".
pub fn tenths(value: u64, scale: u64) -> String {
    let scale = u128::from(scale.max(1));
    let t = (u128::from(value) * 10 + scale / 2) / scale;
    format!("{}.{}", t / 10, t % 10)
}

/// "512 B", "1.5 KiB", "3.9 GiB".
pub fn iec(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut scale = 1024u64;
    let mut u = 0;
    while u + 1 < UNITS.len() && bytes / scale >= 1024 {
        scale *= 1024;
        u += 1;
    }
    format!("{} {}", tenths(bytes, scale), UNITS[u])
}

/// "950 B", "15.9 GB": decimal, as disk vendors label sizes.
pub fn si(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("kB", 1_000),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return format!("{} {unit}", tenths(bytes, scale));
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iec_sizes() {
        assert_eq!(iec(0), "0 B");
        assert_eq!(iec(1023), "1023 B");
        assert_eq!(iec(1024), "1.0 KiB");
        assert_eq!(iec(1536), "1.5 KiB");
        assert_eq!(iec(16 << 20), "16.0 MiB");
        assert_eq!(iec(3_865_470_566), "3.6 GiB");
        assert_eq!(iec(u64::MAX), "16384.0 PiB");
    }

    #[test]
    fn si_sizes() {
        assert_eq!(si(999), "999 B");
        assert_eq!(si(67_108_864), "67.1 MB");
        assert_eq!(si(15_931_539_456), "15.9 GB");
        assert_eq!(si(2_000_000_000_000), "2.0 TB");
    }

    #[test]
    fn rounding_is_half_up_and_exact() {
        assert_eq!(tenths(1049, 1000), "1.0");
        assert_eq!(tenths(1050, 1000), "1.1");
        assert_eq!(tenths(u64::MAX, 1), format!("{}.0", u64::MAX));
    }
}
