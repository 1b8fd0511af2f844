//! QEMU scenario for the per-unit data pool (issue 14): ONE card flashes three
//! targets in a row on `qemu-x86_64-sd`, each getting its own row; a fourth run
//! finds the pool used up and fails before writing; the card's log then holds
//! the four runs with their rows and results.
//!
//! The records must persist across the runs, so the card is built with
//! `--power-of-two`: QEMU's sd-card then takes it as it is, and the harness
//! boots the card file itself rather than a padded copy (checked through
//! `card_used`). No copying back of the log partition is needed.

mod qemu_common;

use std::fs::File;
use std::path::Path;

use flasher_disk::fat::{first_fat, read_file};
use flasher_format::pool;
use flasher_format::record::{self, Outcome, UnitRecord, UnitRow};
use flasher_qemu::VirtualBoard;
use qemu_common::*;

const SD: VirtualBoard = VirtualBoard::Sd;

/// Shapes a hand-made pool has and the tests elsewhere do not: quoted commas
/// and quotes, UTF-8, CRLF, padded header names, a shared file and per-unit
/// files in a folder.
const CSV: &str = "hostname , site,device_key,ca\r\n\
    fab-α-001,\"Lyon, hall 2\",dev1.key,line-ca.pem\r\n\
    fab-β-002,\"São Paulo, \"\"B\"\"\",dev2.key,line-ca.pem\r\n\
    fab-γ-003,Zürich,dev3.key,line-ca.pem\r\n";

/// The card's flash-boot files the pool put there, by name.
fn unit_files(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=3 {
        std::fs::write(dir.join(format!("dev{i}.key")), format!("device key {i}\n")).unwrap();
    }
    std::fs::write(dir.join("line-ca.pem"), "-----BEGIN CERTIFICATE-----\nCA\n").unwrap();
}

/// A file from the flashed target's first FAT (its boot partition).
fn target_file(target: &Path, name: &str) -> Vec<u8> {
    let mut t = File::open(target).unwrap();
    let span = first_fat(&mut t).unwrap().expect("a FAT boot partition");
    read_file(
        flasher_disk::PartitionSlice::new(&mut t, span.0, span.1),
        name,
        u64::MAX,
    )
    .unwrap()
    .unwrap_or_else(|| panic!("{name} is not on {}", target.display()))
}

/// The unit records on the card's flasher-log partition.
fn card_records(card: &Path) -> Vec<UnitRecord> {
    let mut f = File::open(card).unwrap();
    let (_, parts) = mkflasher::disk::read_table(&mut f).unwrap();
    let log = parts
        .iter()
        .find(|p| p.name == flasher_format::card::LOG_NAME)
        .expect("a flasher-log partition");
    let mut s = mkflasher::disk::PartitionSlice::new(f, log.offset, log.size);
    record::read_all(&mut s, log.size).unwrap()
}

#[test]
fn one_card_gives_three_units_their_rows_then_refuses_the_fourth() {
    let f = fixture();
    let csv = f.path("pool-units.csv");
    std::fs::write(&csv, CSV).unwrap();
    let files = f.path("pool-files");
    unit_files(&files);
    let card = f.path("card-pool.img");
    mkflasher(&[
        "build",
        "--board",
        SD.name(),
        "--payload",
        f.bundle.to_str().unwrap(),
        "--unit-data",
        csv.to_str().unwrap(),
        "--unit-files",
        files.to_str().unwrap(),
        "--power-of-two",
        "-o",
        card.to_str().unwrap(),
    ]);
    let want = [
        ("fab-α-001", "Lyon, hall 2", "dev1.key"),
        ("fab-β-002", "São Paulo, \"B\"", "dev2.key"),
        ("fab-γ-003", "Zürich", "dev3.key"),
    ];
    for (i, (host, site, key)) in want.iter().enumerate() {
        let target = blank_target(f, &format!("pool-unit-{i}.img"), 64 << 20);
        let o = options(SD, &card, Some(target.clone()));
        let out = run(&o);
        assert_eq!(out.card_used, card, "the harness must boot the card itself");
        out.check(o.timeout, None).unwrap();
        assert_target_equals_image_outside_boot(&target, &f.os);
        let cfg: serde_json::Value =
            serde_json::from_slice(&target_file(&target, "config.json")).unwrap();
        assert_eq!(cfg["hostname"], *host, "unit {i}: {cfg}");
        assert_eq!(cfg["site"], *site);
        assert_eq!(cfg["ca"], "line-ca.pem");
        let row: UnitRow = serde_json::from_slice(&target_file(&target, pool::UNIT_FILE)).unwrap();
        assert_eq!(row.index, i as u32);
        assert_eq!(row.values["hostname"], *host);
        assert_eq!(row.values["device_key"], *key);
        assert_eq!(
            target_file(&target, &format!("{}/{key}", pool::UNITS_DIR)),
            format!("device key {}\n", i + 1).into_bytes()
        );
        assert!(target_file(&target, "units/line-ca.pem").starts_with(b"-----BEGIN"));
    }

    // The fourth unit: the pool is used up; refused before any write.
    let target = blank_target(f, "pool-unit-3.img", 64 << 20);
    let out = run(&options(SD, &card, Some(target.clone())));
    assert!(!out.succeeded());
    assert_eq!(failure_class(&out), Some(ErrorClass::PayloadInvalid));
    let msg = out.failure_message().unwrap_or_default();
    assert!(msg.contains("used up"), "{msg}");
    assert!(all_zero(&target), "the refused target was written");

    // The card's log: per run its claim (before the first write) and its
    // result, both naming the row; the fourth run's refusal names none.
    let recs = card_records(&card);
    let finals: Vec<&UnitRecord> = recs.iter().filter(|r| !r.attempt_started).collect();
    let claims: Vec<&UnitRecord> = recs.iter().filter(|r| r.attempt_started).collect();
    assert_eq!(finals.len(), 4, "{recs:#?}");
    assert_eq!(claims.len(), 3, "{recs:#?}");
    for (i, (host, _, _)) in want.iter().enumerate() {
        for r in [claims[i], finals[i]] {
            let row = r.unit_row.as_ref().expect("the run's row");
            assert_eq!(
                (row.index, row.values["hostname"].as_str()),
                (i as u32, *host)
            );
        }
        assert!(claims[i].seq < finals[i].seq);
        assert_eq!(finals[i].result, Outcome::Ok);
    }
    assert!(finals[3].unit_row.is_none());
    assert!(matches!(
        &finals[3].result,
        Outcome::Error { class: ErrorClass::PayloadInvalid, message } if message.contains("used up")
    ));

    // What a station sees: `mkflasher records CARD --json` lists the same runs
    // with their rows and results.
    let out = std::process::Command::new(mkflasher_bin())
        .args(["records", "--json"])
        .arg(&card)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let runs: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|r| r.get("attempt_started").is_none())
        .collect();
    assert_eq!(runs.len(), 4, "{listed:#?}");
    for (i, (host, _, _)) in want.iter().enumerate() {
        assert_eq!(runs[i]["unit_row"]["values"]["hostname"], *host);
        assert_eq!(runs[i]["result"]["status"], "ok");
    }
    assert!(runs[3].get("unit_row").is_none());
    assert_eq!(runs[3]["result"]["status"], "error");
    assert_eq!(runs[3]["result"]["class"], ErrorClass::PayloadInvalid as u8);
}

/// The image byte for byte outside its boot FAT (the pool's files and the
/// merged config.json land there).
fn assert_target_equals_image_outside_boot(target: &Path, image: &Path) {
    let img = std::fs::read(image).unwrap();
    let tgt = std::fs::read(target).unwrap();
    let mut t = std::io::Cursor::new(&img);
    let (off, len) = first_fat(&mut t).unwrap().unwrap();
    let (off, end) = (off as usize, (off + len) as usize);
    // As in `assert_target_equals_image`: the table fix-up may change LBA
    // 0-1 and the image's last 33 sectors.
    let (from, to) = (2 * 512, img.len() - 33 * 512);
    for range in [from..off, end..to] {
        if let Some(i) = range.clone().find(|&i| img[i] != tgt[i]) {
            panic!("target differs from the image at byte {i}");
        }
    }
}
