//! The eMMC health gate and the boot-partition enable through the real steps
//! on a fake root: the QEMU-SD board, overridden (by the initramfs's board
//! file, as a card would carry it) to expect an eMMC target with boot
//! partitions and the kernel's health attributes. EXT_CSD is a fake register:
//! QEMU's `emmc` device is not user-creatable, so no QEMU run can reach it.

use super::*;
use flasher::emmc::ext_csd::fake::{Behaviour, FakeExtCsd};
use flasher::emmc::ext_csd::{ExtCsd, PARTITION_CONFIG};
use flasher::emmc::Error as EmmcError;
use flasher_format::ErrorClass;

/// What the target held before the run: a refused run must leave it so.
const OLD: u8 = 0x5a;
const BOOTLOADER: &[u8] = b"tiboot3 first stage";

/// An eMMC target (mmcblk1, card type MMC, boot0/boot1, healthy attributes
/// that `attrs` overrides; an empty value removes the file, as on an old
/// kernel) holding old data, and the board file expecting it; `tweak`
/// changes the board (limits, bootloader, boot enable).
fn emmc_board(root: &Path, attrs: &[(&str, &str)], tweak: impl FnOnce(&mut boards::Board)) {
    card_and_target(root, bundle(&os_image()), |r| {
        r.mmc(TARGET, 1, 1, "MMC", 32 << 20, true).unwrap();
    });
    let dev = root.join("sys/block/mmcblk1/device");
    for (file, value) in attrs {
        if value.is_empty() {
            std::fs::remove_file(dev.join(file)).unwrap();
        } else {
            std::fs::write(dev.join(file), format!("{value}\n")).unwrap();
        }
    }
    std::fs::write(root.join("dev/mmcblk1"), vec![OLD; 32 << 20]).unwrap();
    // The card's flash-boot also carries a bootloader for boards that place one.
    let flash_boot = fat_with(
        8 << 20,
        &[
            ("config.json", CONFIG_JSON),
            ("hostname", HOSTNAME),
            ("tiboot3.bin", BOOTLOADER),
        ],
    );
    std::fs::write(root.join("dev/mmcblk0p1"), flash_boot).unwrap();
    let mut b = boards::find("qemu-x86_64-sd").unwrap();
    b.target.mmc_type = Some(boards::MmcType::Mmc);
    b.target.require_boot_partitions = true;
    tweak(&mut b);
    boards::validate(&b).unwrap();
    let file = root.join(flasher_format::card::initramfs::BOARD_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, boards::to_json(&b).unwrap()).unwrap();
}

fn cmdline(root: &Path, extra: &str) {
    std::fs::write(
        root.join("proc/cmdline"),
        format!("flasher.board=qemu-x86_64-sd flasher.events=/run/events.jsonl {extra}\n"),
    )
    .unwrap();
}

/// [`emmc_board`] with `extra` on the command line, run to success; the
/// directory holds the root for the checks.
fn flashes(
    attrs: &[(&str, &str)],
    tweak: impl FnOnce(&mut boards::Board),
    extra: &str,
    regs: FakeExtCsd,
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    emmc_board(dir.path(), attrs, tweak);
    cmdline(dir.path(), extra);
    run_with(dir.path(), regs).unwrap_or_else(|f| panic!("run failed: {f}"));
    dir
}

fn obey() -> FakeExtCsd {
    FakeExtCsd::new(0, Behaviour::Obey)
}

fn run_with(root: &Path, regs: FakeExtCsd) -> Result<Outcome, Box<super::super::run::Failure>> {
    let power = FakePower::default();
    let mut real = Real::new(root, false)
        .with_power(Box::new(power), Duration::ZERO)
        .with_ext_csd(Box::new(move |_| {
            Ok(Box::new(regs.clone()) as Box<dyn ExtCsd>)
        }));
    drive(&mut real)
}

fn target(root: &Path) -> Vec<u8> {
    std::fs::read(root.join("dev/mmcblk1")).unwrap()
}

fn messages(root: &Path) -> Vec<String> {
    events(root)
        .iter()
        .filter_map(|e| e.text().map(str::to_string))
        .collect()
}

/// Runs and expects the gate to refuse `worn` before any write.
fn refused(root: &Path, want: flasher::emmc::health::Worn) {
    let regs = FakeExtCsd::new(0, Behaviour::Obey);
    let f = run_with(root, regs.clone()).unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Target, ErrorClass::TargetRefused),
        "{f}"
    );
    match &f.error {
        crate::Error::Engine(flasher::Error::Emmc(EmmcError::Worn { worn, device, .. })) => {
            assert_eq!(worn, &want);
            assert_eq!(device, "mmcblk1");
        }
        e => panic!("expected Worn, got {e}"),
    }
    // Untouched: the old bytes everywhere, boot partitions as they were.
    assert!(
        target(root).iter().all(|b| *b == OLD),
        "the target was written"
    );
    assert!(std::fs::read(root.join("dev/mmcblk1boot0"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert!(regs.state().switches.is_empty());
    let ev = events(root);
    assert!(!ev.iter().any(|e| e.phase == Phase::Writing));
    let failure = ev.iter().find(|e| e.is_failure()).expect("a failure event");
    assert_eq!(failure.error_class(), Some(ErrorClass::TargetRefused));
    assert!(failure.text().is_some_and(|m| m.contains("worn out")));
    // One failure record, no attempt-started one (refused before it), with
    // what the gate read.
    let recs = records(root);
    assert_eq!(recs.len(), 1);
    assert!(!recs[0].attempt_started);
    assert!(matches!(
        recs[0].result,
        record::Outcome::Error {
            class: ErrorClass::TargetRefused,
            ..
        }
    ));
    assert!(recs[0].health.is_some());
}

#[test]
fn a_healthy_emmc_flashes_and_every_record_carries_its_health() {
    let dir = flashes(&[], |_| {}, "", obey());
    let root = dir.path();
    let recs = records(root);
    assert_eq!(recs.len(), 2);
    let want = record::StorageHealth {
        life_time: Some("0x01 0x02".into()),
        pre_eol_info: Some("0x01".into()),
        rev: Some("0x8".into()),
        date: Some("06/2019".into()),
        manfid: Some("0x000015".into()),
    };
    // The attempt-started record and the success record.
    assert!(recs[0].attempt_started);
    assert_eq!(recs[0].health.as_ref(), Some(&want));
    assert_eq!(recs[1].result, record::Outcome::Ok);
    assert_eq!(recs[1].health.as_ref(), Some(&want));
    assert!(recs[1].target.cid.is_some());
    assert!(messages(root)
        .iter()
        .any(|m| m.starts_with("eMMC health of mmcblk1: life time A 0x01")));
}

#[test]
fn pre_eol_urgent_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    emmc_board(root, &[("pre_eol_info", "0x03")], |_| {});
    cmdline(root, "");
    refused(root, flasher::emmc::health::Worn::PreEolUrgent);
    assert_eq!(
        records(root)[0]
            .health
            .as_ref()
            .unwrap()
            .pre_eol_info
            .as_deref(),
        Some("0x03")
    );
}

#[test]
fn a_life_time_estimate_past_the_limit_is_refused_before_any_write() {
    for (life, estimate, value) in [("0x0a 0x01", 'A', 0x0a), ("0x02 0x0b", 'B', 0x0b)] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        emmc_board(root, &[("life_time", life)], |_| {});
        cmdline(root, "");
        refused(
            root,
            flasher::emmc::health::Worn::LifeTime {
                estimate,
                value,
                limit_percent: 90,
            },
        );
    }
}

#[test]
fn a_board_set_limit_refuses_what_the_default_passes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // 50-60 % used: refused by a board that allows less than 50 %.
    emmc_board(root, &[("life_time", "0x06 0x01")], |b| {
        b.emmc = Some(boards::Emmc {
            life_time_limit_percent: Some(50),
            ..boards::Emmc::default()
        });
    });
    cmdline(root, "");
    refused(
        root,
        flasher::emmc::health::Worn::LifeTime {
            estimate: 'A',
            value: 6,
            limit_percent: 50,
        },
    );
    // The same part on a board with the default limit flashes.
    flashes(&[("life_time", "0x06 0x01")], |_| {}, "", obey());
}

#[test]
fn health_off_flashes_a_worn_emmc_and_records_what_it_read() {
    let dir = flashes(
        &[("pre_eol_info", "0x03")],
        |_| {},
        "flasher.health=off",
        obey(),
    );
    let root = dir.path();
    let last = records(root).pop().unwrap();
    assert_eq!(last.result, record::Outcome::Ok);
    assert_eq!(last.health.unwrap().pre_eol_info.as_deref(), Some("0x03"));
    assert!(messages(root)
        .iter()
        .any(|m| m.starts_with("warning: pre-EOL")
            && m.ends_with("flasher.health=off, so flashing it anyway")));
}

#[test]
fn missing_attributes_pass_with_a_note_and_warnings_only_warn() {
    // A kernel before 4.10: no life_time, pre_eol_info or rev.
    let old = [("life_time", ""), ("pre_eol_info", ""), ("rev", "")];
    let dir = flashes(&old, |_| {}, "", obey());
    let root = dir.path();
    let last = records(root).pop().unwrap();
    assert_eq!(last.result, record::Outcome::Ok);
    let h = last.health.unwrap();
    assert_eq!((h.life_time, h.pre_eol_info, h.rev), (None, None, None));
    assert_eq!(h.manfid.as_deref(), Some("0x000015"));
    let notes: Vec<String> = messages(root)
        .into_iter()
        .filter(|m| m.starts_with("eMMC health: no "))
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");

    // Pre-EOL warning: a warning event, and the flash goes on.
    let dir = flashes(&[("pre_eol_info", "0x02")], |_| {}, "", obey());
    assert!(messages(dir.path())
        .iter()
        .any(|m| m.starts_with("warning: eMMC pre-EOL information is 0x02")));
}

#[test]
fn other_targets_are_not_gated_and_record_no_health() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The plain QEMU-SD board: an SD card target, whatever files it had.
    board(root, 32 << 20, &os_image());
    std::fs::write(root.join("sys/block/mmcblk1/device/pre_eol_info"), "0x03\n").unwrap();
    let (r, _) = run(root);
    r.unwrap_or_else(|f| panic!("{f}"));
    assert!(records(root).iter().all(|r| r.health.is_none()));
}

/// A board whose bootloader goes into boot0 and which boots from it.
fn boot0_board(b: &mut boards::Board) {
    b.bootloader = vec![boards::Placement::EmmcBoot {
        partition: boards::BootPartition::Boot0,
        offset: 0,
        file: "tiboot3.bin".into(),
    }];
    b.emmc = Some(boards::Emmc {
        boot_enable: Some(boards::BootEnable::Boot0),
        boot_ack: Some(true),
        ..boards::Emmc::default()
    });
}

#[test]
fn the_bootloader_goes_to_boot0_and_the_emmc_boots_from_it() {
    let regs = obey();
    let dir = flashes(&[], boot0_board, "", regs.clone());
    let root = dir.path();
    let boot0 = std::fs::read(root.join("dev/mmcblk1boot0")).unwrap();
    assert_eq!(&boot0[..BOOTLOADER.len()], BOOTLOADER);
    assert_eq!(
        std::fs::read_to_string(root.join("sys/block/mmcblk1boot0/force_ro"))
            .unwrap()
            .trim(),
        "1"
    );
    // BOOT_ACK on, boot0 enabled, access back to the user area; read back.
    let s = regs.state();
    assert_eq!(s.switches, [(PARTITION_CONFIG, 0x48)]);
    assert_eq!(s.regs[usize::from(PARTITION_CONFIG)], 0x48);
    assert!(s.reads >= 2);
    drop(s);
    assert!(messages(root).iter().any(
        |m| m.starts_with("eMMC boots from boot0 (BOOT_ACK on): PARTITION_CONFIG 0x00 -> 0x48")
    ));
    assert_eq!(records(root).pop().unwrap().result, record::Outcome::Ok);
    // The table is live.
    assert_eq!(&target(root)[510..512], &[0x55, 0xaa]);
}

#[test]
fn an_emmc_that_refuses_the_switch_fails_before_the_table_goes_live() {
    for (behaviour, want) in [
        (Behaviour::RefuseSwitch, "switch"),
        (Behaviour::IgnoreSwitch, "not set"),
        (Behaviour::NoIoctl, "read"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        emmc_board(root, &[], boot0_board);
        cmdline(root, "");
        let f = run_with(root, FakeExtCsd::new(0x00, behaviour)).unwrap_err();
        assert_eq!(
            (f.step, f.class),
            (Step::Bootloader, ErrorClass::PostWrite),
            "{f}"
        );
        let ok = match &f.error {
            crate::Error::Engine(flasher::Error::Emmc(EmmcError::ExtCsdSwitch {
                value: 0x48,
                ..
            })) => want == "switch",
            crate::Error::Engine(flasher::Error::Emmc(EmmcError::ExtCsdNotSet {
                read: 0, ..
            })) => want == "not set",
            crate::Error::Engine(flasher::Error::Emmc(EmmcError::ExtCsdRead { .. })) => {
                want == "read"
            }
            _ => false,
        };
        assert!(ok, "{behaviour:?}: {f}");
        // Fail closed: sector 0 is zero, no table went live.
        assert!(target(root)[..512].iter().all(|b| *b == 0), "{behaviour:?}");
        assert!(matches!(
            records(root).pop().unwrap().result,
            record::Outcome::Error {
                class: ErrorClass::PostWrite,
                ..
            }
        ));
    }
}
