//! The typed partition-table model every caller uses: which kind of table, its
//! sector size, and the partitions with their numbers, names, types and byte
//! ranges. Reading probes GPT at 512- and 4096-byte sectors (falling back to the
//! backup header at the disk's end when the primary is damaged), then MBR.

use flasher_format::io::IoContext;
use std::io::{Cursor, Read, Seek, Write};

use crate::{gpt, mbr, read_at, Error, Result};

/// Which table, with its disk identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `disk_guid` as stored (mixed endian).
    Gpt { disk_guid: [u8; 16] },
    /// The 4-byte disk signature at offset 440.
    Mbr { signature: [u8; 4] },
}

/// A partition's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartType {
    /// Type GUID as stored (mixed endian).
    Gpt([u8; 16]),
    /// MBR system id byte.
    Mbr(u8),
}

/// MBR type bytes of FAT partitions (FAT12, FAT16 <32M, FAT16, FAT32 CHS, FAT32 LBA,
/// FAT16 LBA, EFI system).
pub const MBR_FAT_TYPES: [u8; 7] = [0x01, 0x04, 0x06, 0x0b, 0x0c, 0x0e, 0xef];

impl PartType {
    /// An EFI system partition (GPT type or MBR 0xEF).
    pub fn is_esp(&self) -> bool {
        match self {
            PartType::Gpt(g) => *g == gpt::ESP_TYPE,
            PartType::Mbr(t) => *t == 0xef,
        }
    }
    /// The type says FAT (for GPT only the ESP type says so for sure).
    pub fn is_fat(&self) -> bool {
        match self {
            PartType::Gpt(_) => self.is_esp(),
            PartType::Mbr(t) => MBR_FAT_TYPES.contains(t),
        }
    }
    /// An MBR extended-partition container.
    pub fn is_extended(&self) -> bool {
        matches!(self, PartType::Mbr(t) if mbr::EXTENDED.contains(t))
    }
    /// The GPT type GUID as upper-case text, or the MBR byte as "0x0c".
    pub fn id(&self) -> String {
        match self {
            PartType::Gpt(g) => gpt::guid_string(g),
            PartType::Mbr(t) => format!("0x{t:02x}"),
        }
    }
}

/// One partition. LBAs are in the table's sector size; `last_lba` is inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based: GPT entry index + 1 or MBR slot, as `/dev/sdaN` names it.
    pub number: u32,
    /// GPT partition name; empty for MBR.
    pub name: String,
    pub part_type: PartType,
    /// GPT unique partition GUID (mixed endian); `None` for MBR.
    pub guid: Option<[u8; 16]>,
    pub first_lba: u64,
    pub last_lba: u64,
    /// MBR active flag, or the GPT legacy-BIOS-bootable attribute.
    pub bootable: bool,
    /// GPT attribute bits (0 for MBR).
    pub attributes: u64,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub kind: Kind,
    /// Logical sector size the table was read with (512 or 4096).
    pub sector_size: u64,
    pub partitions: Vec<Partition>,
}

impl Table {
    pub fn is_gpt(&self) -> bool {
        matches!(self.kind, Kind::Gpt { .. })
    }

    /// The partition named `name` (GPT names; MBR partitions have none).
    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The partition with 1-based number `n`.
    pub fn by_number(&self, n: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == n)
    }

    /// Read the table at the start of `dev`: GPT if LBA 1 holds a GPT header for
    /// 512- or 4096-byte sectors (primary checked, backup at the disk's end used if
    /// the primary is damaged), else an MBR. [`Error::NoTable`] when neither.
    pub fn read<D: Read + Seek + ?Sized>(dev: &mut D) -> Result<Table> {
        let size = crate::device_size(dev).context("find the disk size")?;
        for ss in [512u64, 4096] {
            if size < 2 * ss {
                continue;
            }
            let sig = read_at(dev, ss, 8, "probe GPT header")?;
            if sig == gpt::SIGNATURE {
                return read_gpt(dev, ss, size);
            }
        }
        if size < 512 {
            return Err(Error::NoTable);
        }
        let s0 = read_at(dev, 0, 512, "read sector 0")?;
        if mbr::has_protective_entry(&s0) {
            return Err(Error::BadHeader {
                offset: 512,
                reason: "sector 0 is a protective MBR but LBA 1 (512- or 4096-byte sectors) holds no GPT header".into(),
            });
        }
        if !mbr::looks_like_mbr(&s0) {
            return Err(Error::NoTable);
        }
        Ok(from_mbr(&s0, 512))
    }

    /// Read the table from the first bytes of a disk held in memory (e.g. the first
    /// MiB of an image). A backup GPT is not looked for.
    pub fn from_bytes(head: &[u8]) -> Result<Table> {
        Table::read(&mut Cursor::new(head))
    }

    /// Read a GPT for a known sector size (no MBR, no probing).
    pub fn read_gpt<D: Read + Seek + ?Sized>(dev: &mut D, sector_size: u64) -> Result<Table> {
        gpt::check_sector_size(sector_size)?;
        let size = crate::device_size(dev).context("find the disk size")?;
        read_gpt(dev, sector_size, size)
    }

    /// Read an MBR whose LBAs count `sector_size`-byte sectors (an MBR does not say;
    /// [`Table::read`] assumes 512).
    pub fn read_mbr<D: Read + Seek + ?Sized>(dev: &mut D, sector_size: u64) -> Result<Table> {
        gpt::check_sector_size(sector_size)?;
        let s0 = read_at(dev, 0, 512, "read sector 0")?;
        if !mbr::looks_like_mbr(&s0) || mbr::has_protective_entry(&s0) {
            return Err(Error::NoTable);
        }
        Ok(from_mbr(&s0, sector_size))
    }

    /// Write this table as a fresh table onto `dev`, a disk of `disk_bytes` bytes.
    /// GPT: 128 entries, backup at the end, protective MBR; partitions are written
    /// in order as entries 1.. (their `number`s are not kept). MBR: primaries 1..4.
    pub fn write_new<D: Read + Write + Seek + std::fmt::Debug>(
        &self,
        dev: &mut D,
        disk_bytes: u64,
    ) -> Result<()> {
        let ss = self.sector_size;
        match self.kind {
            Kind::Gpt { disk_guid } => {
                let parts: Vec<gpt::NewPartition> = self
                    .partitions
                    .iter()
                    .map(|p| gpt::NewPartition {
                        name: p.name.clone(),
                        type_guid: match p.part_type {
                            PartType::Gpt(g) => g,
                            // Unreachable for a table read from disk; map to
                            // "Linux filesystem" rather than fail.
                            PartType::Mbr(_) => LINUX_FS,
                        },
                        part_guid: p.guid.unwrap_or([0; 16]),
                        first_lba: p.first_lba,
                        last_lba: p.last_lba,
                        attributes: p.attributes
                            | if p.bootable {
                                gpt::ATTR_LEGACY_BOOTABLE
                            } else {
                                0
                            },
                    })
                    .collect();
                gpt::write_new(dev, ss, disk_bytes, disk_guid, &parts)
            }
            Kind::Mbr { signature } => {
                let parts: Vec<mbr::NewPartition> = self
                    .partitions
                    .iter()
                    .map(|p| mbr::NewPartition {
                        sys: match p.part_type {
                            PartType::Mbr(t) => t,
                            PartType::Gpt(_) => 0x83,
                        },
                        bootable: p.bootable,
                        start_lba: p.first_lba,
                        sectors: p.last_lba + 1 - p.first_lba,
                    })
                    .collect();
                mbr::write_new(dev, ss, signature, &parts)
            }
        }
    }
}

/// "Linux filesystem data" type GUID, on-disk byte order.
pub const LINUX_FS: [u8; 16] = [
    0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4,
];

fn read_gpt<D: Read + Seek + ?Sized>(dev: &mut D, ss: u64, size: u64) -> Result<Table> {
    let (h, entries) = match gpt::read_primary(dev, ss) {
        Ok(v) => v,
        Err(primary) => {
            // Like every GPT reader: a damaged primary is recovered from the backup.
            let last = size / ss - 1;
            match gpt::read_backup(dev, last, ss) {
                Ok(v) => v,
                Err(_) => return Err(primary),
            }
        }
    };
    let mut partitions = Vec::new();
    for e in h.entries(&entries) {
        if e.last_lba < e.first_lba {
            continue;
        }
        // A partition outside the usable LBAs would overlap the table itself
        // (or, from a hostile header, overflow: first 0, last u64::MAX).
        if e.first_lba < h.first_usable || e.last_lba > h.last_usable {
            return Err(Error::PartitionOutOfRange {
                number: e.number,
                first_lba: e.first_lba,
                last_lba: e.last_lba,
                first_usable: h.first_usable,
                last_usable: h.last_usable,
                disk_bytes: size,
            });
        }
        partitions.push(Partition {
            number: e.number,
            name: e.name,
            part_type: PartType::Gpt(e.type_guid),
            guid: Some(e.part_guid),
            first_lba: e.first_lba,
            last_lba: e.last_lba,
            bootable: e.attributes & gpt::ATTR_LEGACY_BOOTABLE != 0,
            attributes: e.attributes,
            offset: e.first_lba.saturating_mul(ss),
            // No overflow: first_lba >= first_usable >= 2 (Header::parse).
            size: (e.last_lba - e.first_lba + 1).saturating_mul(ss),
        });
    }
    Ok(Table {
        kind: Kind::Gpt {
            disk_guid: h.disk_guid,
        },
        sector_size: ss,
        partitions,
    })
}

fn from_mbr(s0: &[u8], ss: u64) -> Table {
    let mut signature = [0u8; 4];
    signature.copy_from_slice(&s0[440..444]);
    let partitions = mbr::entries(s0)
        .unwrap_or_default()
        .iter()
        .filter(|e| e.is_used() && e.sectors > 0)
        .map(|e| {
            let (first, n) = (u64::from(e.start_lba), u64::from(e.sectors));
            Partition {
                number: e.number,
                name: String::new(),
                part_type: PartType::Mbr(e.sys),
                guid: None,
                first_lba: first,
                last_lba: first + n - 1,
                bootable: e.boot == mbr::ACTIVE,
                attributes: 0,
                offset: first * ss,
                size: n * ss,
            }
        })
        .collect();
    Table {
        kind: Kind::Mbr { signature },
        sector_size: ss,
        partitions,
    }
}
