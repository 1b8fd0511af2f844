//! `mkflasher records`: the unit logs of one or more cards (block devices or
//! card images) as one list of runs, printed as a table, JSON or CSV, or
//! imported into a station's SQLite database ([`db`]). Design and schema:
//! docs/factory.md, "Records and the station database".
//!
//! A card is opened read-only; its `flasher-log` partition is found the way the
//! board and `mkflasher inspect` find it ([`crate::card::find_log`]).

pub mod db;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flasher_format::record::{self, Outcome, UnitRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::card;
use crate::disk::{self, Table};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open {path} for reading: {source}; check the path (mkflasher drives lists \
         card readers) and, for a device, run as root or as a member of the disk group"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not a flasher card: {source}; give a card image built by mkflasher \
         build, or the whole card device it was written to (/dev/sdX, not /dev/sdX1)"
    )]
    NotACard {
        path: PathBuf,
        #[source]
        source: flasher_disk::Error,
    },
    #[error(
        "{path} has no unit log: no {wanted} partition in its {table:?} table (it has: \
         {seen}); this is not a flasher card, or not the whole card (give /dev/sdX, not \
         /dev/sdX1)"
    )]
    NoLog {
        path: PathBuf,
        table: Table,
        wanted: String,
        seen: String,
    },
    #[error("reading the unit log of {path} (flasher-log at byte {log_offset}): {source}")]
    Log {
        path: PathBuf,
        log_offset: u64,
        #[source]
        source: record::Error,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing CSV: {0}")]
    Csv(#[from] csv::Error),
    #[error(transparent)]
    Db(#[from] db::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which card a record came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardRef {
    /// The path as given (a device or an image file).
    pub path: String,
    /// The partition table's disk identifier: `gpt:` + the disk GUID, or
    /// `mbr:` + the 4-byte disk signature in hex. The same for the card read
    /// through any reader and for an image dumped from it; shared by cards
    /// built with the same layout (see docs/factory.md for why the import key
    /// does not rely on it alone).
    pub id: String,
}

/// One record of one card's log, with where it was found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub card: CardRef,
    /// Byte offset of the record's frame in the log partition.
    pub offset: u64,
    /// SHA-256 (hex) of the log's bytes from its start through the end of
    /// this record's frame: equal only if this record and everything before it
    /// are byte-identical. Part of the database's natural key.
    pub log_digest: String,
    /// `timestamp_unix_s` as UTC, `YYYY-MM-DDTHH:MM:SSZ`; absent when the
    /// board's clock was unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// The record as the board wrote it (format/src/record.rs).
    #[serde(flatten)]
    pub record: UnitRecord,
}

/// The disk identifier text of a table (see [`CardRef::id`]).
pub fn card_id(kind: &flasher_disk::Kind) -> String {
    match kind {
        flasher_disk::Kind::Gpt { disk_guid } => {
            format!("gpt:{}", flasher_disk::gpt::guid_string(disk_guid))
        }
        flasher_disk::Kind::Mbr { signature } => {
            // Stored little-endian at offset 440; shown as sfdisk and blkid
            // show it (0x1234abcd).
            format!("mbr:{:08x}", u32::from_le_bytes(*signature))
        }
    }
}

/// Read every intact record of one card, in log order. The card is opened
/// read-only; a torn tail ends the list (as on the board).
pub fn read_card(path: &Path) -> Result<Vec<Entry>> {
    let mut f = File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let t = flasher_disk::Table::read(&mut f).map_err(|source| Error::NotACard {
        path: path.to_path_buf(),
        source,
    })?;
    let table = Table::of(&t);
    let Some(log) = card::find_log(table, &t.partitions) else {
        return Err(Error::NoLog {
            path: path.to_path_buf(),
            table,
            wanted: match table {
                Table::Gpt => format!("{:?}", card::LOG_NAME),
                Table::Mbr => format!("#{} ({})", card::LOG_NUMBER, card::LOG_NAME),
            },
            seen: disk::list_partitions(&t.partitions),
        });
    };
    let cref = CardRef {
        path: path.display().to_string(),
        id: card_id(&t.kind),
    };
    let mut slice = disk::PartitionSlice::new(f, log.offset, log.size);
    let log_err = |source| Error::Log {
        path: path.to_path_buf(),
        log_offset: log.offset,
        source,
    };
    let scan = record::scan(&mut slice, log.size).map_err(log_err)?;
    // The raw bytes of the intact records, for the log digests. At most the
    // used part of the log (1 MiB by default).
    let mut used = vec![0u8; scan.end as usize];
    slice
        .seek(SeekFrom::Start(0))
        .and_then(|_| slice.read_exact(&mut used))
        .map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let ends: Vec<u64> = scan
        .records
        .iter()
        .skip(1)
        .map(|(o, _)| *o)
        .chain([scan.end])
        .collect();
    let mut hasher = Sha256::new();
    let mut hashed = 0u64;
    let mut out = Vec::with_capacity(scan.records.len());
    for ((offset, record), end) in scan.records.into_iter().zip(ends) {
        hasher.update(&used[hashed as usize..end as usize]);
        hashed = end;
        out.push(Entry {
            card: cref.clone(),
            offset,
            log_digest: hex::encode(hasher.clone().finalize()),
            time: record.timestamp_unix_s.map(utc),
            record,
        });
    }
    Ok(out)
}

/// Read several cards and merge their records into one list: each card's
/// records stay in log order; cards are interleaved by time, a record without
/// a time (or with a clock that went back) sorting right after the record
/// before it on its card; ties go to the card named first.
pub fn read_cards(paths: &[PathBuf]) -> Result<Vec<Entry>> {
    let mut keyed = Vec::new();
    for (card, path) in paths.iter().enumerate() {
        let mut clock = 0u64;
        for e in read_card(path)? {
            clock = clock.max(e.record.timestamp_unix_s.unwrap_or(0));
            keyed.push(((clock, card, e.offset), e));
        }
    }
    // Keys are unique (card, offset), so the order is total.
    keyed.sort_by_key(|(k, _)| *k);
    Ok(keyed.into_iter().map(|(_, e)| e).collect())
}

/// Seconds since the epoch as UTC `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian; Howard Hinnant's days-to-civil algorithm), so no date crate is
/// needed for one format.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The result as a short text: `ok`, `attempt started`, or `error` and class.
fn status(r: &UnitRecord) -> &'static str {
    match (&r.result, r.attempt_started) {
        (_, true) => "started",
        (Outcome::Ok, false) => "ok",
        (Outcome::Error { .. }, false) => "error",
    }
}

/// Table columns, in order.
pub const TABLE_COLUMNS: [&str; 14] = [
    "TIME", "CARD", "SEQ", "BOARD", "DEVICE", "SIZE", "MODEL", "SERIAL", "CID", "IMAGE", "SIGNER",
    "UNIT", "HEALTH", "PHASES",
];
/// The last column, free text (the error message may contain anything).
pub const TABLE_RESULT: &str = "RESULT";

/// One table cell: whitespace runs collapsed to one space (cells are
/// separated by two or more), `-` for nothing.
fn cell(s: impl AsRef<str>) -> String {
    let s = s.as_ref().split_whitespace().collect::<Vec<_>>().join(" ");
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn opt(s: &Option<String>) -> String {
    cell(s.as_deref().unwrap_or(""))
}

/// A readable table: a header line, then one line per record, columns
/// separated by at least two spaces, `-` in empty cells.
pub fn table(entries: &[Entry]) -> String {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let r = &e.record;
            let unit = r.unit_row.as_ref().map(|u| {
                let values: Vec<String> =
                    u.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("#{} {}", u.index, values.join(" "))
            });
            let health = r.health.as_ref().map(|h| {
                [
                    ("life", &h.life_time),
                    ("pre-eol", &h.pre_eol_info),
                    ("rev", &h.rev),
                    ("date", &h.date),
                    ("manfid", &h.manfid),
                ]
                .iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
                .collect::<Vec<_>>()
                .join(", ")
            });
            let phases = r
                .phases
                .iter()
                .map(|p| format!("{} {:.1}s", p.phase, p.duration_ms as f64 / 1000.0))
                .collect::<Vec<_>>()
                .join(", ");
            let result = match &r.result {
                Outcome::Ok => "ok".to_string(),
                Outcome::Error { class, message } => {
                    format!("{}: {class}: {message}", status(r))
                }
            };
            vec![
                cell(e.time.as_deref().unwrap_or("")),
                cell(&e.card.path),
                r.seq.to_string(),
                cell(&r.board),
                cell(&r.target.device),
                flasher_format::units::iec(r.target.size_bytes),
                opt(&r.target.model),
                opt(&r.target.serial),
                opt(&r.target.cid),
                cell(r.image_digest.get(..12).unwrap_or(&r.image_digest)),
                cell(&r.signer),
                cell(unit.unwrap_or_default()),
                cell(health.unwrap_or_default()),
                cell(phases),
                cell(result),
            ]
        })
        .collect();
    let header: Vec<String> = TABLE_COLUMNS
        .iter()
        .chain([&TABLE_RESULT])
        .map(|s| s.to_string())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let last = row.len() - 1;
        for (i, (c, w)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                let _ = writeln!(out, "{c}");
            } else {
                let _ = write!(out, "{c:<w$}  ");
            }
        }
    }
    out
}

/// The records as one JSON array (pretty-printed), each an [`Entry`].
pub fn json(entries: &[Entry]) -> String {
    // Serializing plain data (strings, numbers, maps with string keys) cannot fail.
    serde_json::to_string_pretty(entries).unwrap_or_default() + "\n"
}

/// The fixed CSV columns before the unit, health and phase columns.
pub const CSV_COLUMNS: [&str; 22] = [
    "card_path",
    "card_id",
    "offset",
    "log_digest",
    "seq",
    "time",
    "timestamp_unix_s",
    "flasher_version",
    "board",
    "device",
    "size_bytes",
    "cid",
    "serial",
    "model",
    "image_digest",
    "signer",
    "bytes_written",
    "status",
    "class",
    "message",
    "unit_index",
    "unit_pool_digest",
];
/// The health columns, after the unit values.
pub const CSV_HEALTH: [&str; 5] = [
    "health.life_time",
    "health.pre_eol_info",
    "health.rev",
    "health.date",
    "health.manfid",
];

/// CSV (RFC 4180): a header row, then one row per record. After the fixed
/// columns ([`CSV_COLUMNS`]; `status` is `ok`, `error` or `started`) come
/// `unit.KEY` for every unit-row key any record has (sorted), the health
/// columns, and `phase.NAME_ms` for every phase any record has (in order of
/// first appearance; a phase run twice is summed). Empty cells mean "not
/// recorded".
pub fn csv(entries: &[Entry]) -> Result<String> {
    let keys: BTreeSet<&str> = entries
        .iter()
        .filter_map(|e| e.record.unit_row.as_ref())
        .flat_map(|u| u.values.keys().map(String::as_str))
        .collect();
    let mut phases: Vec<&str> = Vec::new();
    for p in entries.iter().flat_map(|e| &e.record.phases) {
        if !phases.contains(&p.phase.as_str()) {
            phases.push(&p.phase);
        }
    }
    let mut w = csv::Writer::from_writer(Vec::new());
    let header: Vec<String> = CSV_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(keys.iter().map(|k| format!("unit.{k}")))
        .chain(CSV_HEALTH.iter().map(|c| c.to_string()))
        .chain(phases.iter().map(|p| format!("phase.{p}_ms")))
        .collect();
    w.write_record(&header)?;
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    for e in entries {
        let r = &e.record;
        let (class, message) = match &r.result {
            Outcome::Ok => (String::new(), String::new()),
            Outcome::Error { class, message } => (class.blinks().to_string(), message.clone()),
        };
        let unit = r.unit_row.as_ref();
        let health = r.health.clone().unwrap_or_default();
        let mut row: Vec<String> = vec![
            e.card.path.clone(),
            e.card.id.clone(),
            e.offset.to_string(),
            e.log_digest.clone(),
            r.seq.to_string(),
            e.time.clone().unwrap_or_default(),
            r.timestamp_unix_s
                .map(|t| t.to_string())
                .unwrap_or_default(),
            r.flasher_version.clone(),
            r.board.clone(),
            r.target.device.clone(),
            r.target.size_bytes.to_string(),
            s(&r.target.cid),
            s(&r.target.serial),
            s(&r.target.model),
            r.image_digest.clone(),
            r.signer.clone(),
            r.bytes_written.to_string(),
            status(r).to_string(),
            class,
            message,
            unit.map(|u| u.index.to_string()).unwrap_or_default(),
            unit.map(|u| u.pool_digest.clone()).unwrap_or_default(),
        ];
        row.extend(keys.iter().map(|k| {
            unit.and_then(|u| u.values.get(*k))
                .cloned()
                .unwrap_or_default()
        }));
        row.extend(
            [
                health.life_time,
                health.pre_eol_info,
                health.rev,
                health.date,
                health.manfid,
            ]
            .map(Option::unwrap_or_default),
        );
        row.extend(phases.iter().map(|name| {
            let ms: Vec<u64> = r
                .phases
                .iter()
                .filter(|p| p.phase == *name)
                .map(|p| p.duration_ms)
                .collect();
            if ms.is_empty() {
                String::new()
            } else {
                ms.iter().sum::<u64>().to_string()
            }
        }));
        w.write_record(&row)?;
    }
    let bytes = w
        .into_inner()
        .map_err(|e| csv::Error::from(e.into_error()))?;
    // Every field written was a Rust `String`: valid UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_154_070), "2026-12-01T19:41:10Z");
        assert_eq!(utc(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn cells_never_hold_a_column_gap() {
        assert_eq!(cell("a  b\n c"), "a b c");
        assert_eq!(cell(""), "-");
    }
}
