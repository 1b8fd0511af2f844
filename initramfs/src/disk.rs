//! Partitioned disk images: laying out partitions at 1 MiB boundaries, writing a
//! GPT (with protective MBR) or an MBR, streaming each partition's contents into
//! place, and reading a table back (for `configure` and `inspect`).
//!
//! Big contents (the payload bundle) are streamed from their file, never loaded
//! into memory. The output file is created sparse, so zero ranges cost nothing.
//! GUIDs and the MBR disk signature are derived from the layout, so the same
//! inputs give the same image, byte for byte.

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
    #[error("no partition table found (neither GPT nor MBR)")]
    NoTable,
    #[error("no partition named {name:?}; the disk has: {seen}")]
    NoSuchPartition { name: String, seen: String },
    #[error("GPT: {0}")]
    Gpt(String),
    #[error("MBR: {0}")]
    Mbr(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

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
    fn gpt_type(self) -> gpt::partition_types::Type {
        use gpt::partition_types as t;
        match self {
            PartKind::Esp => t::EFI,
            PartKind::BasicData => t::BASIC,
            PartKind::LinuxFs => t::LINUX_FS,
            PartKind::Raw => t::Type {
                // The constant is a valid GUID literal; parse cannot fail.
                guid: uuid::Uuid::parse_str(FLASHER_RAW_GUID).unwrap_or_default(),
                os: t::OperatingSystem::None,
            },
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
            .map_err(io(format!("reading the size of {}", p.display())))?
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
        .map_err(io(format!("creating {}", out.display())))?;
    f.set_len(report.size).map_err(io(format!(
        "sizing {} to {} bytes",
        out.display(),
        report.size
    )))?;
    for ((name, off, _), p) in report.partitions.iter().zip(parts) {
        write_contents(&mut f, *off, &p.contents).map_err(io(format!(
            "writing partition {name:?} into {}",
            out.display()
        )))?;
    }
    let seed = layout_seed(&report, parts);
    match table {
        Table::Gpt => write_gpt(&mut f, &report, parts, &seed)?,
        Table::Mbr => write_mbr(&mut f, &report, parts, &seed)?,
    }
    f.sync_all()
        .map_err(io(format!("flushing {}", out.display())))?;
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
    let gerr = |e: gpt::GptError| Error::Gpt(e.to_string());
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *f, Some(derived_uuid(seed, "disk")))
        .map_err(gerr)?;
    let mut map = std::collections::BTreeMap::new();
    for (i, ((name, off, size), p)) in report.partitions.iter().zip(parts).enumerate() {
        map.insert(
            i as u32 + 1,
            gpt::partition::Partition {
                part_type_guid: p.kind.gpt_type(),
                part_guid: derived_uuid(seed, &format!("part{i}")),
                first_lba: off / SECTOR,
                last_lba: (off + size) / SECTOR - 1,
                // Bit 2: legacy BIOS bootable.
                flags: if p.bootable { 1 << 2 } else { 0 },
                name: name.clone(),
            },
        );
    }
    disk.update_partitions(map).map_err(gerr)?;
    disk.write().map_err(gerr)?;
    let lbas = u32::try_from(report.size / SECTOR - 1).unwrap_or(u32::MAX);
    gpt::mbr::ProtectiveMBR::with_lb_size(lbas)
        .overwrite_lba0(f)
        .map_err(|e| Error::Gpt(format!("protective MBR: {e}")))?;
    Ok(())
}

fn write_mbr(f: &mut File, report: &DiskReport, parts: &[PartSpec], seed: &[u8]) -> Result<()> {
    let merr = |e: mbrman::Error| Error::Mbr(e.to_string());
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&sha2::Sha256::digest(seed)[..4]);
    let mut mbr = mbrman::MBR::new_from(f, SECTOR as u32, sig).map_err(merr)?;
    for (i, ((_, off, size), p)) in report.partitions.iter().zip(parts).enumerate() {
        // `layout` checked that every LBA fits in 32 bits.
        let start = (off / SECTOR) as u32;
        let sectors = (size / SECTOR) as u32;
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: if p.bootable {
                mbrman::BOOT_ACTIVE
            } else {
                mbrman::BOOT_INACTIVE
            },
            first_chs: mbrman::CHS::empty(),
            sys: p.kind.mbr_type(),
            last_chs: mbrman::CHS::empty(),
            starting_lba: start,
            sectors,
        };
    }
    mbr.write_into(f).map_err(merr)?;
    Ok(())
}

/// One partition as read back from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// 1-based partition number.
    pub number: u32,
    /// GPT partition name; empty for MBR.
    pub name: String,
    /// GPT type GUID, or the MBR type byte as "0x0c".
    pub type_id: String,
    pub offset: u64,
    pub size: u64,
    pub bootable: bool,
}

/// Read the partition table of an image: GPT if valid, else MBR.
pub fn read_table<D: Read + Write + Seek + std::fmt::Debug>(
    dev: &mut D,
) -> Result<(Table, Vec<PartInfo>)> {
    let mut sector0 = [0u8; 512];
    dev.seek(SeekFrom::Start(0))
        .and_then(|_| dev.read_exact(&mut sector0))
        .map_err(io("reading sector 0"))?;
    if sector0[510..] != [0x55, 0xAA] {
        return Err(Error::NoTable);
    }
    let protective = sector0[450] == 0xee;
    if protective {
        let disk = gpt::GptConfig::new()
            .writable(false)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .open_from_device(&mut *dev)
            .map_err(|e| Error::Gpt(e.to_string()))?;
        let parts = disk
            .partitions()
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| PartInfo {
                number: *n,
                name: p.name.clone(),
                type_id: p.part_type_guid.guid.to_string().to_uppercase(),
                offset: p.first_lba * SECTOR,
                size: (p.last_lba + 1 - p.first_lba) * SECTOR,
                bootable: p.flags & (1 << 2) != 0,
            })
            .collect();
        return Ok((Table::Gpt, parts));
    }
    let mbr = mbrman::MBR::read_from(dev, SECTOR as u32).map_err(|e| Error::Mbr(e.to_string()))?;
    let parts = mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(n, p)| PartInfo {
            number: n as u32,
            name: String::new(),
            type_id: format!("0x{:02x}", p.sys),
            offset: u64::from(p.starting_lba) * SECTOR,
            size: u64::from(p.sectors) * SECTOR,
            bootable: p.boot == mbrman::BOOT_ACTIVE,
        })
        .collect();
    Ok((Table::Mbr, parts))
}

/// A window onto one partition of a device: what fatfs sees as a volume. One
/// implementation serves both sides (the board copies config through it too).
pub use flasher::config_inject::PartitionSlice;

/// Open partition `name` (GPT name) of an image as a slice. For MBR images,
/// `mbr_fallback` gives the 1-based number to use for that name.
pub fn open_partition<D: Read + Write + Seek + std::fmt::Debug>(
    mut dev: D,
    name: &str,
    mbr_fallback: Option<u32>,
) -> Result<(PartitionSlice<D>, PartInfo)> {
    let (table, parts) = read_table(&mut dev)?;
    let found = parts.iter().find(|p| match table {
        Table::Gpt => p.name == name,
        Table::Mbr => Some(p.number) == mbr_fallback,
    });
    let Some(p) = found.cloned() else {
        let seen = parts
            .iter()
            .map(|p| {
                if p.name.is_empty() {
                    format!("#{}", p.number)
                } else {
                    p.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        return Err(Error::NoSuchPartition {
            name: name.to_string(),
            seen,
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
        assert_eq!(parts[1].type_id, FLASHER_RAW_GUID);
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
        assert_eq!(parts[0].type_id, "0xef");
        assert!(parts[0].bootable);
        assert_eq!(parts[1].type_id, "0xda");
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
        assert_eq!(&img[img.len() - 512..][..8], b"EFI PART");
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
