//! The one owner of on-disk layout below the filesystem: partition tables (GPT with
//! its CRCs and backup, MBR and protective MBR, any logical sector size) and access
//! to FAT volumes inside them (one boot-sector parser, the fatfs dot-entry repair,
//! a window onto one partition).
//!
//! Everything that reads a table from the image, the card or the target goes
//! through here: the fix-up after a write, the init's card reader, the engine's
//! held-back head, the host's card builder and the QEMU harness. Allocations sized
//! by on-disk values are bounded (see [`gpt::MAX_ENTRY_BYTES`]), so a hostile or
//! corrupt header is an error, never an out-of-memory.

pub mod error;
pub mod fat;
pub mod gpt;
pub mod mbr;
pub mod slice;
pub mod table;

pub use error::{Error, Result};
pub use slice::PartitionSlice;
pub use table::{Kind, PartType, Partition, Table};

use flasher_format::io::IoContext;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Read exactly `len` bytes at `offset`; `what` names the read in the error.
/// Read `len` bytes at `offset`; the error names `what` and the range.
pub fn read_at<D: Read + Seek + ?Sized>(
    dev: &mut D,
    offset: u64,
    len: usize,
    what: &str,
) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.read_exact(&mut buf))
        .with_context(|| format!("{what} ({len} bytes at byte {offset})"))?;
    Ok(buf)
}

/// Write `data` at `offset`; the error names `what` and the range.
pub fn write_at<D: Write + Seek + ?Sized>(
    dev: &mut D,
    offset: u64,
    data: &[u8],
    what: &str,
) -> Result<()> {
    Ok(dev
        .seek(SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(data))
        .with_context(|| format!("{what} ({} bytes at byte {offset})", data.len()))?)
}

pub(crate) fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The size of a seekable device or file in bytes (seeks to its end).
pub fn device_size<D: Seek + ?Sized>(dev: &mut D) -> io::Result<u64> {
    dev.seek(SeekFrom::End(0))
}

#[cfg(test)]
mod tests;
