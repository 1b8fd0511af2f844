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

/// An image of 300 000 bytes: data, a zero run, dont-care, odd-sized data tail.
fn sample() -> (Vec<u8>, Vec<u8>) {
    let mut w = BundleWriter::new(opts(), Cursor::new(Vec::new())).unwrap();
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
    let (mut bundle, logical) = sample();
    let len = bundle.len() as u64;
    bundle.extend_from_slice(&[0xa5; 10_000]);
    let mut r = Cursor::new(&bundle);
    let opened = read_manifest(&mut r).unwrap();
    let m = &opened.manifest;
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
                supported: 1
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
    m["version"] = 2.into();
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
                found: 2,
                supported: 1
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
    let (mut bundle, _) = sample();
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
    let (bundle, logical) = sample();
    let h = Header::parse(bundle[..HEADER_LEN].try_into().unwrap()).unwrap();
    let ml = h.manifest_len as usize;
    let mut m: serde_json::Value =
        serde_json::from_slice(&bundle[HEADER_LEN..HEADER_LEN + ml]).unwrap();
    let up = |v: &serde_json::Value| v.as_str().unwrap().to_ascii_uppercase();
    m["image_sha256"] = up(&m["image_sha256"]).into();
    for c in m["chunks"].as_array_mut().unwrap() {
        c["sha256"] = up(&c["sha256"]).into();
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
        .all(|c| c.sha256.bytes().all(|d| !d.is_ascii_uppercase())));
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
    let chunk = Chunk {
        offset: 0,
        length: 4096,
        compressed_size: 0,
        sha256: sha256_hex(&[0u8; 4096]),
    };
    let declared = zstd::bulk::compress(&vec![0u8; 64 << 20], 1).unwrap();
    let raw = RawChunk {
        index: 3,
        chunk: Chunk {
            compressed_size: declared.len() as u64,
            ..chunk.clone()
        },
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
        compressed: hidden,
    };
    let e = decode_chunk(&raw, &mut out).unwrap_err();
    assert!(matches!(e, Error::ChunkCorrupt { index: 4, .. }), "{e:?}");
}
