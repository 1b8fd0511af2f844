//! QEMU scenario for the per-unit data pool (issues 14 and 25), through the
//! command a user runs. ONE card with a two-row pool, built by `mkflasher
//! build` without special options, is flashed three times with `mkflasher
//! qemu` on `qemu-x86_64-sd`: two targets each get their own row; the third
//! run finds the pool used up and is refused before any write (its target
//! unchanged); `mkflasher records CARD` then lists the three runs.
//!
//! The card's size is not a power of two, so QEMU's sd-card cannot take it
//! as it is: the harness boots a padded copy and copies what the board wrote
//! (the claims and the records, in `flasher-log`) back to the card, which is
//! otherwise left byte for byte as built (qemu-fixtures `card_writes`).
//!
//! Each run also writes `--json` and `--junit` (issue 25 item 2), read back
//! here: the verdict, the phases, the blink class, the unit record and the
//! console log.

mod qemu_common;

use std::fs::File;
use std::path::Path;
use std::process::Command;

use flasher_disk::fat::{first_fat, read_file};
use flasher_format::pool;
use flasher_format::record::{Outcome, UnitRow};
use flasher_qemu::{Verdict, VirtualBoard};
use mkflasher::qemu_report::Report;
use qemu_common::*;

const SD: VirtualBoard = VirtualBoard::Sd;

/// Shapes a hand-made pool has and the tests elsewhere do not: quoted commas
/// and quotes, UTF-8, CRLF, padded header names, a shared file and per-unit
/// files in a folder.
const CSV: &str = "hostname , site,device_key,ca\r\n\
    fab-α-001,\"Lyon, hall 2\",dev1.key,line-ca.pem\r\n\
    fab-β-002,\"São Paulo, \"\"B\"\"\",dev2.key,line-ca.pem\r\n";

/// The card's flash-boot files the pool put there, by name.
fn unit_files(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=2 {
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

/// The card's `flasher-log` partition: (offset, size).
fn log_partition(card: &Path) -> (u64, u64) {
    let mut f = File::open(card).unwrap();
    let (_, parts) = mkflasher::disk::read_table(&mut f).unwrap();
    let log = parts
        .iter()
        .find(|p| p.name == flasher_format::card::LOG_NAME)
        .expect("a flasher-log partition");
    (log.offset, log.size)
}

/// `mkflasher qemu` as a user runs it, with both reports; returns whether it
/// exited 0, and the parsed JSON report and the JUnit XML.
fn mkflasher_qemu(card: &Path, target: &Path, name: &str) -> (bool, Report, String) {
    let f = fixture();
    let (json, junit) = (
        f.path(&format!("{name}.json")),
        f.path(&format!("{name}.xml")),
    );
    let _g = vm_lock();
    let out = Command::new(mkflasher_bin())
        .args(["qemu", "--board", SD.name()])
        .arg(card)
        .arg("--target")
        .arg(target)
        .args(["--timeout", &TIMEOUT.as_secs().to_string()])
        .arg("--json")
        .arg(&json)
        .arg("--junit")
        .arg(&junit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("mkflasher qemu ({name}): {}", stderr.trim_end());
    let report: Report = serde_json::from_slice(&std::fs::read(&json).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", json.display()));
    let xml = std::fs::read_to_string(&junit).unwrap();
    (out.status.success(), report, xml)
}

/// The phases a report lists, by name.
fn phase_list(r: &Report) -> Vec<Phase> {
    r.phases.iter().map(|p| p.phase).collect()
}

#[test]
fn one_card_gives_two_units_their_rows_then_refuses_the_third() {
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
        "-o",
        card.to_str().unwrap(),
    ]);
    let built = std::fs::read(&card).unwrap();
    assert!(
        !(built.len() as u64).is_power_of_two(),
        "the scenario needs a card QEMU's sd-card cannot take as it is"
    );
    let (log_at, log_len) = log_partition(&card);
    let in_log = |(off, len): (u64, u64)| off >= log_at && off + len <= log_at + log_len;

    let want = [
        ("fab-α-001", "Lyon, hall 2", "dev1.key"),
        ("fab-β-002", "São Paulo, \"B\"", "dev2.key"),
    ];
    for (i, (host, site, key)) in want.iter().enumerate() {
        let target = blank_target(f, &format!("pool-unit-{i}.img"), 64 << 20);
        let (ok, report, xml) = mkflasher_qemu(&card, &target, &format!("pool-unit-{i}"));
        assert!(ok, "unit {i}: {:?}", report.message);
        assert_eq!(report.verdict, Verdict::Success);
        let phases = phase_list(&report);
        for p in [Phase::Writing, Phase::Verifying, Phase::Success] {
            assert!(phases.contains(&p), "unit {i}: {phases:?}");
        }
        assert_eq!(phases.last(), Some(&Phase::Success));
        let writing = report.phases.iter().find(|p| p.phase == Phase::Writing);
        assert!(
            writing.is_some_and(|p| p.duration_ms > 0),
            "{:?}",
            report.phases
        );
        assert!(report.error_class.is_none() && report.message.is_none());
        // The record the board appended, read back from the card.
        let rec = report.unit_record.as_ref().expect("the run's unit record");
        assert_eq!(rec.record.result, Outcome::Ok);
        assert!(!rec.record.attempt_started);
        let row = rec.record.unit_row.as_ref().expect("the run's row");
        assert_eq!(
            (row.index, row.values["hostname"].as_str()),
            (i as u32, *host)
        );
        // The harness booted a padded copy and copied the board's writes
        // back: only into the log partition.
        let writes = report.card_writes.as_ref().expect("card writes");
        assert!(
            !writes.in_place && !writes.copied_back.is_empty(),
            "{writes:?}"
        );
        assert!(writes.copied_back.iter().all(|r| in_log(*r)), "{writes:?}");
        let console = report.console_log.as_ref().expect("a console log path");
        assert!(std::fs::read_to_string(console)
            .unwrap()
            .contains("flasher"));
        assert!(
            xml.contains(r#"<testsuite name="mkflasher qemu" tests="1" failures="0" errors="0""#),
            "{xml}"
        );
        assert!(!xml.contains("<failure"), "{xml}");

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

    // The third unit: the pool is used up; refused before any write. The
    // target holds a pattern that must still be there.
    let target = f.path("pool-unit-2.img");
    let pattern: Vec<u8> = (0..64u32 << 20).map(|i| (i % 253) as u8).collect();
    std::fs::write(&target, &pattern).unwrap();
    let (ok, report, xml) = mkflasher_qemu(&card, &target, "pool-unit-2");
    assert!(!ok, "the third run exited 0");
    assert_eq!(report.verdict, Verdict::Refused);
    assert!(
        !phase_list(&report).contains(&Phase::Writing),
        "{:?}",
        report.phases
    );
    assert_eq!(phase_list(&report).last(), Some(&Phase::Failure));
    let class = report.error_class.as_ref().expect("a blink class");
    assert_eq!(
        (class.class, class.meaning.as_str()),
        (ErrorClass::PayloadInvalid, "payload invalid")
    );
    let msg = report.message.clone().unwrap_or_default();
    assert!(msg.contains("used up"), "{msg}");
    let rec = report.unit_record.as_ref().expect("the refusal's record");
    assert!(rec.record.unit_row.is_none());
    assert!(matches!(
        &rec.record.result,
        Outcome::Error { class: ErrorClass::PayloadInvalid, message } if message.contains("used up")
    ));
    assert!(
        std::fs::read(&target).unwrap() == pattern,
        "the refused target was written"
    );
    assert!(
        xml.contains(r#"tests="1" failures="1" errors="0""#),
        "{xml}"
    );
    assert!(
        xml.contains(r#"type="refused: class 2 (payload invalid)""#),
        "{xml}"
    );
    assert!(xml.contains("used up"), "{xml}");

    // The card: byte for byte as built outside its log, whose records
    // `mkflasher records CARD` lists: per flashed unit its claim (before the
    // first write) and its result, both naming the row; the refusal, no row.
    let now = std::fs::read(&card).unwrap();
    assert_eq!(now.len(), built.len(), "the card's size changed");
    let (a, b) = (log_at as usize, (log_at + log_len) as usize);
    assert!(
        now[..a] == built[..a] && now[b..] == built[b..],
        "the card changed outside its log"
    );
    let table = records_of(&card, &[]);
    let lines: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(lines.len(), 5, "two claims and three results:\n{table}");
    let results: Vec<&&str> = lines.iter().filter(|l| !l.contains("started: ")).collect();
    assert_eq!(results.len(), 3, "{table}");
    for (i, (host, _, _)) in want.iter().enumerate() {
        assert!(results[i].trim_end().ends_with(" ok"), "{table}");
        assert!(
            results[i].contains(&format!("#{i} ")) && results[i].contains(host),
            "{table}"
        );
    }
    assert!(
        results[2].contains("error: class 2 (payload invalid)"),
        "{table}"
    );
    assert!(results[2].contains("used up"), "{table}");
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&records_of(&card, &["--json"])).unwrap();
    let runs: Vec<&serde_json::Value> = listed
        .iter()
        .filter(|r| r.get("attempt_started").is_none())
        .collect();
    assert_eq!(runs.len(), 3, "{listed:#?}");
    for (i, (host, _, _)) in want.iter().enumerate() {
        assert_eq!(runs[i]["unit_row"]["values"]["hostname"], *host);
        assert_eq!(runs[i]["result"]["status"], "ok");
    }
    assert!(runs[2].get("unit_row").is_none());
    assert_eq!(runs[2]["result"]["status"], "error");
    assert_eq!(runs[2]["result"]["class"], ErrorClass::PayloadInvalid as u8);
}

/// `mkflasher records CARD ARGS...`, what a station sees.
fn records_of(card: &Path, args: &[&str]) -> String {
    let out = Command::new(mkflasher_bin())
        .arg("records")
        .args(args)
        .arg(card)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
