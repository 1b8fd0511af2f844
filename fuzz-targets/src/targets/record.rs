//! The unit-log reader (`flasher_format::record`): `scan` over a log partition
//! as the init reads it from the card, then `append` after whatever it found.

use flasher_format::record::{self, Scan, UnitRecord, FRAME_OVERHEAD, MAGIC, MAX_BODY};
use std::io::Cursor;

/// CRC-32/ISO-HDLC, the frame checksum.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

pub fn record(data: &[u8]) {
    log(data);
    // The input as one record body, framed with a valid CRC: reaches the JSON
    // decoding behind the checksum.
    if data.len() as u64 <= MAX_BODY {
        let mut framed = frame(data);
        framed.extend_from_slice(&[0u8; 8]);
        log(&framed);
    }
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&(body.len() as u32).to_le_bytes());
    f.extend_from_slice(body);
    let crc = CRC32.checksum(&f);
    f.extend_from_slice(&crc.to_le_bytes());
    f
}

fn log(data: &[u8]) {
    let capacity = data.len() as u64;
    let Ok(s) = record::scan(&mut Cursor::new(data), capacity) else {
        return;
    };
    check_scan(&s, capacity);
    append_after(data, &s);
    round_trip(&s);
}

fn check_scan(s: &Scan, capacity: u64) {
    assert!(s.end <= capacity, "the next record starts inside the log");
    let mut next = 0u64;
    for (off, _) in &s.records {
        assert!(*off >= next, "records in order, not overlapping");
        next = off + FRAME_OVERHEAD;
    }
    assert!(next <= s.end.max(FRAME_OVERHEAD));
}

/// The record appended after the scanned log. From JSON, so fields added to
/// `UnitRecord` later (all optional in a record) need no change here.
fn sample() -> UnitRecord {
    serde_json::from_str(
        r#"{"flasher_version":"fuzz","board":"fuzz-board","target":{"device":"mmcblk0"},
            "image_digest":"0000000000000000000000000000000000000000000000000000000000000000",
            "bytes_written":1,"result":{"status":"ok"}}"#,
    )
    // A fixed, valid record (the replay test runs this on every input).
    .expect("the sample record parses")
}

/// Appending after a scanned log keeps every record before it and adds one.
fn append_after(data: &[u8], s: &Scan) {
    let mut dev = data.to_vec();
    dev.resize(data.len() + 4096, 0xff);
    let capacity = dev.len() as u64;
    let mut c = Cursor::new(dev);
    let Ok((offset, seq)) = record::append_numbered(&mut c, capacity, &sample()) else {
        return;
    };
    assert_eq!(offset, s.end, "the record goes where the scan ended");
    let after = record::scan(&mut c, capacity).expect("a log just appended to scans");
    assert_eq!(after.records.len(), s.records.len() + 1, "one more record");
    assert_eq!(
        &after.records[..s.records.len()],
        &s.records[..],
        "old records kept"
    );
    let (at, last) = after.records.last().expect("the appended record");
    assert_eq!((*at, last.seq), (offset, seq));
    assert_eq!(last, &UnitRecord { seq, ..sample() });
}

/// The records read, appended to a fresh log, read back the same (but for `seq`,
/// which `append` assigns).
fn round_trip(s: &Scan) {
    let recs: Vec<&UnitRecord> = s.records.iter().map(|(_, r)| r).collect();
    let capacity = recs.len() as u64 * (MAX_BODY + FRAME_OVERHEAD) + 8;
    let mut c = Cursor::new(Vec::new());
    for r in &recs {
        if record::append(&mut c, capacity, r).is_err() {
            return;
        }
    }
    let back = record::read_all(&mut c, capacity).expect("a fresh log scans");
    assert_eq!(back.len(), recs.len());
    for (i, (a, b)) in back.iter().zip(recs).enumerate() {
        assert_eq!(
            a,
            &UnitRecord {
                seq: i as u64 + 1,
                ..b.clone()
            },
            "record round trip"
        );
    }
}
