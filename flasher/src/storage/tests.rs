//! Storage discovery on fake kernel-shaped roots.

use super::testing::{scenarios, FakeRoot};
use super::*;

fn board(name: &str) -> Board {
    boards::find(name).unwrap()
}

fn pick(root: &Path, board_name: &str) -> Result<Choice> {
    let disks = scan(root)?;
    let boot = find_boot_medium(&disks, None)?;
    choose_target(&board(board_name), &disks, boot.as_ref())
}

fn disk<'a>(disks: &'a [Disk], name: &str) -> &'a Disk {
    disks.iter().find(|d| d.name == name).unwrap()
}

#[test]
fn scan_classifies_a_beaglebone() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let disks = scan(t.path()).unwrap();
    // Boot and RPMB partitions are not separate disks.
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["mmcblk0", "mmcblk1"]);
    let sd = disk(&disks, "mmcblk0");
    assert_eq!(sd.transport, Some(Transport::Mmc));
    assert_eq!(sd.mmc_type.as_deref(), Some("SD"));
    assert_eq!(sd.controller.as_deref(), Some("48060000.mmc"));
    assert_eq!(
        sd.dev,
        DevNum {
            major: 179,
            minor: 0
        }
    );
    assert_eq!(sd.size_bytes, scenarios::SD_16G);
    assert!(sd.boot_partitions.is_empty() && !sd.read_only && !sd.removable);
    assert_eq!(sd.model.as_deref(), Some("SD16G"));
    let parts: Vec<(&str, Option<&str>, String)> = sd
        .partitions
        .iter()
        .map(|p| (p.name.as_str(), p.partname.as_deref(), p.dev.to_string()))
        .collect();
    assert_eq!(
        parts,
        [
            ("mmcblk0p1", Some("flash-boot"), "179:1".to_string()),
            ("mmcblk0p2", Some("flasher-payload"), "179:2".to_string()),
            ("mmcblk0p3", Some("flasher-log"), "179:3".to_string()),
        ]
    );
    assert_eq!(sd.partitions[1].dev_path, t.path().join("dev/mmcblk0p2"));
    let emmc = disk(&disks, "mmcblk1");
    assert_eq!(emmc.mmc_type.as_deref(), Some("MMC"));
    assert_eq!(emmc.controller.as_deref(), Some("481d8000.mmc"));
    assert_eq!(emmc.boot_partitions, ["mmcblk1boot0", "mmcblk1boot1"]);
    assert!(emmc.device_path.starts_with("/sys/devices/platform/ocp/"));
    assert!(emmc
        .device_path
        .ends_with("/481d8000.mmc/mmc_host/mmc1/mmc1:0001/block/mmcblk1"));
    assert!(emmc.cid.is_some());

    let boot = find_boot_medium(&disks, None).unwrap().unwrap();
    assert_eq!(boot.disk, "mmcblk0");
    assert_eq!(boot.payload.as_ref().unwrap().name, "mmcblk0p2");
    assert_eq!(
        boot.payload.as_ref().unwrap().dev_path,
        t.path().join("dev/mmcblk0p2")
    );
    assert_eq!(boot.log.as_ref().unwrap().name, "mmcblk0p3");
    assert_eq!(
        sd.summary(Some(&boot)),
        "mmcblk0: SD 15.9 GB on 48060000.mmc (boot medium)"
    );
    assert_eq!(
        emmc.summary(Some(&boot)),
        "mmcblk1: eMMC 3.9 GB on 481d8000.mmc (boot0+boot1)"
    );
}

#[test]
fn beaglebone_emmc_is_mmcblk1() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    for b in [
        "beaglebone-black",
        "beaglebone-green",
        "beaglebone-green-wireless",
    ] {
        let c = pick(t.path(), b).unwrap();
        assert_eq!(c.disk.name, "mmcblk1", "{b}");
    }
    let c = pick(t.path(), "beaglebone-black").unwrap();
    assert!(c
        .rejected
        .iter()
        .any(|r| r.disk == "mmcblk0" && r.why.starts_with("boot medium")));
}

#[test]
fn beaglebone_emmc_is_mmcblk0_when_indices_swap() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(0)).unwrap();
    let disks = scan(t.path()).unwrap();
    assert_eq!(
        disk(&disks, "mmcblk1").controller.as_deref(),
        Some("48060000.mmc")
    );
    assert_eq!(
        pick(t.path(), "beaglebone-black").unwrap().disk.name,
        "mmcblk0"
    );
}

#[test]
fn beaglebone_without_emmc_refuses() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), None).unwrap();
    let err = pick(t.path(), "beaglebone-black").unwrap_err();
    assert!(matches!(err, Error::NoMatch { .. }), "{err:?}");
    assert_eq!(err.class(), flasher_format::ErrorClass::NoStorage);
    // The message says what was seen and what was expected.
    let msg = err.to_string();
    assert!(
        msg.contains("mmcblk0: SD 15.9 GB on 48060000.mmc (boot medium)"),
        "{msg}"
    );
    assert!(msg.contains("481d8000.mmc"), "{msg}");
}

#[test]
fn any_index_assignment_picks_the_emmc() {
    // Selection never depends on kernel numbering.
    for emmc in 0..4u32 {
        for sd in (0..4u32).filter(|s| *s != emmc) {
            let t = tempfile::tempdir().unwrap();
            let mut r = FakeRoot::new(t.path()).unwrap();
            let e = r
                .mmc(
                    "platform/ocp/481d8000.mmc",
                    emmc,
                    emmc,
                    "MMC",
                    4 << 30,
                    true,
                )
                .unwrap();
            scenarios::old_os(&mut r, &e).unwrap();
            let s = r
                .mmc("platform/ocp/48060000.mmc", sd, sd, "SD", 8 << 30, false)
                .unwrap();
            scenarios::flasher_card(&mut r, &s).unwrap();
            let c = pick(t.path(), "beaglebone-black").unwrap();
            assert_eq!(c.disk.name, format!("mmcblk{emmc}"));
        }
    }
}

#[test]
fn sd_card_on_the_emmc_controller_is_not_the_target() {
    // A card of the wrong type on the eMMC controller (a board variant with an
    // SD socket there) must not be chosen: the card-type rule excludes it.
    let t = tempfile::tempdir().unwrap();
    let mut r = scenarios::beaglebone(t.path(), None).unwrap();
    r.mmc("platform/ocp/481d8000.mmc", 2, 2, "SD", 4 << 30, false)
        .unwrap();
    let err = pick(t.path(), "beaglebone-black").unwrap_err();
    assert!(matches!(err, Error::NoMatch { .. }), "{err:?}");
    assert!(err.to_string().contains("mmcblk2: SD"));
}

#[test]
fn beaglebone_mounted_or_read_only_emmc_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut r = scenarios::beaglebone(t.path(), Some(1)).unwrap();
    // Mount a partition of the eMMC, found by scanning rather than by guessing minors.
    let disks = scan(t.path()).unwrap();
    let p2 = disk(&disks, "mmcblk1").partitions[1].dev;
    r.mount(p2.major, p2.minor, "/mnt/old").unwrap();
    match pick(t.path(), "beaglebone-black").unwrap_err() {
        Error::Mounted { disk, uses, .. } => {
            assert_eq!(disk, "mmcblk1");
            assert_eq!(uses, ["mmcblk1p2 mounted on /mnt/old"]);
        }
        e => panic!("{e:?}"),
    }

    let t = tempfile::tempdir().unwrap();
    let r = scenarios::beaglebone(t.path(), Some(1)).unwrap();
    std::fs::write(
        r.root().join("proc/swaps"),
        "Filename Type Size Used Priority\n/dev/mmcblk1p1 partition 1 0 -2\n",
    )
    .unwrap();
    assert!(matches!(
        pick(t.path(), "beaglebone-black"),
        Err(Error::Mounted { .. })
    ));

    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let holder = t.path().join("sys/block/mmcblk1/mmcblk1p2/holders/dm-0");
    std::fs::create_dir_all(holder).unwrap();
    assert!(matches!(
        pick(t.path(), "beaglebone-black"),
        Err(Error::Mounted { .. })
    ));

    let t = tempfile::tempdir().unwrap();
    let mut r = scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let emmc = super::testing::FakeDisk {
        name: "mmcblk1".into(),
        major: 179,
        minor: 0,
        dir: std::fs::canonicalize(t.path().join("sys/block/mmcblk1")).unwrap(),
    };
    r.set_ro(&emmc, true).unwrap();
    let err = pick(t.path(), "beaglebone-black").unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err:?}");
    assert_eq!(err.class(), flasher_format::ErrorClass::TargetRefused);
}

#[test]
fn booting_from_the_emmc_itself_is_refused() {
    // Payload on the eMMC (someone dd'ed the flasher image onto it).
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    let e = r
        .mmc("platform/ocp/481d8000.mmc", 1, 1, "MMC", 4 << 30, true)
        .unwrap();
    scenarios::flasher_card(&mut r, &e).unwrap();
    let err = pick(t.path(), "beaglebone-black").unwrap_err();
    assert!(matches!(err, Error::OnlyBootMedium { .. }), "{err:?}");
    // Same when the boot disk is named explicitly and has no payload.
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    r.mmc("platform/ocp/481d8000.mmc", 1, 1, "MMC", 4 << 30, true)
        .unwrap();
    let disks = scan(t.path()).unwrap();
    let boot = find_boot_medium(&disks, Some("/dev/mmcblk1")).unwrap();
    assert!(boot.as_ref().unwrap().payload.is_none());
    assert!(matches!(
        choose_target(&board("beaglebone-black"), &disks, boot.as_ref()),
        Err(Error::OnlyBootMedium { .. })
    ));
    assert!(matches!(
        find_boot_medium(&disks, Some("sdz")),
        Err(Error::BootDiskNotFound { .. })
    ));
}

#[test]
fn two_flasher_cards_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let mut r = scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let stick = r
        .usb_stick("platform/ocp/47400000.usb", 1, 0, "sda", 8 << 30)
        .unwrap();
    scenarios::flasher_card(&mut r, &stick).unwrap();
    let disks = scan(t.path()).unwrap();
    assert!(matches!(
        find_boot_medium(&disks, None),
        Err(Error::MultiplePayloads { .. })
    ));
}

#[test]
fn edison_picks_the_emmc_on_function_0() {
    for sd_first in [false, true] {
        let t = tempfile::tempdir().unwrap();
        scenarios::edison(t.path(), sd_first).unwrap();
        let c = pick(t.path(), "intel-edison").unwrap();
        assert_eq!(c.disk.controller.as_deref(), Some("0000:00:01.0"));
        assert_eq!(c.disk.name, if sd_first { "mmcblk1" } else { "mmcblk0" });
    }
}

#[test]
fn nuc_prefers_nvme_over_sata_and_never_the_usb_stick() {
    let t = tempfile::tempdir().unwrap();
    scenarios::nuc(t.path(), 1, true).unwrap();
    let disks = scan(t.path()).unwrap();
    let stick = disk(&disks, "sda");
    assert_eq!(stick.transport, Some(Transport::Usb));
    assert_eq!(stick.controller.as_deref(), Some("0000:00:14.0"));
    assert!(stick.removable);
    assert_eq!(disk(&disks, "sdb").transport, Some(Transport::Sata));
    assert_eq!(
        disk(&disks, "sdb").controller.as_deref(),
        Some("0000:00:17.0")
    );
    let nvme = disk(&disks, "nvme0n1");
    assert_eq!(nvme.controller.as_deref(), Some("0000:3a:00.0"));
    assert_eq!(nvme.model.as_deref(), Some("QEMU NVMe Ctrl"));
    assert_eq!(nvme.partitions[0].name, "nvme0n1p1");
    let c = pick(t.path(), "intel-nuc").unwrap();
    assert_eq!(c.disk.name, "nvme0n1");
    assert!(c
        .rejected
        .iter()
        .any(|r| r.disk == "sdb" && r.why.contains("preferred")));

    // Without NVMe the SATA SSD is next.
    let t = tempfile::tempdir().unwrap();
    scenarios::nuc(t.path(), 0, true).unwrap();
    assert_eq!(pick(t.path(), "intel-nuc").unwrap().disk.name, "sdb");

    // Two NVMe drives: no coin toss.
    let t = tempfile::tempdir().unwrap();
    scenarios::nuc(t.path(), 2, true).unwrap();
    match pick(t.path(), "intel-nuc").unwrap_err() {
        Error::Ambiguous { disks, .. } => assert_eq!(disks, ["nvme0n1", "nvme1n1"]),
        e => panic!("{e:?}"),
    }

    // Only the stick: nothing internal.
    let t = tempfile::tempdir().unwrap();
    scenarios::nuc(t.path(), 0, false).unwrap();
    assert!(matches!(
        pick(t.path(), "intel-nuc"),
        Err(Error::NoMatch { .. })
    ));
}

#[test]
fn qemu_sd_picks_the_card_on_06() {
    let t = tempfile::tempdir().unwrap();
    scenarios::qemu_sd(t.path(), true).unwrap();
    let disks = scan(t.path()).unwrap();
    assert!(disks.iter().all(|d| !d.name.starts_with("loop")));
    let target = disk(&disks, "mmcblk1");
    assert_eq!(
        target.device_path,
        "/sys/devices/pci0000:00/0000:00:06.0/mmc_host/mmc1/mmc1:aaaa/block/mmcblk1"
    );
    let c = pick(t.path(), "qemu-x86_64-sd").unwrap();
    assert_eq!(c.disk.name, "mmcblk1");

    let t = tempfile::tempdir().unwrap();
    scenarios::qemu_sd(t.path(), false).unwrap();
    assert!(matches!(
        pick(t.path(), "qemu-x86_64-sd"),
        Err(Error::NoMatch { .. })
    ));
}

#[test]
fn qemu_nuc_picks_the_multipath_nvme() {
    let t = tempfile::tempdir().unwrap();
    scenarios::qemu_nuc(t.path()).unwrap();
    let disks = scan(t.path()).unwrap();
    let nvme = disk(&disks, "nvme0n1");
    assert_eq!(nvme.transport, Some(Transport::Nvme));
    assert_eq!(nvme.controller.as_deref(), Some("0000:00:05.0"));
    assert!(nvme.device_path.contains("/nvme-subsystem/"));
    assert!(nvme.on_controller("0000:00:05.0"));
    let c = pick(t.path(), "qemu-x86_64-nuc").unwrap();
    assert_eq!(c.disk.name, "nvme0n1");
}

#[test]
fn virtio_and_controller_rules() {
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    r.virtio("pci0000:00/0000:00:03.0", 0, "vda", 1 << 30)
        .unwrap();
    r.virtio("pci0000:00/0000:00:04.0", 1, "vdb", 1 << 30)
        .unwrap();
    let disks = scan(t.path()).unwrap();
    assert_eq!(
        disk(&disks, "vdb").controller.as_deref(),
        Some("0000:00:04.0")
    );
    let mut b = board("qemu-x86_64-nuc");
    b.target.transports = vec![Transport::Virtio];
    assert!(matches!(
        choose_target(&b, &disks, None),
        Err(Error::Ambiguous { .. })
    ));
    b.target.controllers = vec!["0000:00:04.0".into()];
    assert_eq!(choose_target(&b, &disks, None).unwrap().disk.name, "vdb");
    b.target.min_size = Some(2 << 30);
    assert!(matches!(
        choose_target(&b, &disks, None),
        Err(Error::NoMatch { .. })
    ));
}

#[test]
fn hand_made_trees_without_proc_or_flags_still_scan() {
    // The live system (root "/") fails closed without mountinfo; a captured or
    // generated tree without /proc, `ro` or `removable` is read as "none"/0.
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    std::fs::remove_file(t.path().join("proc/self/mountinfo")).unwrap();
    std::fs::remove_file(t.path().join("sys/block/mmcblk1/ro")).unwrap();
    std::fs::remove_file(t.path().join("sys/block/mmcblk1/removable")).unwrap();
    assert_eq!(
        pick(t.path(), "beaglebone-black").unwrap().disk.name,
        "mmcblk1"
    );
}

#[test]
fn mountinfo_that_cannot_be_read_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let p = t.path().join("proc/self/mountinfo");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    assert!(matches!(scan(t.path()), Err(Error::Io(_))));
}

#[test]
fn mmc_without_mmc_host_directory_is_still_classified() {
    // A simplified tree: .../481d8000.mmc/mmc1/mmc1:0001/block/mmcblk1.
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    r.mmc("platform/ocp/481d8000.mmc", 1, 1, "MMC", 4 << 30, true)
        .unwrap();
    let flat = t.path().join("sys/devices/platform/ocp/481d8000.mmc/mmc1");
    std::fs::rename(
        t.path()
            .join("sys/devices/platform/ocp/481d8000.mmc/mmc_host/mmc1"),
        &flat,
    )
    .unwrap();
    for n in ["mmcblk1", "mmcblk1boot0", "mmcblk1boot1"] {
        let link = t.path().join("sys/block").join(n);
        std::fs::remove_file(&link).unwrap();
        std::os::unix::fs::symlink(flat.join("mmc1:0001/block").join(n), &link).unwrap();
    }
    let disks = scan(t.path()).unwrap();
    assert_eq!(disks[0].transport, Some(Transport::Mmc));
    assert_eq!(disks[0].controller.as_deref(), Some("481d8000.mmc"));
    assert_eq!(
        pick(t.path(), "beaglebone-black").unwrap().disk.name,
        "mmcblk1"
    );
}

#[test]
fn malformed_sysfs_is_an_error() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    std::fs::write(t.path().join("sys/block/mmcblk1/dev"), "garbage\n").unwrap();
    assert!(matches!(scan(t.path()), Err(Error::Malformed { .. })));
}

#[test]
fn sizes_read_like_labels() {
    assert_eq!(flasher_format::units::si(15_931_539_456), "15.9 GB");
    assert_eq!(flasher_format::units::si(512), "512 B");
    assert_eq!(flasher_format::units::si(256 << 20), "268.4 MB");
}

#[test]
fn the_boot_medium_slot_is_never_the_target_even_without_a_payload() {
    // An eMMC-type card in the BeagleBone's microSD slot and no payload partition
    // anywhere (e.g. detect on a running system): still not a target.
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    r.mmc("platform/ocp/48060000.mmc", 0, 0, "MMC", 4 << 30, true)
        .unwrap();
    let disks = scan(t.path()).unwrap();
    let b = board("beaglebone-black");
    let err = choose_target(&b, &disks, None).unwrap_err();
    assert!(matches!(err, Error::NoMatch { .. }), "{err:?}");
    assert!(boot_medium_note(&b, &disks[0]).is_none());
    // The QEMU NUC board's stick is USB; an mmc boot medium draws a warning.
    assert!(boot_medium_note(&board("qemu-x86_64-nuc"), &disks[0]).is_some());
}

#[test]
fn partitions_marked_only_by_uevent_are_found() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(1)).unwrap();
    let p2 = t.path().join("sys/block/mmcblk0/mmcblk0p2");
    std::fs::remove_file(p2.join("partition")).unwrap();
    let disks = scan(t.path()).unwrap();
    let sd = disk(&disks, "mmcblk0");
    assert_eq!(sd.partitions.len(), 3);
    assert_eq!(sd.partitions[1].number, 2);
    assert_eq!(
        find_boot_medium(&disks, None).unwrap().unwrap().disk,
        "mmcblk0"
    );
}

/// An MBR card (as `mkflasher build` makes for U-Boot boards) has no partition
/// names: the payload is found by the bundle magic, the log is the next partition.
#[test]
fn mbr_card_payload_found_by_content() {
    let t = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(t.path()).unwrap();
    r.compatible(&["ti,am335x-bone-black", "ti,am335x-bone", "ti,am33xx"])
        .unwrap();
    let sd = r
        .mmc(
            "platform/ocp/48060000.mmc",
            0,
            0,
            "SD",
            scenarios::SD_16G,
            false,
        )
        .unwrap();
    r.partition(&sd, 1, None, 64 << 20).unwrap();
    r.partition(&sd, 2, None, 64 << 20).unwrap();
    r.partition(&sd, 3, None, 1 << 20).unwrap();
    let emmc = r
        .mmc(
            "platform/ocp/481d8000.mmc",
            1,
            1,
            "MMC",
            scenarios::EMMC_4G,
            true,
        )
        .unwrap();
    scenarios::old_os(&mut r, &emmc).unwrap();

    // Without the magic there is no payload anywhere.
    let disks = scan(t.path()).unwrap();
    assert!(find_boot_medium(&disks, None).unwrap().is_none());

    let mut head = flasher_format::bundle::MAGIC.to_vec();
    head.extend_from_slice(&[0u8; 56]);
    std::fs::write(t.path().join("dev/mmcblk0p2"), &head).unwrap();
    let disks = scan(t.path()).unwrap();
    let boot = find_boot_medium(&disks, None).unwrap().unwrap();
    assert_eq!(boot.disk, "mmcblk0");
    assert_eq!(boot.payload.as_ref().unwrap().name, "mmcblk0p2");
    assert_eq!(boot.log.as_ref().unwrap().name, "mmcblk0p3");
    let choice = choose_target(&board("beaglebone-black"), &disks, Some(&boot)).unwrap();
    assert_eq!(choice.disk.name, "mmcblk1");
}
