//! Helpers for other crates' tests (feature `testing`): reproducible bytes
//! that do not compress and that no earlier run has produced.

/// `n` bytes of xorshift64 output from `seed` (0 is taken as 1): incompressible,
/// reproducible from the seed.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A seed no earlier run used: the clock's nanoseconds and the process id.
pub fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn noise_is_reproducible_and_does_not_repeat_a_block() {
        let a = noise(1 << 16, 7);
        assert_eq!(a, noise(1 << 16, 7));
        assert_ne!(a, noise(1 << 16, 8));
        // No 512-byte sector repeats the first one, none is all zeros.
        let first = &a[..512];
        assert!(a.chunks(512).skip(1).all(|s| s != first));
        assert!(a.chunks(512).all(|s| s.iter().any(|&b| b != 0)));
    }
}
