//! The per-unit data pool (issue 14): one row of data per unit (host name,
//! serial, keys), put on the card by `mkflasher build --unit-data FILE.csv`,
//! claimed one row per run by `/init` and written into the flashed OS.
//!
//! The host parses and validates the CSV and writes [`POOL_FILE`] (this
//! module's JSON form) to the card's `flash-boot` FAT, with the files the rows
//! name under [`UNITS_DIR`]. The board parses only the JSON (serde_json, which
//! `/init` links anyway). The pool file carries the size and SHA-256 of every
//! file in `units/`, so pinning the one pool file in a signed manifest pins
//! them all (a manifest pins at most 256 files; a pool may name thousands).
//!
//! ## Claims
//!
//! A run claims the row after the highest row index any record in the card's
//! log claimed from the same pool (same [`Pool::digest`]): the attempt-started
//! record carries the row (`record::UnitRow`) and is appended before the first
//! write. A claimed row is never handed out again, whether its run succeeded,
//! failed, or was cut short by a power cut (the claim is on the card, the
//! result never came). Rows are claimed in order, so "the highest index" is
//! also "how many rows are used up".

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::bundle::PinnedFile;
use crate::record::{UnitRecord, UnitRow};

/// The pool on the card's flash-boot FAT, in its root.
pub const POOL_FILE: &str = "units.json";
/// The folder on flash-boot (and on the target's boot FAT) holding the files
/// rows name.
pub const UNITS_DIR: &str = "units";
/// The claimed row, written beside `config.json` on the target.
pub const UNIT_FILE: &str = "flasher-unit.json";
/// The pool format version this flasher reads.
pub const VERSION: u32 = 1;
/// Largest pool file read on the board (about 100,000 rows of 150 bytes).
pub const MAX_POOL_BYTES: u64 = 16 << 20;
/// Largest row as JSON: it travels in two unit records (claim and result),
/// whose bodies are bounded by `record::MAX_BODY`.
pub const MAX_ROW_BYTES: u64 = 16 << 10;
/// Largest file in `units/` (keys and certificates are a few KiB).
pub const MAX_UNIT_FILE: u64 = 1 << 20;
/// Columns a row may not set: `installer` configures the flasher and is
/// removed from `config.json` on the way to the target.
pub const RESERVED_COLUMNS: [&str; 1] = ["installer"];

/// Errors from `pool`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the card's unit pool {POOL_FILE} is not valid: {reason}; rebuild the card with `mkflasher build --unit-data`")]
    Invalid { reason: String },
    #[error("the card's unit pool is used up: all {rows} rows were claimed by earlier runs (per the unit log); nothing was written. Build a card with a new pool (`mkflasher build --unit-data`)")]
    Exhausted { rows: u32 },
    #[error("{UNITS_DIR}/{name} on the card is {size} bytes with SHA-256 {actual}; the unit pool expects {expected_size} bytes with SHA-256 {expected}; rebuild the card")]
    FileMismatch {
        name: String,
        size: u64,
        expected_size: u64,
        actual: String,
        expected: String,
    },
    #[error("{UNITS_DIR}/{name}, named by row {row} of the unit pool, is not on the card; rebuild the card")]
    FileMissing { name: String, row: u32 },
}

impl Error {
    /// Everything here is the card's problem: class 2 ("re-write the flasher
    /// card"). The operator's fix for an exhausted pool is a new card too.
    pub fn class(&self) -> crate::ErrorClass {
        crate::ErrorClass::PayloadInvalid
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pool file's contents. A value of a row that is the name of a file in
/// `files` names that file (the host put exactly the files values name
/// there), so the format needs no per-row file list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub version: u32,
    pub columns: Vec<String>,
    /// The values of each row, in column order.
    pub rows: Vec<Vec<String>>,
    /// Every file in `units/`: name, size and SHA-256 (the manifest's pin
    /// type, whose decoder `/init` already carries).
    #[serde(default)]
    pub files: Vec<PinnedFile>,
}

/// Whether `name` may be a file in `units/`: one plain path component.
pub fn is_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && !name.chars().any(char::is_control)
}

impl Pool {
    /// Parse and check a pool file (bounds, shape, names). Checked on both
    /// sides: the host before writing it, the board before claiming.
    pub fn parse(data: &[u8]) -> Result<Pool> {
        let invalid = |reason: String| Error::Invalid { reason };
        if data.len() as u64 > MAX_POOL_BYTES {
            return Err(invalid(format!(
                "{} bytes, over the {MAX_POOL_BYTES}-byte limit",
                data.len()
            )));
        }
        let pool: Pool = serde_json::from_slice(data).map_err(|e| invalid(e.to_string()))?;
        pool.check()?;
        Ok(pool)
    }

    /// The shape rules, with the first broken one named.
    pub fn check(&self) -> Result<()> {
        let invalid = |reason: String| Err(Error::Invalid { reason });
        if self.version != VERSION {
            return invalid(format!(
                "format version {}, this flasher reads {VERSION}",
                self.version
            ));
        }
        if self.columns.is_empty() {
            return invalid("no columns".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            if c.trim().is_empty() {
                return invalid(format!("column {} has an empty name", i + 1));
            }
            if self.columns[..i].contains(c) {
                return invalid(format!("column name {c:?} appears twice"));
            }
            if RESERVED_COLUMNS.contains(&c.as_str()) {
                return invalid(format!("column name {c:?} is reserved"));
            }
        }
        if self.rows.is_empty() {
            return invalid("no rows".into());
        }
        if self.rows.len() > u32::MAX as usize {
            return invalid(format!("{} rows", self.rows.len()));
        }
        for (i, f) in self.files.iter().enumerate() {
            if !is_file_name(&f.name) {
                return invalid(format!("file name {:?} is not a plain file name", f.name));
            }
            if self.files[..i].iter().any(|o| o.name == f.name) {
                return invalid(format!("file {:?} is listed twice", f.name));
            }
        }
        for (i, r) in self.rows.iter().enumerate() {
            if r.len() != self.columns.len() {
                return invalid(format!(
                    "row {i} has {} values for {} columns",
                    r.len(),
                    self.columns.len()
                ));
            }
        }
        Ok(())
    }

    /// The pool file's bytes, as the card carries them (compact JSON, one
    /// line, then a newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        // A pool of strings, vectors and maps always serializes.
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Row `index` as a claim: its values by column name.
    pub fn row(&self, index: u32, pool_digest: &str) -> Option<UnitRow> {
        let r = self.rows.get(index as usize)?;
        // Inserted one by one: `collect` into a BTreeMap would bring its bulk
        // builder into /init, which already has `insert` (board binary size).
        let mut values = std::collections::BTreeMap::new();
        for (c, v) in self.columns.iter().zip(r) {
            values.insert(c.clone(), v.clone());
        }
        Some(UnitRow {
            index,
            pool_digest: pool_digest.to_string(),
            values,
        })
    }

    /// The files row `index` names: its values that are names in `files`,
    /// each once, in column order.
    pub fn row_files(&self, index: u32) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for v in self.rows.get(index as usize).into_iter().flatten() {
            if self.files.iter().any(|f| &f.name == v) && !out.contains(v) {
                out.push(v.clone());
            }
        }
        out
    }

    /// The next row to claim for a card whose log holds `records`, or
    /// [`Error::Exhausted`]. `pool_digest` is [`digest`] of this pool's file.
    pub fn claim(&self, records: &[UnitRecord], pool_digest: &str) -> Result<UnitRow> {
        let next = next_row(records, pool_digest);
        self.row(next, pool_digest).ok_or(Error::Exhausted {
            rows: self.rows.len() as u32,
        })
    }

    /// Check `data`, read from `units/name` on the card, against the pool.
    pub fn check_file(&self, name: &str, data: &[u8]) -> Result<()> {
        let want = self
            .files
            .iter()
            .find(|f| f.is_for(name))
            .ok_or_else(|| Error::Invalid {
                reason: format!("file {name:?} has no digest"),
            })?;
        want.check(data)
            .map_err(|(size, actual)| Error::FileMismatch {
                name: name.into(),
                size,
                expected_size: want.size,
                actual,
                expected: want.sha256.clone(),
            })
    }
}

/// SHA-256 of a pool file, lowercase hex: what claims are keyed by.
pub fn digest(pool_file: &[u8]) -> String {
    hex::encode(Sha256::digest(pool_file))
}

/// One past the highest row index claimed from the pool `pool_digest` in
/// `records` (attempt-started claims and final records alike); 0 if none.
pub fn next_row(records: &[UnitRecord], pool_digest: &str) -> u32 {
    records
        .iter()
        .filter_map(|r| r.unit_row.as_ref())
        .filter(|u| u.pool_digest == pool_digest)
        .map(|u| u.index.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// A unit record with room for a claimed row, in bytes of log (frame
/// included), measured on the largest records the init writes (a failure with
/// a long message, eMMC identity) and rounded up.
pub const RECORD_ESTIMATE: u64 = 1536;
/// Records a log holds at least without a pool (issue 14, item 2).
pub const MIN_LOG_RECORDS: u64 = 10_000;

/// The `flasher-log` size a card needs, in whole MiB: without a pool
/// (`rows` 0), room for [`MIN_LOG_RECORDS`]; with a pool of `rows` rows whose
/// largest row is `max_row_json` bytes, for a claim and a result per row twice
/// over (refused runs also leave a record; the margin keeps a card whose units
/// failed and were retried from filling up). `mkflasher build` uses the larger
/// of this and the default.
pub fn log_size_for(rows: u64, max_row_json: u64) -> u64 {
    let want = if rows == 0 {
        MIN_LOG_RECORDS * RECORD_ESTIMATE
    } else {
        rows.saturating_mul(2 * 2)
            .saturating_mul(RECORD_ESTIMATE + 2 * max_row_json)
    };
    want.div_ceil(1 << 20).saturating_mul(1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{self, Outcome, TargetIdentity};

    fn pool(rows: usize) -> Pool {
        Pool {
            version: VERSION,
            columns: vec!["hostname".into(), "serial".into(), "key".into()],
            rows: (0..rows)
                .map(|i| vec![format!("unit-{i}"), format!("S{i:04}"), format!("k{i}.pem")])
                .collect(),
            files: (0..rows)
                .map(|i| PinnedFile::new(format!("k{i}.pem"), format!("key {i}").as_bytes()))
                .collect(),
        }
    }

    fn rec(row: Option<UnitRow>, attempt: bool, ok: bool) -> UnitRecord {
        UnitRecord {
            seq: 0,
            timestamp_unix_s: None,
            flasher_version: "t".into(),
            board: "b".into(),
            target: TargetIdentity::default(),
            image_digest: String::new(),
            signer: String::new(),
            bytes_written: 0,
            phases: vec![],
            result: if ok {
                Outcome::Ok
            } else {
                Outcome::Error {
                    class: crate::ErrorClass::WriteIo,
                    message: "x".into(),
                }
            },
            attempt_started: attempt,
            unit_row: row,
            health: None,
        }
    }

    #[test]
    fn round_trips_and_checks_files() {
        let p = pool(3);
        let bytes = p.to_bytes();
        let back = Pool::parse(&bytes).unwrap();
        assert_eq!(back, p);
        let d = digest(&bytes);
        let row = back.row(1, &d).unwrap();
        assert_eq!(row.values["hostname"], "unit-1");
        assert_eq!(row.values["key"], "k1.pem");
        assert_eq!(row.pool_digest, d);
        assert_eq!(back.row_files(1), ["k1.pem"]);
        back.check_file("k1.pem", b"key 1").unwrap();
        // Read from FAT, whose names ignore ASCII case.
        back.check_file("K1.PEM", b"key 1").unwrap();
        assert!(matches!(
            back.check_file("k1.pem", b"key 2"),
            Err(Error::FileMismatch { .. })
        ));
        assert!(matches!(
            back.check_file("nope", b""),
            Err(Error::Invalid { .. })
        ));
    }

    #[test]
    fn bad_pools_are_refused() {
        // (what the refusal names, the change that breaks the pool)
        type Case = (&'static str, Box<dyn Fn(&mut Pool)>);
        let cases: Vec<Case> = vec![
            ("version", Box::new(|p| p.version = 2)),
            ("no columns", Box::new(|p| p.columns.clear())),
            ("empty name", Box::new(|p| p.columns[1] = " ".into())),
            ("twice", Box::new(|p| p.columns[1] = "hostname".into())),
            ("reserved", Box::new(|p| p.columns[2] = "installer".into())),
            ("no rows", Box::new(|p| p.rows.clear())),
            ("values", Box::new(|p| drop(p.rows[1].pop()))),
            (
                "listed twice",
                Box::new(|p| p.files.push(p.files[0].clone())),
            ),
            (
                "plain file name",
                Box::new(|p| p.files.push(PinnedFile::new("../etc/passwd", b""))),
            ),
        ];
        for (want, change) in cases {
            let mut p = pool(2);
            change(&mut p);
            match Pool::parse(&p.to_bytes()) {
                Err(Error::Invalid { reason }) => {
                    assert!(reason.contains(want), "{want}: {reason}")
                }
                other => panic!("{want}: {other:?}"),
            }
        }
        assert!(matches!(
            Pool::parse(b"{\"version\":1"),
            Err(Error::Invalid { .. })
        ));
        let huge = vec![b' '; MAX_POOL_BYTES as usize + 1];
        assert!(matches!(Pool::parse(&huge), Err(Error::Invalid { .. })));
    }

    /// Claims go in order; a failed or unfinished claim (no result after it)
    /// still uses its row; another pool's claims do not count; past the last
    /// row the pool is exhausted.
    #[test]
    fn claims_skip_every_claimed_row_and_exhaust() {
        let p = pool(3);
        let d = digest(&p.to_bytes());
        let mut log: Vec<UnitRecord> = vec![];
        assert_eq!(p.claim(&log, &d).unwrap().index, 0);
        // Run 1: claim and success.
        log.push(rec(p.row(0, &d), true, false));
        log.push(rec(p.row(0, &d), false, true));
        // A run without a pool, and one on another pool's row 5.
        log.push(rec(None, true, false));
        log.push(rec(
            Some(UnitRow {
                index: 5,
                pool_digest: "other".into(),
                ..Default::default()
            }),
            true,
            false,
        ));
        assert_eq!(p.claim(&log, &d).unwrap().index, 1);
        // Run 2: the power was cut right after its claim; no result.
        log.push(rec(p.row(1, &d), true, false));
        let third = p.claim(&log, &d).unwrap();
        assert_eq!(third.index, 2);
        assert_eq!(third.values["hostname"], "unit-2");
        // Run 3: claimed, the flash failed.
        log.push(rec(p.row(2, &d), true, false));
        log.push(rec(p.row(2, &d), false, false));
        assert!(matches!(
            p.claim(&log, &d),
            Err(Error::Exhausted { rows: 3 })
        ));
        assert_eq!(next_row(&log, "other"), 6);
    }

    /// The power cut on a real log: the claim record is appended, the result
    /// never comes (torn or absent); after the reboot the log read back hands
    /// out the next row, never the claimed one.
    #[test]
    fn power_cut_after_a_claim_never_reuses_the_row() {
        let p = pool(4);
        let d = digest(&p.to_bytes());
        let cap = 64 << 10;
        let mut dev = std::io::Cursor::new(vec![0u8; cap as usize]);
        let claim = p.claim(&[], &d).unwrap();
        let mut started = record::attempt_started(&rec(None, false, false));
        started.unit_row = Some(claim.clone());
        record::append(&mut dev, cap, &started).unwrap();
        // The result was being written when the power went: half a frame.
        let end = record::scan(&mut dev, cap).unwrap().end;
        let mut result = rec(Some(claim), false, true);
        result.seq = 2;
        let body = serde_json::to_vec(&result).unwrap();
        let frame_head = [&record::MAGIC[..], &(body.len() as u32).to_le_bytes()].concat();
        let torn: Vec<u8> = frame_head
            .iter()
            .chain(&body[..body.len() / 2])
            .copied()
            .collect();
        dev.get_mut()[end as usize..end as usize + torn.len()].copy_from_slice(&torn);
        let after_reboot = record::read_all(&mut dev, cap).unwrap();
        assert_eq!(after_reboot.len(), 1);
        let next = p.claim(&after_reboot, &d).unwrap();
        assert_eq!(next.index, 1, "the claimed row 0 must not come back");
    }

    /// Item 2: a default log holds 10,000 records of the largest kind the init
    /// writes, and a pool's log holds a claim and a result per row twice over.
    #[test]
    fn log_sizes_hold_what_they_promise() {
        let big = UnitRecord {
            seq: 99_999,
            timestamp_unix_s: Some(1_800_000_000),
            flasher_version: "0.1.0".into(),
            board: "beaglebone-black".into(),
            target: TargetIdentity {
                device: "mmcblk1".into(),
                size_bytes: 3_867_148_288,
                cid: Some("fe014a4d4d4333474a0123456789abcd".into()),
                serial: Some("0x0123abcd".into()),
                model: Some("MMC04G".into()),
            },
            image_digest: "ab".repeat(32),
            signer: format!("ed25519:{}", "cd".repeat(16)),
            bytes_written: 3_867_148_288,
            phases: ["preflight", "write", "verify", "finish"]
                .iter()
                .map(|p| record::PhaseTiming {
                    phase: (*p).into(),
                    duration_ms: 123_456,
                })
                .collect(),
            result: Outcome::Error {
                class: crate::ErrorClass::VerifyMismatch,
                message: format!(
                    "write and verify: verify mismatch at bytes {}..{} (image data); {}",
                    u64::MAX,
                    u64::MAX,
                    "x".repeat(200)
                ),
            },
            attempt_started: false,
            unit_row: None,
            health: Some(record::StorageHealth {
                life_time: Some("0x01 0x02".into()),
                pre_eol_info: Some("0x01".into()),
                rev: Some("0x8".into()),
                date: Some("01/2020".into()),
                manfid: Some("0x000015".into()),
            }),
        };
        let frame =
            |r: &UnitRecord| serde_json::to_vec(r).unwrap().len() as u64 + record::FRAME_OVERHEAD;
        assert!(frame(&big) <= RECORD_ESTIMATE, "{} bytes", frame(&big));
        let plain = log_size_for(0, 0);
        assert!(plain >= MIN_LOG_RECORDS * frame(&big));
        assert_eq!(plain, crate::card::DEFAULT_LOG_SIZE);
        // A pool of 5,000 rows of about 300 bytes of JSON.
        let p = pool(1);
        let mut row = p.row(0, &"ef".repeat(32)).unwrap();
        row.values.insert("wifi_psk".into(), "p".repeat(200));
        let row_json = serde_json::to_vec(&row).unwrap().len() as u64;
        let mut with_row = big.clone();
        with_row.unit_row = Some(row);
        let size = log_size_for(5_000, row_json);
        assert!(size >= 5_000 * 2 * 2 * frame(&with_row), "{size}");
        assert_eq!(size % (1 << 20), 0);
    }
}
