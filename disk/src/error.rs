//! The disk crate's error type: what was seen on the disk, in numbers and units,
//! and what to do about it.

use std::io;

/// Everything that can go wrong reading or writing a partition table or a FAT.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sector size {sector_size} bytes is not supported; expected 512 or 4096 bytes")]
    BadSectorSize { sector_size: u64 },
    #[error("GPT header at byte {offset} has CRC32 {stored:#010x} but its contents give {computed:#010x}; the partition table is corrupt, rebuild the image")]
    HeaderCrc {
        offset: u64,
        stored: u32,
        computed: u32,
    },
    #[error("GPT partition entries at byte {offset} ({len} bytes) have CRC32 {stored:#010x} but their contents give {computed:#010x}; the partition table is corrupt, rebuild the image")]
    EntriesCrc {
        offset: u64,
        len: u64,
        stored: u32,
        computed: u32,
    },
    #[error("GPT header at byte {offset} is invalid: {reason}; rebuild the image")]
    BadHeader { offset: u64, reason: String },
    #[error("no partition table found at the start of the disk (no GPT header at LBA 1 for 512- or 4096-byte sectors, no MBR in sector 0); build or write the image with a partition table")]
    NoTable,
    #[error("an MBR holds at most 4 primary partitions, {count} were given; use GPT")]
    TooManyPartitions { count: usize },
    #[error("partition {number} of {what}: LBA {value} does not fit the 32-bit MBR field (disk of {sector_size}-byte sectors); use GPT for disks over 2 TiB")]
    MbrOverflow {
        number: u32,
        what: &'static str,
        value: u64,
        sector_size: u64,
    },
    #[error("partition {number} spans LBA {first_lba}..={last_lba}, outside the usable LBAs {first_usable}..={last_usable} of a {disk_bytes}-byte disk; make the disk larger or the partition smaller")]
    PartitionOutOfRange {
        number: u32,
        first_lba: u64,
        last_lba: u64,
        first_usable: u64,
        last_usable: u64,
        disk_bytes: u64,
    },
    #[error("GPT writer: {0}")]
    GptCrate(String),
    #[error("MBR writer: {0}")]
    MbrCrate(String),
    #[error("FAT volume: {reason}; the partition does not hold a usable FAT filesystem")]
    BadFat { reason: String },
    #[error("invalid path {path:?} in a FAT volume: use '/'-separated names without '..'")]
    BadPath { path: String },
    #[error("{path:?} in the FAT volume is a directory, not a file")]
    IsDirectory { path: String },
    #[error("{path} in the FAT volume is over the {max}-byte limit")]
    FileTooLarge {
        path: String,
        /// Bytes read before the read stopped: `max + 1`, the file may be larger.
        size: u64,
        max: u64,
    },
    #[error("directory {path:?} in the FAT volume has over {max} entries, or lies too deep (a looping or corrupt cluster chain); rewrite the volume")]
    TooManyEntries { path: String, max: usize },
    #[error("{path} in the FAT volume: {source}")]
    FatFile {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for io::Error {
    /// For callers living in `io::Result` (fatfs-based code): the typed error stays
    /// reachable through `get_ref`/`into_inner`.
    fn from(e: Error) -> io::Error {
        let kind = match &e {
            Error::Io(flasher_format::io::IoError { source, .. })
            | Error::FatFile { source, .. } => source.kind(),
            Error::BadPath { .. } => io::ErrorKind::InvalidInput,
            Error::IsDirectory { .. } => io::ErrorKind::IsADirectory,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}
