//! The unit log: one checksummed record per flashed unit, appended to the card's raw
//! `flasher-log` partition (the only thing ever written to the card on a board,
//! docs/architecture.md rule 10).
//!
//! ## On-disk format (version 1)
//!
//! The partition is a sequence of frames starting at byte 0, with no gaps:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `FLSHREC\x01` (the last byte is the format version) |
//! | 4 | body length N, little-endian u32 |
//! | N | body: one [`UnitRecord`] as UTF-8 JSON |
//! | 4 | CRC32 (IEEE, as zlib) over magic, length and body, little-endian |
//!
//! Reading scans from byte 0 and stops at the first frame that is not complete and
//! intact: wrong magic (the erased tail, zeros or 0xFF), a length that runs past the
//! partition, or a CRC mismatch (a torn write: power was cut mid-append). Everything
//! before that point reads back. Appending writes the new frame exactly there, so a
//! torn tail is overwritten, and then clears the 8 bytes after the new frame so stale
//! bytes from an older, longer torn frame can never be mistaken for a frame start.
//! (JSON bodies never contain the raw byte 0x01, so leftovers inside an old body
//! cannot hold a magic either.)
//!
//! Record bodies are JSON so a new field is a compatible change: readers ignore
//! unknown fields and default missing optional ones.
//!
//! ## Attempts per unit (added with issue 10; an optional field, same format version)
//!
//! Just before its first write, the init appends an *attempt-started* record for
//! the target: `attempt_started: true`, result an error saying no result was
//! recorded yet. The run's own record (success or failure) follows it. If the
//! board is reset mid-run (a watchdog reset on a hung I/O, a power cut), the
//! attempt-started record is the evidence. [`failed_attempts`] counts a unit's
//! attempt-started records since its last successful record, matching the unit
//! by eMMC CID, else by serial; at [`MAX_ATTEMPTS`] the init refuses to write the
//! unit again (unless `flasher.retry-unit` is given), so a unit that hangs the
//! flasher cannot reset-loop forever. A success record for the unit resets its
//! count. Readers older than this field see an ordinary failed record.

use crate::io::IoContext;
use serde::{Deserialize, Serialize};

/// CRC-32/ISO-HDLC (the zlib and GPT CRC), with a 1 KiB table.
const CRC32: crc::Crc<u32, crc::Table<1>> =
    crc::Crc::<u32, crc::Table<1>>::new(&crc::CRC_32_ISO_HDLC);
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Frame magic; the last byte is the format version.
pub const MAGIC: [u8; 8] = *b"FLSHREC\x01";
/// Magic + length before the body, CRC after it.
pub const FRAME_OVERHEAD: u64 = 8 + 4 + 4;
/// Largest body we write or believe when reading (a record is ~1 KiB; error texts are
/// the only unbounded part, and a length field from a torn frame must not make us
/// allocate gigabytes).
pub const MAX_BODY: u64 = 256 * 1024;

/// Errors from `record`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unit log is full: {used} of {capacity} bytes used, the next record needs {needed} bytes; copy the log off the card (mkflasher inspect) and clear it, or use a larger flasher-log partition")]
    LogFull {
        used: u64,
        capacity: u64,
        needed: u64,
    },
    #[error(
        "unit record is {size} bytes of JSON, over the {max}-byte limit; shorten the error text"
    )]
    RecordTooLarge { size: u64, max: u64 },
    #[error("unit record at byte {offset} has a valid checksum but cannot be decoded ({source}); it was written by an incompatible flasher version")]
    Undecodable {
        offset: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot encode unit record: {0}")]
    Encode(#[source] serde_json::Error),
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
}

impl Error {
    /// Recording happens after the write: a post-write step failed.
    pub fn class(&self) -> crate::ErrorClass {
        crate::ErrorClass::PostWrite
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One flashed unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// 1-based position in this log; assigned by [`append`] (the value passed in is
    /// ignored). On boards without a real-time clock this is the boot counter that
    /// orders the records.
    #[serde(default)]
    pub seq: u64,
    /// Seconds since the Unix epoch, if the board's clock is known to be set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_unix_s: Option<u64>,
    /// The flasher version that wrote the record.
    #[serde(default)]
    pub flasher_version: String,
    /// Board name as detected (or forced with `flasher.board=`).
    pub board: String,
    /// The internal storage that was written.
    pub target: TargetIdentity,
    /// SHA-256 of the logical image, lowercase hex (the bundle's whole-image digest).
    pub image_digest: String,
    /// Who signed the bundle: "unsigned" or the key's fingerprint
    /// (`ed25519:…`); empty when the run stopped before the check.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signer: String,
    /// Bytes written or zeroed on the target.
    pub bytes_written: u64,
    /// Each phase in the order run, with its wall-clock duration.
    #[serde(default)]
    pub phases: Vec<PhaseTiming>,
    pub result: Outcome,
    /// An attempt-started record (see the module docs); absent (false) on the
    /// run's final records and in logs written before the field existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attempt_started: bool,
    /// The per-unit data row this run claimed from the card's pool (issue 14);
    /// absent when the card has no pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_row: Option<UnitRow>,
    /// The target's health as read from sysfs before writing (eMMC only);
    /// absent on other storage and in logs written before the field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<StorageHealth>,
}

/// One row of the card's per-unit data pool, as claimed by a run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRow {
    /// 0-based index of the data row in the pool (the header row not counted).
    pub index: u32,
    /// SHA-256 of the pool file the row came from, lowercase hex, so records
    /// from different pools on one card are never confused.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pool_digest: String,
    /// Column name to value, as in the pool.
    #[serde(default)]
    pub values: std::collections::BTreeMap<String, String>,
}

/// eMMC health and identity registers as the kernel shows them in sysfs
/// (`/sys/block/mmcblkN/device/*`), raw text trimmed; a field is absent when the
/// kernel does not provide the attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageHealth {
    /// `life_time`: two estimates (type A, type B), e.g. `0x01 0x02`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub life_time: Option<String>,
    /// `pre_eol_info`: `0x01` normal, `0x02` warning, `0x03` urgent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_eol_info: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manfid: Option<String>,
}

/// Failed or unfinished attempts on one unit after which the init refuses it.
pub const MAX_ATTEMPTS: u32 = 3;

impl TargetIdentity {
    /// Whether `other` is the same physical unit: same CID if this one has a CID,
    /// else the same serial. A target with neither cannot be told apart from
    /// another one, so it never matches (its attempts are not counted).
    pub fn same_unit(&self, other: &TargetIdentity) -> bool {
        match (&self.cid, &self.serial) {
            (Some(c), _) => other.cid.as_deref() == Some(c.as_str()),
            (None, Some(s)) => other.serial.as_deref() == Some(s.as_str()),
            (None, None) => false,
        }
    }

    /// Whether attempts on this target can be counted (it has a CID or serial).
    pub fn is_countable(&self) -> bool {
        self.cid.is_some() || self.serial.is_some()
    }
}

/// Attempts on `unit` that failed or never finished: its attempt-started
/// records after its last successful record, in log order. (A run refused before
/// its attempt-started record, like the refusal this count causes, adds nothing.)
pub fn failed_attempts(records: &[UnitRecord], unit: &TargetIdentity) -> u32 {
    let mut n = 0u32;
    for r in records.iter().filter(|r| unit.same_unit(&r.target)) {
        if r.attempt_started {
            n = n.saturating_add(1);
        } else if r.result == Outcome::Ok {
            n = 0;
        }
    }
    n
}

/// The message of `unit`'s last failure record (not an attempt-started one), so
/// a refusal can say how the earlier attempts ended.
pub fn last_failure<'a>(records: &'a [UnitRecord], unit: &TargetIdentity) -> Option<&'a str> {
    records
        .iter()
        .rev()
        .filter(|r| unit.same_unit(&r.target) && !r.attempt_started)
        .map_while(|r| match &r.result {
            Outcome::Error { message, .. } => Some(message.as_str()),
            Outcome::Ok => None,
        })
        .next()
}

/// The attempt-started record for a run described by `base` (board, target,
/// version, time): no write yet, and a result that says so if nothing follows.
pub fn attempt_started(base: &UnitRecord) -> UnitRecord {
    UnitRecord {
        image_digest: String::new(),
        bytes_written: 0,
        phases: Vec::new(),
        result: Outcome::Error {
            // The likeliest reason for a missing result is the target's I/O
            // hanging (watchdog reset) or a power cut during the write.
            class: crate::ErrorClass::WriteIo,
            message: "attempt started; no result follows if the run was cut short (watchdog reset on a hang, power cut)".into(),
        },
        attempt_started: true,
        ..base.clone()
    }
}

/// Who the target was, as far as the kernel told us.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetIdentity {
    /// Kernel name, e.g. `mmcblk1`, `nvme0n1`.
    pub device: String,
    /// Capacity in bytes.
    #[serde(default)]
    pub size_bytes: u64,
    /// eMMC CID register, hex (sysfs `device/cid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// eMMC serial or disk serial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// eMMC name or disk model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// "model X, serial Y, CID Z" (what is known), for console lines and errors.
impl std::fmt::Display for TargetIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = [
            self.model.as_ref().map(|m| format!("model {m}")),
            self.serial.as_ref().map(|s| format!("serial {s}")),
            self.cid.as_ref().map(|c| format!("CID {c}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if parts.is_empty() {
            f.write_str("no identity in sysfs")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseTiming {
    /// Phase name, e.g. `detect`, `write`, `verify`, `fixup`, `bootloader`, `config`.
    pub phase: String,
    pub duration_ms: u64,
}

/// The result of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase", try_from = "RawOutcome")]
pub enum Outcome {
    Ok,
    Error {
        /// Blink-code error class (1..=8, see the LED docs; a number in JSON).
        class: crate::ErrorClass,
        /// The error as shown on the console.
        message: String,
    },
}

/// [`Outcome`] as read: one flat struct checked in `TryFrom`, the same JSON
/// without serde's buffering of internally tagged enums (board binary size).
/// Unknown fields are ignored, as everywhere in a record.
#[derive(Deserialize)]
struct RawOutcome {
    status: String,
    class: Option<crate::ErrorClass>,
    message: Option<String>,
}

impl TryFrom<RawOutcome> for Outcome {
    type Error = String;
    fn try_from(r: RawOutcome) -> Result<Self, String> {
        match (r.status.as_str(), r.class, r.message) {
            ("ok", _, _) => Ok(Outcome::Ok),
            ("error", Some(class), Some(message)) => Ok(Outcome::Error { class, message }),
            ("error", _, _) => Err("an error outcome needs `class` and `message`".into()),
            (other, _, _) => Err(format!(
                "unknown status `{other}`, expected `ok` or `error`"
            )),
        }
    }
}

/// Where reading stopped before the end of the partition, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    /// The rest is unwritten (no magic where the next frame would start).
    Clean,
    /// A torn or corrupt frame at this byte offset; the next append overwrites it.
    Torn { offset: u64, reason: String },
    /// Fewer bytes than a frame header remain.
    Full,
}

/// The result of scanning a log: the records, where the next one goes, and the tail.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Each intact record with its byte offset.
    pub records: Vec<(u64, UnitRecord)>,
    /// Byte offset where the next record will be written.
    pub end: u64,
    pub tail: Tail,
}

/// Read every intact record, in order. Stops quietly at the first torn or missing
/// frame (see the module docs).
pub fn read_all<R: Read + Seek>(dev: &mut R, capacity: u64) -> Result<Vec<UnitRecord>> {
    Ok(scan(dev, capacity)?
        .records
        .into_iter()
        .map(|(_, r)| r)
        .collect())
}

/// Scan the log and describe it, for `mkflasher inspect` and for [`append`].
pub fn scan<R: Read + Seek>(dev: &mut R, capacity: u64) -> Result<Scan> {
    let frames = scan_frames(dev, capacity)?;
    let records = frames
        .bodies
        .into_iter()
        .map(|(offset, body)| {
            serde_json::from_slice(&body)
                .map(|r| (offset, r))
                .map_err(|source| Error::Undecodable { offset, source })
        })
        .collect::<Result<_>>()?;
    Ok(Scan {
        records,
        end: frames.end,
        tail: frames.tail,
    })
}

/// Append `rec` after the last intact record and return its byte offset. `seq` is set
/// to one more than the previous record's. Refuses with [`Error::LogFull`] when the
/// record does not fit in `capacity` bytes; nothing is written then.
pub fn append<D: Read + Write + Seek>(dev: &mut D, capacity: u64, rec: &UnitRecord) -> Result<u64> {
    append_numbered(dev, capacity, rec).map(|(offset, _)| offset)
}

/// [`append`], also returning the sequence number the record was given:
/// `(offset, seq)`.
pub fn append_numbered<D: Read + Write + Seek>(
    dev: &mut D,
    capacity: u64,
    rec: &UnitRecord,
) -> Result<(u64, u64)> {
    let frames = scan_frames(dev, capacity)?;
    let prev_seq = match frames.bodies.last() {
        // Only the seq is needed, so a record from a newer format still counts.
        Some((_, body)) => serde_json::from_slice::<SeqOnly>(body)
            .map(|s| s.seq)
            .unwrap_or(frames.bodies.len() as u64),
        None => 0,
    };
    let mut rec = rec.clone();
    rec.seq = prev_seq + 1;
    let body = serde_json::to_vec(&rec).map_err(Error::Encode)?;
    if body.len() as u64 > MAX_BODY {
        return Err(Error::RecordTooLarge {
            size: body.len() as u64,
            max: MAX_BODY,
        });
    }
    let frame = encode_frame(&body);
    let needed = frame.len() as u64;
    let offset = frames.end;
    if offset + needed > capacity {
        return Err(Error::LogFull {
            used: offset,
            capacity,
            needed,
        });
    }
    dev.seek(SeekFrom::Start(offset))
        .and_then(|_| dev.write_all(&frame))
        .with_context(|| format!("write unit record ({needed} bytes at byte {offset})"))?;
    let after = offset + needed;
    if after + MAGIC.len() as u64 <= capacity {
        dev.write_all(&[0u8; MAGIC.len()])
            .with_context(|| format!("clear the log tail at byte {after}"))?;
    }
    dev.flush().context("flush unit log")?;
    Ok((offset, rec.seq))
}

#[derive(Deserialize)]
struct SeqOnly {
    #[serde(default)]
    seq: u64,
}

fn encode_frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(body.len() + FRAME_OVERHEAD as usize);
    f.extend_from_slice(&MAGIC);
    // Bounded by MAX_BODY, so it fits in u32.
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    let crc = CRC32.checksum(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

struct Frames {
    bodies: Vec<(u64, Vec<u8>)>,
    end: u64,
    tail: Tail,
}

fn scan_frames<R: Read + Seek>(dev: &mut R, capacity: u64) -> Result<Frames> {
    let mut bodies = Vec::new();
    let mut offset = 0u64;
    let io = |offset: u64| {
        move |source| {
            Error::Io(crate::io::IoError::new(
                format!("read unit log at byte {offset}"),
                source,
            ))
        }
    };
    dev.seek(SeekFrom::Start(0)).map_err(io(0))?;
    let tail = loop {
        if offset + FRAME_OVERHEAD > capacity {
            break Tail::Full;
        }
        let mut head = [0u8; 12];
        // The device may be shorter than `capacity` claims: treat EOF as the end.
        if let Err(e) = dev.read_exact(&mut head) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                break Tail::Full;
            }
            return Err(io(offset)(e));
        }
        if head[..8] != MAGIC {
            let erased = head[..8].iter().all(|&b| b == 0) || head[..8].iter().all(|&b| b == 0xFF);
            break if erased {
                Tail::Clean
            } else {
                Tail::Torn {
                    offset,
                    reason: "no record magic".into(),
                }
            };
        }
        let len = u64::from(u32::from_le_bytes([head[8], head[9], head[10], head[11]]));
        if len > MAX_BODY || offset + FRAME_OVERHEAD + len > capacity {
            break Tail::Torn {
                offset,
                reason: format!("length {len} bytes runs past the end of the log"),
            };
        }
        let mut rest = vec![0u8; len as usize + 4];
        if let Err(e) = dev.read_exact(&mut rest) {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                break Tail::Torn {
                    offset,
                    reason: "record cut off by the end of the device".into(),
                };
            }
            return Err(io(offset)(e));
        }
        let (body, crc) = rest.split_at(len as usize);
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let mut h = CRC32.digest();
        h.update(&head);
        h.update(body);
        let computed = h.finalize();
        if stored != computed {
            break Tail::Torn {
                offset,
                reason: format!("CRC32 {stored:#010x} stored, {computed:#010x} computed"),
            };
        }
        rest.truncate(len as usize);
        bodies.push((offset, rest));
        offset += FRAME_OVERHEAD + len;
    };
    Ok(Frames {
        bodies,
        end: offset,
        tail,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn outcome_json_is_checked_per_status() {
        let ok: Outcome = serde_json::from_str(r#"{"status":"ok","later":1}"#).unwrap();
        assert_eq!(ok, Outcome::Ok);
        let e: Outcome =
            serde_json::from_str(r#"{"status":"error","class":5,"message":"m"}"#).unwrap();
        assert_eq!(
            e,
            Outcome::Error {
                class: crate::ErrorClass::VerifyMismatch,
                message: "m".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"status":"error","class":5,"message":"m"}"#
        );
        for bad in [
            r#"{"status":"error"}"#,
            r#"{"status":"maybe"}"#,
            r#"{"status":"error","class":9,"message":"m"}"#,
        ] {
            assert!(serde_json::from_str::<Outcome>(bad).is_err(), "{bad}");
        }
    }

    use super::*;
    use proptest::prelude::*;
    use std::io::Cursor;

    fn sample(i: u64) -> UnitRecord {
        UnitRecord {
            seq: 0,
            timestamp_unix_s: if i % 2 == 0 {
                Some(1_700_000_000 + i)
            } else {
                None
            },
            flasher_version: "0.1.0".into(),
            board: "beaglebone-black".into(),
            target: TargetIdentity {
                device: "mmcblk1".into(),
                size_bytes: 3_867_148_288,
                cid: Some(format!("fe014a4d4d4333474a{i:014x}")),
                serial: Some(format!("0x{i:08x}")),
                model: Some("MMC04G".into()),
            },
            image_digest: "ab".repeat(32),
            signer: "ed25519:00112233445566778899aabbccddeeff".into(),
            bytes_written: 1_234_567 * i,
            attempt_started: false,
            unit_row: None,
            health: None,
            phases: vec![
                PhaseTiming {
                    phase: "write".into(),
                    duration_ms: 61_000 + i,
                },
                PhaseTiming {
                    phase: "verify".into(),
                    duration_ms: 20_500,
                },
            ],
            result: if i % 3 == 0 {
                Outcome::Ok
            } else {
                Outcome::Error {
                    class: crate::ErrorClass::VerifyMismatch,
                    message: format!("verify mismatch at bytes {i}..{}", i + 4096),
                }
            },
        }
    }

    fn with_seq(mut r: UnitRecord, seq: u64) -> UnitRecord {
        r.seq = seq;
        r
    }

    #[test]
    fn empty_log_reads_nothing_on_zeros_and_on_ff() {
        for fill in [0u8, 0xFF] {
            let mut dev = Cursor::new(vec![fill; 4096]);
            let s = scan(&mut dev, 4096).unwrap();
            assert!(s.records.is_empty());
            assert_eq!((s.end, s.tail), (0, Tail::Clean));
        }
    }

    #[test]
    fn appends_are_sequential_and_numbered() {
        let mut dev = Cursor::new(vec![0u8; 64 * 1024]);
        let mut offsets = vec![];
        for i in 0..5 {
            offsets.push(append(&mut dev, 64 * 1024, &sample(i)).unwrap());
        }
        assert_eq!(offsets[0], 0);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        let got = read_all(&mut dev, 64 * 1024).unwrap();
        let want: Vec<_> = (0..5).map(|i| with_seq(sample(i), i + 1)).collect();
        assert_eq!(got, want);
        // The frame starts with the magic and the body is readable JSON.
        assert_eq!(&dev.get_ref()[..8], b"FLSHREC\x01");
        assert_eq!(dev.get_ref()[12], b'{');
    }

    #[test]
    fn torn_last_record_keeps_earlier_ones_and_is_overwritten() {
        let cap = 16 * 1024;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        append(&mut dev, cap, &sample(1)).unwrap();
        append(&mut dev, cap, &sample(2)).unwrap();
        let third = append(&mut dev, cap, &sample(3)).unwrap();
        let end = scan(&mut dev, cap).unwrap().end;
        // Power cut mid-way through the third record: the rest never reached the card.
        let cut = third + (end - third) / 2;
        dev.get_mut()[cut as usize..end as usize].fill(0);
        let s = scan(&mut dev, cap).unwrap();
        assert_eq!(
            s.records.iter().map(|(_, r)| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(s.end, third);
        assert!(matches!(s.tail, Tail::Torn { offset, .. } if offset == third));

        // The next append replaces the torn tail and continues the numbering.
        let at = append(&mut dev, cap, &sample(9)).unwrap();
        assert_eq!(at, third);
        let got = read_all(&mut dev, cap).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], with_seq(sample(9), 3));
    }

    #[test]
    fn corrupted_byte_mid_record_stops_the_scan_there() {
        let cap = 16 * 1024;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        append(&mut dev, cap, &sample(1)).unwrap();
        let second = append(&mut dev, cap, &sample(2)).unwrap();
        append(&mut dev, cap, &sample(3)).unwrap();
        dev.get_mut()[second as usize + 40] ^= 0x20;
        let s = scan(&mut dev, cap).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(
            matches!(&s.tail, Tail::Torn { offset, reason } if *offset == second && reason.contains("CRC32"))
        );
    }

    #[test]
    fn torn_length_field_is_not_believed() {
        let cap = 4096;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        append(&mut dev, cap, &sample(1)).unwrap();
        let end = scan(&mut dev, cap).unwrap().end as usize;
        let d = dev.get_mut();
        d[end..end + 8].copy_from_slice(&MAGIC);
        d[end + 8..end + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let s = scan(&mut dev, cap).unwrap();
        assert_eq!(s.records.len(), 1);
        assert!(matches!(s.tail, Tail::Torn { .. }));
    }

    #[test]
    fn stale_frame_after_a_shorter_rewrite_is_not_resurrected() {
        // A long torn record is overwritten by a short one; the old bytes after the new
        // frame must not be read as records.
        let cap = 8192;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        let mut long = sample(1);
        long.result = Outcome::Error {
            class: crate::ErrorClass::WriteIo,
            message: "x".repeat(2000),
        };
        append(&mut dev, cap, &long).unwrap();
        // Plant a valid-looking frame where the short record will end.
        let short_frame_len = {
            let mut r = sample(2);
            r.seq = 1;
            encode_frame(&serde_json::to_vec(&r).unwrap()).len()
        };
        let planted = encode_frame(br#"{"seq":77}"#);
        dev.get_mut()[short_frame_len..short_frame_len + planted.len()].copy_from_slice(&planted);
        dev.get_mut()[100] ^= 1; // tear the long record
        append(&mut dev, cap, &sample(2)).unwrap();
        let got = read_all(&mut dev, cap).unwrap();
        assert_eq!(got, vec![with_seq(sample(2), 1)]);
    }

    #[test]
    fn full_log_is_refused_without_writing() {
        let one = encode_frame(&serde_json::to_vec(&with_seq(sample(1), 1)).unwrap()).len() as u64;
        let cap = one * 2 + 10;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        append(&mut dev, cap, &sample(1)).unwrap();
        append(&mut dev, cap, &sample(1)).unwrap();
        let before = dev.get_ref().clone();
        let e = append(&mut dev, cap, &sample(1)).unwrap_err();
        assert!(
            matches!(e, Error::LogFull { used, capacity, needed } if used == 2 * one && capacity == cap && needed == one),
            "{e}"
        );
        assert_eq!(dev.get_ref(), &before);
        assert_eq!(read_all(&mut dev, cap).unwrap().len(), 2);
    }

    #[test]
    fn record_exactly_filling_the_log_fits() {
        let one = encode_frame(&serde_json::to_vec(&with_seq(sample(1), 1)).unwrap()).len() as u64;
        let mut dev = Cursor::new(vec![0u8; one as usize]);
        assert_eq!(append(&mut dev, one, &sample(1)).unwrap(), 0);
        assert_eq!(read_all(&mut dev, one).unwrap().len(), 1);
        assert_eq!(scan(&mut dev, one).unwrap().tail, Tail::Full);
    }

    #[test]
    fn oversized_record_is_refused() {
        let mut r = sample(1);
        r.result = Outcome::Error {
            class: crate::ErrorClass::Internal,
            message: "y".repeat(MAX_BODY as usize),
        };
        let mut dev = Cursor::new(vec![0u8; 4 * MAX_BODY as usize]);
        let e = append(&mut dev, 4 * MAX_BODY, &r).unwrap_err();
        assert!(matches!(e, Error::RecordTooLarge { .. }));
    }

    #[test]
    fn intact_but_undecodable_record_is_an_error_not_silence() {
        let cap = 4096;
        let mut dev = Cursor::new(vec![0u8; cap as usize]);
        let f = encode_frame(br#"{"seq":1,"board":5}"#);
        dev.get_mut()[..f.len()].copy_from_slice(&f);
        let e = read_all(&mut dev, cap).unwrap_err();
        assert!(matches!(e, Error::Undecodable { offset: 0, .. }));
        // Appending still works and numbers after it.
        let at = append(&mut dev, cap, &sample(1)).unwrap();
        assert_eq!(at, f.len() as u64);
        assert_eq!(scan_frames(&mut dev, cap).unwrap().bodies.len(), 2);
    }

    #[test]
    fn device_shorter_than_capacity_ends_the_scan() {
        let mut dev = Cursor::new(vec![0u8; 0]);
        let s = scan(&mut dev, 1 << 20).unwrap();
        assert_eq!((s.end, s.tail), (0, Tail::Full));
    }

    #[test]
    fn unknown_fields_are_ignored_and_optional_ones_default() {
        let json = r#"{"seq":4,"board":"b","target":{"device":"sda"},"image_digest":"d",
            "bytes_written":1,"result":{"status":"ok"},"future_field":[1,2]}"#;
        let r: UnitRecord = serde_json::from_str(json).unwrap();
        assert_eq!(r.seq, 4);
        assert_eq!(r.phases, vec![]);
        assert_eq!(r.target.size_bytes, 0);
    }

    fn arb_record() -> impl Strategy<Value = UnitRecord> {
        (
            (any::<Option<u64>>(), ".{0,20}", "\\PC{0,40}"),
            (".{0,12}", any::<u64>(), proptest::option::of(".{0,40}")),
            ("[0-9a-f]{64}", any::<u64>()),
            proptest::collection::vec(("[a-z]{1,10}", any::<u64>()), 0..6),
            proptest::option::of((
                proptest::sample::select(crate::ErrorClass::ALL.to_vec()),
                "\\PC{0,200}",
            )),
        )
            .prop_map(
                |((ts, ver, board), (dev, size, cid), (digest, bytes), phases, err)| UnitRecord {
                    seq: 0,
                    timestamp_unix_s: ts,
                    flasher_version: ver,
                    board,
                    target: TargetIdentity {
                        device: dev,
                        size_bytes: size,
                        cid: cid.clone(),
                        serial: cid.map(|c| c.chars().rev().collect()),
                        model: None,
                    },
                    signer: if bytes % 2 == 0 {
                        "unsigned".into()
                    } else {
                        String::new()
                    },
                    image_digest: digest,
                    bytes_written: bytes,
                    attempt_started: false,
                    unit_row: None,
                    health: None,
                    phases: phases
                        .into_iter()
                        .map(|(phase, duration_ms)| PhaseTiming { phase, duration_ms })
                        .collect(),
                    result: match err {
                        None => Outcome::Ok,
                        Some((class, message)) => Outcome::Error { class, message },
                    },
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn round_trip(recs in proptest::collection::vec(arb_record(), 0..8), fill in prop_oneof![Just(0u8), Just(0xFFu8)]) {
            let cap = 64 * 1024;
            let mut dev = Cursor::new(vec![fill; cap as usize]);
            for r in &recs {
                append(&mut dev, cap, r).unwrap();
            }
            let want: Vec<_> = recs.iter().cloned().enumerate().map(|(i, r)| with_seq(r, i as u64 + 1)).collect();
            prop_assert_eq!(read_all(&mut dev, cap).unwrap(), want);
        }

        #[test]
        fn torn_anywhere_in_the_last_record(recs in proptest::collection::vec(arb_record(), 1..5), frac in 0.0f64..1.0, next in arb_record()) {
            let cap = 64 * 1024;
            let mut dev = Cursor::new(vec![0u8; cap as usize]);
            let mut last = 0;
            for r in &recs {
                last = append(&mut dev, cap, r).unwrap();
            }
            let end = scan(&mut dev, cap).unwrap().end;
            // Keep a prefix of the last frame (possibly nothing), lose the rest.
            let cut = last + ((end - last) as f64 * frac) as u64;
            dev.get_mut()[cut as usize..end as usize].fill(0);
            let n = recs.len() - 1;
            let got = read_all(&mut dev, cap).unwrap();
            prop_assert_eq!(got.len(), n);
            prop_assert_eq!(append(&mut dev, cap, &next).unwrap(), last);
            let got = read_all(&mut dev, cap).unwrap();
            prop_assert_eq!(got.len(), n + 1);
            prop_assert_eq!(&got[n], &with_seq(next, n as u64 + 1));
        }
    }

    /// Attempt-started records count per unit (CID, else serial) until a
    /// success for that unit; final failure records and other units do not.
    #[test]
    fn attempts_count_per_unit_until_a_success() {
        let unit = sample(1).target;
        let other = sample(2).target;
        let ok = UnitRecord {
            result: Outcome::Ok,
            ..sample(1)
        };
        let failed = UnitRecord {
            result: Outcome::Error {
                class: crate::ErrorClass::WriteIo,
                message: "x".into(),
            },
            ..sample(1)
        };
        let started = attempt_started(&sample(1));
        assert!(started.attempt_started && started.bytes_written == 0);
        let started_other = attempt_started(&sample(2));
        let log = [
            started.clone(),
            failed.clone(),
            started.clone(),
            ok.clone(),
            started.clone(),
            failed.clone(),
            started_other.clone(),
            started.clone(),
            failed.clone(),
        ];
        assert_eq!(failed_attempts(&log[..4], &unit), 0, "a success resets");
        assert_eq!(failed_attempts(&log, &unit), 2);
        assert_eq!(failed_attempts(&log, &other), 1);
        let mut more = log.to_vec();
        more.push(started.clone());
        assert_eq!(failed_attempts(&more, &unit), MAX_ATTEMPTS);
        assert_eq!(last_failure(&more, &unit), Some("x"));
        assert_eq!(last_failure(&log[..4], &unit), None, "after a success");
        // Serial only: matched by serial; neither: never counted.
        let by_serial = TargetIdentity {
            cid: None,
            ..unit.clone()
        };
        let serial_log: Vec<UnitRecord> = (0..2)
            .map(|_| UnitRecord {
                target: by_serial.clone(),
                ..started.clone()
            })
            .collect();
        assert_eq!(failed_attempts(&serial_log, &by_serial), 2);
        let anon = TargetIdentity {
            cid: None,
            serial: None,
            ..unit.clone()
        };
        assert!(!anon.is_countable());
        assert_eq!(failed_attempts(&serial_log, &anon), 0);
        // The field round-trips through the log, and an old body without it reads
        // as a normal record.
        let mut c = Cursor::new(vec![0u8; 64 << 10]);
        append(&mut c, 64 << 10, &started).unwrap();
        append(&mut c, 64 << 10, &ok).unwrap();
        let back = read_all(&mut c, 64 << 10).unwrap();
        assert!(back[0].attempt_started && !back[1].attempt_started);
        let old = serde_json::to_string(&ok).unwrap();
        assert!(!old.contains("attempt_started"));
    }
}
