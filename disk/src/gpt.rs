//! GPT at the byte level: the 92-byte header (parse, validate, re-render with new
//! locations), the entry array (bounded read, CRC, typed entries), moving the backup
//! to a device's real end, and writing a fresh table.
//!
//! Reading is hand-rolled rather than done with the `gpt` crate: the crate reads only
//! from a device (not from the in-memory first MiB the engine holds), allocates the
//! entry array from the header's numbers without a bound, rebuilds headers from its
//! own model (dropping bytes it does not model) and looks for the backup where the
//! *device* ends, which is exactly what is wrong right after an image is written to a
//! larger target. Writing a fresh table ([`write_new`]) does use the crate.

use std::io::{Read, Seek, Write};

use crate::{le32, le64, put32, put64, read_at, write_at, Error, Result};

/// "EFI PART", the header signature.
pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// Size of the defined part of a GPT header (UEFI 2.x, table 5-5).
pub const HEADER_MIN: usize = 92;
/// Largest entry array accepted (count x size). Real tables are 16 KiB; the numbers
/// come from the disk, so they bound what we allocate.
pub const MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Bit 2 of the attributes: legacy BIOS bootable.
pub const ATTR_LEGACY_BOOTABLE: u64 = 1 << 2;

/// The EFI system partition type GUID as stored on disk (mixed endian).
pub const ESP_TYPE: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// The sector sizes this crate handles.
pub fn check_sector_size(sector_size: u64) -> Result<()> {
    if sector_size == 512 || sector_size == 4096 {
        Ok(())
    } else {
        Err(Error::BadSectorSize { sector_size })
    }
}

/// A GPT header as read from one sector. The raw sector is kept so that re-rendering
/// carries every byte we do not model (revision, disk GUID, reserved tail) verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub raw: Vec<u8>,
    pub header_size: usize,
    pub my_lba: u64,
    pub alternate_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub disk_guid: [u8; 16],
    pub entries_lba: u64,
    pub num_entries: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

/// CRC-32/ISO-HDLC (the zlib CRC the UEFI spec uses), with a 1 KiB table.
const CRC32: crc::Crc<u32, crc::Table<1>> =
    crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);

/// CRC32 of a header: over `header_size` bytes with the CRC field itself zeroed.
pub fn header_crc(raw: &[u8], header_size: usize) -> u32 {
    let mut h = CRC32.digest();
    h.update(&raw[..16]);
    h.update(&[0; 4]);
    h.update(&raw[20..header_size]);
    h.finalize()
}

/// CRC32 of an entry array, as stored in the header.
pub fn entries_crc(entries: &[u8]) -> u32 {
    CRC32.checksum(entries)
}

impl Header {
    /// Parse and validate the header in `raw` (one whole sector read from LBA
    /// `lba` of a disk with `sector_size`-byte sectors): signature, size, CRC,
    /// its own LBA, entry geometry and the bound on the entry array.
    pub fn parse(raw: &[u8], lba: u64, sector_size: u64) -> Result<Header> {
        let offset = lba.saturating_mul(sector_size);
        let bad = |reason: String| Error::BadHeader { offset, reason };
        if raw.len() < 512 || raw.len() as u64 != sector_size {
            return Err(bad(format!(
                "{} bytes were given for a {sector_size}-byte sector",
                raw.len()
            )));
        }
        if &raw[..8] != SIGNATURE {
            return Err(bad("no \"EFI PART\" signature".into()));
        }
        let header_size = le32(raw, 12) as usize;
        if header_size < HEADER_MIN || header_size > raw.len() {
            return Err(bad(format!(
                "header size {header_size} bytes is outside {HEADER_MIN}..={} bytes",
                raw.len()
            )));
        }
        let stored = le32(raw, 16);
        let computed = header_crc(raw, header_size);
        if stored != computed {
            return Err(Error::HeaderCrc {
                offset,
                stored,
                computed,
            });
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&raw[56..72]);
        let h = Header {
            header_size,
            my_lba: le64(raw, 24),
            alternate_lba: le64(raw, 32),
            first_usable: le64(raw, 40),
            last_usable: le64(raw, 48),
            disk_guid,
            entries_lba: le64(raw, 72),
            num_entries: le32(raw, 80),
            entry_size: le32(raw, 84),
            entries_crc: le32(raw, 88),
            raw: raw.to_vec(),
        };
        if h.my_lba != lba {
            return Err(bad(format!(
                "its own LBA field says {}, expected {lba}",
                h.my_lba
            )));
        }
        // UEFI requires 128 x 2^n; any multiple of 128 keeps entries aligned.
        if h.entry_size < 128 || h.entry_size % 128 != 0 {
            return Err(bad(format!(
                "partition entry size {} bytes is not a multiple of 128 bytes",
                h.entry_size
            )));
        }
        if h.entry_bytes() > MAX_ENTRY_BYTES {
            return Err(bad(format!(
                "{} entries of {} bytes ({} bytes) exceed the {MAX_ENTRY_BYTES}-byte limit",
                h.num_entries,
                h.entry_size,
                h.entry_bytes()
            )));
        }
        // LBA 0 is the MBR and LBA 1 the primary header: neither the entries
        // nor a partition may start there.
        if h.entries_lba < 2 || h.first_usable < 2 || h.first_usable > h.last_usable {
            return Err(bad(format!(
                "entries at LBA {}, usable LBAs {}..={} are inconsistent",
                h.entries_lba, h.first_usable, h.last_usable
            )));
        }
        // Every LBA the header names, and the entry array's end, must be a
        // byte offset that fits in 64 bits: the callers multiply by the
        // sector size (an alternate LBA near 2^55 once wrapped to a small
        // offset, issue 22).
        let max_lba = u64::MAX / sector_size;
        let entries_end = h.entries_lba.saturating_add(h.entry_sectors(sector_size));
        for (what, v) in [
            ("alternate (other header's) LBA", h.alternate_lba),
            ("last usable LBA", h.last_usable),
            ("entry array's end LBA", entries_end),
        ] {
            if v >= max_lba {
                return Err(bad(format!(
                    "its {what} {v} is past the largest LBA a disk of {sector_size}-byte sectors can have"
                )));
            }
        }
        // The UEFI layout: the primary header, its entry array, the usable
        // LBAs, the backup entry array, the backup header; none overlapping.
        let primary = lba == 1;
        let (other_ok, entries_ok) = if primary {
            (
                h.alternate_lba > h.last_usable,
                entries_end <= h.first_usable,
            )
        } else {
            (
                h.alternate_lba < h.first_usable,
                h.entries_lba > h.last_usable && entries_end <= lba,
            )
        };
        if !other_ok {
            return Err(bad(format!(
                "the other GPT header's LBA {} is not {} the usable LBAs {}..={}",
                h.alternate_lba,
                if primary { "after" } else { "before" },
                h.first_usable,
                h.last_usable
            )));
        }
        if !entries_ok {
            return Err(bad(format!(
                "the entry array at LBAs {}..{} overlaps the usable LBAs {}..={} or the header",
                h.entries_lba, entries_end, h.first_usable, h.last_usable
            )));
        }
        Ok(h)
    }

    /// Bytes in the entry array (at most [`MAX_ENTRY_BYTES`] after `parse`).
    pub fn entry_bytes(&self) -> u64 {
        u64::from(self.num_entries) * u64::from(self.entry_size)
    }

    /// Sectors the entry array occupies.
    pub fn entry_sectors(&self, sector_size: u64) -> u64 {
        self.entry_bytes().div_ceil(sector_size)
    }

    /// Serialize with the given location fields, recomputing the header CRC.
    pub fn render(
        &self,
        my_lba: u64,
        alternate_lba: u64,
        last_usable: u64,
        entries_lba: u64,
        entries_crc: u32,
    ) -> Vec<u8> {
        let mut raw = self.raw.clone();
        put64(&mut raw, 24, my_lba);
        put64(&mut raw, 32, alternate_lba);
        put64(&mut raw, 48, last_usable);
        put64(&mut raw, 72, entries_lba);
        put32(&mut raw, 88, entries_crc);
        let crc = header_crc(&raw, self.header_size);
        put32(&mut raw, 16, crc);
        raw
    }

    /// Check `entries` (the array this header describes) against its CRC.
    pub fn check_entries(&self, entries: &[u8], sector_size: u64) -> Result<()> {
        let computed = entries_crc(entries);
        if computed != self.entries_crc {
            return Err(Error::EntriesCrc {
                offset: self.entries_lba.saturating_mul(sector_size),
                len: entries.len() as u64,
                stored: self.entries_crc,
                computed,
            });
        }
        Ok(())
    }

    /// Read this header's entry array from `dev` and check its CRC.
    pub fn read_entries<D: Read + Seek + ?Sized>(
        &self,
        dev: &mut D,
        sector_size: u64,
    ) -> Result<Vec<u8>> {
        let off = self
            .entries_lba
            .checked_mul(sector_size)
            .ok_or_else(|| Error::BadHeader {
                offset: self.my_lba.saturating_mul(sector_size),
                reason: format!("entries LBA {} overflows a byte offset", self.entries_lba),
            })?;
        // entry_bytes() <= MAX_ENTRY_BYTES, checked in parse.
        let entries = read_at(dev, off, self.entry_bytes() as usize, "read GPT entries")?;
        self.check_entries(&entries, sector_size)?;
        Ok(entries)
    }

    /// The used entries of `entries` (this header's array), in table order.
    pub fn entries(&self, entries: &[u8]) -> Vec<Entry> {
        entries
            .chunks_exact(self.entry_size as usize)
            .enumerate()
            .filter_map(|(i, e)| Entry::parse(i as u32 + 1, e))
            .collect()
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based: entry index + 1, as `/dev/sdaN` names it.
    pub number: u32,
    /// Type GUID as stored (mixed endian).
    pub type_guid: [u8; 16],
    pub part_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Entry {
    /// `None` for an unused entry (all-zero type GUID).
    pub fn parse(number: u32, e: &[u8]) -> Option<Entry> {
        if e.len() < 128 || e[..16].iter().all(|&b| b == 0) {
            return None;
        }
        let mut type_guid = [0u8; 16];
        type_guid.copy_from_slice(&e[..16]);
        let mut part_guid = [0u8; 16];
        part_guid.copy_from_slice(&e[16..32]);
        let name: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&c| c != 0)
            .collect();
        Some(Entry {
            number,
            type_guid,
            part_guid,
            first_lba: le64(e, 32),
            last_lba: le64(e, 40),
            attributes: le64(e, 48),
            name: String::from_utf16_lossy(&name),
        })
    }
}

/// Set the last LBA of entry `number` (1-based) in an entry array.
pub fn set_last_lba(entries: &mut [u8], entry_size: u32, number: u32, last_lba: u64) {
    let es = entry_size as usize;
    let at = (number as usize - 1) * es;
    if let Some(e) = entries.get_mut(at..at + es) {
        put64(e, 40, last_lba);
    }
}

/// Format a mixed-endian GUID as the usual upper-case text.
pub fn guid_string(g: &[u8; 16]) -> String {
    // Mixed endian: the first three fields are little-endian, the last eight
    // bytes in order. Written out here rather than through `uuid`, whose text
    // formatting would otherwise be linked into the board binary for this one
    // use (console lines and errors naming a partition type).
    let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let d2 = u16::from_le_bytes([g[4], g[5]]);
    let d3 = u16::from_le_bytes([g[6], g[7]]);
    let mut s = format!("{d1:08X}-{d2:04X}-{d3:04X}-");
    for (i, b) in g[8..].iter().enumerate() {
        if i == 2 {
            s.push('-');
        }
        s.push_str(&format!("{b:02X}"));
    }
    s
}

/// Parse a GUID text into its on-disk (mixed-endian) bytes.
pub fn guid_bytes(text: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(text).ok().map(|u| u.to_bytes_le())
}

/// How far the primary GPT reaches (end of its entry array, in bytes) if `head`
/// (the first bytes of an image) holds a GPT header at LBA 1 for `sector_size`.
/// Used to size the region held back until the end of a write, so it checks only
/// the signature and saturates instead of validating: an over-estimate is harmless
/// and the table itself is validated after the write.
pub fn primary_extent(head: &[u8], sector_size: u64) -> Option<u64> {
    let ss = usize::try_from(sector_size).ok()?;
    let hdr = head.get(ss..ss.checked_add(HEADER_MIN)?)?;
    if &hdr[..8] != SIGNATURE {
        return None;
    }
    let entries = u64::from(le32(hdr, 80)).saturating_mul(u64::from(le32(hdr, 84)));
    Some(
        le64(hdr, 72)
            .saturating_mul(sector_size)
            .saturating_add(entries),
    )
}

/// Read and validate the primary GPT header (LBA 1) and its entries.
pub fn read_primary<D: Read + Seek + ?Sized>(
    dev: &mut D,
    sector_size: u64,
) -> Result<(Header, Vec<u8>)> {
    check_sector_size(sector_size)?;
    let raw = read_at(dev, sector_size, sector_size as usize, "read GPT header")?;
    let h = Header::parse(&raw, 1, sector_size)?;
    let entries = h.read_entries(dev, sector_size)?;
    Ok((h, entries))
}

/// Read the backup header at `lba` and its entries.
pub fn read_backup<D: Read + Seek + ?Sized>(
    dev: &mut D,
    lba: u64,
    sector_size: u64,
) -> Result<(Header, Vec<u8>)> {
    check_sector_size(sector_size)?;
    let off = lba.saturating_mul(sector_size);
    let raw = read_at(dev, off, sector_size as usize, "read backup GPT header")?;
    let h = Header::parse(&raw, lba, sector_size)?;
    let entries = h.read_entries(dev, sector_size)?;
    Ok((h, entries))
}

/// Where a table's backup goes on a disk of `total_lbas` sectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPlace {
    pub header_lba: u64,
    pub entries_lba: u64,
    pub last_usable: u64,
}

/// Place the backup of `h` at the end of a disk of `total_lbas` sectors; `None` when
/// the disk cannot hold the primary and the backup apart.
pub fn backup_place(h: &Header, total_lbas: u64, sector_size: u64) -> Option<BackupPlace> {
    let entry_sectors = h.entry_sectors(sector_size);
    let header_lba = total_lbas.checked_sub(1)?;
    let entries_lba = header_lba.checked_sub(entry_sectors)?;
    let last_usable = entries_lba.checked_sub(1)?;
    let primary_end = h.entries_lba.checked_add(entry_sectors)?;
    if last_usable < h.first_usable || entries_lba < primary_end {
        return None;
    }
    Some(BackupPlace {
        header_lba,
        entries_lba,
        last_usable,
    })
}

/// Write a GPT's backup (entries, then header) at `place` and the primary header
/// (and, if `entries_changed`, the primary entries), both pointing at each other.
/// Sector 0 is not touched. Order: backup first, so an interruption leaves the old
/// primary (or a new primary with a valid backup).
pub fn write_relocated<D: Write + Seek + ?Sized>(
    dev: &mut D,
    h: &Header,
    entries: &[u8],
    entries_changed: bool,
    place: BackupPlace,
    sector_size: u64,
) -> Result<()> {
    let crc = entries_crc(entries);
    let primary = h.render(1, place.header_lba, place.last_usable, h.entries_lba, crc);
    let backup = h.render(
        place.header_lba,
        1,
        place.last_usable,
        place.entries_lba,
        crc,
    );
    write_at(
        dev,
        place.entries_lba * sector_size,
        entries,
        "write backup GPT entries",
    )?;
    write_at(
        dev,
        place.header_lba * sector_size,
        &backup,
        "write backup GPT header",
    )?;
    if entries_changed {
        write_at(
            dev,
            h.entries_lba * sector_size,
            entries,
            "write primary GPT entries",
        )?;
    }
    write_at(dev, sector_size, &primary, "write primary GPT header")
}

/// A partition for a new table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPartition {
    pub name: String,
    /// Type GUID as stored (mixed endian).
    pub type_guid: [u8; 16],
    pub part_guid: [u8; 16],
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub attributes: u64,
}

/// Write a fresh GPT (primary and backup, 128 entries, protective MBR) onto `dev`,
/// a disk of `disk_bytes` bytes with `sector_size`-byte sectors. Uses the `gpt`
/// crate: for a new table on a whole disk its model is exactly what we want.
pub fn write_new<D: Read + Write + Seek + std::fmt::Debug>(
    dev: &mut D,
    sector_size: u64,
    disk_bytes: u64,
    disk_guid: [u8; 16],
    parts: &[NewPartition],
) -> Result<()> {
    check_sector_size(sector_size)?;
    let lb = if sector_size == 512 {
        ::gpt::disk::LogicalBlockSize::Lb512
    } else {
        ::gpt::disk::LogicalBlockSize::Lb4096
    };
    let gerr = |e: ::gpt::GptError| Error::GptCrate(e.to_string());
    let mut disk = ::gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(lb)
        .create_from_device(&mut *dev, Some(uuid::Uuid::from_bytes_le(disk_guid)))
        .map_err(gerr)?;
    let (first_usable, last_usable) = (
        disk.primary_header().map(|h| h.first_usable).unwrap_or(0),
        disk.primary_header().map(|h| h.last_usable).unwrap_or(0),
    );
    let mut map = std::collections::BTreeMap::new();
    for (i, p) in parts.iter().enumerate() {
        let number = i as u32 + 1;
        if p.first_lba < first_usable || p.last_lba > last_usable || p.last_lba < p.first_lba {
            return Err(Error::PartitionOutOfRange {
                number,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                first_usable,
                last_usable,
                disk_bytes,
            });
        }
        map.insert(
            number,
            ::gpt::partition::Partition {
                part_type_guid: ::gpt::partition_types::Type {
                    guid: uuid::Uuid::from_bytes_le(p.type_guid),
                    os: ::gpt::partition_types::OperatingSystem::None,
                },
                part_guid: uuid::Uuid::from_bytes_le(p.part_guid),
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: p.attributes,
                name: p.name.clone(),
            },
        );
    }
    disk.update_partitions(map).map_err(gerr)?;
    disk.write().map_err(gerr)?;
    let lbas = u32::try_from(disk_bytes / sector_size - 1).unwrap_or(u32::MAX);
    ::gpt::mbr::ProtectiveMBR::with_lb_size(lbas)
        .overwrite_lba0(dev)
        .map_err(|e| Error::GptCrate(format!("protective MBR: {e}")))?;
    Ok(())
}
