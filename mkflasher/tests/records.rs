//! `mkflasher records` on real cards (GPT and MBR images built by the card
//! builder) whose logs hold records appended the way the board appends them:
//! the table, JSON and CSV parsed back, the SQLite import (counts, queries by
//! serial, CID and unit value, idempotence, two cards, a cleared log), and
//! the errors.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use flasher_format::bundle::BundleWriter;
use flasher_format::record::{
    self, Outcome, PhaseTiming, StorageHealth, TargetIdentity, UnitRecord, UnitRow,
};
use mkflasher::cmd::records::{render, Args};
use mkflasher::records::{self, db, Entry};
use mkflasher::{card, disk};

const T0: u64 = 1_796_000_000;

/// A card for `board` built by the card builder (GPT for x86 boards, MBR
/// for U-Boot ones), with an empty 256 KiB log.
fn build_card(dir: &Path, board: &str, name: &str) -> PathBuf {
    let mut w = BundleWriter::new(Default::default(), Cursor::new(Vec::new())).unwrap();
    w.push_data(&[0x5a; 100_000]).unwrap();
    let mut bundle = Vec::new();
    w.finish(&mut bundle).unwrap();
    let payload = dir.join(format!("{name}.bundle"));
    std::fs::write(&payload, bundle).unwrap();
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, [0x4b; 4096]).unwrap();
    let sdboot = dir.join("systemd-bootx64.efi");
    std::fs::write(&sdboot, b"MZ fake systemd-boot").unwrap();
    let spec = card::CardSpec {
        board: boards::find(board).unwrap(),
        payload,
        kernel,
        initramfs: vec![7; 4096],
        systemd_boot: Some(sdboot),
        bootloader_files: None,
        parts: card::BootParts::default(),
        cmdline_extra: String::new(),
        log_size: 256 << 10,
        boot_size: 0,
        image_size: 0,
        unit_files: vec![],
    };
    let out = dir.join(format!("{name}.img"));
    card::build_card(&out, &spec).unwrap();
    out
}

/// The card's log partition, writable, and its size.
fn open_log(card_path: &Path) -> (disk::PartitionSlice<std::fs::File>, u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(card_path)
        .unwrap();
    let (log, p) = disk::open_partition(f, card::LOG_NAME, Some(card::LOG_NUMBER)).unwrap();
    (log, p.size)
}

/// Append `recs` to the card's log as the board does; returns their offsets.
fn append(card_path: &Path, recs: &[UnitRecord]) -> Vec<u64> {
    let (mut log, size) = open_log(card_path);
    recs.iter()
        .map(|r| record::append(&mut log, size, r).unwrap())
        .collect()
}

/// Append `rec` and then cut it off half way, as a power cut would.
fn append_torn(card_path: &Path, rec: &UnitRecord) {
    let at = append(card_path, std::slice::from_ref(rec))[0];
    let (mut log, size) = open_log(card_path);
    let end = record::scan(&mut log, size).unwrap().end;
    let cut = at + (end - at) / 2;
    use std::io::{Seek, SeekFrom, Write};
    log.seek(SeekFrom::Start(cut)).unwrap();
    log.write_all(&vec![0u8; (end - cut) as usize]).unwrap();
}

fn clear_log(card_path: &Path) {
    let (mut log, size) = open_log(card_path);
    use std::io::Write;
    log.write_all(&vec![0u8; size as usize]).unwrap();
}

fn target(n: u32) -> TargetIdentity {
    TargetIdentity {
        device: "mmcblk1".into(),
        size_bytes: 3_867_148_288,
        cid: Some(format!("fe014a4d4d4333474a{n:014x}")),
        serial: Some(format!("0x{n:08x}")),
        model: Some("MMC04G".into()),
    }
}

fn row(index: u32, keys: &[(&str, String)]) -> UnitRow {
    UnitRow {
        index,
        pool_digest: "cd".repeat(32),
        values: keys
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// A finished run on unit `n` at `T0 + t` seconds.
fn run(n: u32, t: Option<u64>, ok: bool) -> UnitRecord {
    UnitRecord {
        seq: 0,
        timestamp_unix_s: t.map(|t| T0 + t),
        flasher_version: "0.1.0".into(),
        board: "beaglebone-black".into(),
        target: target(n),
        image_digest: "ab".repeat(32),
        signer: "ed25519:00112233445566778899aabbccddeeff".into(),
        bytes_written: 1_000_000 + u64::from(n),
        phases: vec![
            PhaseTiming {
                phase: "write".into(),
                duration_ms: 61_000 + u64::from(n),
            },
            PhaseTiming {
                phase: "verify".into(),
                duration_ms: 20_500,
            },
        ],
        result: if ok {
            Outcome::Ok
        } else {
            Outcome::Error {
                class: flasher_format::ErrorClass::VerifyMismatch,
                message: format!("verify mismatch at bytes {n}..{}", n + 4096),
            }
        },
        attempt_started: false,
        unit_row: None,
        health: None,
    }
}

fn health(life: &str, eol: &str) -> StorageHealth {
    StorageHealth {
        life_time: Some(life.into()),
        pre_eol_info: Some(eol.into()),
        rev: Some("0x8".into()),
        date: Some("05/2019".into()),
        manfid: Some("0x000015".into()),
    }
}

/// Row `i` of card A's pool: hostname unit-I, serial SI, and a Wi-Fi key.
fn pool_row(i: u32, psk: &str) -> UnitRow {
    row(
        i,
        &[
            ("hostname", format!("unit-{i}")),
            ("serial", format!("S{i}")),
            ("wifi_psk", psk.into()),
        ],
    )
}

/// Card A (GPT): unit 1 claims row 0 and succeeds (with health); unit 2's
/// attempt-started record; unit 2 fails with row 1; then a torn record.
fn card_a_records() -> Vec<UnitRecord> {
    let mut r1 = run(1, Some(10), true);
    r1.unit_row = Some(pool_row(0, "p, \"q\""));
    r1.health = Some(health("0x01 0x02", "0x01"));
    let started = record::attempt_started(&run(2, Some(30), false));
    let mut r3 = run(2, Some(90), false);
    r3.unit_row = Some(pool_row(1, "x"));
    r3.health = Some(health("0x0a 0x0b", "0x03"));
    vec![r1, started, r3]
}

/// Card B (MBR): unit 3 at t=20 (row with an extra key), unit 4 without a
/// clock (sorts after unit 3 on its card), unit 5 at t=60 without a row.
fn card_b_records() -> Vec<UnitRecord> {
    let mut r1 = run(3, Some(20), true);
    r1.board = "other-board".into();
    r1.unit_row = Some(row(
        0,
        &[
            ("hostname", "b-0".into()),
            ("mac", "02:00:00:00:00:03".into()),
        ],
    ));
    let r2 = run(4, None, true);
    let r3 = run(5, Some(60), true);
    vec![r1, r2, r3]
}

struct Cards {
    _t: tempfile::TempDir,
    dir: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

fn cards() -> Cards {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let a = build_card(&dir, "qemu-x86_64-nuc", "a");
    append(&a, &card_a_records());
    append_torn(&a, &run(9, Some(200), true));
    let b = build_card(&dir, "beaglebone-black", "b");
    append(&b, &card_b_records());
    Cards { _t: t, dir, a, b }
}

fn args(cards: &[&Path]) -> Args {
    Args {
        cards: cards.iter().map(|p| p.to_path_buf()).collect(),
        json: false,
        csv: false,
        db: None,
    }
}

/// (card file stem, seq) in output order.
fn order(entries: &[Entry]) -> Vec<(String, u64)> {
    entries
        .iter()
        .map(|e| {
            let stem = Path::new(&e.card.path).file_stem().unwrap();
            (stem.to_string_lossy().into_owned(), e.record.seq)
        })
        .collect()
}

#[test]
fn json_lists_every_field_merged_in_time_order() {
    let c = cards();
    let out = render(&Args {
        json: true,
        ..args(&[&c.a, &c.b])
    })
    .unwrap();
    let entries: Vec<Entry> = serde_json::from_str(&out).unwrap();
    // The torn fourth record of card A is not listed. Times: a1 10, b1 20,
    // b2 none (stays after b1), a2 30, b3 60, a3 90.
    let want = [("a", 1), ("b", 1), ("b", 2), ("a", 2), ("b", 3), ("a", 3)];
    assert_eq!(
        order(&entries),
        want.map(|(c, s)| (c.to_string(), s)).to_vec()
    );
    let a: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.card.path.ends_with("a.img"))
        .collect();
    // Every record field round-trips, unit row and health included.
    for (e, mut want) in a.iter().zip(card_a_records()) {
        want.seq = e.record.seq;
        assert_eq!(e.record, want);
    }
    assert!(a[1].record.attempt_started && !a[0].record.attempt_started);
    assert_eq!(a[0].time.as_deref(), Some(records::utc(T0 + 10).as_str()));
    assert_eq!(a[0].offset, 0);
    assert!(a[1].offset > 0 && a[2].offset > a[1].offset);
    // Card identities: the GPT disk GUID and the MBR disk signature.
    assert!(a[0].card.id.starts_with("gpt:") && a[0].card.id.len() == 4 + 36);
    let b = entries
        .iter()
        .find(|e| e.card.path.ends_with("b.img"))
        .unwrap();
    assert!(b.card.id.starts_with("mbr:") && b.card.id.len() == 4 + 8);
    // Log digests differ record to record.
    let digests: std::collections::BTreeSet<_> = entries.iter().map(|e| &e.log_digest).collect();
    assert_eq!(digests.len(), entries.len());
    // The raw JSON carries the unit row and health objects whole.
    let raw: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(raw[0]["unit_row"]["values"]["wifi_psk"], "p, \"q\"");
    assert_eq!(raw[0]["health"]["pre_eol_info"], "0x01");
    assert_eq!(raw[0]["result"]["status"], "ok");
    assert_eq!(raw[5]["result"]["class"], 5);
}

#[test]
fn csv_has_a_column_per_field_and_unit_key() {
    let c = cards();
    let out = render(&Args {
        csv: true,
        ..args(&[&c.a, &c.b])
    })
    .unwrap();
    let mut rd = csv::Reader::from_reader(out.as_bytes());
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<BTreeMap<String, String>> = rd
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(String::from))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 6);
    for col in records::CSV_COLUMNS.iter().chain(&records::CSV_HEALTH) {
        assert!(header.iter().any(|h| h == col), "{col} missing: {header:?}");
    }
    // The union of the unit-row keys of both cards.
    let units: Vec<&String> = header.iter().filter(|h| h.starts_with("unit.")).collect();
    assert_eq!(
        units,
        ["unit.hostname", "unit.mac", "unit.serial", "unit.wifi_psk"]
    );
    assert!(header.iter().any(|h| h == "phase.write_ms"));
    let first = &rows[0];
    assert_eq!(first["card_path"], c.a.display().to_string());
    assert_eq!(first["unit.hostname"], "unit-0");
    assert_eq!(
        first["unit.wifi_psk"], "p, \"q\"",
        "quoted, comma and quotes kept"
    );
    assert_eq!(first["unit.mac"], "");
    assert_eq!(first["unit_index"], "0");
    assert_eq!(first["health.life_time"], "0x01 0x02");
    assert_eq!(first["phase.write_ms"], "61001");
    assert_eq!(first["serial"], "0x00000001");
    assert_eq!(first["status"], "ok");
    assert_eq!(rows[1]["unit.mac"], "02:00:00:00:00:03");
    assert_eq!(rows[2]["time"], "", "unit 4 ran without a clock");
    assert_eq!(rows[2]["unit_index"], "");
    let started = &rows[3];
    assert_eq!(started["status"], "started");
    assert_eq!(started["class"], "4");
    let failed = &rows[5];
    assert_eq!(
        (failed["status"].as_str(), failed["class"].as_str()),
        ("error", "5")
    );
    assert_eq!(failed["health.pre_eol_info"], "0x03");
    assert!(failed["message"].starts_with("verify mismatch"));
}

#[test]
fn table_has_one_line_per_run_and_every_column() {
    let c = cards();
    let out = render(&args(&[&c.a, &c.b])).unwrap();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .collect();
    let mut want_header: Vec<&str> = records::TABLE_COLUMNS.to_vec();
    want_header.push(records::TABLE_RESULT);
    assert_eq!(lines[0], want_header);
    assert_eq!(lines.len(), 7);
    let col = |name: &str| want_header.iter().position(|h| *h == name).unwrap();
    for l in &lines[1..] {
        assert_eq!(l.len(), want_header.len(), "{l:?}");
    }
    assert_eq!(lines[1][col("SERIAL")], "0x00000001");
    assert_eq!(lines[1][col("CID")], target(1).cid.unwrap());
    assert_eq!(lines[1][col("TIME")], records::utc(T0 + 10));
    assert!(lines[1][col("UNIT")].starts_with("#0 hostname=unit-0"));
    assert!(lines[1][col("HEALTH")].contains("pre-eol 0x01"));
    assert!(lines[1][col("PHASES")].contains("write 61.0s"));
    assert_eq!(lines[1][col("RESULT")], "ok");
    assert_eq!(lines[3][col("TIME")], "-");
    assert!(lines[4][col("RESULT")].starts_with("started"));
    assert!(lines[6][col("RESULT")].starts_with("error"));
}

/// status, error class, unit index, pre-EOL info.
type ByUnit = (String, Option<i64>, Option<i64>, Option<String>);

/// The one value `sql` selects.
fn one<T: rusqlite::types::FromSql>(conn: &rusqlite::Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn count(conn: &rusqlite::Connection, table: &str) -> i64 {
    one(conn, &format!("SELECT count(*) FROM {table}"))
}

fn counts(db: &Path) -> [i64; 3] {
    let conn = rusqlite::Connection::open(db).unwrap();
    ["records", "phases", "unit_values"].map(|t| count(&conn, t))
}

fn import(db: &Path, cards: &[&Path]) -> String {
    render(&Args {
        db: Some(db.to_path_buf()),
        ..args(cards)
    })
    .unwrap()
}

/// "N new record(s) of M ..." -> N.
fn new_count(summary: &str) -> usize {
    summary.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn sqlite_import_is_idempotent_and_queryable() {
    let c = cards();
    let db_path = c.dir.join("station.sqlite");
    assert_eq!(new_count(&import(&db_path, &[&c.a])), 3);
    // Phases: 2 + 0 (the attempt-started record has none) + 2.
    assert_eq!(counts(&db_path), [3, 4, 6]);
    // Again: nothing new, the same rows.
    assert_eq!(new_count(&import(&db_path, &[&c.a])), 0);
    assert_eq!(counts(&db_path), [3, 4, 6]);
    // Both cards: only card B's records are new.
    assert_eq!(new_count(&import(&db_path, &[&c.a, &c.b])), 3);
    assert_eq!(counts(&db_path), [6, 10, 8]);

    let conn = rusqlite::Connection::open(&db_path).unwrap();
    // By serial: unit 2's attempt and its failure, in log order.
    let mut q = conn
        .prepare(
            "SELECT status, error_class, unit_index, pre_eol_info FROM records
             WHERE serial = ?1 ORDER BY card_id, log_offset",
        )
        .unwrap();
    let got: Vec<ByUnit> = q
        .query_map(["0x00000002"], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        got,
        vec![
            ("started".into(), Some(4), None, None),
            ("error".into(), Some(5), Some(1), Some("0x03".into())),
        ]
    );
    // By CID, through its index.
    let cid = target(3).cid.unwrap();
    let (board, status): (String, String) = conn
        .query_row(
            "SELECT board, status FROM records WHERE cid = ?1",
            [&cid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((board.as_str(), status.as_str()), ("other-board", "ok"));
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT * FROM records WHERE cid = ?1",
            [&cid],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("records_cid"), "{plan}");
    // Which unit got hostname unit-1, and its other values.
    let serial: String = one(
        &conn,
        "SELECT r.serial FROM records r JOIN unit_values u ON u.record_id = r.id
         WHERE u.key = 'hostname' AND u.value = 'unit-1'",
    );
    assert_eq!(serial, "0x00000002");
    let psk: String = one(
        &conn,
        "SELECT u.value FROM records r JOIN unit_values u ON u.record_id = r.id
         WHERE r.serial = '0x00000001' AND u.key = 'wifi_psk'",
    );
    assert_eq!(psk, "p, \"q\"");
    // Phase timings and the whole record body.
    let write_ms: i64 = one(
        &conn,
        "SELECT p.duration_ms FROM records r JOIN phases p ON p.record_id = r.id
         WHERE r.serial = '0x00000005' AND p.phase = 'write'",
    );
    assert_eq!(write_ms, 61_005);
    let body: String = one(
        &conn,
        "SELECT body FROM records WHERE serial = '0x00000004'",
    );
    let rec: UnitRecord = serde_json::from_str(&body).unwrap();
    assert_eq!(rec.target, target(4));
    let version: i64 = one(&conn, "SELECT version FROM schema_version");
    assert_eq!(version, db::SCHEMA_VERSION);
}

/// A log cleared and written again: the new record at offset 0 is new, not a
/// duplicate of the old one there. A byte copy of the card that then got one
/// more record adds just that record.
#[test]
fn cleared_log_and_copied_card() {
    let c = cards();
    let db_path = c.dir.join("station.sqlite");
    let copy = c.dir.join("a-copy.img");
    std::fs::copy(&c.a, &copy).unwrap();
    assert_eq!(new_count(&import(&db_path, &[&c.a])), 3);

    append(&copy, &[run(7, Some(500), true)]);
    assert_eq!(new_count(&import(&db_path, &[&copy])), 1);

    clear_log(&c.a);
    let again = run(1, Some(10), true); // unit 1 again, same time
    assert_eq!(append(&c.a, &[again]), vec![0]);
    assert_eq!(new_count(&import(&db_path, &[&c.a])), 1);
    assert_eq!(new_count(&import(&db_path, &[&c.a, &copy])), 0);
    assert_eq!(counts(&db_path)[0], 5);
}

#[test]
fn foreign_and_newer_databases_are_refused() {
    let c = cards();
    let newer = c.dir.join("newer.sqlite");
    import(&newer, &[&c.b]);
    let conn = rusqlite::Connection::open(&newer).unwrap();
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    let e = render(&Args {
        db: Some(newer.clone()),
        ..args(&[&c.b])
    })
    .unwrap_err();
    assert!(
        matches!(
            e,
            mkflasher::Error::Records(records::Error::Db(db::Error::Version {
                found: 99,
                known: 1,
                ..
            }))
        ),
        "{e}"
    );
    let foreign = c.dir.join("foreign.sqlite");
    let conn = rusqlite::Connection::open(&foreign).unwrap();
    conn.execute("CREATE TABLE records (x)", []).unwrap();
    drop(conn);
    let e = db::import(&foreign, &[], 0).unwrap_err();
    assert!(matches!(e, db::Error::Foreign { .. }), "{e}");
}

#[test]
fn cards_without_a_log_or_unreadable_are_clear_errors() {
    let t = tempfile::tempdir().unwrap();
    // Missing file.
    let missing = t.path().join("nope.img");
    let e = records::read_card(&missing).unwrap_err();
    assert!(
        matches!(&e, records::Error::Open { path, .. } if *path == missing),
        "{e}"
    );
    // Not a partitioned disk.
    let zeros = t.path().join("zeros.img");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let e = records::read_card(&zeros).unwrap_err();
    assert!(matches!(e, records::Error::NotACard { .. }), "{e}");
    // Partitioned, but no flasher-log (GPT: by name; MBR: no partition 3).
    for table in [disk::Table::Gpt, disk::Table::Mbr] {
        let p = t.path().join(format!("{table:?}.img"));
        let parts = ["flash-boot", "flasher-payload"].map(|name| disk::PartSpec {
            name: name.into(),
            kind: disk::PartKind::Raw,
            size: 1 << 20,
            bootable: false,
            contents: disk::Contents::Zero,
        });
        disk::write_disk(&p, table, &parts).unwrap();
        let e = records::read_card(&p).unwrap_err();
        assert!(
            matches!(&e, records::Error::NoLog { table: t, seen, .. } if *t == table && !seen.is_empty()),
            "{e}"
        );
    }
    // A record with a valid checksum that is not a unit record.
    let dir = t.path();
    let card_path = build_card(dir, "qemu-x86_64-nuc", "bad");
    let (mut log, _) = open_log(&card_path);
    let body = br#"{"seq":1,"board":5}"#;
    let mut frame = record::MAGIC.to_vec();
    frame.extend((body.len() as u32).to_le_bytes());
    frame.extend(body);
    let crc = crc32(&frame);
    frame.extend(crc.to_le_bytes());
    use std::io::Write;
    log.write_all(&frame).unwrap();
    let e = records::read_card(&card_path).unwrap_err();
    assert!(
        matches!(
            e,
            records::Error::Log {
                source: record::Error::Undecodable { offset: 0, .. },
                ..
            }
        ),
        "{e}"
    );
}

/// CRC-32/ISO-HDLC, bitwise (the record frame checksum).
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for b in data {
        c ^= u32::from(*b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// One output at a time, and at least one card.
#[test]
fn command_line() {
    use clap::Parser;
    let parse = |argv: &[&str]| Cli::try_parse_from([&["records"], argv].concat());
    let a = parse(&["a.img", "/dev/sdb", "--db", "s.sqlite"])
        .unwrap()
        .args;
    assert_eq!(a.cards, [PathBuf::from("a.img"), PathBuf::from("/dev/sdb")]);
    assert_eq!(a.db, Some(PathBuf::from("s.sqlite")));
    for bad in [
        &["a.img", "--json", "--csv"][..],
        &["a.img", "--json", "--db", "s"],
        &["a.img", "--csv", "--db", "s"],
    ] {
        let e = parse(bad).err().unwrap();
        assert_eq!(
            e.kind(),
            clap::error::ErrorKind::ArgumentConflict,
            "{bad:?}"
        );
    }
    let e = parse(&["--json"]).err().unwrap();
    assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
}
