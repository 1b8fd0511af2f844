//! The unit log: the records on the card's `flasher-log` partition, one per
//! attempt and one per result (docs/factory.md). Reading, scanning and appending
//! them; the checks before the first write (room for this run's records, the
//! count of this unit's failed attempts) and the attempt-started record, which
//! also carries the per-unit data row the run claims; and the record of a run
//! (the target's identity, the write summary, the outcome). The record format
//! itself is `flasher_format::record`.

use flasher_format::io::IoContext;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::time::SystemTime;

use flasher::config_inject::UnitData;
use flasher::pipeline::WriteReport;
use flasher::storage::Disk;
use flasher_format::cmdline::Options;
use flasher_format::pool;
use flasher_format::record::{self, PhaseTiming, TargetIdentity, UnitRecord, UnitRow};
use flasher_format::Phase;

use crate::real::Real;
use crate::run::{RunRecord, WriteSummary};
use crate::Error;

/// Room kept for one unit record in the log, checked before the first write.
const RECORD_ROOM: u64 = 4096;

/// Every intact record in the unit log at `path`.
pub fn read_log(path: &Path) -> crate::Result<Vec<UnitRecord>> {
    Ok(scan_log(path)?
        .0
        .records
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Scan the unit log at `path`: its records and where they end, and its size.
fn scan_log(path: &Path) -> crate::Result<(record::Scan, u64)> {
    let ctx = |what: &str| format!("{what} unit log {}", path.display());
    let mut f = File::open(path).with_context(|| ctx("open"))?;
    let capacity = f.seek(SeekFrom::End(0)).with_context(|| ctx("size of"))?;
    Ok((record::scan(&mut f, capacity)?, capacity))
}

/// Append `rec` to the log partition (or file) at `path`: the record's byte
/// offset in the log and its sequence number.
pub fn append_to(path: &Path, rec: &UnitRecord) -> crate::Result<(u64, u64)> {
    let ctx = |what: &str| format!("{what} unit log {}", path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| ctx("open"))?;
    let capacity = f.seek(SeekFrom::End(0)).with_context(|| ctx("size of"))?;
    let appended = record::append_numbered(&mut f, capacity, rec)?;
    f.sync_all().with_context(|| ctx("sync"))?;
    Ok(appended)
}

impl Real {
    /// Refuse before the first write when the unit log cannot take two more
    /// records (the attempt-started one, which carries a pool claim, and the
    /// result), so a flashed board always gets its record; `row_bytes` is room
    /// for the pool row each of them carries. Warns when the log is nearly full.
    /// Returns the records read, for the attempt count and the claim.
    pub(crate) fn check_log_room(&self, row_bytes: u64) -> crate::Result<Vec<UnitRecord>> {
        let Some(log) = self.log.as_ref() else {
            return Ok(Vec::new());
        };
        let (scan, capacity) = scan_log(log)?;
        // A record with a long failure message stays well under 4 KiB.
        let needed = 2 * (record::FRAME_OVERHEAD + RECORD_ROOM + row_bytes);
        let free = capacity.saturating_sub(scan.end);
        if free < needed {
            return Err(record::Error::LogFull {
                used: scan.end,
                capacity,
                needed,
            }
            .into());
        }
        if let Some(w) = log_warning(scan.end, capacity, needed) {
            self.note(Phase::Searching, w);
        }
        Ok(scan.records.into_iter().map(|(_, r)| r).collect())
    }

    /// Before the first write: refuse a unit with [`record::MAX_ATTEMPTS`] failed
    /// or unfinished attempts in the unit log (unless `flasher.retry-unit`), else
    /// log an attempt-started record for it, so a reset mid-run leaves evidence
    /// and a unit that hangs the run cannot reset-loop forever. `records` is the
    /// log as [`Real::check_log_room`] just read it. The record carries `claim`,
    /// the pool row this run takes: once it is on the card, the row is used,
    /// whatever happens next. A target without CID or serial still claims.
    pub(crate) fn begin_attempt(
        &mut self,
        o: &Options,
        records: &[UnitRecord],
        claim: Option<UnitRow>,
    ) -> crate::Result<()> {
        let Some(log) = self.log.clone() else {
            self.note(
                Phase::Searching,
                "no unit log: attempts on this unit are not counted".into(),
            );
            return Ok(());
        };
        let countable = self.identity.is_countable();
        if !countable {
            self.note(
                Phase::Searching,
                format!(
                    "target {} has no CID or serial: attempts on it are not counted",
                    self.identity.device
                ),
            );
            if claim.is_none() {
                return Ok(());
            }
        }
        let attempts = if countable {
            record::failed_attempts(records, &self.identity)
        } else {
            0
        };
        if attempts >= record::MAX_ATTEMPTS && !o.retry_unit {
            return Err(Error::UnitAttempts {
                identity: self.identity.to_string(),
                attempts,
                log,
                last: record::last_failure(records, &self.identity).map(str::to_string),
            });
        }
        if attempts > 0 {
            self.note(
                Phase::Searching,
                format!(
                    "this unit had {attempts} failed or unfinished attempt(s){}",
                    if attempts >= record::MAX_ATTEMPTS {
                        "; flasher.retry-unit given: trying again"
                    } else {
                        ""
                    }
                ),
            );
        }
        let run = RunRecord {
            board: self.board.as_ref().map(|b| b.name.clone()),
            target: None,
            write: None,
            failure: None,
        };
        let mut base = unit_record(&run, &self.identity, SystemTime::now());
        base.health = self.health.clone();
        let mut started = record::attempt_started(&base);
        started.unit_row = claim;
        append_to(&log, &started)?;
        Ok(())
    }
}

/// The warning event when the unit log will be nearly full after this run
/// (`needed` bytes): less than a tenth of it free.
fn log_warning(used: u64, capacity: u64, needed: u64) -> Option<String> {
    let left = capacity.saturating_sub(used).saturating_sub(needed);
    (left < capacity / 10).then(|| {
        format!(
            "warning: unit log nearly full: {used} of {capacity} bytes used, room for about {} more runs after this one; copy the records off the card (mkflasher inspect) and use a card with a new log",
            left / (2 * pool::RECORD_ESTIMATE)
        )
    })
}

/// The console line for a claimed row: its index, the pool's size, and the
/// host name when the row has one.
pub(crate) fn claimed_message(u: &UnitData, rows: usize) -> String {
    let host = u
        .row
        .values
        .get("hostname")
        .map(|h| format!(", hostname {h}"))
        .unwrap_or_default();
    format!(
        "unit data: claimed row {} of {rows}{host}, {} file(s); recorded in the unit log before writing",
        u.row.index,
        u.files.len()
    )
}

/// The unit record for a run.
pub fn unit_record(r: &RunRecord, identity: &TargetIdentity, now: SystemTime) -> UnitRecord {
    // Boards without a real-time clock start in 1970; only a plausible time is kept.
    const PLAUSIBLE: u64 = 1_577_836_800; // 2020-01-01
    let timestamp_unix_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
        .filter(|s| *s >= PLAUSIBLE);
    let (image_digest, bytes_written, phases) = match &r.write {
        Some(w) => (
            w.image_digest.clone(),
            w.bytes_written,
            w.phases
                .iter()
                .map(|(p, d)| PhaseTiming {
                    phase: p.clone(),
                    duration_ms: d.as_millis() as u64,
                })
                .collect(),
        ),
        None => (String::new(), 0, Vec::new()),
    };
    UnitRecord {
        attempt_started: false,
        unit_row: None,
        health: None,
        seq: 0,
        timestamp_unix_s,
        flasher_version: env!("CARGO_PKG_VERSION").to_string(),
        board: r.board.clone().unwrap_or_default(),
        target: identity.clone(),
        image_digest,
        signer: String::new(),
        bytes_written,
        phases,
        result: match &r.failure {
            None => record::Outcome::Ok,
            Some((_, class, message)) => record::Outcome::Error {
                class: *class,
                message: message.clone(),
            },
        },
    }
}

/// The write step's summary from the pipeline's report.
pub fn summary(r: &WriteReport) -> WriteSummary {
    let d = &r.durations;
    WriteSummary {
        image_digest: r.image_sha256.clone(),
        bytes_written: r.bytes_written + r.bytes_zeroed,
        phases: vec![
            ("preflight".into(), d.preflight),
            ("write".into(), d.write),
            ("verify".into(), d.verify),
            ("finish".into(), d.finish),
        ],
    }
}

/// One sysfs attribute, trimmed; `None` if absent or empty.
fn attr(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The target's identity for the unit record, from `root/sys/block/NAME`:
/// eMMC `device/cid`, `device/serial`, `device/name`; disks `device/serial`,
/// `device/model` (or `device/wwid`).
pub fn target_identity(root: &Path, name: &str) -> TargetIdentity {
    let dev = root.join("sys/block").join(name);
    let size_bytes = attr(&dev.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        // sysfs `size` counts 512-byte sectors whatever the logical block size.
        .map(|s| s * 512)
        .unwrap_or(0);
    TargetIdentity {
        device: name.to_string(),
        size_bytes,
        cid: attr(&dev.join("device/cid")),
        serial: attr(&dev.join("device/serial")).or_else(|| attr(&dev.join("device/wwid"))),
        model: attr(&dev.join("device/model")).or_else(|| attr(&dev.join("device/name"))),
    }
}

/// The target's identity for the unit record, from the storage scan.
pub fn disk_identity(d: &Disk) -> TargetIdentity {
    TargetIdentity {
        device: d.name.clone(),
        size_bytes: d.size_bytes,
        cid: d.cid.clone(),
        serial: d.serial.clone(),
        model: d.model.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Step;
    use std::time::Duration;

    #[test]
    fn identity_from_fake_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("sys/block/mmcblk1");
        std::fs::create_dir_all(dev.join("device")).unwrap();
        std::fs::write(dev.join("size"), "7634944\n").unwrap();
        std::fs::write(dev.join("device/cid"), "150100414a544434520a32e4c0ab4a00\n").unwrap();
        std::fs::write(dev.join("device/serial"), "0x32e4c0ab\n").unwrap();
        std::fs::write(dev.join("device/name"), "AJTD4R\n").unwrap();
        let id = target_identity(root.path(), "mmcblk1");
        assert_eq!(id.size_bytes, 7634944 * 512);
        assert_eq!(id.cid.as_deref(), Some("150100414a544434520a32e4c0ab4a00"));
        assert_eq!(id.serial.as_deref(), Some("0x32e4c0ab"));
        assert_eq!(id.model.as_deref(), Some("AJTD4R"));
        assert_eq!(
            id.to_string(),
            "model AJTD4R, serial 0x32e4c0ab, CID 150100414a544434520a32e4c0ab4a00"
        );
        let none = target_identity(root.path(), "sda");
        assert_eq!(none.size_bytes, 0);
        assert_eq!(none.to_string(), "no identity in sysfs");
    }

    #[test]
    fn records_append_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::write(&log, vec![0u8; 64 << 10]).unwrap();
        let ok = RunRecord {
            board: Some("qemu-x86_64-sd".into()),
            target: None,
            write: Some(WriteSummary {
                image_digest: "ab".repeat(32),
                bytes_written: 1 << 20,
                phases: vec![("write".into(), Duration::from_millis(1500))],
            }),
            failure: None,
        };
        let failed = RunRecord {
            failure: Some((
                Step::Write,
                flasher_format::ErrorClass::VerifyMismatch,
                "write and verify: verify failed".into(),
            )),
            ..ok.clone()
        };
        let id = TargetIdentity {
            device: "mmcblk1".into(),
            size_bytes: 4 << 30,
            ..Default::default()
        };
        // 2023-11-14: a plausible clock is kept; 1970 (no RTC) is not.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            append_to(&log, &unit_record(&ok, &id, now)).unwrap(),
            (0, 1)
        );
        let (offset, seq) =
            append_to(&log, &unit_record(&failed, &id, SystemTime::UNIX_EPOCH)).unwrap();
        assert!(offset > 0);
        assert_eq!(seq, 2);
        let mut f = File::open(&log).unwrap();
        let recs = record::read_all(&mut f, 64 << 10).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!((recs[0].seq, recs[1].seq), (1, 2));
        assert_eq!(recs[0].board, "qemu-x86_64-sd");
        assert_eq!(recs[0].timestamp_unix_s, Some(1_700_000_000));
        assert_eq!(recs[0].bytes_written, 1 << 20);
        assert_eq!(recs[0].phases[0].duration_ms, 1500);
        assert_eq!(recs[0].result, record::Outcome::Ok);
        assert_eq!(recs[1].timestamp_unix_s, None);
        assert_eq!(
            recs[1].result,
            record::Outcome::Error {
                class: flasher_format::ErrorClass::VerifyMismatch,
                message: "write and verify: verify failed".into()
            }
        );
    }

    /// Item 2 of issue 14: a warning once less than a tenth of the log would
    /// be free after this run's records; none before.
    #[test]
    fn nearly_full_log_warns() {
        let cap = 15 << 20;
        assert_eq!(log_warning(1 << 20, cap, 8192), None);
        let w = log_warning(cap - (1 << 20), cap, 8192).expect("a warning");
        assert!(w.starts_with("warning: unit log nearly full"), "{w}");
        assert!(w.contains(&format!("of {cap} bytes used")), "{w}");
        // Right at the edge: exactly a tenth left is no warning yet.
        assert_eq!(log_warning(cap - cap / 10 - 8192, cap, 8192), None);
        assert!(log_warning(cap - cap / 10 - 8191, cap, 8192).is_some());
    }
}
