//! The real steps end to end on a fake, kernel-shaped root, as the QEMU board
//! `qemu-x86_64-sd` unless a test says otherwise: storage scan, payload on the
//! card, target choice, the pipeline, config copy, the unit log (records,
//! attempt counting, the per-unit data pool), signed and unsigned payloads, a
//! card for another board, the watchdog, events and the power call. Only the
//! system calls are faked: `reboot(2)` here, and the eMMC's EXT_CSD ioctl in
//! `e2e_tests/emmc.rs`.

use std::io::{Cursor, Read};
use std::path::Path;
use std::time::Duration;

use super::card::tests::{fat_with, mbr_disk};
use super::power::tests::FakePower;
use super::real::Real;
use super::run::{drive, Outcome, Step};
use flasher::progress::{Body, Event, RecordResult};
use flasher::storage::testing::FakeRoot;
use flasher_format::bundle::{BundleWriter, WriterOptions};
use flasher_format::record;
use flasher_format::Phase;

const CARD: &str = "pci0000:00/0000:00:05.0";
const TARGET: &str = "pci0000:00/0000:00:06.0";

/// An OS image: MBR, a FAT boot partition at 1 MiB, then a data partition.
fn os_image() -> Vec<u8> {
    let boot = fat_with(4 << 20, &[("cmdline.txt", b"root=/dev/mmcblk0p2")]);
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    mbr_disk(8 << 20, &[(2048, &boot, 0x0c), (10240, &data, 0x83)])
}

fn bundle(image: &[u8]) -> Vec<u8> {
    bundle_with(image, WriterOptions::default())
}

fn bundle_with(image: &[u8], opts: WriterOptions) -> Vec<u8> {
    let opts = WriterOptions {
        chunk_size: 1 << 20,
        level: 1,
        workers: 2,
        ..opts
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    w.push_data(image).unwrap();
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    out
}

/// A QEMU-SD board with the flasher card (config on flash-boot) and a target of
/// `target_size` bytes.
fn board(root: &Path, target_size: u64, image: &[u8]) {
    board_with(root, target_size, bundle(image))
}

/// The card's config files on flash-boot.
const CONFIG_JSON: &[u8] = br#"{"hostname":"unit","installer":{"secureboot":true}}"#;
const HOSTNAME: &[u8] = b"unit-7\n";

fn board_with(root: &Path, target_size: u64, payload: Vec<u8>) {
    card_and_target(root, payload, |r| {
        r.mmc(TARGET, 1, 1, "SD", target_size, false).unwrap();
    })
}

/// The flasher card with `payload` on controller CARD, the target `target`
/// adds (mmcblk1 on TARGET), and the QEMU-SD command line.
fn card_and_target(root: &Path, mut payload: Vec<u8>, target: impl FnOnce(&mut FakeRoot)) {
    let mut r = FakeRoot::new(root).unwrap();
    let card = r.mmc(CARD, 0, 0, "SD", 64 << 20, false).unwrap();
    r.partition(&card, 1, Some("flash-boot"), 8 << 20).unwrap();
    r.partition(&card, 2, Some("flasher-payload"), 16 << 20)
        .unwrap();
    r.partition(&card, 3, Some("flasher-log"), 1 << 20).unwrap();
    target(&mut r);
    let flash_boot = fat_with(
        8 << 20,
        &[("config.json", CONFIG_JSON), ("hostname", HOSTNAME)],
    );
    std::fs::write(root.join("dev/mmcblk0p1"), flash_boot).unwrap();
    payload.resize(16 << 20, 0);
    std::fs::write(root.join("dev/mmcblk0p2"), payload).unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    r.file(
        "proc/cmdline",
        b"console=ttyS0 flasher.board=qemu-x86_64-sd flasher.events=/run/events.jsonl\n",
    )
    .unwrap();
}

fn run(root: &Path) -> (Result<Outcome, Box<super::run::Failure>>, Vec<String>) {
    let power = FakePower::default();
    let calls = power.calls.clone();
    let mut real = Real::new(root, false).with_power(Box::new(power), Duration::ZERO);
    let r = drive(&mut real);
    let calls = calls.lock().unwrap().clone();
    (r, calls)
}

fn records(root: &Path) -> Vec<record::UnitRecord> {
    let mut f = std::fs::File::open(root.join("dev/mmcblk0p3")).unwrap();
    record::read_all(&mut f, 1 << 20).unwrap()
}

/// The run's event lines: every one a typed event of this schema, in time order.
fn events(root: &Path) -> Vec<Event> {
    let ev: Vec<Event> = std::fs::read_to_string(root.join("run/events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    flasher_format::event::check_stream(&ev).unwrap();
    ev
}

#[test]
fn flashes_configures_records_and_powers_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = os_image();
    board(root, 32 << 20, &image);
    let (r, calls) = run(root);
    let out = r.unwrap_or_else(|f| panic!("run failed: {f}"));
    match &out {
        Outcome::Flashed { board, target, .. } => {
            assert_eq!(board, "qemu-x86_64-sd");
            assert_eq!(target.device, root.join("dev/mmcblk1"));
        }
        other => panic!("expected Flashed, got {other:?}"),
    }
    assert_eq!(calls, ["sync", "reboot poweroff"]);

    // The image landed, outside the boot FAT byte for byte.
    let mut written = vec![0u8; image.len()];
    std::fs::File::open(root.join("dev/mmcblk1"))
        .unwrap()
        .read_exact(&mut written)
        .unwrap();
    assert_eq!(written[..1 << 20], image[..1 << 20]);
    assert_eq!(written[5 << 20..], image[5 << 20..]);
    // The config went onto the target's boot FAT, without the installer section.
    let mut t = Cursor::new(written);
    let span = flasher_disk::fat::first_fat(&mut t).unwrap().unwrap();
    let mut boot = super::card::slice(&mut t, span);
    let cfg = flasher_disk::fat::read_file(&mut boot, "config.json", u64::MAX)
        .unwrap()
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
    assert_eq!(cfg["hostname"], "unit");
    assert!(cfg.get("installer").is_none());
    assert_eq!(
        flasher_disk::fat::read_file(&mut boot, "hostname", u64::MAX)
            .unwrap()
            .unwrap(),
        b"unit-7\n"
    );
    assert!(
        flasher_disk::fat::read_file(&mut boot, "cmdline.txt", u64::MAX)
            .unwrap()
            .is_some()
    );

    let recs = records(root);
    assert_eq!(recs.len(), 2);
    // Before the first write: the attempt-started record (issue 10).
    assert!(recs[0].attempt_started);
    assert_eq!(recs[0].target.device, "mmcblk1");
    assert!(!recs[1].attempt_started);
    assert_eq!(recs[1].board, "qemu-x86_64-sd");
    assert_eq!(recs[1].target.device, "mmcblk1");
    assert_eq!(recs[1].result, record::Outcome::Ok);
    assert_eq!(recs[1].bytes_written, image.len() as u64);
    assert_eq!(recs[1].image_digest.len(), 64);

    let ev = events(root);
    assert!(ev
        .iter()
        .any(|e| e.phase == Phase::Writing && matches!(e.body, Body::Progress { .. })));
    let last = ev.iter().rev().find(|e| e.is_flasher_state()).unwrap();
    assert_eq!(last.phase, Phase::Success);
    assert!(ev.iter().any(|e| matches!(
        e.body,
        Body::Record {
            seq: 2,
            result: RecordResult::Ok,
            ..
        }
    )));
    // The board has no LEDs: the pattern changes are reported as events.
    assert!(ev
        .iter()
        .any(|e| e.phase == Phase::Writing && matches!(e.body, Body::Led { .. })));
}

#[test]
fn too_small_target_fails_class_3_records_and_waits() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = os_image();
    board(root, 4 << 20, &image);
    let (r, calls) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Write, flasher_format::ErrorClass::TargetRefused),
        "{f}"
    );
    assert_eq!(calls, ["sync", "park"]);
    // The target was not touched.
    let target = std::fs::read(root.join("dev/mmcblk1")).unwrap();
    assert!(target.iter().all(|b| *b == 0));
    let recs = records(root);
    assert_eq!(recs.len(), 2);
    assert!(recs[0].attempt_started);
    match &recs[1].result {
        record::Outcome::Error { class, message } => {
            assert_eq!(*class, flasher_format::ErrorClass::TargetRefused);
            assert!(message.starts_with("write and verify: "), "{message}");
        }
        other => panic!("expected an error record, got {other:?}"),
    }
    let ev = events(root);
    let last = ev.iter().rev().find(|e| e.is_failure()).unwrap();
    assert_eq!(
        last.error_class(),
        Some(flasher_format::ErrorClass::TargetRefused)
    );
    assert!(ev.iter().any(|e| matches!(
        e.body,
        Body::Record {
            result: RecordResult::Error,
            ..
        }
    )));
}

#[test]
fn dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = os_image();
    board(root, 32 << 20, &image);
    std::fs::write(
        root.join("proc/cmdline"),
        "flasher.board=qemu-x86_64-sd flasher.dry-run flasher.after=wait\n",
    )
    .unwrap();
    let (r, calls) = run(root);
    assert!(matches!(r, Ok(Outcome::DryRun { .. })));
    assert_eq!(calls, ["sync", "park"]);
    assert!(std::fs::read(root.join("dev/mmcblk1"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    assert!(records(root).is_empty());
}

#[test]
fn the_boot_medium_is_refused_as_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    board(root, 32 << 20, &os_image());
    std::fs::write(
        root.join("proc/cmdline"),
        "flasher.board=qemu-x86_64-sd flasher.target=/dev/mmcblk0\n",
    )
    .unwrap();
    let (r, _) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Target, flasher_format::ErrorClass::TargetRefused),
        "{f}"
    );
    assert!(f.to_string().contains("boot medium"), "{f}");
}

/// Records whether the watchdog was already magic-closed when reboot(2) came.
struct CheckWatchdog {
    dev: std::path::PathBuf,
    seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl super::power::Power for CheckWatchdog {
    fn sync(&mut self) {
        self.seen.lock().unwrap().push("sync".into());
    }
    fn reboot(&mut self, how: super::power::After) -> Result<(), nix::errno::Errno> {
        let wd = std::fs::read(&self.dev).unwrap();
        self.seen.lock().unwrap().push(format!(
            "reboot {how} (watchdog {})",
            if wd.ends_with(b"V") {
                "disarmed"
            } else {
                "ARMED"
            }
        ));
        Ok(())
    }
    fn park(&mut self) {
        self.seen.lock().unwrap().push("park".into());
    }
}

#[test]
fn watchdog_is_fed_then_disarmed_before_power_off() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    board(root, 32 << 20, &os_image());
    // The board file in the initramfs overrides the built-in one: add a watchdog.
    let mut b = boards::find("qemu-x86_64-sd").unwrap();
    b.watchdog = Some("/dev/watchdog".into());
    let file = root.join(flasher_format::card::initramfs::BOARD_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, boards::to_json(&b).unwrap()).unwrap();
    let dev = root.join("dev/watchdog");
    std::fs::write(&dev, b"").unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let power = CheckWatchdog {
        dev: dev.clone(),
        seen: seen.clone(),
    };
    let mut real = Real::new(root, false).with_power(Box::new(power), Duration::ZERO);
    drive(&mut real).unwrap_or_else(|f| panic!("run failed: {f}"));
    assert_eq!(
        *seen.lock().unwrap(),
        ["sync", "reboot poweroff (watchdog disarmed)"]
    );
    let bytes = std::fs::read(&dev).unwrap();
    // Fed at least once (a NUL per feed), then the magic close, once.
    assert!(bytes.len() >= 2, "{bytes:?}");
    assert!(bytes[..bytes.len() - 1].iter().all(|b| *b == 0));
    assert_eq!(bytes.last(), Some(&b'V'));
}

/// A unit record with nothing in it but `target`: the base of the records a
/// test puts in the unit log before a run.
fn blank_record(target: record::TargetIdentity) -> record::UnitRecord {
    record::UnitRecord {
        seq: 0,
        timestamp_unix_s: None,
        flasher_version: "0.1.0".into(),
        board: "qemu-x86_64-sd".into(),
        target,
        image_digest: String::new(),
        signer: String::new(),
        bytes_written: 0,
        phases: vec![],
        result: record::Outcome::Ok,
        attempt_started: false,
        unit_row: None,
        health: None,
    }
}

/// Issue 10 item 6: three attempts on this unit that never finished (the
/// watchdog reset the board mid-run each time) and the run refuses to write it
/// again, before touching it; `flasher.retry-unit` lets it through, and the
/// success resets the count.
#[test]
fn a_unit_that_keeps_resetting_is_refused_after_three_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let image = os_image();
    board(root, 32 << 20, &image);
    let target = super::unit_log::target_identity(root, "mmcblk1");
    assert!(target.is_countable(), "the fake eMMC has a CID: {target}");
    let base = blank_record(target);
    let log = root.join("dev/mmcblk0p3");
    for _ in 0..record::MAX_ATTEMPTS {
        super::unit_log::append_to(&log, &record::attempt_started(&base)).unwrap();
    }
    let (r, calls) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Write, flasher_format::ErrorClass::TargetRefused),
        "{f}"
    );
    assert!(
        matches!(f.error, super::Error::UnitAttempts { attempts: 3, .. }),
        "{f}"
    );
    assert_eq!(calls, ["sync", "park"]);
    assert!(std::fs::read(root.join("dev/mmcblk1"))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
    // The refusal is recorded, but is no new attempt.
    let recs = records(root);
    assert_eq!(recs.len(), 4);
    assert!(!recs[3].attempt_started);
    let target = &recs[0].target;
    assert_eq!(record::failed_attempts(&recs, target), 3);

    std::fs::write(
        root.join("proc/cmdline"),
        "flasher.board=qemu-x86_64-sd flasher.retry-unit\n",
    )
    .unwrap();
    let (r, _) = run(root);
    r.unwrap_or_else(|f| panic!("run failed: {f}"));
    let recs = records(root);
    assert_eq!(record::failed_attempts(&recs, target), 0);
    assert!(recs[4].attempt_started);
    assert_eq!(recs[5].result, record::Outcome::Ok);
}

/// A failure after the write (the image's FAT-typed boot partition holds no
/// FAT, so config injection fails): the target held an old, valid image and
/// ends with a zero sector 0, a failure record is appended, and every event
/// from the first failure on stays in the failure phase (LEDs included).
#[test]
fn post_write_failure_leaves_sector_0_zero_and_failure_last() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let not_fat = vec![0u8; 4 << 20];
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    let image = mbr_disk(8 << 20, &[(2048, &not_fat, 0x0c), (10240, &data, 0x83)]);
    board(root, 32 << 20, &image);
    // The target holds an old, valid image.
    let mut old = os_image();
    old.resize(32 << 20, 0);
    std::fs::write(root.join("dev/mmcblk1"), &old).unwrap();
    let (r, calls) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Config, flasher_format::ErrorClass::PostWrite),
        "{f}"
    );
    assert_eq!(calls, ["sync", "park"]);
    let target = std::fs::read(root.join("dev/mmcblk1")).unwrap();
    assert!(target[..512].iter().all(|b| *b == 0), "sector 0 not zero");
    // The rest of the new image did land (the failure came after the write).
    assert_eq!(target[5 << 20..8 << 20], image[5 << 20..]);
    // The attempt-started record, then the failure.
    let recs = records(root);
    assert_eq!(recs.len(), 2);
    assert!(recs[0].attempt_started);
    assert!(matches!(recs[1].result, record::Outcome::Error { .. }));
    let ev = events(root);
    let first = ev.iter().position(Event::is_failure).unwrap();
    let after: Vec<Phase> = ev[first..].iter().map(|e| e.phase).collect();
    assert!(after.iter().all(|p| *p == Phase::Failure), "{after:?}");
    assert!(ev[first..].iter().any(|e| matches!(
        e.body,
        Body::Record {
            result: RecordResult::Error,
            ..
        }
    )));
}

/// The card carries config but the image's table has no FAT partition: refused
/// before the first write (class 2), the old image on the target untouched.
#[test]
fn image_without_a_boot_fat_is_refused_before_the_first_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let data: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
    let image = mbr_disk(8 << 20, &[(10240, &data, 0x83)]);
    board(root, 32 << 20, &image);
    let mut old = os_image();
    old.resize(32 << 20, 0);
    std::fs::write(root.join("dev/mmcblk1"), &old).unwrap();
    let (r, _) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Write, flasher_format::ErrorClass::PayloadInvalid),
        "{f}"
    );
    assert!(matches!(
        f.error,
        crate::Error::Engine(flasher::Error::Pipeline(
            flasher::pipeline::Error::NoBootFat { .. }
        ))
    ));
    assert!(std::fs::read(root.join("dev/mmcblk1")).unwrap() == old);
}

/// Signed payloads (docs/SECURITY.md): keys in the initramfs's
/// `etc/flasher/trusted`; the card's config files pinned by the manifest.
mod trust {
    use super::*;
    use flasher_format::bundle::testing::{alter_manifest, strip_signature};
    use flasher_format::bundle::{PinnedFile, SecretKey};
    use flasher_format::card::initramfs::TRUSTED_DIR;
    use flasher_format::ErrorClass;

    fn key() -> SecretKey {
        SecretKey::from_seed(&[5; 32])
    }

    fn signed(image: &[u8], pins: bool) -> Vec<u8> {
        let files = if pins {
            vec![
                PinnedFile::new("config.json", CONFIG_JSON),
                PinnedFile::new("hostname", HOSTNAME),
            ]
        } else {
            vec![]
        };
        bundle_with(
            image,
            WriterOptions {
                sign: Some(key()),
                files,
                ..WriterOptions::default()
            },
        )
    }

    fn trust_key(root: &Path) {
        let dir = root.join(TRUSTED_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("factory.pub"), key().public().to_text("factory")).unwrap();
    }

    fn target(root: &Path) -> Vec<u8> {
        std::fs::read(root.join("dev/mmcblk1")).unwrap()
    }

    /// Runs with keys trusted and `payload` on the card; the run must fail in
    /// the write step as payload-invalid, leaving the target as it was.
    fn refused(payload: Vec<u8>, want: fn(&flasher_format::bundle::Error) -> bool) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        board_with(root, 32 << 20, payload);
        trust_key(root);
        std::fs::write(root.join("dev/mmcblk1"), vec![0x5a; 32 << 20]).unwrap();
        let before = target(root);
        let (r, calls) = run(root);
        let f = r.unwrap_err();
        assert_eq!(f.step, Step::Write, "{f}");
        assert_eq!(f.class, ErrorClass::PayloadInvalid, "{f}");
        match &f.error {
            crate::Error::Engine(flasher::Error::Bundle(e)) => assert!(want(e), "{e}"),
            e => panic!("expected a bundle error, got {e}"),
        }
        assert!(target(root) == before, "the target was modified");
        assert!(!calls.iter().any(|c| c.contains("poweroff")));
        let ev = events(root);
        assert_eq!(ev.last().unwrap().phase, Phase::Failure);
        assert!(records(root)
            .iter()
            .any(|r| r.result != record::Outcome::Ok));
    }

    #[test]
    fn unsigned_altered_and_unpinned_payloads_are_refused_untouched() {
        let image = os_image();
        let good = signed(&image, true);
        refused(strip_signature(&good), |e| {
            matches!(e, flasher_format::bundle::Error::Unsigned { .. })
        });
        refused(alter_manifest(&good), |e| {
            matches!(e, flasher_format::bundle::Error::ManifestAltered { .. })
        });
        // Signed, but the card's config.json and hostname are not pinned.
        refused(signed(&image, false), |e| {
            matches!(e, flasher_format::bundle::Error::UnpinnedFile { .. })
        });
    }

    /// Issue 22, finding 2: with a key trusted, a second
    /// `system-connections/` entry under the pinned file's long name (or a
    /// name that leads elsewhere) is refused before the first write, the
    /// target left as it was. Before the card was read once, the pin check
    /// looked the name up and found the genuine file.
    #[test]
    fn a_card_with_a_second_entry_under_a_pinned_name_is_refused_untouched() {
        use flasher::config_inject::testing::rename_lfn;
        const WIFI: &[u8] = b"[connection]\nid=factory\n";
        for to in ["wifi.", "w/fx.", "..fx."] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            let payload = bundle_with(
                &os_image(),
                WriterOptions {
                    sign: Some(key()),
                    files: vec![
                        PinnedFile::new("config.json", CONFIG_JSON),
                        PinnedFile::new("hostname", HOSTNAME),
                        PinnedFile::new("system-connections/wifi.nmconnection", WIFI),
                    ],
                    ..WriterOptions::default()
                },
            );
            board_with(root, 32 << 20, payload);
            trust_key(root);
            let mut card = fat_with(
                8 << 20,
                &[
                    ("config.json", CONFIG_JSON),
                    ("hostname", HOSTNAME),
                    ("system-connections/wifi.nmconnection", WIFI),
                    (
                        "system-connections/wifx.nmconnection",
                        b"[connection]\nid=attacker\n",
                    ),
                ],
            );
            rename_lfn(&mut card, "wifx.", to);
            std::fs::write(root.join("dev/mmcblk0p1"), card).unwrap();
            std::fs::write(root.join("dev/mmcblk1"), vec![0x5a; 32 << 20]).unwrap();
            let before = target(root);
            let (r, _) = run(root);
            let f = r.expect_err("a tampered card must be refused");
            assert_eq!(f.step, Step::Write, "{to}: {f}");
            assert_eq!(f.class, ErrorClass::PayloadInvalid, "{to}: {f}");
            assert!(
                matches!(
                    &f.error,
                    crate::Error::Engine(flasher::Error::ConfigInject(
                        flasher::config_inject::Error::BadCardName { .. }
                    ))
                ),
                "{to}: {f}"
            );
            assert!(target(root) == before, "{to}: the target was modified");
        }
    }

    #[test]
    fn signed_payload_flashes_and_the_record_names_the_signer() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let image = os_image();
        board_with(root, 32 << 20, signed(&image, true));
        trust_key(root);
        let (r, _) = run(root);
        r.unwrap_or_else(|f| panic!("run failed: {f}"));
        let recs = records(root);
        let last = recs.last().unwrap();
        assert_eq!(last.result, record::Outcome::Ok);
        assert_eq!(last.signer, key().public().fingerprint());
    }

    #[test]
    fn without_keys_unsigned_flashes_with_a_warning_and_is_recorded_unsigned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        board(root, 32 << 20, &os_image());
        let (r, _) = run(root);
        r.unwrap_or_else(|f| panic!("run failed: {f}"));
        assert_eq!(records(root).last().unwrap().signer, "unsigned");
        assert!(events(root).iter().any(|e| e
            .text()
            .is_some_and(|m| m.starts_with("warning: the bundle is unsigned"))));
    }
}

/// Issue 12: a card built for the Nitrogen6x twin (its board file in the
/// initramfs, no `flasher.board=`) booted on a board whose device tree says
/// BeagleBone Black is refused from the device tree at the board step, class 6
/// with a failure event, and the target is never written.
#[test]
fn a_card_for_another_board_is_refused_before_any_write() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    board(root, 32 << 20, &os_image());
    std::fs::write(
        root.join("proc/cmdline"),
        b"console=ttyS0 flasher.events=/run/events.jsonl\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("proc/device-tree")).unwrap();
    std::fs::write(
        root.join("proc/device-tree/compatible"),
        b"ti,am335x-bone-black\0ti,am335x-bone\0ti,am33xx\0",
    )
    .unwrap();
    let card_board = boards::find("qemu-imx6-nitrogen6x").unwrap();
    let file = root.join(flasher_format::card::initramfs::BOARD_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(file, boards::to_json(&card_board).unwrap()).unwrap();
    let (r, _calls) = run(root);
    let f = r.unwrap_err();
    assert_eq!(
        (f.step, f.class),
        (Step::Board, flasher_format::ErrorClass::BoardConfig),
        "{f}"
    );
    assert!(
        matches!(
            &f.error,
            crate::Error::Engine(flasher::Error::Board(boards::Error::WrongBoard { found, .. })) if found == &["beaglebone-black"]
        ),
        "{f}"
    );
    let target = std::fs::read(root.join("dev/mmcblk1")).unwrap();
    assert!(target.iter().all(|b| *b == 0), "the target was written");
    let ev = events(root);
    let failure = ev.iter().find(|e| e.is_failure()).expect("a failure event");
    assert_eq!(
        failure.error_class(),
        Some(flasher_format::ErrorClass::BoardConfig)
    );
    assert!(!ev.iter().any(|e| e.phase == Phase::Writing));
}

/// Issue 14: the card's per-unit data pool. Each run claims the next row in
/// the unit log before its first write and writes it into the target's boot
/// FAT; an exhausted pool is refused before any write.
mod unit_pool {
    use super::*;
    use crate::card::slice;
    use flasher_disk::fat::{first_fat, read_file};
    use flasher_format::bundle::{PinnedFile, SecretKey};
    use flasher_format::card::initramfs::TRUSTED_DIR;
    use flasher_format::pool::{self, Pool};
    use flasher_format::ErrorClass;

    /// Two rows with commas, quotes and UTF-8 in the values (shapes a
    /// hand-made CSV has), each naming a key file.
    fn pool() -> (Pool, Vec<(String, Vec<u8>)>) {
        let files = vec![
            (
                "unit-ä.pem".to_string(),
                b"-----BEGIN KEY-----\nAAA\n".to_vec(),
            ),
            (
                "unit-b.pem".to_string(),
                b"-----BEGIN KEY-----\nBBB\n".to_vec(),
            ),
        ];
        let p = Pool {
            version: pool::VERSION,
            columns: vec!["hostname".into(), "note".into(), "key".into()],
            rows: vec![
                vec![
                    "line1-ä".into(),
                    "Zürich, \"bay 3\"".into(),
                    files[0].0.clone(),
                ],
                vec!["line1-b".into(), "a,b,c".into(), files[1].0.clone()],
            ],
            files: files
                .iter()
                .map(|(n, d)| PinnedFile::new(n.clone(), d))
                .collect(),
        };
        (p, files)
    }

    /// The card's flash-boot with config, host name, the pool and its files.
    fn card_fat(p: &Pool, files: &[(String, Vec<u8>)]) -> Vec<u8> {
        let bytes = p.to_bytes();
        let mut list: Vec<(String, &[u8])> = vec![
            ("config.json".into(), CONFIG_JSON),
            ("hostname".into(), HOSTNAME),
            (pool::POOL_FILE.into(), &bytes),
        ];
        for (n, d) in files {
            list.push((format!("{}/{n}", pool::UNITS_DIR), d));
        }
        let refs: Vec<(&str, &[u8])> = list.iter().map(|(n, d)| (n.as_str(), *d)).collect();
        fat_with(8 << 20, &refs)
    }

    fn board_with_pool(root: &Path, payload: Vec<u8>, p: &Pool, files: &[(String, Vec<u8>)]) {
        board_with(root, 32 << 20, payload);
        std::fs::write(root.join("dev/mmcblk0p1"), card_fat(p, files)).unwrap();
    }

    /// A file from the target's boot FAT, as the table to be live names it.
    fn target_file(root: &Path, name: &str) -> Option<Vec<u8>> {
        let mut t = Cursor::new(std::fs::read(root.join("dev/mmcblk1")).unwrap());
        let span = first_fat(&mut t).unwrap().unwrap();
        read_file(slice(&mut t, span), name, u64::MAX).unwrap()
    }

    fn new_unit(root: &Path, fill: u8) {
        std::fs::write(root.join("dev/mmcblk1"), vec![fill; 32 << 20]).unwrap();
    }

    #[test]
    fn rows_go_to_successive_runs_then_the_exhausted_pool_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (p, files) = pool();
        let digest = pool::digest(&p.to_bytes());
        board_with_pool(root, bundle(&os_image()), &p, &files);
        for i in 0..2u32 {
            new_unit(root, 0);
            let (r, _) = run(root);
            r.unwrap_or_else(|f| panic!("run {i} failed: {f}"));
            let want = p.row(i, &digest).unwrap();
            let cfg: serde_json::Value =
                serde_json::from_slice(&target_file(root, "config.json").unwrap()).unwrap();
            // The row's keys merged over the card's config (installer dropped).
            assert_eq!(cfg["hostname"], want.values["hostname"].as_str());
            assert_eq!(cfg["note"], want.values["note"].as_str());
            assert!(cfg.get("installer").is_none());
            let unit: record::UnitRow =
                serde_json::from_slice(&target_file(root, pool::UNIT_FILE).unwrap()).unwrap();
            assert_eq!(unit, want);
            let (name, data) = &files[i as usize];
            assert_eq!(
                target_file(root, &format!("{}/{name}", pool::UNITS_DIR)).as_ref(),
                Some(data)
            );
            assert_eq!(
                target_file(root, "hostname").unwrap(),
                format!("{}\n", want.values["hostname"]).into_bytes()
            );
            // The claim is the attempt-started record; the result repeats it.
            let recs = records(root);
            let (claim, result) = (&recs[recs.len() - 2], &recs[recs.len() - 1]);
            assert!(claim.attempt_started);
            assert_eq!(claim.unit_row.as_ref(), Some(&want));
            assert_eq!(result.result, record::Outcome::Ok);
            assert_eq!(result.unit_row.as_ref(), Some(&want));
            assert!(events(root).iter().any(|e| e
                .text()
                .is_some_and(|m| m.starts_with(&format!("unit data: claimed row {i} of 2")))));
        }
        // The third unit: nothing left.
        new_unit(root, 0x5a);
        let (r, calls) = run(root);
        let f = r.unwrap_err();
        assert_eq!(
            (f.step, f.class),
            (Step::Write, ErrorClass::PayloadInvalid),
            "{f}"
        );
        assert!(
            matches!(
                f.error,
                crate::Error::Engine(flasher::Error::Pool(pool::Error::Exhausted { rows: 2 }))
            ),
            "{f}"
        );
        assert_eq!(calls, ["sync", "park"]);
        assert!(
            std::fs::read(root.join("dev/mmcblk1"))
                .unwrap()
                .iter()
                .all(|b| *b == 0x5a),
            "the refused target was written"
        );
        let recs = records(root);
        assert_eq!(recs.len(), 5, "two runs of two records, then the refusal");
        assert!(!recs[4].attempt_started && recs[4].unit_row.is_none());
        assert!(matches!(
            recs[4].result,
            record::Outcome::Error {
                class: ErrorClass::PayloadInvalid,
                ..
            }
        ));
        let last = events(root)
            .into_iter()
            .rev()
            .find(|e| e.is_failure())
            .unwrap();
        assert_eq!(last.error_class(), Some(ErrorClass::PayloadInvalid));
    }

    /// A power cut right after a claim (the claim record on the card, no
    /// result): the next run takes the next row, never the claimed one. And a
    /// target with neither CID nor serial claims all the same.
    #[test]
    fn a_claim_cut_short_is_never_handed_out_again_and_anonymous_targets_claim() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (p, files) = pool();
        let digest = pool::digest(&p.to_bytes());
        board_with_pool(root, bundle(&os_image()), &p, &files);
        for attr in ["cid", "serial"] {
            let _ = std::fs::remove_file(root.join("sys/block/mmcblk1/device").join(attr));
        }
        assert!(!super::super::unit_log::target_identity(root, "mmcblk1").is_countable());
        // What a run cut off after its claim leaves: the claim and nothing else.
        let mut claim = record::attempt_started(&super::blank_record(Default::default()));
        claim.unit_row = p.row(0, &digest);
        super::super::unit_log::append_to(&root.join("dev/mmcblk0p3"), &claim).unwrap();
        let (r, _) = run(root);
        r.unwrap_or_else(|f| panic!("run failed: {f}"));
        let unit: record::UnitRow =
            serde_json::from_slice(&target_file(root, pool::UNIT_FILE).unwrap()).unwrap();
        assert_eq!(unit.index, 1);
        let recs = records(root);
        assert_eq!(recs.len(), 3);
        assert!(
            recs[1].attempt_started,
            "the anonymous target's claim is recorded"
        );
        assert_eq!(recs[1].unit_row.as_ref().map(|u| u.index), Some(1));
    }

    fn key() -> SecretKey {
        SecretKey::from_seed(&[9; 32])
    }

    fn signed(pins: Vec<PinnedFile>) -> Vec<u8> {
        bundle_with(
            &os_image(),
            flasher_format::bundle::WriterOptions {
                sign: Some(key()),
                files: pins,
                ..Default::default()
            },
        )
    }

    fn trusted_board(root: &Path, payload: Vec<u8>, p: &Pool, files: &[(String, Vec<u8>)]) {
        board_with_pool(root, payload, p, files);
        let dir = root.join(TRUSTED_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("line.pub"), key().public().to_text("line")).unwrap();
        new_unit(root, 0x5a);
    }

    /// With trusted keys the pool must be pinned by the signed manifest, and
    /// the `units/` files must match the pool: else refused before any write,
    /// nothing claimed. Pinned and intact, it flashes.
    #[test]
    fn signed_card_refuses_an_unpinned_pool_or_altered_unit_file_untouched() {
        let (p, files) = pool();
        let config_pins = || {
            vec![
                PinnedFile::new("config.json", CONFIG_JSON),
                PinnedFile::new("hostname", HOSTNAME),
            ]
        };
        let mut all = config_pins();
        all.push(PinnedFile::new(pool::POOL_FILE, &p.to_bytes()));
        let mut altered = files.clone();
        altered[0].1[20] ^= 1;
        // (pins in the manifest, unit files on the card, the refusal expected)
        type Case = (
            Vec<PinnedFile>,
            Vec<(String, Vec<u8>)>,
            fn(&crate::Error) -> bool,
        );
        let cases: Vec<Case> = vec![
            (
                config_pins(),
                files.clone(),
                |e| matches!(e, crate::Error::Engine(flasher::Error::Bundle(flasher_format::bundle::Error::UnpinnedFile { name })) if name == pool::POOL_FILE),
            ),
            (all.clone(), altered, |e| {
                matches!(
                    e,
                    crate::Error::Engine(flasher::Error::Pool(pool::Error::FileMismatch { .. }))
                )
            }),
        ];
        for (pins, files, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path();
            trusted_board(root, signed(pins), &p, &files);
            let (r, _) = run(root);
            let f = r.unwrap_err();
            assert_eq!(
                (f.step, f.class),
                (Step::Write, ErrorClass::PayloadInvalid),
                "{f}"
            );
            assert!(want(&f.error), "{f}");
            assert!(std::fs::read(root.join("dev/mmcblk1"))
                .unwrap()
                .iter()
                .all(|b| *b == 0x5a));
            assert!(
                records(root).iter().all(|r| r.unit_row.is_none()),
                "nothing claimed"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        trusted_board(root, signed(all), &p, &files);
        let (r, _) = run(root);
        r.unwrap_or_else(|f| panic!("run failed: {f}"));
        assert_eq!(
            records(root)
                .last()
                .unwrap()
                .unit_row
                .as_ref()
                .map(|u| u.index),
            Some(0)
        );
    }
}

/// Issue 14: the eMMC health gate and boot-partition enable, end to end.
mod emmc;
