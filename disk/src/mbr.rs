//! MBR in sector 0: the four primary entries, the 0x55AA signature, telling an MBR
//! from a protective MBR and from a filesystem boot sector (FAT/NTFS/exFAT also end in
//! 55 AA), patching one entry's size, and writing a fresh table with `mbrman`.
//!
//! Reading and patching are hand-rolled over the 512 bytes of sector 0 (callers
//! often have them in memory already, and `mbrman::MBR::read_from` also follows
//! extended partitions, which none of our callers want); the board binary uses
//! nothing else, so it links no `mbrman` (with `bincode` and `bitvec`, 13 KB
//! there: docs/building.md). Writing a fresh table (the host) uses `mbrman`.

use flasher_format::io::IoContext;
use std::io::{Read, Seek, SeekFrom, Write};

use crate::{le32, put32, Error, Result};

/// Offset of the first of four 16-byte entries in sector 0.
pub const ENTRIES_OFFSET: usize = 446;
/// Offset of the 0x55 0xAA boot signature.
pub const SIGNATURE_OFFSET: usize = 510;
/// Partition type of a protective MBR's entry (UEFI).
pub const PROTECTIVE: u8 = 0xEE;
/// Extended-partition containers (CHS, LBA, Linux).
pub const EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
/// MBR boot flag of an active partition.
pub const ACTIVE: u8 = 0x80;

/// One of the four primary entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    /// 1-based slot number.
    pub number: u32,
    pub boot: u8,
    pub sys: u8,
    pub start_lba: u32,
    pub sectors: u32,
}

impl Entry {
    pub fn is_used(&self) -> bool {
        self.sys != 0
    }
    pub fn is_extended(&self) -> bool {
        EXTENDED.contains(&self.sys)
    }
}

/// Whether sector 0 ends in the 0x55 0xAA boot signature.
pub fn has_signature(sector0: &[u8]) -> bool {
    sector0.get(SIGNATURE_OFFSET..SIGNATURE_OFFSET + 2) == Some(&[0x55, 0xAA][..])
}

/// The four entries of sector 0 (used or not); `None` without the boot signature.
pub fn entries(sector0: &[u8]) -> Option<[Entry; 4]> {
    if sector0.len() < 512 || !has_signature(sector0) {
        return None;
    }
    Some(std::array::from_fn(|i| {
        let e = &sector0[ENTRIES_OFFSET + 16 * i..ENTRIES_OFFSET + 16 * (i + 1)];
        Entry {
            number: i as u32 + 1,
            boot: e[0],
            sys: e[4],
            start_lba: le32(e, 8),
            sectors: le32(e, 12),
        }
    }))
}

/// A protective MBR: the signature and an 0xEE entry (alone, or in a hybrid MBR).
pub fn has_protective_entry(sector0: &[u8]) -> bool {
    entries(sector0).is_some_and(|es| es.iter().any(|e| e.sys == PROTECTIVE))
}

/// A pure protective MBR: exactly one used entry, of type 0xEE.
pub fn is_protective(sector0: &[u8]) -> bool {
    entries(sector0).is_some_and(|es| {
        let used: Vec<_> = es.iter().filter(|e| e.is_used()).collect();
        used.len() == 1 && used[0].sys == PROTECTIVE
    })
}

/// Whether sector 0 is a filesystem boot sector (no partition table): FAT12/16/32,
/// NTFS, exFAT keep their name where an MBR keeps boot code.
pub fn is_filesystem_boot_sector(sector0: &[u8]) -> bool {
    sector0.len() >= 512
        && (&sector0[0x36..0x39] == b"FAT"
            || &sector0[0x52..0x57] == b"FAT32"
            || &sector0[3..7] == b"NTFS"
            || &sector0[3..8] == b"EXFAT")
}

/// An MBR partition table, as opposed to a filesystem boot sector: the signature,
/// valid boot flags, at least one used entry with a non-zero start and size, and no
/// filesystem name where a boot sector keeps it.
pub fn looks_like_mbr(sector0: &[u8]) -> bool {
    let Some(es) = entries(sector0) else {
        return false;
    };
    if is_filesystem_boot_sector(sector0) {
        return false;
    }
    let mut used = 0;
    for e in es {
        if e.boot != 0 && e.boot != ACTIVE {
            return false;
        }
        if e.is_used() {
            if e.start_lba == 0 || e.sectors == 0 {
                return false;
            }
            used += 1;
        }
    }
    used > 0
}

/// Cylinder/head/sector for an LBA with the usual 255-head, 63-sector geometry,
/// saturating to 1023/254/63 like fdisk does for LBAs that CHS cannot address.
pub fn chs(lba: u64) -> mbrman::CHS {
    let (c, h, s) = chs_parts(lba);
    mbrman::CHS::new(c, h, s)
}

/// [`chs`] as the three bytes of an entry: head, sector with the cylinder's two
/// high bits on top, the cylinder's low byte.
pub fn chs_bytes(lba: u64) -> [u8; 3] {
    let (c, h, s) = chs_parts(lba);
    [h, s | ((c >> 2) as u8 & 0xC0), c as u8]
}

fn chs_parts(lba: u64) -> (u16, u8, u8) {
    let (heads, sectors) = (255u64, 63u64);
    let c = lba / (heads * sectors);
    if c > 1023 {
        return (1023, 254, 63);
    }
    let h = (lba / sectors) % heads;
    let s = lba % sectors + 1;
    // In range by construction: c <= 1023, h < 255, s <= 63.
    (c as u16, h as u8, s as u8)
}

/// Set the protective entry `number` (1-based) of `sector0` to cover LBA 1 to the
/// end of a disk of `total_lbas` sectors (0xFFFFFFFF beyond 2^32, as UEFI says).
/// Returns whether anything changed.
pub fn fit_protective(sector0: &mut [u8], number: u32, total_lbas: u64) -> bool {
    let at = ENTRIES_OFFSET + (number as usize - 1) * 16;
    let size = u32::try_from(total_lbas.saturating_sub(1)).unwrap_or(u32::MAX);
    if le32(sector0, at + 12) == size
        && le32(sector0, at + 8) == 1
        && sector0[at + 5..at + 8] == [0xFF; 3]
    {
        return false;
    }
    put32(sector0, at + 8, 1);
    put32(sector0, at + 12, size);
    sector0[at + 5..at + 8].copy_from_slice(&[0xFF; 3]);
    true
}

/// Grow entry `number` (1-based) of the MBR in sector 0 of `dev` to `sectors`,
/// with its end CHS recomputed. Boot code and the other entries are kept: only
/// the entry's last CHS and size bytes change. Refused, as `mbrman` refuses it,
/// without the 0x55AA signature or with a boot flag other than 0x00 or 0x80.
pub fn set_sectors<D: Read + Write + Seek>(dev: &mut D, number: u32, sectors: u32) -> Result<()> {
    let mut s0 = [0u8; 512];
    dev.seek(SeekFrom::Start(0)).context("read MBR")?;
    dev.read_exact(&mut s0).context("read MBR")?;
    let Some(es) = entries(&s0) else {
        return Err(Error::MbrCrate("read MBR: invalid MBR signature".into()));
    };
    if es.iter().any(|e| e.boot != 0 && e.boot != ACTIVE) {
        return Err(Error::MbrCrate(
            "read MBR: partition has invalid boot flag".into(),
        ));
    }
    let Some(entry) = (number as usize).checked_sub(1).and_then(|i| es.get(i)) else {
        return Err(Error::MbrCrate(format!(
            "no MBR entry {number}; entries are 1..=4"
        )));
    };
    let at = ENTRIES_OFFSET + 16 * (number as usize - 1);
    let last = (u64::from(entry.start_lba) + u64::from(sectors)).saturating_sub(1);
    s0[at + 5..at + 8].copy_from_slice(&chs_bytes(last));
    put32(&mut s0, at + 12, sectors);
    dev.seek(SeekFrom::Start(0)).context("write MBR")?;
    dev.write_all(&s0).context("write MBR")?;
    Ok(())
}

/// A partition for a new MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewPartition {
    pub sys: u8,
    pub bootable: bool,
    pub start_lba: u64,
    pub sectors: u64,
}

/// Write a fresh MBR with `parts` as primaries 1.. onto `dev` (with `sector_size`-byte
/// sectors), disk signature `signature`. Uses `mbrman`.
pub fn write_new<D: Read + Write + Seek>(
    dev: &mut D,
    sector_size: u64,
    signature: [u8; 4],
    parts: &[NewPartition],
) -> Result<()> {
    crate::gpt::check_sector_size(sector_size)?;
    if parts.len() > 4 {
        return Err(Error::TooManyPartitions { count: parts.len() });
    }
    let merr = |e: mbrman::Error| Error::MbrCrate(e.to_string());
    let mut mbr = mbrman::MBR::new_from(&mut *dev, sector_size as u32, signature).map_err(merr)?;
    for (i, p) in parts.iter().enumerate() {
        let number = i as u32 + 1;
        let fit = |what, v: u64| {
            u32::try_from(v).map_err(|_| Error::MbrOverflow {
                number,
                what,
                value: v,
                sector_size,
            })
        };
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: if p.bootable {
                mbrman::BOOT_ACTIVE
            } else {
                mbrman::BOOT_INACTIVE
            },
            first_chs: mbrman::CHS::empty(),
            sys: p.sys,
            last_chs: mbrman::CHS::empty(),
            starting_lba: fit("start", p.start_lba)?,
            sectors: fit("size", p.sectors)?,
        };
    }
    mbr.write_into(dev).map_err(merr)?;
    Ok(())
}
