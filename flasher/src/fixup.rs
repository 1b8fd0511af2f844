//! Partition-table fix-ups after an image has been written to a larger target.
//!
//! An image built for an N-byte disk carries its partition table for N bytes. Once it
//! lands on a larger device:
//!
//! * **GPT**: the backup header and entry array sit at the image's old end, not at the
//!   device's last LBA, and the protective MBR's size covers only the image. This
//!   module moves the backup (entries + header) to the real end, updates the primary
//!   header's alternate LBA and last usable LBA, recomputes both CRC32s and fixes the
//!   protective MBR, so `sfdisk --verify` is clean. With `expand_data` the partition
//!   with the highest ending LBA grows to the new last usable LBA.
//! * **MBR (dos)**: nothing points at the disk's end, so only `expand_data` does
//!   anything: the primary partition that ends last grows to the end of the device
//!   (capped at the 2^32-sector limit of the format).
//! * **No table / unknown** (e.g. a bare filesystem image): nothing to do; reported.
//!
//! The table bytes are read, checked and rewritten by `flasher_disk` (see its `gpt`
//! module for why that is not the `gpt` crate: it would renumber entries, drop bytes
//! it does not model and look for the backup at the device's end). This module only
//! decides what must change.
//!
//! Write order: the old backup header is cleared first, then the new backup (entries,
//! header), then the primary entries/header and finally the protective MBR, so an
//! interruption leaves at worst a valid primary pointing at a missing backup, which
//! every GPT reader repairs from the primary.

use flasher_disk::{gpt, mbr};
use flasher_format::io::IoContext;
use flasher_format::units::iec;
use std::io::{Read, Seek, Write};

/// Errors from `fixup`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target is {} ({device_size} bytes), smaller than the image {} ({image_size} bytes); use a larger target", iec(*device_size), iec(*image_size))]
    DeviceSmaller { device_size: u64, image_size: u64 },
    #[error("sector size {sector_size} bytes is not supported; expected 512 or 4096 bytes")]
    BadSectorSize { sector_size: u64 },
    #[error("target of {device_size} bytes is too small to hold a GPT with {entry_bytes} bytes of entries at {sector_size}-byte sectors")]
    DeviceTooSmallForGpt {
        device_size: u64,
        sector_size: u64,
        entry_bytes: u64,
    },
    #[error(transparent)]
    Table(#[from] flasher_disk::Error),
    #[error("protective MBR found but no GPT header at LBA 1 ({sector_size}-byte sectors); the image's partition table is corrupt")]
    MissingGptHeader { sector_size: u64 },
    #[error("the image's GPT was made for {found}-byte sectors but the target has {expected}-byte sectors; build the image for this target's sector size")]
    SectorSizeMismatch { found: u64, expected: u64 },
    #[error("partition {number} ends at LBA {end_lba} but the target's last usable LBA is {last_usable_lba} ({sector_size}-byte sectors); the image does not fit this target")]
    PartitionBeyondEnd {
        number: u32,
        end_lba: u64,
        last_usable_lba: u64,
        sector_size: u64,
    },
    #[error("cannot grow partition {number}: {reason}")]
    ExpandUnsupported { number: u32, reason: String },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The partition table found on the target after the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
    /// No partition table recognised (e.g. a bare filesystem image): nothing done.
    None,
}

/// A partition that `expand_data` grew. LBAs are inclusive, in device sectors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grown {
    /// 1-based partition number (entry index + 1), as `/dev/sdaN` would name it.
    pub number: u32,
    pub start_lba: u64,
    pub old_end_lba: u64,
    pub new_end_lba: u64,
}

/// What `after_write` found and changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FixupReport {
    pub table: TableKind,
    /// GPT: the backup header's LBA before and after (equal when already at the end).
    pub backup_lba: Option<(u64, u64)>,
    /// GPT: the last usable LBA before and after.
    pub last_usable_lba: Option<(u64, u64)>,
    /// The protective MBR's size field was rewritten.
    pub pmbr_updated: bool,
    /// The stale backup header at the image's old end was cleared.
    pub old_backup_cleared: bool,
    /// The partition grown by `expand_data`, if any.
    pub grown: Option<Grown>,
    /// Anything noteworthy that did not need an error (hybrid MBR left alone, ...).
    pub notes: Vec<String>,
}

impl FixupReport {
    fn new(table: TableKind) -> Self {
        FixupReport {
            table,
            backup_lba: None,
            last_usable_lba: None,
            pmbr_updated: false,
            old_backup_cleared: false,
            grown: None,
            notes: Vec::new(),
        }
    }

    /// True when anything on the device was changed.
    pub fn changed(&self) -> bool {
        self.pmbr_updated
            || self.old_backup_cleared
            || self.grown.is_some()
            || self.backup_lba.is_some_and(|(a, b)| a != b)
            || self.last_usable_lba.is_some_and(|(a, b)| a != b)
    }
}

impl std::fmt::Display for FixupReport {
    /// One line for logs and the console, e.g.
    /// "Gpt: backup header moved from LBA 65535 to 131071; partition 2 grown to LBA 131038".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.table)?;
        if !self.changed() {
            return f.write_str(": unchanged");
        }
        let mut parts = Vec::new();
        if let Some((a, b)) = self.backup_lba.filter(|(a, b)| a != b) {
            parts.push(format!("backup header moved from LBA {a} to {b}"));
        }
        if self.pmbr_updated {
            parts.push("protective MBR size fixed".to_string());
        }
        if let Some(g) = &self.grown {
            parts.push(format!(
                "partition {} grown from LBA {} to {}",
                g.number, g.old_end_lba, g.new_end_lba
            ));
        }
        parts.extend(self.notes.iter().cloned());
        write!(f, ": {}", parts.join("; "))
    }
}

/// Fix up the partition table of an image of `image_size` bytes that was just written
/// to the start of `dev`, a device of `device_size` bytes with `sector_size`-byte
/// logical sectors (512 or 4096). See the module docs for what is done per table type.
pub fn after_write<D: Read + Write + Seek>(
    dev: &mut D,
    image_size: u64,
    device_size: u64,
    sector_size: u64,
    expand_data: bool,
) -> Result<FixupReport> {
    if sector_size != 512 && sector_size != 4096 {
        return Err(Error::BadSectorSize { sector_size });
    }
    if device_size < image_size {
        return Err(Error::DeviceSmaller {
            device_size,
            image_size,
        });
    }
    // A trailing partial sector cannot be addressed.
    let total_lbas = device_size / sector_size;
    if total_lbas < 2 {
        return Ok(none_report("target is smaller than two sectors"));
    }

    let lba0 = flasher_disk::read_at(dev, 0, sector_size as usize, "read sector 0")?;
    let lba1 = flasher_disk::read_at(dev, sector_size, sector_size as usize, "read GPT header")?;
    if &lba1[..8] == gpt::SIGNATURE {
        return fix_gpt(dev, lba0, lba1, total_lbas, sector_size, expand_data);
    }
    // A GPT made for the other sector size would be silently "fixed" into garbage;
    // say so instead.
    let other = if sector_size == 512 { 4096 } else { 512 };
    if device_size >= other * 2 {
        let probe = flasher_disk::read_at(dev, other, 8, "probe GPT header")?;
        if probe == gpt::SIGNATURE {
            return Err(Error::SectorSizeMismatch {
                found: other,
                expected: sector_size,
            });
        }
    }
    if mbr::has_protective_entry(&lba0) {
        return Err(Error::MissingGptHeader { sector_size });
    }
    if mbr::looks_like_mbr(&lba0) {
        return fix_mbr(dev, &lba0, total_lbas, sector_size, expand_data);
    }
    Ok(none_report("no partition table found"))
}

fn none_report(why: &str) -> FixupReport {
    let mut r = FixupReport::new(TableKind::None);
    r.notes.push(format!("{why}; nothing to fix up"));
    r
}

fn fix_gpt<D: Read + Write + Seek>(
    dev: &mut D,
    mut lba0: Vec<u8>,
    lba1: Vec<u8>,
    total_lbas: u64,
    ss: u64,
    expand_data: bool,
) -> Result<FixupReport> {
    let mut report = FixupReport::new(TableKind::Gpt);
    let hdr = gpt::Header::parse(&lba1, 1, ss)?;
    let mut entries = hdr.read_entries(dev, ss)?;

    // Where the backup belongs on this device.
    let place = gpt::backup_place(&hdr, total_lbas, ss).ok_or(Error::DeviceTooSmallForGpt {
        device_size: total_lbas * ss,
        sector_size: ss,
        entry_bytes: hdr.entry_bytes(),
    })?;
    let last_lba = place.header_lba;
    let last_usable = place.last_usable;

    // Every used partition must still fit; find the one that ends last.
    let mut last: Option<&gpt::Entry> = None;
    let used = hdr.entries(&entries);
    for e in &used {
        if e.last_lba > last_usable {
            return Err(Error::PartitionBeyondEnd {
                number: e.number,
                end_lba: e.last_lba,
                last_usable_lba: last_usable,
                sector_size: ss,
            });
        }
        if last.is_none_or(|l| e.last_lba > l.last_lba) {
            last = Some(e);
        }
    }

    if expand_data {
        match last {
            Some(e) if e.last_lba < last_usable => {
                gpt::set_last_lba(&mut entries, hdr.entry_size, e.number, last_usable);
                report.grown = Some(Grown {
                    number: e.number,
                    start_lba: e.first_lba,
                    old_end_lba: e.last_lba,
                    new_end_lba: last_usable,
                });
            }
            Some(_) => report
                .notes
                .push("last partition already ends at the last usable LBA".into()),
            None => report.notes.push("no partitions to grow".into()),
        }
    }

    report.backup_lba = Some((hdr.alternate_lba, last_lba));
    report.last_usable_lba = Some((hdr.last_usable, last_usable));

    // Clear the stale backup header at the image's old end, so nothing ever mistakes it
    // for the real one. Only when it lies beyond every partition of the original layout
    // (past the old last usable LBA), so no data byte is touched.
    let old = hdr.alternate_lba;
    let primary_entries_end = hdr.entries_lba + hdr.entry_sectors(ss);
    if old != last_lba && old > hdr.last_usable && old < total_lbas && old >= primary_entries_end {
        let stale =
            flasher_disk::read_at(dev, old * ss, ss as usize, "read old backup GPT header")?;
        if &stale[..8] == gpt::SIGNATURE {
            flasher_disk::write_at(
                dev,
                old * ss,
                &vec![0u8; ss as usize],
                "clear old backup GPT header",
            )?;
            report.old_backup_cleared = true;
        }
    }

    gpt::write_relocated(dev, &hdr, &entries, report.grown.is_some(), place, ss)?;

    // Protective MBR: one 0xEE entry covering LBA 1 to the end (UEFI: size of the disk
    // minus one, 0xFFFFFFFF when that does not fit). A hybrid MBR (other entries
    // besides 0xEE) is deliberately left alone: its layout is the image author's.
    let slots = mbr::entries(&lba0).unwrap_or_default();
    let used: Vec<&mbr::Entry> = slots.iter().filter(|e| e.is_used()).collect();
    match used.as_slice() {
        [e] if e.sys == mbr::PROTECTIVE => {
            if mbr::fit_protective(&mut lba0, e.number, total_lbas) {
                flasher_disk::write_at(dev, 0, &lba0[..512], "write protective MBR")?;
                report.pmbr_updated = true;
            }
        }
        [] => report
            .notes
            .push("no protective MBR entry; left sector 0 alone".into()),
        _ => report
            .notes
            .push("hybrid MBR (entries besides 0xEE); left sector 0 alone".into()),
    }
    flush(dev)?;
    Ok(report)
}

fn fix_mbr<D: Read + Write + Seek>(
    dev: &mut D,
    lba0: &[u8],
    total_lbas: u64,
    ss: u64,
    expand_data: bool,
) -> Result<FixupReport> {
    let mut report = FixupReport::new(TableKind::Mbr);
    let slots = mbr::entries(lba0).unwrap_or_default();
    // MBR addresses at most 2^32 sectors.
    let max_end = total_lbas.min(1 << 32);
    let mut last: Option<(mbr::Entry, u64, u64)> = None; // (entry, start, end exclusive)
    for e in slots.iter().filter(|e| e.is_used()) {
        let start = u64::from(e.start_lba);
        let end = start + u64::from(e.sectors);
        if end > total_lbas {
            return Err(Error::PartitionBeyondEnd {
                number: e.number,
                end_lba: end - 1,
                last_usable_lba: total_lbas - 1,
                sector_size: ss,
            });
        }
        if last.is_none_or(|(_, _, l)| end > l) {
            last = Some((*e, start, end));
        }
    }
    if !expand_data {
        report
            .notes
            .push("MBR has no backup to move; partitions left as they are".into());
        return Ok(report);
    }
    let Some((entry, start, end)) = last else {
        report.notes.push("no partitions to grow".into());
        return Ok(report);
    };
    let n = entry.number;
    if end >= max_end {
        report
            .notes
            .push("last partition already ends at the end of the device".into());
        return Ok(report);
    }
    if entry.is_extended() {
        return Err(Error::ExpandUnsupported {
            number: n,
            reason: format!(
                "it is an extended partition (type {:#04x}); growing logical partitions is not supported, build the image with a primary data partition last",
                entry.sys
            ),
        });
    }
    // max_end <= 2^32 and start >= 1 (checked by looks_like_mbr), so this fits.
    let sectors = u32::try_from(max_end - start).unwrap_or(u32::MAX);
    mbr::set_sectors(dev, n, sectors)?;
    flush(dev)?;
    if max_end < total_lbas {
        report.notes.push(format!(
            "partition {n} capped at the MBR limit of 2^32 sectors ({} bytes); {} bytes at the end stay unused",
            (1u64 << 32) * ss,
            (total_lbas - max_end) * ss
        ));
    }
    report.grown = Some(Grown {
        number: n,
        start_lba: start,
        old_end_lba: end - 1,
        new_end_lba: max_end - 1,
    });
    Ok(report)
}

fn flush<D: Write>(dev: &mut D) -> Result<()> {
    Ok(dev.flush().context("flush partition table")?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{File, OpenOptions};
    use std::io::Cursor;
    use std::path::Path;
    use std::process::{Command, Stdio};

    const MIB: u64 = 1 << 20;
    const LINUX: [u8; 16] = [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ];

    // ---- a GPT builder independent of the code under test (the `gpt` crate) ----

    /// A GPT disk image of `lbas` sectors with 128 entries of 128 bytes and the given
    /// inclusive (first, last) partitions.
    fn make_gpt(ss: u64, lbas: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut img = Cursor::new(vec![0u8; (lbas * ss) as usize]);
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, &(first, last))| gpt::NewPartition {
                name: "p".into(),
                type_guid: LINUX,
                part_guid: [
                    i as u8 + 1,
                    0x42,
                    0,
                    0,
                    0,
                    0,
                    0x40,
                    0,
                    0x80,
                    0,
                    0,
                    0,
                    0,
                    0,
                    0,
                    1,
                ],
                first_lba: first,
                last_lba: last,
                attributes: 0,
            })
            .collect::<Vec<_>>();
        gpt::write_new(&mut img, ss, lbas * ss, [7u8; 16], &parts).unwrap();
        img.into_inner()
    }

    /// `img` at the start of a device of `dev_size` bytes filled with 0xA5 garbage.
    fn on_device(img: &[u8], dev_size: u64) -> Cursor<Vec<u8>> {
        let mut dev = vec![0xA5u8; dev_size as usize];
        dev[..img.len()].copy_from_slice(img);
        Cursor::new(dev)
    }

    /// Independent check with the `gpt` crate: both headers valid (CRCs checked by the
    /// crate), backup at the device's last LBA. Returns (last_usable, partitions).
    fn gpt_crate_view(dev: &Cursor<Vec<u8>>, ss: u64) -> (u64, Vec<(u64, u64)>) {
        let lb = if ss == 512 {
            ::gpt::disk::LogicalBlockSize::Lb512
        } else {
            ::gpt::disk::LogicalBlockSize::Lb4096
        };
        let disk = ::gpt::GptConfig::new()
            .writable(false)
            .only_valid_headers(true)
            .logical_block_size(lb)
            .open_from_device(Cursor::new(dev.get_ref().clone()))
            .expect("gpt crate accepts both headers");
        let last = dev.get_ref().len() as u64 / ss - 1;
        let p = disk.primary_header().unwrap();
        let b = disk.backup_header().unwrap();
        assert_eq!(p.backup_lba, last);
        assert_eq!(b.current_lba, last);
        assert_eq!(b.backup_lba, 1);
        assert_eq!(p.last_usable, b.last_usable);
        let parts = disk
            .partitions()
            .values()
            .map(|p| (p.first_lba, p.last_lba))
            .collect();
        (p.last_usable, parts)
    }

    fn pmbr_size(dev: &[u8]) -> u32 {
        mbr::entries(dev).unwrap()[0].sectors
    }

    #[test]
    fn gpt_512_backup_moves_to_end_with_valid_crcs() {
        let img = make_gpt(512, 2048, &[(34, 999), (1000, 1900)]);
        let dev_size = 8 * MIB;
        let mut dev = on_device(&img, dev_size);
        let r = after_write(&mut dev, img.len() as u64, dev_size, 512, false).unwrap();
        let total = dev_size / 512;
        assert_eq!(r.table, TableKind::Gpt);
        assert_eq!(r.backup_lba, Some((2047, total - 1)));
        assert_eq!(r.last_usable_lba, Some((2047 - 33, total - 34)));
        assert!(r.pmbr_updated && r.old_backup_cleared && r.grown.is_none());
        let (last_usable, parts) = gpt_crate_view(&dev, 512);
        assert_eq!(last_usable, total - 34);
        assert_eq!(parts, vec![(34, 999), (1000, 1900)]);
        assert_eq!(pmbr_size(dev.get_ref()), (total - 1) as u32);
        // The old backup header is gone; partition data bytes untouched.
        assert!(dev.get_ref()[2047 * 512..2048 * 512]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            &dev.get_ref()[34 * 512..1901 * 512],
            &img[34 * 512..1901 * 512]
        );
    }

    #[test]
    fn gpt_4k_sectors_expand_grows_last_partition() {
        let ss = 4096;
        // Entries take 4 sectors at 4K: first usable 6, last usable lbas-6.
        let img = make_gpt(ss, 256, &[(6, 100), (101, 250)]);
        let dev_size = 4 * MIB;
        let mut dev = on_device(&img, dev_size);
        let r = after_write(&mut dev, img.len() as u64, dev_size, ss, true).unwrap();
        let total = dev_size / ss;
        assert_eq!(r.backup_lba, Some((255, total - 1)));
        assert_eq!(
            r.grown,
            Some(Grown {
                number: 2,
                start_lba: 101,
                old_end_lba: 250,
                new_end_lba: total - 6
            })
        );
        let (last_usable, parts) = gpt_crate_view(&dev, ss);
        assert_eq!(last_usable, total - 6);
        assert_eq!(parts, vec![(6, 100), (101, total - 6)]);
    }

    #[test]
    fn expand_picks_highest_ending_partition_not_highest_number() {
        // Entry 1 ends last although entry 2 comes later in the array.
        let img = make_gpt(512, 4096, &[(3000, 4000), (34, 2999)]);
        let mut dev = on_device(&img, 4 * MIB);
        let r = after_write(&mut dev, img.len() as u64, 4 * MIB, 512, true).unwrap();
        let g = r.grown.unwrap();
        assert_eq!((g.number, g.start_lba, g.old_end_lba), (1, 3000, 4000));
        let (lu, parts) = gpt_crate_view(&dev, 512);
        assert!(parts.contains(&(3000, lu)) && parts.contains(&(34, 2999)));
    }

    #[test]
    fn odd_image_and_device_sizes() {
        let img = make_gpt(512, 2048, &[(34, 2000)]);
        // The image's logical size is not a sector multiple (the last, partial sector
        // is the tail of the backup header), and neither is the device.
        let image_size = img.len() as u64 - 300;
        let dev_size = 3 * MIB + 777;
        let mut dev = on_device(&img, dev_size);
        let r = after_write(&mut dev, image_size, dev_size, 512, false).unwrap();
        let total = dev_size / 512; // the partial sector is not addressable
        assert_eq!(r.backup_lba.unwrap().1, total - 1);
        let mut whole = dev.get_ref().clone();
        whole.truncate((total * 512) as usize);
        gpt_crate_view(&Cursor::new(whole), 512);
    }

    #[test]
    fn same_size_device_is_a_no_op_and_second_run_changes_nothing() {
        let img = make_gpt(512, 2048, &[(34, 2000)]);
        let mut dev = on_device(&img, img.len() as u64);
        let r = after_write(&mut dev, img.len() as u64, img.len() as u64, 512, false).unwrap();
        assert!(!r.changed(), "{r:?}");
        assert_eq!(dev.get_ref(), &img);

        let mut dev = on_device(&img, 2 * MIB);
        after_write(&mut dev, img.len() as u64, 2 * MIB, 512, true).unwrap();
        let once = dev.get_ref().clone();
        let r = after_write(&mut dev, img.len() as u64, 2 * MIB, 512, true).unwrap();
        assert!(!r.changed(), "{r:?}");
        assert_eq!(dev.get_ref(), &once);
    }

    #[test]
    fn corrupt_primary_header_crc_is_refused_and_nothing_written() {
        let mut img = make_gpt(512, 2048, &[(34, 2000)]);
        img[512 + 56] ^= 0xFF; // disk GUID byte, covered by the header CRC
        let mut dev = on_device(&img, 2 * MIB);
        let before = dev.get_ref().clone();
        let e = after_write(&mut dev, img.len() as u64, 2 * MIB, 512, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Table(flasher_disk::Error::HeaderCrc { offset: 512, .. })
            ),
            "{e}"
        );
        assert_eq!(dev.get_ref(), &before);
    }

    #[test]
    fn corrupt_entries_crc_is_refused() {
        let mut img = make_gpt(512, 2048, &[(34, 2000)]);
        img[2 * 512 + 40] ^= 1; // last LBA of partition 1
        let mut dev = on_device(&img, 2 * MIB);
        let e = after_write(&mut dev, img.len() as u64, 2 * MIB, 512, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Table(flasher_disk::Error::EntriesCrc {
                    offset: 1024,
                    len: 16384,
                    ..
                })
            ),
            "{e}"
        );
    }

    #[test]
    fn refusals() {
        let img = make_gpt(512, 2048, &[(34, 2000)]);
        let mut dev = on_device(&img, img.len() as u64);
        let e = after_write(&mut dev, 2 * MIB, MIB, 512, false).unwrap_err();
        assert!(
            matches!(e, Error::DeviceSmaller { device_size, image_size } if device_size == MIB && image_size == 2 * MIB)
        );
        assert!(e.to_string().contains("1.0 MiB"), "{e}");
        let e = after_write(&mut dev, MIB, MIB, 1024, false).unwrap_err();
        assert!(matches!(e, Error::BadSectorSize { sector_size: 1024 }));
        // A 512-byte GPT on a device claimed to have 4K sectors.
        let e = after_write(&mut dev, MIB, MIB, 4096, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::SectorSizeMismatch {
                    found: 512,
                    expected: 4096
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn header_claiming_a_bigger_disk_than_the_device_is_refused() {
        // Built for 16 MiB, partition runs to near its end, but only 4 MiB exist.
        let img = make_gpt(512, 32768, &[(34, 32000)]);
        let mut dev = on_device(&img[..(4 * MIB) as usize], 4 * MIB);
        let e = after_write(&mut dev, 4 * MIB, 4 * MIB, 512, false).unwrap_err();
        assert!(
            matches!(
                e,
                Error::PartitionBeyondEnd {
                    number: 1,
                    end_lba: 32000,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn protective_mbr_without_gpt_header_is_refused() {
        let mut img = make_gpt(512, 2048, &[(34, 2000)]);
        img[512..520].fill(0);
        let mut dev = on_device(&img, 2 * MIB);
        let e = after_write(&mut dev, img.len() as u64, 2 * MIB, 512, false).unwrap_err();
        assert!(matches!(e, Error::MissingGptHeader { sector_size: 512 }));
    }

    #[test]
    fn hybrid_mbr_is_left_alone_but_gpt_is_fixed() {
        let mut img = make_gpt(512, 2048, &[(34, 2000)]);
        // Second MBR entry: a FAT partition mirroring GPT partition 1.
        let e2 = mbr::ENTRIES_OFFSET + 16;
        img[e2..e2 + 16].copy_from_slice(&[0, 0, 0, 0, 0x0C, 0, 0, 0, 34, 0, 0, 0, 0xB7, 7, 0, 0]);
        let mut dev = on_device(&img, 2 * MIB);
        let r = after_write(&mut dev, img.len() as u64, 2 * MIB, 512, false).unwrap();
        assert!(!r.pmbr_updated);
        assert!(r.notes.iter().any(|n| n.contains("hybrid")));
        assert_eq!(&dev.get_ref()[..512], &img[..512]);
        gpt_crate_view(&dev, 512);
    }

    #[test]
    fn no_table_and_bare_fat_are_no_ops() {
        let img = vec![0x11u8; MIB as usize];
        let mut dev = on_device(&img, 2 * MIB);
        let r = after_write(&mut dev, MIB, 2 * MIB, 512, true).unwrap();
        assert_eq!(r.table, TableKind::None);
        assert!(!r.changed());
        assert_eq!(&dev.get_ref()[..MIB as usize], &img[..]);

        // A superfloppy FAT also ends its first sector in 55 AA: not an MBR.
        let mut fat = Cursor::new(vec![0u8; 2 * MIB as usize]);
        fatfs::format_volume(&mut fat, fatfs::FormatVolumeOptions::new()).unwrap();
        let before = fat.get_ref().clone();
        let r = after_write(&mut fat, 2 * MIB, 2 * MIB, 512, true).unwrap();
        assert_eq!(r.table, TableKind::None);
        assert_eq!(fat.get_ref(), &before);
    }

    #[test]
    fn mbr_expand_in_memory_and_extended_refused() {
        let mut img = Cursor::new(vec![0u8; MIB as usize]);
        let part = |sys, bootable, start_lba| mbr::NewPartition {
            sys,
            bootable,
            start_lba,
            sectors: 0x800,
        };
        let parts = [part(0x0C, true, 0x800), part(0x83, false, 0x1000)];
        mbr::write_new(&mut img, 512, [0; 4], &parts).unwrap();
        let mut img = img.into_inner();
        img[0..4].copy_from_slice(&[0xFA, 0x31, 0xC0, 0x8E]); // some boot code
        let (entry1, entry2) = (mbr::ENTRIES_OFFSET, mbr::ENTRIES_OFFSET + 16);
        let mut dev = on_device(&img, 4 * MIB);
        let r = after_write(&mut dev, MIB, 4 * MIB, 512, false).unwrap();
        assert_eq!(r.table, TableKind::Mbr);
        assert!(!r.changed());
        let r = after_write(&mut dev, MIB, 4 * MIB, 512, true).unwrap();
        let total = 4 * MIB / 512;
        assert_eq!(
            r.grown,
            Some(Grown {
                number: 2,
                start_lba: 0x1000,
                old_end_lba: 0x17FF,
                new_end_lba: total - 1
            })
        );
        let d = dev.get_ref();
        assert_eq!(mbr::entries(d).unwrap()[1].sectors as u64, total - 0x1000);
        assert_eq!(&d[..entry1], &img[..entry1], "boot code kept");
        assert_eq!(
            &d[entry1..entry2],
            &img[entry1..entry2],
            "other entries kept"
        );

        img[entry2 + 4] = 0x05; // make the last one extended (type byte)
        let mut dev = on_device(&img, 4 * MIB);
        let e = after_write(&mut dev, MIB, 4 * MIB, 512, true).unwrap_err();
        assert!(matches!(e, Error::ExpandUnsupported { number: 2, .. }));
    }

    // ---- against the real sfdisk ----

    fn need(tool: &str) {
        let ok = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            ok,
            "{tool} not found: run scripts/setup-host (apt-get install -y fdisk)"
        );
    }

    fn sfdisk_make(path: &Path, size: u64, script: &str) {
        need("sfdisk");
        File::create(path).unwrap().set_len(size).unwrap();
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "sfdisk: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Lines of `sfdisk --verify` that complain. sfdisk exits 0 even when it reports
    /// "1 error detected", so the text is what counts.
    fn sfdisk_complaints(path: &Path) -> Vec<String> {
        let out = Command::new("sfdisk")
            .arg("--verify")
            .arg(path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sfdisk --verify exit {:?}",
            out.status
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .filter(|l| {
                let l = l.to_lowercase();
                (l.contains("error") && !l.contains("no errors detected"))
                    || l.contains("differ")
                    || l.contains("mismatch")
                    || l.contains("not on the end")
                    || l.contains("corrupt")
                    || l.contains("invalid")
            })
            .map(String::from)
            .collect()
    }

    fn sfdisk_json(path: &Path) -> serde_json::Value {
        let out = Command::new("sfdisk").arg("-J").arg(path).output().unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["partitiontable"].clone()
    }

    /// Copy `image` into a new file of `size` bytes whose tail is garbage-free but
    /// sparse, as a freshly flashed larger target.
    fn flash_copy(image: &Path, target: &Path, size: u64) {
        std::fs::copy(image, target).unwrap();
        OpenOptions::new()
            .write(true)
            .open(target)
            .unwrap()
            .set_len(size)
            .unwrap();
    }

    fn run_fixup(target: &Path, image_size: u64, expand: bool) -> FixupReport {
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(target)
            .unwrap();
        let size = f.metadata().unwrap().len();
        after_write(&mut f, image_size, size, 512, expand).unwrap()
    }

    const GPT_SCRIPT: &str = "label: gpt\n\
        size=4MiB, type=uefi, name=boot\n\
        size=8MiB, type=linux, name=rootfs\n\
        type=linux, name=data\n";

    #[test]
    fn sfdisk_gpt_on_larger_target_verifies_clean() {
        let dir = tempfile::tempdir().unwrap();
        let (img, tgt) = (dir.path().join("img"), dir.path().join("tgt"));
        sfdisk_make(&img, 32 * MIB, GPT_SCRIPT);
        assert!(sfdisk_complaints(&img).is_empty(), "image itself is clean");
        flash_copy(&img, &tgt, 100 * MIB);
        // Negative control: the unfixed copy is flagged, so the check can fail.
        assert!(!sfdisk_complaints(&tgt).is_empty());
        let before = sfdisk_json(&img);

        let r = run_fixup(&tgt, 32 * MIB, false);
        assert!(r.pmbr_updated && r.grown.is_none());
        let complaints = sfdisk_complaints(&tgt);
        assert!(complaints.is_empty(), "{complaints:?}");
        let after = sfdisk_json(&tgt);
        assert_eq!(after["partitions"].as_array().unwrap().len(), 3);
        for (a, b) in before["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .zip(after["partitions"].as_array().unwrap())
        {
            assert_eq!(
                (&a["start"], &a["size"], &a["uuid"]),
                (&b["start"], &b["size"], &b["uuid"])
            );
        }
        assert_eq!(after["lastlba"], 100 * MIB / 512 - 34);
        assert_eq!(after["id"], before["id"]);
    }

    #[test]
    fn sfdisk_gpt_expand_data_fills_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (img, tgt) = (dir.path().join("img"), dir.path().join("tgt"));
        sfdisk_make(&img, 32 * MIB, GPT_SCRIPT);
        flash_copy(&img, &tgt, 100 * MIB);
        let r = run_fixup(&tgt, 32 * MIB, true);
        assert_eq!(r.grown.as_ref().map(|g| g.number), Some(3));
        let complaints = sfdisk_complaints(&tgt);
        assert!(complaints.is_empty(), "{complaints:?}");
        let j = sfdisk_json(&tgt);
        let last = j["partitions"].as_array().unwrap().last().unwrap().clone();
        let end = last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap() - 1;
        assert_eq!(end, j["lastlba"].as_u64().unwrap());
        assert_eq!(end, 100 * MIB / 512 - 34);
        assert_eq!(last["name"], "data");
    }

    #[test]
    fn sfdisk_gpt_beyond_2tib_caps_protective_mbr() {
        let dir = tempfile::tempdir().unwrap();
        let (img, tgt) = (dir.path().join("img"), dir.path().join("tgt"));
        sfdisk_make(&img, 32 * MIB, GPT_SCRIPT);
        // Sparse: only the tables are ever written.
        flash_copy(&img, &tgt, 3 << 40);
        let r = run_fixup(&tgt, 32 * MIB, true);
        assert!(r.pmbr_updated);
        let complaints = sfdisk_complaints(&tgt);
        assert!(complaints.is_empty(), "{complaints:?}");
        let mut sector0 = [0u8; 512];
        File::open(&tgt).unwrap().read_exact(&mut sector0).unwrap();
        assert_eq!(pmbr_size(&sector0), u32::MAX);
        let j = sfdisk_json(&tgt);
        assert_eq!(j["lastlba"].as_u64().unwrap(), (3u64 << 40) / 512 - 34);
    }

    #[test]
    fn sfdisk_mbr_expand_grows_last_primary() {
        let dir = tempfile::tempdir().unwrap();
        let (img, tgt) = (dir.path().join("img"), dir.path().join("tgt"));
        sfdisk_make(
            &img,
            24 * MIB,
            "label: dos\nsize=4MiB, type=c, bootable\nsize=8MiB, type=83\ntype=83\n",
        );
        flash_copy(&img, &tgt, 64 * MIB);
        let before = sfdisk_json(&tgt);
        // Without expand_data an MBR is left byte-for-byte alone.
        let r = run_fixup(&tgt, 24 * MIB, false);
        assert!(!r.changed());
        assert_eq!(
            std::fs::read(&tgt).unwrap()[..512],
            std::fs::read(&img).unwrap()[..512]
        );

        let r = run_fixup(&tgt, 24 * MIB, true);
        assert_eq!(r.grown.as_ref().map(|g| g.number), Some(3));
        let complaints = sfdisk_complaints(&tgt);
        assert!(complaints.is_empty(), "{complaints:?}");
        let j = sfdisk_json(&tgt);
        let parts = j["partitions"].as_array().unwrap();
        let last = &parts[2];
        let end = last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap() - 1;
        assert_eq!(end, 64 * MIB / 512 - 1);
        assert_eq!(j["id"], before["id"], "disk signature kept");
        assert_eq!(parts[0]["bootable"], true);
        assert_eq!(parts[..2], before["partitions"].as_array().unwrap()[..2]);
    }

    #[test]
    fn sfdisk_gpt_short_entry_table_expands_and_verifies() {
        // 8 entries: a 1 KiB array (2 sectors) instead of the usual 16 KiB.
        let dir = tempfile::tempdir().unwrap();
        let (img, tgt) = (dir.path().join("img"), dir.path().join("tgt"));
        sfdisk_make(
            &img,
            8 * MIB,
            "label: gpt\ntable-length: 8\nsize=2MiB, type=uefi\ntype=linux\n",
        );
        flash_copy(&img, &tgt, 20 * MIB + 512 * 3);
        let r = run_fixup(&tgt, 8 * MIB, true);
        assert_eq!(r.grown.as_ref().map(|g| g.number), Some(2));
        let complaints = sfdisk_complaints(&tgt);
        assert!(complaints.is_empty(), "{complaints:?}");
        let j = sfdisk_json(&tgt);
        let total = (20 * MIB + 512 * 3) / 512;
        assert_eq!(j["lastlba"].as_u64().unwrap(), total - 1 - 2 - 1);
        let last = &j["partitions"][1];
        assert_eq!(
            last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap() - 1,
            total - 4
        );
    }
}
