//! One module per target; each `pub fn NAME(data: &[u8])` is what
//! `fuzz/fuzz_targets/NAME.rs` calls.

mod bmap;
mod board;
mod bundle;
mod card;
mod cmdline;
mod disk;
mod record;

pub use bmap::bmap;
pub use board::board;
pub use bundle::bundle;
pub use card::card;
pub use cmdline::cmdline;
pub use disk::disk;
pub use record::record;

/// Little-endian integers at a byte offset, `None` past the end.
pub(crate) fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
pub(crate) fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
