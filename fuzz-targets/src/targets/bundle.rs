//! The bundle reader as the board runs it (`flasher::pipeline` calls exactly
//! these): header, manifest (`read_manifest`), then every chunk through
//! `ChunkReader` and `decode_chunk` (zstd and the chunk digest).

use flasher_format::bundle::{
    decode_chunk, read_manifest, ChunkReader, ExtentKind, Header, Manifest, HEADER_LEN, MAGIC,
    MAX_CHUNK_SIZE,
};
use sha2::{Digest, Sha256};

pub fn bundle(data: &[u8]) {
    if let Some(b) = data.first_chunk::<HEADER_LEN>() {
        header_round_trip(b);
    }
    read(data);
    if let Some(fixed) = with_manifest_digest(data) {
        read(&fixed);
    }
}

/// A header that parses renders to bytes that parse to the same header.
fn header_round_trip(b: &[u8; HEADER_LEN]) {
    if let Ok(h) = Header::parse(b) {
        let again = Header::parse(&h.to_bytes()).expect("a rendered header parses");
        assert_eq!(again, h, "header round trip");
    }
}

/// The input with the header's manifest SHA-256 (and chunk-stream length)
/// made to match, so that mutated manifests get past the digest check.
fn with_manifest_digest(data: &[u8]) -> Option<Vec<u8>> {
    if data.get(..8)? != MAGIC {
        return None;
    }
    let len = usize::try_from(super::le64(data, 16)?).ok()?;
    let manifest = data.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    let mut out = data.to_vec();
    out[40..72].copy_from_slice(&Sha256::digest(manifest));
    // The chunk-stream length the manifest implies, when it parses.
    if let Ok(m) = serde_json_manifest(manifest) {
        let sum = m
            .chunks
            .iter()
            .try_fold(0u64, |a, c| a.checked_add(c.compressed_size));
        if let Some(sum) = sum {
            out[32..40].copy_from_slice(&sum.to_le_bytes());
        }
    }
    Some(out)
}

fn serde_json_manifest(bytes: &[u8]) -> serde_json::Result<Manifest> {
    serde_json::from_slice(bytes)
}

fn read(data: &[u8]) {
    let mut r = super::super::cursor(data);
    let Ok(opened) = read_manifest(&mut r) else {
        return;
    };
    let m = &opened.manifest;
    check_manifest(m);
    // What the header promises fits in the input it was read from, or the
    // chunk reader must fail (never read past the bundle or panic).
    let mut decoded = 0u64;
    for raw in ChunkReader::new(&mut r, m) {
        let Ok(raw) = raw else { break };
        assert_eq!(raw.compressed.len() as u64, raw.chunk.compressed_size);
        let mut out = vec![0u8; raw.chunk.length as usize];
        if decode_chunk(&raw, &mut out).is_ok() {
            decoded += raw.chunk.length;
        }
    }
    assert!(decoded <= m.bytes_of(ExtentKind::Data));
}

/// What the writer relies on in a manifest `read_manifest` accepted.
fn check_manifest(m: &Manifest) {
    assert!(m.validate().is_ok(), "an accepted manifest validates again");
    assert!(m.image_size > 0);
    assert!(m.chunk_size > 0 && m.chunk_size <= MAX_CHUNK_SIZE);
    // Extents: in order, contiguous, non-empty, covering exactly 0..image_size.
    let mut pos = 0u64;
    for e in &m.extents {
        assert_eq!(e.offset, pos, "extents are contiguous");
        assert!(e.length > 0);
        pos = e.offset.checked_add(e.length).expect("extent end fits u64");
    }
    assert_eq!(pos, m.image_size, "extents cover the image");
    // Chunks: in order, non-empty, at most one chunk size, inside a data extent.
    let mut prev_end = 0u64;
    for c in &m.chunks {
        assert!(c.length > 0 && c.length <= m.chunk_size);
        let end = c.offset.checked_add(c.length).expect("chunk end fits u64");
        assert!(c.offset >= prev_end, "chunks in order, not overlapping");
        assert!(end <= m.image_size, "chunk inside the image");
        assert!(
            m.extents.iter().any(|e| e.kind == ExtentKind::Data
                && e.offset <= c.offset
                && end <= e.offset + e.length),
            "chunk inside one data extent"
        );
        prev_end = end;
    }
    // The version fixes the chunk digest (1: SHA-256, 2: BLAKE3), and each
    // chunk carries exactly that digest.
    let alg = m.digest_alg();
    assert_eq!(alg.version(), m.version, "chunk digest tied to the version");
    assert!(m
        .chunks
        .iter()
        .all(|c| c.digest(alg).len() == 64 && c.sha256.is_empty() != c.blake3.is_empty()));
    // JSON round trip.
    let json = serde_json_render(m);
    let again = serde_json_manifest(&json).expect("a rendered manifest parses");
    assert_eq!(&again, m, "manifest round trip");
}

fn serde_json_render(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec_pretty(m).expect("a manifest renders")
}
