//! Table round trips, corruption and hostile-header checks, cross-checked against
//! `sfdisk` and the `gpt` crate.

use std::io::Cursor;
use std::path::Path;
use std::process::{Command, Stdio};

use proptest::prelude::*;

use crate::*;

const MIB: u64 = 1 << 20;

fn part(number: u32, name: &str, first: u64, last: u64, ty: [u8; 16], ss: u64) -> Partition {
    Partition {
        number,
        name: name.into(),
        part_type: PartType::Gpt(ty),
        guid: Some([number as u8; 16]),
        first_lba: first,
        last_lba: last,
        bootable: false,
        attributes: 0,
        offset: first * ss,
        size: (last - first + 1) * ss,
    }
}

fn gpt_table(ss: u64) -> Table {
    // 128 entries of 128 bytes: 32 sectors at 512, 4 at 4096.
    let first = if ss == 512 { 2048 } else { 256 };
    let mib = MIB / ss;
    Table {
        kind: Kind::Gpt {
            disk_guid: [0x5A; 16],
        },
        sector_size: ss,
        partitions: vec![
            part(
                1,
                "flash-boot",
                first,
                first + 4 * mib - 1,
                gpt::ESP_TYPE,
                ss,
            ),
            part(
                2,
                "rootfs",
                first + 4 * mib,
                first + 8 * mib - 1,
                table::LINUX_FS,
                ss,
            ),
        ],
    }
}

fn written(t: &Table, size: u64) -> Cursor<Vec<u8>> {
    let mut dev = Cursor::new(vec![0u8; size as usize]);
    t.write_new(&mut dev, size).unwrap();
    dev
}

fn sfdisk(args: &[&str], path: &Path) -> String {
    let out = Command::new("sfdisk")
        .args(args)
        .arg(path)
        .stderr(Stdio::piped())
        .output()
        .expect("sfdisk not found: run scripts/setup-host (apt-get install -y fdisk)");
    assert!(
        out.status.success(),
        "sfdisk {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn gpt_round_trip_512_matches_sfdisk() {
    let t = gpt_table(512);
    let dev = written(&t, 16 * MIB);
    let back = Table::read(&mut dev.clone()).unwrap();
    assert_eq!(back, t);
    assert!(mbr::is_protective(&dev.get_ref()[..512]));

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("gpt.img");
    std::fs::write(&p, dev.get_ref()).unwrap();
    let verify = sfdisk(&["--verify"], &p);
    assert!(verify.contains("No errors detected"), "{verify}");
    let dump = sfdisk(&["--dump"], &p);
    assert!(dump.contains("label: gpt"), "{dump}");
    assert!(
        dump.contains(
            "start=        2048, size=        8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        ) && dump.contains("name=\"flash-boot\""),
        "{dump}"
    );
    assert!(
        dump.contains("start=       10240, size=        8192"),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("label-id: {}", gpt::guid_string(&[0x5A; 16]))),
        "{dump}"
    );
}

#[test]
fn gpt_round_trip_4096_matches_the_gpt_crate() {
    let t = gpt_table(4096);
    let dev = written(&t, 16 * MIB);
    let back = Table::read(&mut dev.clone()).unwrap();
    assert_eq!(back.sector_size, 4096);
    assert_eq!(back, t);
    // No 512-byte GPT hides behind it.
    assert_ne!(&dev.get_ref()[512..520], gpt::SIGNATURE);
    let disk = ::gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(true)
        .logical_block_size(::gpt::disk::LogicalBlockSize::Lb4096)
        .open_from_device(Cursor::new(dev.get_ref().clone()))
        .unwrap();
    let parts: Vec<_> = disk
        .partitions()
        .values()
        .map(|p| (p.first_lba, p.last_lba, p.name.clone()))
        .collect();
    assert_eq!(
        parts,
        [
            (256, 256 + 1023, "flash-boot".to_string()),
            (1280, 1280 + 1023, "rootfs".to_string())
        ]
    );
    // The engine's head probe agrees on where the primary entries end.
    assert_eq!(
        gpt::primary_extent(dev.get_ref(), 4096),
        Some(2 * 4096 + 128 * 128)
    );
}

#[test]
fn corrupt_header_crc_is_detected_and_backup_used() {
    let mut dev = written(&gpt_table(512), 16 * MIB);
    dev.get_mut()[512 + 56] ^= 0xFF; // disk GUID, covered by the header CRC
    let e = gpt::read_primary(&mut dev, 512).unwrap_err();
    assert!(matches!(e, Error::HeaderCrc { offset: 512, .. }), "{e}");
    assert!(e.to_string().contains("rebuild the image"), "{e}");
    // Like the kernel, Table::read recovers from the intact backup.
    assert_eq!(Table::read(&mut dev).unwrap(), gpt_table(512));
    // With the backup damaged too, the primary's error is reported.
    let last = dev.get_ref().len() - 512;
    dev.get_mut()[last + 56] ^= 0xFF;
    assert!(matches!(
        Table::read(&mut dev).unwrap_err(),
        Error::HeaderCrc { offset: 512, .. }
    ));
}

#[test]
fn corrupt_entries_crc_is_detected() {
    let mut dev = written(&gpt_table(512), 16 * MIB);
    dev.get_mut()[2 * 512 + 40] ^= 1; // last LBA of partition 1
    let e = gpt::read_primary(&mut dev, 512).unwrap_err();
    assert!(
        matches!(
            e,
            Error::EntriesCrc {
                offset: 1024,
                len: 16384,
                ..
            }
        ),
        "{e}"
    );
}

/// A valid-CRC header with the given entry geometry.
fn header_with(count: u32, size: u32) -> Vec<u8> {
    let dev = written(&gpt_table(512), 16 * MIB);
    let mut h = dev.get_ref()[512..1024].to_vec();
    h[80..84].copy_from_slice(&count.to_le_bytes());
    h[84..88].copy_from_slice(&size.to_le_bytes());
    // The usable LBAs start after the (possibly larger) entry array, as the
    // header's layout check requires.
    let entries_end = 2 + (u64::from(count) * u64::from(size)).div_ceil(512);
    let first_usable = u64::from_le_bytes(h[40..48].try_into().unwrap()).max(entries_end);
    h[40..48].copy_from_slice(&first_usable.to_le_bytes());
    let crc = gpt::header_crc(&h, 92);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn absurd_entry_geometry_is_refused_without_allocating() {
    for (count, size, what) in [
        (u32::MAX, 0xFFFF_FF80, "exceed"),
        (1 << 20, 128, "exceed"),
        (128, 0, "multiple of 128"),
        (128, 64, "multiple of 128"),
        (128, 200, "multiple of 128"),
    ] {
        let h = header_with(count, size);
        let e = gpt::Header::parse(&h, 1, 512).unwrap_err();
        assert!(
            matches!(&e, Error::BadHeader { offset: 512, reason } if reason.contains(what)),
            "{count} x {size}: {e}"
        );
    }
    // The largest accepted array is 1 MiB.
    assert!(gpt::Header::parse(&header_with(8192, 128), 1, 512).is_ok());
    assert!(gpt::Header::parse(&header_with(8193, 128), 1, 512).is_err());
}

/// Set partition 1's LBAs in the GPT whose header sits at byte `at`, with
/// both CRCs recomputed (a hostile table, not a damaged one).
fn set_first_entry(dev: &mut [u8], at: usize, first: u64, last: u64) {
    let le64 = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let e = le64(dev, at + 72) as usize * 512;
    dev[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
    dev[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
    let crc = gpt::entries_crc(&dev[e..e + 128 * 128]);
    dev[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    let crc = gpt::header_crc(&dev[at..at + 512], 92);
    dev[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Found by fuzzing (fuzz/regressions/disk): an entry spanning LBA
/// 0..=u64::MAX overflowed the size computation. Entries outside the usable
/// LBAs are refused with their numbers.
#[test]
fn partition_outside_the_usable_lbas_is_refused() {
    for (first, last) in [(0, u64::MAX), (1, 4000), (2048, 40_000)] {
        let mut dev = written(&gpt_table(512), 16 * MIB);
        let backup = dev.get_ref().len() - 512;
        set_first_entry(dev.get_mut(), 512, first, last);
        set_first_entry(dev.get_mut(), backup, first, last);
        let e = Table::read(&mut dev).unwrap_err();
        assert!(
            matches!(
                e,
                Error::PartitionOutOfRange { number: 1, first_lba, last_lba, first_usable: 34, last_usable, .. }
                    if (first_lba, last_lba) == (first, last) && last_usable == 16 * MIB / 512 - 34
            ),
            "{first}..={last}: {e}"
        );
    }
    // A header whose usable LBAs start at the MBR or the header is refused.
    let mut h = header_with(128, 128);
    h[40..48].copy_from_slice(&1u64.to_le_bytes());
    let crc = gpt::header_crc(&h, 92);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    assert!(matches!(
        gpt::Header::parse(&h, 1, 512).unwrap_err(),
        Error::BadHeader { offset: 512, .. }
    ));
}

#[test]
fn header_fields_are_checked() {
    let good = header_with(128, 128);
    assert!(gpt::Header::parse(&good, 2, 512).is_err(), "wrong own LBA");
    assert!(matches!(
        gpt::Header::parse(&good, 1, 4096).unwrap_err(),
        Error::BadHeader { .. }
    ));
    let mut big = good.clone();
    big[12..16].copy_from_slice(&600u32.to_le_bytes());
    assert!(gpt::Header::parse(&big, 1, 512).is_err());
    assert!(matches!(
        gpt::check_sector_size(1024),
        Err(Error::BadSectorSize { sector_size: 1024 })
    ));
}

#[test]
fn backup_relocation_verifies_with_sfdisk() {
    let t = gpt_table(512);
    let img = written(&t, 16 * MIB);
    let mut dev = Cursor::new(img.into_inner());
    dev.get_mut().resize((40 * MIB) as usize, 0);
    let (h, entries) = gpt::read_primary(&mut dev, 512).unwrap();
    let place = gpt::backup_place(&h, 40 * MIB / 512, 512).unwrap();
    assert_eq!(place.header_lba, 40 * MIB / 512 - 1);
    assert_eq!(place.last_usable, 40 * MIB / 512 - 34);
    gpt::write_relocated(&mut dev, &h, &entries, false, place, 512).unwrap();
    let mut s0 = dev.get_ref()[..512].to_vec();
    assert!(mbr::fit_protective(&mut s0, 1, 40 * MIB / 512));
    assert!(!mbr::fit_protective(&mut s0, 1, 40 * MIB / 512));
    dev.get_mut()[..512].copy_from_slice(&s0);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("moved.img");
    std::fs::write(&p, dev.get_ref()).unwrap();
    let verify = sfdisk(&["--verify"], &p);
    assert!(verify.contains("No errors detected"), "{verify}");
    let (b, _) = gpt::read_backup(&mut dev, place.header_lba, 512).unwrap();
    assert_eq!(b.alternate_lba, 1);
    assert_eq!(Table::read(&mut dev).unwrap().partitions, t.partitions);
    // Too small for the primary and a backup apart: refused.
    assert_eq!(gpt::backup_place(&h, 40, 512), None);
}

#[test]
fn mbr_round_trip_matches_sfdisk() {
    let t = Table {
        kind: Kind::Mbr {
            signature: [0xDE, 0xAD, 0xBE, 0xEF],
        },
        sector_size: 512,
        partitions: vec![
            Partition {
                number: 1,
                name: String::new(),
                part_type: PartType::Mbr(0x0c),
                guid: None,
                first_lba: 2048,
                last_lba: 2048 + 8191,
                bootable: true,
                attributes: 0,
                offset: MIB,
                size: 4 * MIB,
            },
            Partition {
                number: 2,
                name: String::new(),
                part_type: PartType::Mbr(0xda),
                guid: None,
                first_lba: 10240,
                last_lba: 10240 + 2047,
                bootable: false,
                attributes: 0,
                offset: 5 * MIB,
                size: MIB,
            },
        ],
    };
    let mut dev = Cursor::new(vec![0u8; (8 * MIB) as usize]);
    t.write_new(&mut dev, 8 * MIB).unwrap();
    assert_eq!(Table::read(&mut dev).unwrap(), t);
    let s0 = &dev.get_ref()[..512];
    assert!(mbr::looks_like_mbr(s0));
    assert!(!mbr::has_protective_entry(s0));
    assert!(t.partitions[0].part_type.is_fat() && !t.partitions[1].part_type.is_fat());

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mbr.img");
    std::fs::write(&p, dev.get_ref()).unwrap();
    let dump = sfdisk(&["--dump"], &p);
    assert!(
        dump.contains("label: dos") && dump.contains("label-id: 0xefbeadde"),
        "{dump}"
    );
    assert!(
        dump.contains("start=        2048, size=        8192, type=c, bootable"),
        "{dump}"
    );
    assert!(
        dump.contains("start=       10240, size=        2048, type=da"),
        "{dump}"
    );

    // Grow the last one to the end of the disk; boot code and entry 1 stay.
    dev.get_mut()[..4].copy_from_slice(&[0xFA, 0x31, 0xC0, 0x8E]);
    let before = dev.get_ref()[..462].to_vec();
    mbr::set_sectors(&mut dev, 2, 16 * 1024 - 10240).unwrap();
    assert_eq!(&dev.get_ref()[..462], &before[..]);
    let e = mbr::entries(&dev.get_ref()[..512]).unwrap();
    assert_eq!(e[1].sectors, 16 * 1024 - 10240);
    std::fs::write(&p, dev.get_ref()).unwrap();
    let verify = sfdisk(&["--verify"], &p);
    assert!(verify.contains("No errors detected"), "{verify}");
}

#[test]
fn mbr_limits() {
    let mut dev = Cursor::new(vec![0u8; MIB as usize]);
    let p = mbr::NewPartition {
        sys: 0x83,
        bootable: false,
        start_lba: 1 << 32,
        sectors: 1,
    };
    assert!(matches!(
        mbr::write_new(&mut dev, 512, [0; 4], &[p]),
        Err(Error::MbrOverflow { number: 1, .. })
    ));
    assert!(matches!(
        mbr::write_new(&mut dev, 512, [0; 4], &[p; 5]),
        Err(Error::TooManyPartitions { count: 5 })
    ));
}

#[test]
fn protective_mbr_detection() {
    let dev = written(&gpt_table(512), 16 * MIB);
    let s0 = &dev.get_ref()[..512];
    assert!(mbr::is_protective(s0) && mbr::has_protective_entry(s0));
    // A hybrid MBR has the 0xEE entry but is not purely protective.
    let mut hybrid = s0.to_vec();
    hybrid[462..478].copy_from_slice(&[0, 0, 0, 0, 0x0C, 0, 0, 0, 0, 8, 0, 0, 0, 0x20, 0, 0]);
    assert!(!mbr::is_protective(&hybrid) && mbr::has_protective_entry(&hybrid));
    // Protective MBR without a GPT behind it: an error naming LBA 1, not "no table".
    let mut dev = dev.clone();
    dev.get_mut()[512..520].fill(0);
    let e = Table::read(&mut dev).unwrap_err();
    assert!(matches!(e, Error::BadHeader { offset: 512, .. }), "{e}");
    // Blank and filesystem-only disks have no table.
    assert!(matches!(
        Table::read(&mut Cursor::new(vec![0u8; 4096])),
        Err(Error::NoTable)
    ));
    let mut fat = Cursor::new(vec![0u8; 2 * MIB as usize]);
    fatfs::format_volume(&mut fat, fatfs::FormatVolumeOptions::new()).unwrap();
    assert!(mbr::has_signature(&fat.get_ref()[..512]));
    assert!(!mbr::looks_like_mbr(&fat.get_ref()[..512]));
    assert!(matches!(Table::read(&mut fat), Err(Error::NoTable)));
}

#[test]
fn errors_convert_to_io() {
    let e = Error::NoTable;
    let io_e: std::io::Error = e.into();
    assert_eq!(io_e.kind(), std::io::ErrorKind::InvalidData);
    assert!(io_e.to_string().contains("no partition table"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never panic the readers, also with a GPT signature planted.
    #[test]
    fn parsing_random_bytes_never_panics(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
        plant in any::<bool>(),
        ss in prop_oneof![Just(512u64), Just(4096u64)],
    ) {
        if plant && bytes.len() >= ss as usize + 8 {
            let at = ss as usize;
            bytes[at..at + 8].copy_from_slice(gpt::SIGNATURE);
        }
        let _ = Table::from_bytes(&bytes);
        let _ = Table::read_mbr(&mut Cursor::new(&bytes), ss);
        let _ = gpt::primary_extent(&bytes, ss);
        if bytes.len() >= ss as usize {
            let _ = gpt::Header::parse(&bytes[..ss as usize], 1, ss);
        }
        let _ = mbr::entries(&bytes);
        let _ = mbr::looks_like_mbr(&bytes);
        let _ = fat::looks_like_fat(&bytes);
        if bytes.len() >= 512 {
            let mut b = [0u8; 512];
            b.copy_from_slice(&bytes[..512]);
            let _ = fat::Geometry::parse(&b);
        }
    }

    /// A valid header whose entry fields are random: parse either refuses it or
    /// accepts one whose array is within the bound.
    #[test]
    fn random_entry_geometry_is_bounded(count in any::<u32>(), size in any::<u32>()) {
        let h = header_with(count, size);
        if let Ok(p) = gpt::Header::parse(&h, 1, 512) {
            prop_assert!(p.entry_bytes() <= gpt::MAX_ENTRY_BYTES);
            prop_assert!(p.entry_size >= 128 && p.entry_size % 128 == 0);
        }
    }
}

#[test]
fn set_sectors_writes_what_mbrman_reads_and_refuses_what_it_refuses() {
    let mut dev = Cursor::new(vec![0u8; MIB as usize]);
    let part = |start_lba, sectors| mbr::NewPartition {
        sys: 0x83,
        bootable: false,
        start_lba,
        sectors,
    };
    mbr::write_new(
        &mut dev,
        512,
        [1, 2, 3, 4],
        &[part(63, 1000), part(2048, 8)],
    )
    .unwrap();
    // Sizes whose last sector has every CHS field (and the cylinder's high bits) in play.
    for sectors in [1u32, 16_065 * 300, 16_065 * 1023, u32::MAX - 2048] {
        mbr::set_sectors(&mut dev, 2, sectors).unwrap();
        let h = mbrman::MBRHeader::read_from(&mut dev).unwrap();
        let last = 2048 + u64::from(sectors) - 1;
        assert_eq!(h.partition_2.sectors, sectors);
        assert_eq!(h.partition_2.last_chs, mbr::chs(last), "{sectors}");
        assert_eq!(h.partition_1.sectors, 1000);
    }
    for n in [0, 5] {
        assert!(matches!(
            mbr::set_sectors(&mut dev, n, 1),
            Err(Error::MbrCrate(_))
        ));
    }
    dev.get_mut()[446] = 0x01; // entry 1's boot flag
    assert!(matches!(
        mbr::set_sectors(&mut dev, 2, 1),
        Err(Error::MbrCrate(_))
    ));
    dev.get_mut()[446] = 0x80;
    dev.get_mut()[511] = 0;
    assert!(matches!(
        mbr::set_sectors(&mut dev, 2, 1),
        Err(Error::MbrCrate(_))
    ));
}

#[test]
fn chs_saturates_like_fdisk() {
    let c = mbr::chs(1 << 30);
    assert_eq!((c.cylinder, c.head, c.sector), (1023, 254, 63));
    let c = mbr::chs(0);
    assert_eq!((c.cylinder, c.head, c.sector), (0, 0, 1));
    let c = mbr::chs(255 * 63 + 64);
    assert_eq!((c.cylinder, c.head, c.sector), (1, 1, 2));
}

#[test]
fn guid_text_is_mixed_endian_and_round_trips() {
    let esp = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
    let bytes = gpt::guid_bytes(esp).unwrap();
    // On disk the first field is little-endian.
    assert_eq!(&bytes[..4], &[0x28, 0x73, 0x2A, 0xC1]);
    assert_eq!(gpt::guid_string(&bytes), esp);
    let any: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
    assert_eq!(
        gpt::guid_bytes(&gpt::guid_string(&any)).unwrap(),
        any,
        "text of arbitrary bytes parses back"
    );
}

/// A boot sector claiming a FAT larger than [`fat::MAX_FAT_BYTES`] is refused
/// before anything is allocated (a hostile image on a 512 MB board).
#[test]
fn oversized_fat_is_refused_without_allocating_it() {
    let geo = fat::Geometry {
        bytes_per_sector: 512,
        cluster_bytes: 4096,
        fat_offset: 16384,
        fat_bytes: fat::MAX_FAT_BYTES + 512,
        root_offset: 0,
        root_bytes: 0,
        data_offset: 1 << 30,
        clusters: 0x0FFF_FFF0,
        fat_bits: 32,
        root_cluster: 2,
        fsinfo_offset: 0,
    };
    let e = geo
        .read_fat(&mut std::io::Cursor::new(vec![0u8; 1 << 20]))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().contains(&fat::MAX_FAT_BYTES.to_string()),
        "{e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The promise of `set_sectors` (it replaced an mbrman header round trip to
    /// keep `/init` small): growing one entry leaves sector 0 exactly as that
    /// round trip did, whatever the boot code, the disk signature, the other
    /// entries and the new size are.
    #[test]
    fn set_sectors_matches_the_mbrman_round_trip(
        boot_code in proptest::collection::vec(any::<u8>(), 440),
        signature in any::<[u8; 4]>(),
        sizes in proptest::collection::vec(1u64..100_000, 1..=4),
        pick in 0usize..4,
        sectors in any::<u32>(),
        bootable in any::<bool>(),
    ) {
        let mut start = 2048u64;
        let parts: Vec<_> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = mbr::NewPartition {
                    sys: 0x83,
                    bootable: bootable && i == 0,
                    start_lba: start,
                    sectors: n,
                };
                start += n;
                p
            })
            .collect();
        let mut dev = Cursor::new(vec![0u8; 4096]);
        mbr::write_new(&mut dev, 512, signature, &parts).unwrap();
        dev.get_mut()[..440].copy_from_slice(&boot_code);
        let number = (pick % parts.len()) as u32 + 1;

        let mut expected = dev.clone();
        let mut h = mbrman::MBRHeader::read_from(&mut expected).unwrap();
        let e = &mut h[number as usize];
        e.sectors = sectors;
        e.last_chs = mbr::chs((u64::from(e.starting_lba) + u64::from(sectors)).saturating_sub(1));
        h.write_into(&mut expected).unwrap();

        mbr::set_sectors(&mut dev, number, sectors).unwrap();
        prop_assert_eq!(&dev.get_ref()[..512], &expected.get_ref()[..512]);
    }
}
