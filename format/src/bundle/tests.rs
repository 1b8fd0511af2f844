use super::testing::{relabel_as_version_1, reseal};
use super::*;
use std::io::Cursor;

fn opts() -> WriterOptions {
    WriterOptions {
        chunk_size: 64 << 10,
        level: 1,
        workers: 2,
        ..WriterOptions::default()
    }
}

/// Both chunk digests: version 1 (SHA-256) and version 2 (BLAKE3).
const ALGS: [ChunkDigest; 2] = [ChunkDigest::Sha256, ChunkDigest::Blake3];

/// An image of 300 000 bytes: data, a zero run, dont-care, odd-sized data tail.
fn sample() -> (Vec<u8>, Vec<u8>) {
    sample_with(ChunkDigest::default())
}

fn sample_with(chunk_digest: ChunkDigest) -> (Vec<u8>, Vec<u8>) {
    let o = WriterOptions {
        chunk_digest,
        ..opts()
    };
    let mut w = BundleWriter::new(o, Cursor::new(Vec::new())).unwrap();
    let data1: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    w.push_data(&data1).unwrap();
    w.push_zero(70_000).unwrap();
    w.push_dont_care(30_000).unwrap();
    let data2: Vec<u8> = (0..100_001u32).map(|i| (i % 13) as u8 + 1).collect();
    w.push_data(&data2).unwrap();
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    let mut logical = data1;
    logical.extend(std::iter::repeat_n(0, 100_000));
    logical.extend(data2);
    (out, logical)
}

#[test]
fn round_trip_and_trailing_garbage_ignored() {
    for alg in ALGS {
        round_trip(alg);
    }
}

fn round_trip(alg: ChunkDigest) {
    let (mut bundle, logical) = sample_with(alg);
    let len = bundle.len() as u64;
    bundle.extend_from_slice(&[0xa5; 10_000]);
    let mut r = Cursor::new(&bundle);
    let opened = read_manifest(&mut r).unwrap();
    let m = &opened.manifest;
    assert_eq!(
        (opened.header.version, m.version),
        (alg.version(), alg.version())
    );
    assert_eq!(m.digest_alg(), alg);
    // Each chunk carries its digest under the algorithm's key only.
    let data = &logical[..m.chunks[0].length as usize];
    assert_eq!(m.chunks[0].digest(alg), alg.hex(data));
    assert!(m
        .chunks
        .iter()
        .all(|c| c.sha256.is_empty() != c.blake3.is_empty()));
    assert_eq!(opened.header.bundle_len(), len);
    assert_eq!(m.image_size, logical.len() as u64);
    assert_eq!(m.image_sha256, sha256_hex(&logical));
    assert_eq!(m.bytes_of(ExtentKind::MustBeZero), 70_000);
    assert_eq!(m.bytes_of(ExtentKind::DontCare), 30_000);
    let mut image = vec![0u8; logical.len()];
    for raw in ChunkReader::new(&mut r, m) {
        let raw = raw.unwrap();
        let c = raw.chunk.clone();
        decode_chunk(&raw, &mut image[c.offset as usize..c.end() as usize]).unwrap();
    }
    assert_eq!(
        r.position(),
        len,
        "reader stops exactly at the bundle's end"
    );
    assert_eq!(image, logical);
    // Chunks never cross a chunk-size boundary.
    for c in &m.chunks {
        assert_eq!(c.offset / m.chunk_size, (c.end() - 1) / m.chunk_size);
    }
}

/// The bytes a version-1 reader parses: no `chunk_digest` key and every chunk
/// keyed `sha256`, as before version 2 existed.
#[test]
fn version_1_manifests_keep_the_old_shape() {
    let (bundle, _) = sample_with(ChunkDigest::Sha256);
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    let m: serde_json::Value =
        serde_json::from_slice(&bundle[HEADER_LEN..HEADER_LEN + h.manifest_len as usize]).unwrap();
    assert_eq!(h.version, 1);
    assert_eq!(m["version"], 1);
    assert!(m.get("chunk_digest").is_none());
    for c in m["chunks"].as_array().unwrap() {
        assert_eq!(c["sha256"].as_str().unwrap().len(), 64);
        assert!(c.get("blake3").is_none());
    }
}

/// The digest algorithm is fixed by the (signed) version: a version-1
/// manifest relabelled as version 2, or the reverse, is refused whether or
/// not the header is relabelled with it, and whatever `chunk_digest` says.
#[test]
fn relabelled_versions_are_refused() {
    let (v1, _) = sample_with(ChunkDigest::Sha256);
    let (v2, _) = sample_with(ChunkDigest::Blake3);
    let read = |b: &[u8]| read_manifest(&mut Cursor::new(b)).unwrap_err();
    // v1 → v2, header too: no chunk_digest means sha256, which v2 forbids.
    let e = read(&reseal(&v1, Some(2), |m| m["version"] = 2.into()));
    assert!(
        matches!(e, Error::DigestMismatch { version: 2, ref found, required: "blake3" } if found == "sha256"),
        "{e:?}"
    );
    // v1 → v2 claiming blake3: the chunks still carry only SHA-256 keys.
    let e = read(&reseal(&v1, Some(2), |m| {
        m["version"] = 2.into();
        m["chunk_digest"] = "blake3".into();
    }));
    assert!(
        matches!(e, Error::InvalidManifest(ref s) if s.contains("chunk 0 blake3")),
        "{e:?}"
    );
    // v2 → v1, header too.
    let e = read(&reseal(&v2, Some(1), |m| m["version"] = 1.into()));
    assert!(
        matches!(e, Error::DigestMismatch { version: 1, ref found, required: "sha256" } if found == "blake3"),
        "{e:?}"
    );
    // v2 → v1 with the chunk_digest dropped: the BLAKE3 keys are no SHA-256.
    let e = read(&reseal(&v2, Some(1), |m| {
        m["version"] = 1.into();
        m.as_object_mut().unwrap().remove("chunk_digest");
    }));
    assert!(
        matches!(e, Error::InvalidManifest(ref s) if s.contains("chunk 0 sha256")),
        "{e:?}"
    );
    // v2 with its BLAKE3 digests moved under the sha256 key: a well-formed
    // version 1 manifest, but every chunk then fails its SHA-256 check.
    let moved = reseal(&v2, Some(1), relabel_as_version_1);
    let mut r = Cursor::new(&moved);
    let opened = read_manifest(&mut r).unwrap();
    for raw in ChunkReader::new(&mut r, &opened.manifest) {
        let raw = raw.unwrap();
        let mut out = vec![0u8; raw.chunk.length as usize];
        let e = decode_chunk(&raw, &mut out).unwrap_err();
        assert!(
            matches!(
                e,
                Error::ChunkDigest {
                    algorithm: "SHA-256",
                    ..
                }
            ),
            "{e:?}"
        );
    }
    // Only the manifest relabelled, not the header: refused by the mismatch.
    let e = read(&reseal(&v1, None, |m| m["version"] = 2.into()));
    assert!(
        matches!(e, Error::InvalidManifest(ref s) if s.contains("header says 1")),
        "{e:?}"
    );
}

#[test]
fn unknown_chunk_digest_is_refused() {
    let (v2, _) = sample_with(ChunkDigest::Blake3);
    for name in ["xxh3", "SHA256", "", "md5"] {
        let b = reseal(&v2, None, |m| m["chunk_digest"] = name.into());
        let e = read_manifest(&mut Cursor::new(&b)).unwrap_err();
        assert!(
            matches!(e, Error::UnknownDigest { ref found } if found == name),
            "{e:?}"
        );
    }
    // Not a string at all: a parse error, not a guess.
    let b = reseal(&v2, None, |m| m["chunk_digest"] = 3.into());
    let e = read_manifest(&mut Cursor::new(&b)).unwrap_err();
    assert!(matches!(e, Error::ManifestParse(_)), "{e:?}");
}

/// A chunk whose digest does not match is refused naming the algorithm, in
/// both versions (the manifest edited to expect other bytes).
#[test]
fn chunk_digest_mismatch_names_the_algorithm() {
    for alg in ALGS {
        let (b, _) = sample_with(alg);
        let bad = reseal(&b, None, |m| {
            m["chunks"][1][alg.name()] = "ab".repeat(32).into();
        });
        let mut r = Cursor::new(&bad);
        let opened = read_manifest(&mut r).unwrap();
        let errs: Vec<_> = ChunkReader::new(&mut r, &opened.manifest)
            .filter_map(|raw| {
                let raw = raw.unwrap();
                let mut out = vec![0u8; raw.chunk.length as usize];
                decode_chunk(&raw, &mut out).err()
            })
            .collect();
        assert_eq!(errs.len(), 1, "{alg:?}");
        assert!(
            matches!(errs[0], Error::ChunkDigest { index: 1, algorithm, .. } if algorithm == alg.label()),
            "{:?}",
            errs[0]
        );
    }
}

#[test]
fn unknown_header_version_is_refused() {
    let (mut bundle, _) = sample();
    bundle[8..12].copy_from_slice(&7u32.to_le_bytes());
    let e = read_manifest(&mut Cursor::new(&bundle)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownVersion {
                found: 7,
                supported: VERSION
            }
        ),
        "{e:?}"
    );
}

#[test]
fn unknown_manifest_version_is_refused() {
    let (bundle, _) = sample();
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&bundle[HEADER_LEN..HEADER_LEN + h.manifest_len as usize]).unwrap();
    m["version"] = 3.into();
    m["something_new"] = true.into();
    let json = serde_json::to_vec(&m).unwrap();
    let h2 = Header {
        manifest_len: json.len() as u64,
        manifest_sha256: Sha256::digest(&json).into(),
        ..h.clone()
    };
    let mut b = h2.to_bytes().to_vec();
    b.extend(&json);
    b.extend(&bundle[HEADER_LEN + h.manifest_len as usize..]);
    let e = read_manifest(&mut Cursor::new(&b)).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownVersion {
                found: 3,
                supported: VERSION
            }
        ),
        "{e:?}"
    );
}

#[test]
fn truncation_is_reported_where_it_happens() {
    let (bundle, _) = sample();
    let e = read_manifest(&mut Cursor::new(&bundle[..40])).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Truncated {
                expected: 80,
                got: 40,
                ..
            }
        ),
        "{e:?}"
    );
    let e = read_manifest(&mut Cursor::new(&bundle[..200])).unwrap_err();
    assert!(matches!(e, Error::Truncated { .. }), "{e:?}");
    let cut = &bundle[..bundle.len() - 5];
    let mut r = Cursor::new(cut);
    let opened = read_manifest(&mut r).unwrap();
    let last = ChunkReader::new(&mut r, &opened.manifest).last().unwrap();
    assert!(matches!(last, Err(Error::Truncated { .. })), "{last:?}");
}

#[test]
fn bad_magic_and_corrupt_manifest() {
    let (mut bundle, _) = sample();
    let e = read_manifest(&mut Cursor::new(&vec![0u8; 200])).unwrap_err();
    assert!(matches!(e, Error::BadMagic { .. }), "{e:?}");
    bundle[HEADER_LEN + 10] ^= 1;
    let e = read_manifest(&mut Cursor::new(&bundle)).unwrap_err();
    assert!(matches!(e, Error::ManifestDigest { .. }), "{e:?}");
}

#[test]
fn flipped_chunk_byte_names_the_chunk() {
    for alg in ALGS {
        flipped_chunk_byte(alg);
    }
}

fn flipped_chunk_byte(alg: ChunkDigest) {
    let (mut bundle, _) = sample_with(alg);
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    let start = (HEADER_LEN as u64 + h.manifest_len) as usize;
    let second = start + m.chunks[0].compressed_size as usize;
    bundle[second + m.chunks[1].compressed_size as usize / 2] ^= 0x40;
    let mut r = Cursor::new(&bundle);
    let opened = read_manifest(&mut r).unwrap();
    let mut errs = Vec::new();
    for raw in ChunkReader::new(&mut r, &opened.manifest) {
        let raw = raw.unwrap();
        let mut out = vec![0u8; raw.chunk.length as usize];
        if let Err(e) = decode_chunk(&raw, &mut out) {
            errs.push(e);
        }
    }
    assert_eq!(errs.len(), 1);
    assert!(
        matches!(
            errs[0],
            Error::ChunkDigest { index: 1, .. } | Error::ChunkCorrupt { index: 1, .. }
        ),
        "{:?}",
        errs[0]
    );
}

#[test]
fn validate_rejects_gaps_and_bad_chunks() {
    let (bundle, _) = sample();
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    let mut m2 = m.clone();
    m2.extents[1].length -= 1;
    assert!(matches!(m2.validate(), Err(Error::InvalidManifest(_))));
    let mut m3 = m.clone();
    m3.chunks.pop();
    assert!(matches!(m3.validate(), Err(Error::InvalidManifest(_))));
    let mut m4 = m;
    m4.image_size += 1;
    assert!(matches!(m4.validate(), Err(Error::InvalidManifest(_))));
}

/// Another tool may write the manifest's digests in uppercase hex: they are
/// lowercased at parse time, so they compare equal to what the reader computes.
#[test]
fn uppercase_digests_are_normalised_at_parse_time() {
    for alg in ALGS {
        uppercase_digests(alg);
    }
}

fn uppercase_digests(alg: ChunkDigest) {
    let (bundle, logical) = sample_with(alg);
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    let ml = h.manifest_len as usize;
    let mut m: serde_json::Value =
        serde_json::from_slice(&bundle[HEADER_LEN..HEADER_LEN + ml]).unwrap();
    let up = |v: &serde_json::Value| v.as_str().unwrap().to_ascii_uppercase();
    m["image_sha256"] = up(&m["image_sha256"]).into();
    for c in m["chunks"].as_array_mut().unwrap() {
        c[alg.name()] = up(&c[alg.name()]).into();
    }
    let json = serde_json::to_vec(&m).unwrap();
    let h2 = Header {
        manifest_len: json.len() as u64,
        manifest_sha256: Sha256::digest(&json).into(),
        ..h.clone()
    };
    let mut b = h2.to_bytes().to_vec();
    b.extend(&json);
    b.extend(&bundle[HEADER_LEN + ml..]);
    let opened = read_manifest(&mut Cursor::new(&b)).unwrap();
    assert_eq!(opened.manifest.image_sha256, sha256_hex(&logical));
    assert!(opened
        .manifest
        .chunks
        .iter()
        .all(|c| c.digest(alg).bytes().all(|d| !d.is_ascii_uppercase())));
    // And they still match the bytes.
    assert!(opened
        .manifest
        .chunk_matches(0, &logical[..opened.manifest.chunks[0].length as usize]));
}

/// Hostile manifests (docs/SECURITY.md): every bound is an `InvalidManifest`
/// (or its own variant) with the numbers, never a panic or an allocation.
#[test]
fn hostile_manifests_are_refused_with_their_numbers() {
    let (bundle, _) = sample();
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    let invalid = |m: &Manifest, needle: &str| match m.validate() {
        Err(Error::InvalidManifest(msg)) => {
            assert!(msg.contains(needle), "{needle:?} not in {msg:?}")
        }
        other => panic!("expected InvalidManifest with {needle:?}, got {other:?}"),
    };
    let mut big_chunks = m.clone();
    big_chunks.chunk_size = MAX_CHUNK_SIZE + 4096;
    invalid(&big_chunks, &(MAX_CHUNK_SIZE + 4096).to_string());
    let mut huge = m.clone();
    huge.image_size = MAX_IMAGE_SIZE + 1;
    invalid(&huge, &(MAX_IMAGE_SIZE + 1).to_string());
    // Extent order, overlap and range.
    let mut swapped = m.clone();
    swapped.extents.swap(0, 1);
    invalid(&swapped, "extent 0");
    let mut overlap = m.clone();
    overlap.extents[1].offset -= 1;
    invalid(&overlap, "extent 1");
    let mut overflow = m.clone();
    overflow.extents[1].length = u64::MAX;
    invalid(&overflow, "extent 1");
    // A chunk whose length would overflow its end.
    let mut chunk_overflow = m.clone();
    chunk_overflow.chunks[0].length = u64::MAX;
    invalid(&chunk_overflow, "chunk 0");
    let mut bomb_size = m.clone();
    bomb_size.chunks[0].compressed_size = u64::MAX;
    invalid(&bomb_size, "compressed size");
    let mut many = m.clone();
    many.files = vec![PinnedFile::new("x", b""); MAX_FILES + 1];
    invalid(&many, "pinned files");
    let mut twice = m;
    twice.files = vec![PinnedFile::new("MLO", b"a"), PinnedFile::new("mlo", b"b")];
    invalid(&twice, "pinned twice");
}

#[test]
fn hostile_headers_are_refused_before_any_allocation() {
    let (bundle, _) = sample();
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    for (what, hh) in [
        (
            "manifest length",
            Header {
                manifest_len: MAX_MANIFEST_LEN + 1,
                ..h.clone()
            },
        ),
        (
            "signature length",
            Header {
                signature_len: MAX_SIGNATURE_LEN + 1,
                ..h.clone()
            },
        ),
        (
            "chunk stream length",
            Header {
                data_len: u64::MAX,
                ..h.clone()
            },
        ),
    ] {
        let e = Header::parse(&hh.to_bytes()).unwrap_err();
        match e {
            Error::InvalidManifest(msg) => assert!(msg.contains(what), "{msg}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert!(matches!(
        alloc_zeroed(u64::MAX, "a test buffer"),
        Err(Error::OutOfMemory {
            bytes: u64::MAX,
            ..
        })
    ));
}

/// A zstd frame that declares more bytes than the manifest's chunk length is
/// refused by name before it is decompressed; one that hides its size fails
/// on the fixed-size output buffer. Neither allocates beyond it.
#[test]
fn zstd_bombs_are_refused() {
    let chunk = Chunk::new(0, 4096, 0, ChunkDigest::Sha256, sha256_hex(&[0u8; 4096]));
    let declared = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
    let raw = RawChunk {
        index: 3,
        chunk: Chunk {
            compressed_size: declared.len() as u64,
            ..chunk.clone()
        },
        digest: ChunkDigest::Sha256,
        compressed: declared,
    };
    let mut out = vec![0u8; 4096];
    let e = decode_chunk(&raw, &mut out).unwrap_err();
    assert!(
        matches!(
            e,
            Error::ChunkOverflow {
                index: 3,
                length: 4096,
                declared: 67_108_864,
                ..
            }
        ),
        "{e:?}"
    );
    // The same bomb streamed without a content size in its header.
    let mut hidden = Vec::new();
    {
        let mut enc = zstd::stream::Encoder::new(&mut hidden, 1).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &vec![0u8; 1 << 20]).unwrap();
        enc.finish().unwrap();
    }
    let raw = RawChunk {
        index: 4,
        chunk: Chunk {
            compressed_size: hidden.len() as u64,
            ..chunk
        },
        digest: ChunkDigest::Sha256,
        compressed: hidden,
    };
    let e = decode_chunk(&raw, &mut out).unwrap_err();
    assert!(matches!(e, Error::ChunkCorrupt { index: 4, .. }), "{e:?}");
}

/// Version 2 carries an XXH3-128 per chunk for the read-back (signed with the
/// rest); the read-back is compared with it, and version 1 stays without it.
#[test]
fn readback_digest_is_xxh3_in_version_2_and_absent_in_version_1() {
    let (v2, logical) = sample_with(ChunkDigest::Blake3);
    let m = read_manifest(&mut Cursor::new(&v2)).unwrap().manifest;
    assert_eq!(m.readback_digest, READBACK_XXH3);
    for (i, c) in m.chunks.iter().enumerate() {
        let bytes = &logical[c.offset as usize..c.end() as usize];
        assert_eq!(c.xxh3, xxh3_hex(bytes), "chunk {i}");
        assert!(m.readback_matches(i, bytes));
        let mut wrong = bytes.to_vec();
        let mid = wrong.len() / 2;
        wrong[mid] ^= 1;
        assert!(!m.readback_matches(i, &wrong), "chunk {i}");
    }
    // The read-back goes by the XXH3, not the chunk digest: a manifest whose
    // XXH3 for chunk 1 is wrong fails that chunk's read-back of right bytes.
    let b = reseal(&v2, None, |m| {
        m["chunks"][1]["xxh3"] = "0".repeat(32).into()
    });
    let m2 = read_manifest(&mut Cursor::new(&b)).unwrap().manifest;
    let c = &m2.chunks[1];
    assert!(!m2.readback_matches(1, &logical[c.offset as usize..c.end() as usize]));
    assert!(m2.chunk_matches(1, &logical[c.offset as usize..c.end() as usize]));
    // Version 1: no field, and the read-back uses the SHA-256.
    let (v1, _) = sample_with(ChunkDigest::Sha256);
    let json = String::from_utf8_lossy(&v1[HEADER_LEN..]).into_owned();
    assert!(!json.contains("xxh3"));
    let m1 = read_manifest(&mut Cursor::new(&v1)).unwrap().manifest;
    let c = &m1.chunks[0];
    assert!(m1.readback_matches(0, &logical[c.offset as usize..c.end() as usize]));
    // Without the field (`mkflasher bundle --readback-digest chunk`), the
    // read-back uses the chunk digest.
    let o = WriterOptions {
        readback_digest: false,
        ..opts()
    };
    let mut w = BundleWriter::new(o, Cursor::new(Vec::new())).unwrap();
    w.push_data(&logical[..100_000]).unwrap();
    let mut out = Vec::new();
    let m3 = w.finish(&mut out).unwrap();
    assert!(m3.readback_digest.is_empty() && m3.chunks.iter().all(|c| c.xxh3.is_empty()));
    assert!(m3.readback_matches(0, &logical[..64 << 10]));
}

/// A manifest naming XXH3 must carry a well-formed one for every chunk, no
/// other read-back digest is accepted, and version 1 carries none.
#[test]
fn malformed_readback_digests_are_refused() {
    let (v2, _) = sample_with(ChunkDigest::Blake3);
    type Edit = fn(&mut serde_json::Value);
    let cases: [Edit; 4] = [
        |m| m["chunks"][2]["xxh3"] = "abc".into(),
        |m| m["chunks"][0]["xxh3"] = "zz".repeat(16).into(),
        |m| {
            m["chunks"][1].as_object_mut().unwrap().remove("xxh3");
        },
        |m| m["readback_digest"] = "crc32".into(),
    ];
    for edit in cases {
        let b = reseal(&v2, None, edit);
        let e = read_manifest(&mut Cursor::new(&b)).unwrap_err();
        assert!(matches!(e, Error::InvalidManifest(_)), "{e:?}");
    }
    let (v1, _) = sample_with(ChunkDigest::Sha256);
    let b = reseal(&v1, None, |m| m["readback_digest"] = READBACK_XXH3.into());
    let e = read_manifest(&mut Cursor::new(&b)).unwrap_err();
    assert!(matches!(e, Error::InvalidManifest(_)), "{e:?}");
}

/// An unpinned card file's error says how to pin it: the unit pool through
/// `--unit-data` (its own checks and encoding), anything else through `--pin`.
#[test]
fn unpinned_file_errors_name_the_right_flag() {
    let msg = |name: &str| Error::UnpinnedFile { name: name.into() }.to_string();
    assert!(msg(crate::pool::POOL_FILE).contains("--unit-data FILE.csv"));
    assert!(
        msg("UNITS.JSON").contains("--unit-data"),
        "FAT names ignore case"
    );
    assert!(msg("config.json").contains("--pin FILE"));
    assert!(!msg("config.json").contains("--unit-data"));
}

/// `is_zero` at every alignment and length around the 16-byte words it
/// compares, with one non-zero byte at each position.
#[test]
fn is_zero_at_every_alignment() {
    let buf = [0u8; 80];
    for start in 0..17 {
        for len in 0..48 {
            let s = &buf[start..start + len];
            assert!(is_zero(s));
            for i in 0..len {
                let mut v = s.to_vec();
                let mut b = vec![0u8; start];
                v[i] = 1;
                b.extend_from_slice(&v);
                assert!(!is_zero(&b[start..]), "start {start} len {len} at {i}");
            }
        }
    }
}

fn held(offset: u64, length: u64, what: &str) -> HoldRange {
    HoldRange {
        offset,
        length,
        what: what.into(),
    }
}

/// A bundle of the 300 000-byte sample image with `hold` asked of the writer.
fn sample_holding(hold: Vec<HoldRange>) -> Vec<u8> {
    let mut w =
        BundleWriter::new(WriterOptions { hold, ..opts() }, Cursor::new(Vec::new())).unwrap();
    w.push_data(&[7u8; 300_000]).unwrap();
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    out
}

#[test]
fn held_back_ranges_round_trip_rounded_out_and_merged() {
    let bundle = sample_holding(vec![
        held(70_000, 2, "swap signature"),
        held(1024, 1024, "ext4 superblock"),
        held(4096, 10, "ext4 backup"),
        // The last block is partial: clipped at the image's end.
        held(299_990, 4, "tail magic"),
    ]);
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    assert_eq!(
        m.hold,
        vec![
            held(0, 8192, "ext4 superblock; ext4 backup"),
            held(69_632, 4096, "swap signature"),
            held(299_008, 992, "tail magic"),
        ]
    );
    // Signed with the rest: the JSON carries it.
    let json = String::from_utf8_lossy(&bundle);
    assert!(json.contains("\"hold\""), "no hold list in the manifest");
}

#[test]
fn old_bundles_have_no_hold_list_and_still_read() {
    let (bundle, _) = sample();
    let json = String::from_utf8_lossy(&bundle);
    assert!(!json.contains("\"hold\""), "an empty list is not written");
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    assert!(m.hold.is_empty());
}

#[test]
fn an_old_reader_ignores_the_hold_list() {
    // What a flasher built before the field does: its Manifest has no
    // `hold`, and serde skips unknown fields (no deny_unknown_fields).
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct OldManifest {
        version: u32,
        image_size: u64,
        extents: Vec<Extent>,
    }
    let bundle = sample_holding(vec![held(8192, 4096, "x")]);
    let opened = read_manifest(&mut Cursor::new(&bundle)).unwrap();
    let old: OldManifest = serde_json::from_slice(&opened.manifest_bytes).unwrap();
    assert_eq!(old.image_size, 300_000);
}

#[test]
fn hostile_hold_lists_are_refused_with_their_numbers() {
    let bundle = sample_holding(vec![held(8192, 4096, "ok")]);
    let m = read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
    m.validate().unwrap();
    let refused = |hold: Vec<HoldRange>, index: usize, needle: &str| {
        let mut bad = m.clone();
        bad.hold = hold;
        match bad.validate() {
            Err(e @ Error::HoldRange { index: i, .. }) => {
                let msg = e.to_string();
                assert_eq!(i, index, "{msg}");
                assert!(msg.contains(needle), "{needle:?} not in {msg:?}");
            }
            other => panic!("expected HoldRange with {needle:?}, got {other:?}"),
        }
    };
    refused(vec![held(4096, 0, "")], 0, "empty");
    refused(vec![held(1024, 4096, "")], 0, "aligned");
    refused(vec![held(4096, 100, "")], 0, "aligned");
    refused(
        vec![held(299_008, 4096, "")],
        0,
        "ends past the image's 300000 bytes",
    );
    refused(vec![held(u64::MAX - 4095, 8192, "")], 0, "overflows");
    refused(
        vec![held(8192, 8192, ""), held(12_288, 4096, "")],
        1,
        "previous range ends at 16384",
    );
    refused(
        vec![held(8192, 4096, ""), held(4096, 4096, "")],
        1,
        "sorted",
    );
    refused(
        vec![held(0, 4096, &"x".repeat(MAX_HOLD_WHAT + 1))],
        0,
        "description",
    );
    // Too many: 257 ranges of one block each (the image is big enough).
    let mut big = m.clone();
    big.image_size = MAX_IMAGE_SIZE;
    big.extents = vec![Extent {
        kind: ExtentKind::DontCare,
        offset: 0,
        length: MAX_IMAGE_SIZE,
    }];
    big.chunks.clear();
    big.hold = (0..MAX_HOLD_RANGES as u64 + 1)
        .map(|i| held(i * 8192, 4096, ""))
        .collect();
    let e = big.validate().unwrap_err().to_string();
    assert!(e.contains("257 ranges are listed, at most 256"), "{e}");
    // Too many bytes: 2 MiB in one range.
    big.hold = vec![held(0, 2 << 20, "")];
    let e = big.validate().unwrap_err().to_string();
    assert!(e.contains("2097152 bytes, at most 1048576"), "{e}");
}

#[test]
fn the_writer_refuses_a_hold_list_past_the_bounds() {
    let many: Vec<HoldRange> = (0..MAX_HOLD_RANGES as u64 + 1)
        .map(|i| held(i * 8192, 1, "sb"))
        .collect();
    let e = normalize_hold(&many, 1 << 30).unwrap_err().to_string();
    assert!(e.contains("257 held-back ranges"), "{e}");
    let e = normalize_hold(&[held(0, 2 << 20, "big")], 1 << 30)
        .unwrap_err()
        .to_string();
    assert!(e.contains("2097152 bytes"), "{e}");
    let e = normalize_hold(&[held(1 << 30, 1, "past")], 1 << 30)
        .unwrap_err()
        .to_string();
    assert!(e.contains("past the image"), "{e}");
}
