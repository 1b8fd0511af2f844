//! Partitioned disk images: laying out partitions at 1 MiB boundaries, writing a
//! GPT (with protective MBR) or an MBR, streaming each partition's contents into
//! place, and reading a table back (for `configure` and `inspect`). The table bytes
//! themselves are encoded and decoded by `flasher_disk`; this module only assembles
//! the card.
//!
//! Big contents (the payload bundle) are streamed from their file, never loaded
//! into memory. The output file is created sparse, so zero ranges cost nothing.
//! GUIDs and the MBR disk signature are derived from the layout, so the same
//! inputs give the same image, byte for byte.

use flasher_format::io::IoContext;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

/// Partition alignment and granularity: 1 MiB, what every tool and eMMC likes.
pub const ALIGN: u64 = 1 << 20;
const SECTOR: u64 = 512;

/// GPT partition type for raw Flasher partitions (payload, log). Project-specific
/// so that nothing mistakes them for a filesystem.
pub const FLASHER_RAW_GUID: &str = "5F1A54E2-7D3B-4C8E-9A61-F1A5E4D00001";
/// GPT type of a Microsoft basic data partition (FAT data).
const GPT_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";
/// MBR partition type for raw partitions: 0xda, "non-FS data".
pub const MBR_RAW: u8 = 0xda;
/// MBR partition type for FAT32 with LBA addressing; U-Boot and Linux read
/// FAT12/16 from it too.
pub const MBR_FAT: u8 = 0x0c;
/// MBR partition type for a Linux filesystem.
pub const MBR_LINUX: u8 = 0x83;
/// MBR partition type for an EFI system partition.
pub const MBR_ESP: u8 = 0xef;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "partition {name:?}: contents of {contents} bytes do not fit its {size} bytes; \
         give it at least {contents} bytes or leave the size 0 to fit the contents"
    )]
    ContentsTooLarge {
        name: String,
        size: u64,
        contents: u64,
    },
    #[error("partition {name:?} has size 0 and no contents to size it by")]
    EmptyPartition { name: String },
    #[error("an MBR holds at most 4 primary partitions, {count} were given")]
    TooManyPartitions { count: usize },
    #[error("disk of {size} bytes is too large for an MBR (2 TiB at most); use GPT")]
    TooLargeForMbr { size: u64 },
    #[error("no partition named {name:?}; the disk has: {seen}")]
    NoSuchPartition { name: String, seen: String },
    #[error(transparent)]
    Table(#[from] flasher_disk::Error),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Gpt,
    Mbr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    /// EFI system partition (FAT).
    Esp,
    /// A FAT data partition (Microsoft basic data / MBR 0x0c).
    BasicData,
    /// A Linux filesystem.
    LinuxFs,
    /// Raw bytes with no filesystem (payload, log).
    Raw,
}

impl PartKind {
    fn gpt_type(self) -> [u8; 16] {
        // The GUID constants are valid literals; parsing cannot fail.
        let guid = |g: &str| flasher_disk::gpt::guid_bytes(g).unwrap_or_default();
        match self {
            PartKind::Esp => flasher_disk::gpt::ESP_TYPE,
            PartKind::BasicData => guid(GPT_BASIC_DATA),
            PartKind::LinuxFs => flasher_disk::table::LINUX_FS,
            PartKind::Raw => guid(FLASHER_RAW_GUID),
        }
    }
    fn mbr_type(self) -> u8 {
        match self {
            PartKind::Esp => MBR_ESP,
            PartKind::BasicData => MBR_FAT,
            PartKind::LinuxFs => MBR_LINUX,
            PartKind::Raw => MBR_RAW,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contents {
    Bytes(Vec<u8>),
    /// Streamed from this file.
    File(PathBuf),
    Zero,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartSpec {
    pub name: String,
    pub kind: PartKind,
    /// Bytes; rounded up to 1 MiB. 0 means "fit the contents".
    pub size: u64,
    /// MBR: active flag. GPT: the legacy-BIOS-bootable attribute.
    pub bootable: bool,
    pub contents: Contents,
}

/// Where each partition landed: (name, byte offset, byte size), and the image size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    pub partitions: Vec<(String, u64, u64)>,
    pub size: u64,
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

fn contents_len(c: &Contents) -> Result<u64> {
    Ok(match c {
        Contents::Bytes(b) => b.len() as u64,
        Contents::File(p) => std::fs::metadata(p)
            .with_context(|| format!("reading the size of {}", p.display()))?
            .len(),
        Contents::Zero => 0,
    })
}

/// Compute the layout: 1 MiB first offset, each partition 1 MiB aligned. GPT
/// reserves a trailing MiB for the backup header and entries.
pub fn layout(table: Table, parts: &[PartSpec]) -> Result<DiskReport> {
    if table == Table::Mbr && parts.len() > 4 {
        return Err(Error::TooManyPartitions { count: parts.len() });
    }
    let mut offset = ALIGN;
    let mut out = Vec::new();
    for p in parts {
        let clen = contents_len(&p.contents)?;
        let size = if p.size == 0 { clen } else { p.size };
        if size == 0 {
            return Err(Error::EmptyPartition {
                name: p.name.clone(),
            });
        }
        if clen > size {
            return Err(Error::ContentsTooLarge {
                name: p.name.clone(),
                size,
                contents: clen,
            });
        }
        let size = round_up(size, ALIGN);
        out.push((p.name.clone(), offset, size));
        offset += size;
    }
    let size = match table {
        Table::Gpt => offset + ALIGN,
        Table::Mbr => offset,
    };
    if table == Table::Mbr && size / SECTOR > u64::from(u32::MAX) {
        return Err(Error::TooLargeForMbr { size });
    }
    Ok(DiskReport {
        partitions: out,
        size,
    })
}

/// A stable 16-byte id derived from the layout and a role, as an RFC 4122
/// version-4-shaped UUID.
fn derived_uuid(seed: &[u8], role: &str) -> uuid::Uuid {
    let mut h = sha2::Sha256::new();
    h.update(seed);
    h.update(role.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

fn layout_seed(report: &DiskReport, parts: &[PartSpec]) -> Vec<u8> {
    let mut seed = Vec::new();
    for ((name, off, size), p) in report.partitions.iter().zip(parts) {
        seed.extend_from_slice(name.as_bytes());
        seed.extend_from_slice(&off.to_le_bytes());
        seed.extend_from_slice(&size.to_le_bytes());
        seed.push(p.kind.mbr_type());
    }
    seed.extend_from_slice(&report.size.to_le_bytes());
    seed
}

/// Write a partitioned disk image to `out` (created or truncated).
pub fn write_disk(out: &Path, table: Table, parts: &[PartSpec]) -> Result<DiskReport> {
    write_disk_sized(out, table, parts, 0)
}

/// [`write_disk`] into an image of at least `min_size` bytes (e.g. a power of
/// two for QEMU's `sd-card`). The extra space is left unpartitioned at the end;
/// the backup GPT sits at the real end of the image.
pub fn write_disk_sized(
    out: &Path,
    table: Table,
    parts: &[PartSpec],
    min_size: u64,
) -> Result<DiskReport> {
    let mut report = layout(table, parts)?;
    if min_size > report.size {
        report.size = min_size.div_ceil(SECTOR) * SECTOR;
        if table == Table::Mbr && report.size / SECTOR > u64::from(u32::MAX) {
            return Err(Error::TooLargeForMbr { size: report.size });
        }
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    f.set_len(report.size)
        .with_context(|| format!("sizing {} to {} bytes", out.display(), report.size))?;
    for ((name, off, _), p) in report.partitions.iter().zip(parts) {
        write_contents(&mut f, *off, &p.contents)
            .with_context(|| format!("writing partition {name:?} into {}", out.display()))?;
    }
    let seed = layout_seed(&report, parts);
    match table {
        Table::Gpt => write_gpt(&mut f, &report, parts, &seed)?,
        Table::Mbr => write_mbr(&mut f, &report, parts, &seed)?,
    }
    f.sync_all()
        .with_context(|| format!("flushing {}", out.display()))?;
    Ok(report)
}

fn write_contents(f: &mut File, offset: u64, c: &Contents) -> io::Result<()> {
    match c {
        Contents::Zero => Ok(()),
        Contents::Bytes(b) => {
            f.seek(SeekFrom::Start(offset))?;
            write_sparse(f, b)
        }
        Contents::File(p) => {
            f.seek(SeekFrom::Start(offset))?;
            let mut r = BufReader::with_capacity(
                ALIGN as usize,
                File::open(p)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?,
            );
            let mut buf = vec![0u8; ALIGN as usize];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                write_sparse(f, &buf[..n])?;
            }
        }
    }
}

/// Write `data` at the current position, seeking over all-zero 4 KiB blocks:
/// the file is fresh and sparse, so they already read as zero.
fn write_sparse(f: &mut File, data: &[u8]) -> io::Result<()> {
    for chunk in data.chunks(4096) {
        if chunk.iter().all(|b| *b == 0) {
            f.seek(SeekFrom::Current(chunk.len() as i64))?;
        } else {
            f.write_all(chunk)?;
        }
    }
    Ok(())
}

fn write_gpt(f: &mut File, report: &DiskReport, parts: &[PartSpec], seed: &[u8]) -> Result<()> {
    let new: Vec<_> = report
        .partitions
        .iter()
        .zip(parts)
        .enumerate()
        .map(
            |(i, ((name, off, size), p))| flasher_disk::gpt::NewPartition {
                name: name.clone(),
                type_guid: p.kind.gpt_type(),
                part_guid: derived_uuid(seed, &format!("part{i}")).to_bytes_le(),
                first_lba: off / SECTOR,
                last_lba: (off + size) / SECTOR - 1,
                attributes: if p.bootable {
                    flasher_disk::gpt::ATTR_LEGACY_BOOTABLE
                } else {
                    0
                },
            },
        )
        .collect();
    let disk_guid = derived_uuid(seed, "disk").to_bytes_le();
    flasher_disk::gpt::write_new(f, SECTOR, report.size, disk_guid, &new)?;
    Ok(())
}

fn write_mbr(f: &mut File, report: &DiskReport, parts: &[PartSpec], seed: &[u8]) -> Result<()> {
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&sha2::Sha256::digest(seed)[..4]);
    let new: Vec<_> = report
        .partitions
        .iter()
        .zip(parts)
        .map(|((_, off, size), p)| flasher_disk::mbr::NewPartition {
            sys: p.kind.mbr_type(),
            bootable: p.bootable,
            start_lba: off / SECTOR,
            sectors: size / SECTOR,
        })
        .collect();
    flasher_disk::mbr::write_new(f, SECTOR, sig, &new)?;
    Ok(())
}

/// One partition as read back from an image.
pub type PartInfo = flasher_disk::Partition;

/// Read the partition table of an image: GPT if present (any sector size), else MBR.
pub fn read_table<D: Read + Seek>(dev: &mut D) -> Result<(Table, Vec<PartInfo>)> {
    let t = flasher_disk::Table::read(dev)?;
    Ok((Table::of(&t), t.partitions))
}

impl Table {
    /// Which kind `t` is.
    pub fn of(t: &flasher_disk::Table) -> Table {
        if t.is_gpt() {
            Table::Gpt
        } else {
            Table::Mbr
        }
    }
}

/// Partition `name` of a card as the board finds it: by GPT name, or on an MBR
/// card (no names) by its 1-based number `mbr_number`.
pub fn find_partition<'a>(
    table: Table,
    parts: &'a [PartInfo],
    name: &str,
    mbr_number: Option<u32>,
) -> Option<&'a PartInfo> {
    parts.iter().find(|p| match table {
        Table::Gpt => p.name == name,
        Table::Mbr => Some(p.number) == mbr_number,
    })
}

/// The partitions of a table as a list for error messages: names, or `#N`
/// where a partition has none.
pub fn list_partitions(parts: &[PartInfo]) -> String {
    parts
        .iter()
        .map(|p| {
            if p.name.is_empty() {
                format!("#{}", p.number)
            } else {
                p.name.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A window onto one partition of a device: what fatfs sees as a volume. One
/// implementation serves both sides (the board copies config through it too).
pub use flasher_disk::PartitionSlice;

/// Open partition `name` (GPT name) of an image as a slice. For MBR images,
/// `mbr_fallback` gives the 1-based number to use for that name.
pub fn open_partition<D: Read + Write + Seek>(
    mut dev: D,
    name: &str,
    mbr_fallback: Option<u32>,
) -> Result<(PartitionSlice<D>, PartInfo)> {
    let (table, parts) = read_table(&mut dev)?;
    let Some(p) = find_partition(table, &parts, name, mbr_fallback).cloned() else {
        return Err(Error::NoSuchPartition {
            name: name.to_string(),
            seen: list_partitions(&parts),
        });
    };
    let slice = PartitionSlice::new(dev, p.offset, p.size);
    Ok((slice, p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn specs(extra: Contents) -> Vec<PartSpec> {
        vec![
            PartSpec {
                name: "flash-boot".into(),
                kind: PartKind::Esp,
                size: 8 << 20,
                bootable: true,
                contents: Contents::Bytes(vec![7u8; 1000]),
            },
            PartSpec {
                name: "flasher-payload".into(),
                kind: PartKind::Raw,
                size: 0,
                bootable: false,
                contents: extra,
            },
            PartSpec {
                name: "flasher-log".into(),
                kind: PartKind::Raw,
                size: 1 << 20,
                bootable: false,
                contents: Contents::Zero,
            },
        ]
    }

    #[test]
    fn gpt_layout_and_readback() {
        let dir = tempfile::tempdir().unwrap();
        let payload = dir.path().join("p.bin");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&payload, &data).unwrap();
        let out = dir.path().join("d.img");
        let r = write_disk(&out, Table::Gpt, &specs(Contents::File(payload))).unwrap();
        assert_eq!(
            r.partitions,
            vec![
                ("flash-boot".into(), 1 << 20, 8 << 20),
                ("flasher-payload".into(), 9 << 20, 3 << 20),
                ("flasher-log".into(), 12 << 20, 1 << 20),
            ]
        );
        assert_eq!(r.size, 14 << 20);
        let img = std::fs::read(&out).unwrap();
        assert_eq!(&img[(9 << 20)..(9 << 20) + data.len()], &data[..]);
        assert_eq!(&img[1 << 20..(1 << 20) + 1000], &[7u8; 1000][..]);
        let (t, parts) = read_table(&mut io::Cursor::new(img)).unwrap();
        assert_eq!(t, Table::Gpt);
        let names: Vec<_> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["flash-boot", "flasher-payload", "flasher-log"]);
        assert_eq!(parts[1].part_type.id(), FLASHER_RAW_GUID);
        assert_eq!(parts[1].offset, 9 << 20);
    }

    #[test]
    fn mbr_and_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        let s = specs(Contents::Bytes(vec![1; 10]));
        write_disk(&a, Table::Mbr, &s).unwrap();
        write_disk(&b, Table::Mbr, &s).unwrap();
        let ia = std::fs::read(&a).unwrap();
        assert!(ia == std::fs::read(&b).unwrap());
        let (t, parts) = read_table(&mut io::Cursor::new(ia)).unwrap();
        assert_eq!(t, Table::Mbr);
        assert_eq!(parts[0].part_type.id(), "0xef");
        assert!(parts[0].bootable);
        assert_eq!(parts[1].part_type.id(), "0xda");
        // GPT twice is identical too (derived GUIDs).
        write_disk(&a, Table::Gpt, &s).unwrap();
        write_disk(&b, Table::Gpt, &s).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    #[test]
    fn padded_image_keeps_backup_gpt_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.img");
        let r =
            write_disk_sized(&out, Table::Gpt, &specs(Contents::Bytes(vec![1])), 32 << 20).unwrap();
        assert_eq!(r.size, 32 << 20);
        let img = std::fs::read(&out).unwrap();
        assert_eq!(img.len(), 32 << 20);
        let last = img.len() as u64 / 512 - 1;
        flasher_disk::gpt::read_backup(&mut io::Cursor::new(&img), last, 512)
            .expect("a valid backup GPT at the last LBA");
        assert_eq!(r.partitions[2].1, 10 << 20);
    }

    #[test]
    fn slice_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("d.img");
        write_disk(&out, Table::Gpt, &specs(Contents::Bytes(vec![9; 5]))).unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&out)
            .unwrap();
        let (mut s, info) = open_partition(f, "flasher-payload", None).unwrap();
        assert_eq!(info.size, 1 << 20);
        let mut b = [0u8; 6];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [9, 9, 9, 9, 9, 0]);
        assert_eq!(s.seek(SeekFrom::End(0)).unwrap(), 1 << 20);
        assert!(s.write(&[1]).is_err());
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&out)
            .unwrap();
        assert!(matches!(
            open_partition(f, "nope", None),
            Err(Error::NoSuchPartition { .. })
        ));
        let mut too_big = specs(Contents::Zero);
        too_big[0].contents = Contents::Bytes(vec![0; (8 << 20) + 1]);
        assert!(matches!(
            layout(Table::Gpt, &too_big),
            Err(Error::ContentsTooLarge { .. })
        ));
        assert!(matches!(
            layout(Table::Gpt, &specs(Contents::Zero)),
            Err(Error::EmptyPartition { .. })
        ));
        let five = vec![specs(Contents::Zero)[2].clone(); 5];
        assert!(matches!(
            layout(Table::Mbr, &five),
            Err(Error::TooManyPartitions { .. })
        ));
    }
}
