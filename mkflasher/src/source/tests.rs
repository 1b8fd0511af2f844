use super::*;
use bmap::Bmap;
use flasher::pipeline::{self, WriteOptions};
use flasher_format::bundle::{read_manifest, ExtentKind};
use proptest::prelude::*;
use std::io::{Cursor, Write};

fn small_opts() -> BundleOptions {
    BundleOptions {
        writer: WriterOptions {
            chunk_size: 64 << 10,
            level: 1,
            workers: 2,
            ..Default::default()
        },
        min_zero_run: 8192,
        ..Default::default()
    }
}

#[test]
fn magic_bytes_decide_not_names() {
    let p = Path::new("x.img");
    assert_eq!(detect(p, &[0x1f, 0x8b, 8, 0]).unwrap(), Compression::Gzip);
    assert_eq!(detect(p, b"\xfd7zXZ\x00\x00").unwrap(), Compression::Xz);
    assert_eq!(
        detect(p, &[0x28, 0xb5, 0x2f, 0xfd, 0]).unwrap(),
        Compression::Zstd
    );
    assert_eq!(detect(p, &[0, 0, 0, 0]).unwrap(), Compression::None);
    assert_eq!(detect(p, &[]).unwrap(), Compression::None);
    assert!(matches!(
        detect(p, b"BZh91AY"),
        Err(Error::UnsupportedCompression { name: "bzip2", .. })
    ));
}

/// A sparse image file: (offset, bytes) data pieces, holes elsewhere.
fn sparse_file(path: &Path, size: u64, pieces: &[(u64, Vec<u8>)]) {
    let mut f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (off, b) in pieces {
        f.seek(SeekFrom::Start(*off)).unwrap();
        f.write_all(b).unwrap();
    }
}

fn flash(bundle: &Path, target_len: usize) -> Vec<u8> {
    let garbage: Vec<u8> = (0..target_len).map(|i| (i * 7 + 3) as u8 | 1).collect();
    let mut t = pipeline::Plain::new(Cursor::new(garbage)).unwrap();
    let f = File::open(bundle).unwrap();
    pipeline::write_to(
        std::io::BufReader::new(f),
        &mut t,
        &WriteOptions {
            workers: 2,
            ..Default::default()
        },
        &flasher::progress::Null,
    )
    .unwrap();
    t.into_inner().into_inner()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// Sparse files with data, zero-filled and hole runs at odd offsets and
    /// odd total sizes: bundle, flash onto garbage, compare the whole image.
    #[test]
    fn sparse_images_round_trip(
        pieces in prop::collection::vec((0u64..3_000_000, 1usize..150_000, any::<u8>(), any::<bool>()), 0..8),
        size in 1u64..3_500_000,
        compress in 0u8..4,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("image");
        let pieces: Vec<(u64, Vec<u8>)> = pieces
            .into_iter()
            .filter(|(o, _, _, _)| *o < size)
            .map(|(o, n, seed, zero)| {
                let n = n.min((size - o) as usize);
                let b = if zero { vec![0u8; n] } else { (0..n).map(|i| (i as u8).wrapping_add(seed) | 0x10).collect() };
                (o, b)
            })
            .collect();
        sparse_file(&img, size, &pieces);
        let raw = std::fs::read(&img).unwrap();
        let input = match compress {
            0 => img.clone(),
            1 => { let p = dir.path().join("i.gz"); let mut e = flate2::write::GzEncoder::new(File::create(&p).unwrap(), flate2::Compression::fast()); e.write_all(&raw).unwrap(); e.finish().unwrap(); p }
            2 => { let p = dir.path().join("i.xz"); let mut e = xz2::write::XzEncoder::new(File::create(&p).unwrap(), 1); e.write_all(&raw).unwrap(); e.finish().unwrap(); p }
            _ => { let p = dir.path().join("i.zst"); std::fs::write(&p, zstd::encode_all(&raw[..], 1).unwrap()).unwrap(); p }
        };
        let out = dir.path().join("b.bundle");
        let m = bundle_image(&input, &out, &small_opts()).unwrap();
        prop_assert_eq!(m.image_size, size);
        prop_assert_eq!(m.bytes_of(ExtentKind::DontCare), 0);
        prop_assert_eq!(&m.image_sha256, &hex::encode(Sha256::digest(&raw)));
        let flashed = flash(&out, size as usize + 5000);
        prop_assert!(flashed[..size as usize] == raw[..], "image differs after flashing");
    }
}

use sha2::{Digest, Sha256};

#[test]
fn holes_and_zero_runs_become_must_be_zero() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("image");
    // data 0..8K, hole to 1M, explicit zeros 1M..2M, data 2M..2M+100.
    sparse_file(
        &img,
        (2 << 20) + 100,
        &[
            (0, vec![1; 8192]),
            (1 << 20, vec![0; 1 << 20]),
            (2 << 20, vec![2; 100]),
        ],
    );
    let out = dir.path().join("b");
    let m = bundle_image(&img, &out, &small_opts()).unwrap();
    let kinds: Vec<_> = m
        .extents
        .iter()
        .map(|e| (e.kind, e.offset, e.length))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ExtentKind::Data, 0, 8192),
            (ExtentKind::MustBeZero, 8192, (2 << 20) - 8192),
            (ExtentKind::Data, 2 << 20, 100)
        ]
    );
    let opened = read_manifest(&mut File::open(&out).unwrap()).unwrap();
    assert_eq!(opened.manifest, m);
}

const BMAP_20: &str = r#"<?xml version="1.0" ?>
<bmap version="2.0">
    <ImageSize> 20480 </ImageSize>
    <BlockSize> 4096 </BlockSize>
    <BlocksCount> 5 </BlocksCount>
    <MappedBlocksCount> 2 </MappedBlocksCount>
    <ChecksumType> sha256 </ChecksumType>
    <BmapFileChecksum> 0000000000000000000000000000000000000000000000000000000000000000 </BmapFileChecksum>
    <BlockMap>
        <Range chksum="CHK0"> 0 </Range>
        <Range chksum="CHK3"> 3 </Range>
    </BlockMap>
</bmap>
"#;

fn bmap_text(img: &[u8]) -> String {
    let t = BMAP_20
        .replace("CHK0", &hex::encode(Sha256::digest(&img[..4096])))
        .replace("CHK3", &hex::encode(Sha256::digest(&img[12288..16384])));
    let sum = hex::encode(Sha256::digest(t.as_bytes()));
    t.replacen(&"0".repeat(64), &sum, 1)
}

#[test]
fn bmap_unmapped_blocks_are_dont_care_and_checksums_checked() {
    let dir = tempfile::tempdir().unwrap();
    let img: Vec<u8> = (0..20480u32).map(|i| (i % 200) as u8 + 1).collect();
    std::fs::write(dir.path().join("i"), &img).unwrap();
    std::fs::write(dir.path().join("i.bmap"), bmap_text(&img)).unwrap();
    let opts = BundleOptions {
        bmap: Some(dir.path().join("i.bmap")),
        ..small_opts()
    };
    let m = bundle_image(&dir.path().join("i"), &dir.path().join("b"), &opts).unwrap();
    let kinds: Vec<_> = m
        .extents
        .iter()
        .map(|e| (e.kind, e.offset, e.length))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ExtentKind::Data, 0, 4096),
            (ExtentKind::DontCare, 4096, 8192),
            (ExtentKind::Data, 12288, 4096),
            (ExtentKind::DontCare, 16384, 4096)
        ]
    );
    // A changed byte inside a mapped range fails the range checksum.
    let mut bad = img.clone();
    bad[12300] ^= 1;
    std::fs::write(dir.path().join("i"), &bad).unwrap();
    let e = bundle_image(&dir.path().join("i"), &dir.path().join("b"), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::RangeChecksum {
                first: 3,
                last: 3,
                offset: 12288,
                ..
            }
        ),
        "{e:?}"
    );
    // A changed byte in an unmapped block does not matter.
    let mut ok = img.clone();
    ok[5000] ^= 1;
    std::fs::write(dir.path().join("i"), &ok).unwrap();
    bundle_image(&dir.path().join("i"), &dir.path().join("b"), &opts).unwrap();
    // A wrong image size is refused.
    std::fs::write(dir.path().join("i"), &img[..20000]).unwrap();
    let e = bundle_image(&dir.path().join("i"), &dir.path().join("b"), &opts).unwrap_err();
    assert!(
        matches!(
            e,
            Error::SizeMismatch {
                image: 20000,
                bmap: 20480
            }
        ),
        "{e:?}"
    );
}

#[test]
fn bmap_file_checksum_and_versions() {
    let img: Vec<u8> = vec![7; 20480];
    let good = bmap_text(&img);
    Bmap::parse(Path::new("b"), &good, false).unwrap();
    let tampered = good.replacen("<Range chksum", "<Range  chksum", 1);
    assert!(matches!(
        Bmap::parse(Path::new("b"), &tampered, false),
        Err(Error::BmapFileChecksum { .. })
    ));
    let v13 = r#"<bmap version="1.3"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlocksCount>2</BlocksCount>
        <BmapFileSHA1>0</BmapFileSHA1><BlockMap><Range sha1="abc">0-1</Range></BlockMap></bmap>"#;
    assert!(
        matches!(Bmap::parse(Path::new("b"), v13, false), Err(Error::UnsupportedChecksum { ref kind, .. }) if kind == "sha1")
    );
    let b = Bmap::parse(Path::new("b"), v13, true).unwrap();
    assert_eq!(b.ranges, vec![(0, 1, None)]);
    let v12 = r#"<bmap version="1.2"><ImageSize>8193</ImageSize><BlockSize>4096</BlockSize><BlocksCount>3</BlocksCount>
        <BlockMap><Range>0</Range><Range>2</Range></BlockMap></bmap>"#;
    let b = Bmap::parse(Path::new("b"), v12, false).unwrap();
    assert_eq!(b.ranges, vec![(0, 0, None), (2, 2, None)]);
    let v3 = v12.replace("1.2", "3.0");
    assert!(matches!(
        Bmap::parse(Path::new("b"), &v3, false),
        Err(Error::Bmap { .. })
    ));
}

/// Found writing the bmap fuzz target (fuzz/regressions/bmap; a 10-minute run
/// did not reach it): an image of u64::MAX bytes in
/// 4096-byte blocks was accepted, and the read plan's byte offset of the
/// last range's end overflowed.
#[test]
fn bmap_whose_blocks_overflow_a_byte_offset_is_refused() {
    let bmap = |size: u64, blocks: u64| {
        format!(
            r#"<bmap version="2.0"><ImageSize>{size}</ImageSize><BlockSize>4096</BlockSize>
            <BlocksCount>{blocks}</BlocksCount><BlockMap><Range>{}</Range></BlockMap></bmap>"#,
            blocks - 1
        )
    };
    let e = Bmap::parse(Path::new("b"), &bmap(u64::MAX, 1 << 52), true).unwrap_err();
    assert!(
        matches!(e, Error::Bmap { ref reason, .. } if reason.contains("4503599627370496 blocks of 4096 bytes overflow")),
        "{e}"
    );
    // The largest image whose blocks fit is still accepted.
    let max = u64::MAX - 4095;
    assert!(Bmap::parse(Path::new("b"), &bmap(max, max / 4096), true).is_ok());
}
