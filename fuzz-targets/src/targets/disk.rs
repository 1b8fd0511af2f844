//! The partition-table readers of `flasher-disk` on a disk image held in
//! memory: `Table::read` (GPT with backup recovery, else MBR) as the board runs
//! it on the card and on the image's head, the GPT header parse/render and the
//! backup placement the fix-up uses, the MBR sector-0 helpers, and the FAT
//! boot-sector geometry.

use flasher_disk::{fat, gpt, mbr, Kind, Table};

/// Largest image rendered again for the write → read round trip.
const ROUND_TRIP_MAX: u64 = 2 << 20;

pub fn disk(data: &[u8]) {
    sector0(data);
    for ss in [512u64, 4096] {
        let _ = gpt::primary_extent(data, ss);
    }
    read(data);
    let fixed = with_gpt_crcs(data);
    if fixed != data {
        read(&fixed);
    }
    fat_geometry(data);
}

fn sector0(data: &[u8]) {
    let Some(s0) = data.get(..512) else { return };
    let _ = mbr::has_signature(s0);
    let _ = mbr::is_protective(s0);
    let _ = mbr::is_filesystem_boot_sector(s0);
    if mbr::looks_like_mbr(s0) {
        let es = mbr::entries(s0).expect("an MBR has entries");
        assert!(es.iter().any(|e| e.is_used()));
    }
}

fn read(data: &[u8]) {
    for ss in [512u64, 4096] {
        header(data, ss);
    }
    let Ok(t) = Table::read(&mut super::super::cursor(data)) else {
        return;
    };
    check_table(&t);
    round_trip(&t);
}

/// A GPT header that parses renders back to its own bytes, and a backup place
/// (when there is one) lies after the primary and inside the disk.
fn header(data: &[u8], ss: u64) {
    let Some(raw) = data.get(ss as usize..2 * ss as usize) else {
        return;
    };
    let Ok(h) = gpt::Header::parse(raw, 1, ss) else {
        return;
    };
    let again = h.render(
        h.my_lba,
        h.alternate_lba,
        h.last_usable,
        h.entries_lba,
        h.entries_crc,
    );
    assert_eq!(again, raw, "GPT header render round trip");
    let total = data.len() as u64 / ss;
    if let Some(p) = gpt::backup_place(&h, total, ss) {
        assert!(p.header_lba < total, "backup header inside the disk");
        assert!(p.entries_lba + h.entry_sectors(ss) <= p.header_lba);
        assert!(p.last_usable < p.entries_lba);
        assert!(h.entries_lba + h.entry_sectors(ss) <= p.entries_lba);
    }
}

/// What every caller of `Table::read` relies on.
fn check_table(t: &Table) {
    let ss = t.sector_size;
    assert!(ss == 512 || ss == 4096);
    let mut numbers = Vec::new();
    for p in &t.partitions {
        assert!(
            p.first_lba <= p.last_lba,
            "partition {} ends before it starts",
            p.number
        );
        let sectors = p.last_lba - p.first_lba + 1;
        if let Some(off) = p.first_lba.checked_mul(ss) {
            assert_eq!(p.offset, off, "partition {} byte offset", p.number);
        }
        if let Some(size) = sectors.checked_mul(ss) {
            assert_eq!(p.size, size, "partition {} byte size", p.number);
        }
        assert!(p.number >= 1);
        if !t.is_gpt() {
            assert!(p.number <= 4 && p.name.is_empty() && p.guid.is_none());
        }
        assert!(!numbers.contains(&p.number), "partition numbers are unique");
        numbers.push(p.number);
    }
}

/// A small table written fresh reads back as the same partitions.
fn round_trip(t: &Table) {
    let ss = t.sector_size;
    let Some(end) = t
        .partitions
        .iter()
        .map(|p| p.last_lba.checked_add(1).and_then(|n| n.checked_mul(ss)))
        .try_fold(0u64, |a, e| e.map(|e| a.max(e)))
    else {
        return;
    };
    // Room for the backup GPT (33 sectors) after the last partition.
    let disk_bytes = end + 64 * ss;
    if disk_bytes > ROUND_TRIP_MAX {
        return;
    }
    let mut dev = std::io::Cursor::new(vec![0u8; disk_bytes as usize]);
    if t.write_new(&mut dev, disk_bytes).is_err() {
        return;
    }
    let back = match t.kind {
        Kind::Gpt { .. } => Table::read_gpt(&mut dev, ss),
        Kind::Mbr { .. } => Table::read_mbr(&mut dev, ss),
    }
    .expect("a table written by write_new reads back");
    assert_eq!(back.kind, t.kind, "table kind and disk identity round trip");
    assert_eq!(back.partitions.len(), t.partitions.len());
    for (a, b) in back.partitions.iter().zip(&t.partitions) {
        assert_eq!(
            (a.first_lba, a.last_lba, &a.part_type, a.bootable),
            (b.first_lba, b.last_lba, &b.part_type, b.bootable),
            "partition round trip"
        );
        if t.is_gpt() {
            assert_eq!((&a.name, a.guid), (&b.name, b.guid), "GPT name and GUID");
        }
    }
}

/// The input with valid CRCs in any GPT header it holds (primary for 512- and
/// 4096-byte sectors, and a backup in its last sector), so that mutated
/// headers and entries get past the CRC checks.
fn with_gpt_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for ss in [512usize, 4096] {
        let last = (out.len() / ss).checked_sub(1).map(|l| l * ss);
        for at in [Some(ss), last].into_iter().flatten() {
            fix_header(&mut out, at, ss);
        }
    }
    out
}

fn fix_header(out: &mut [u8], at: usize, ss: usize) {
    let Some(raw) = out.get(at..at + ss) else {
        return;
    };
    if &raw[..8] != gpt::SIGNATURE {
        return;
    }
    let (Some(entries_lba), Some(n), Some(size)) = (
        super::le64(raw, 72),
        super::le32(raw, 80),
        super::le32(raw, 84),
    ) else {
        return;
    };
    let len = u64::from(n) * u64::from(size);
    let start = entries_lba.checked_mul(ss as u64);
    if let Some(range) = start
        .and_then(|s| Some(usize::try_from(s).ok()?..usize::try_from(s.checked_add(len)?).ok()?))
    {
        if let Some(entries) = out.get(range) {
            let crc = gpt::entries_crc(entries);
            out[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let header_size = super::le32(&out[at..], 12).map_or(0, |s| s as usize);
    if (gpt::HEADER_MIN..=ss).contains(&header_size) {
        let crc = gpt::header_crc(&out[at..at + ss], header_size);
        out[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The FAT boot-sector parser and the walks over what it describes.
fn fat_geometry(data: &[u8]) {
    let Some(b) = data.first_chunk::<512>() else {
        return;
    };
    let Ok(g) = fat::Geometry::parse(b) else {
        return;
    };
    assert!(g.cluster_bytes >= g.bytes_per_sector);
    assert!(g.data_offset >= g.root_offset + g.root_bytes);
    let mut dev = super::super::cursor(data);
    if let Ok(table) = g.read_fat(&mut dev) {
        if let Ok(regions) = g.root_regions(&table) {
            assert!(!regions.is_empty());
            assert!(
                regions.len() <= g.clusters as usize + 1,
                "chains are bounded"
            );
        }
    }
    let _ = fat::repair_dot_entries(&mut std::io::Cursor::new(data.to_vec()));
}
