//! End-to-end tests of the core: real images built with sfdisk, mkfs.vfat and
//! mkfs.ext4, bundled (raw, gzip, xz, zstd, with a real bmaptool bmap) and
//! flashed to files and loop block devices, then checked byte for byte and
//! with fsck; plus the refusals and the fail-closed behaviour on corruption.

use e2e::*;
use flasher::pipeline::{self, WriteOptions, WriteReport};
use flasher::progress::{Null, Recorder};
use flasher_format::bundle::{self, ExtentKind, Manifest};
use mkflasher::source::{self, BundleOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

/// 32 MiB + 7 sectors: a multiple of 512 but not of 4096 or 1 MiB.
const IMAGE_SIZE: u64 = (32 << 20) + 7 * 512;

fn bundle_opts() -> BundleOptions {
    let mut o = BundleOptions::default();
    o.writer.chunk_size = 1 << 20;
    o.writer.level = 1;
    o
}

fn make_bundle(img: &Path, out: &Path, bmap: Option<PathBuf>) -> Manifest {
    source::bundle_image(
        img,
        out,
        &BundleOptions {
            bmap,
            ..bundle_opts()
        },
    )
    .unwrap()
}

fn flash(
    bundle: &Path,
    target: &Path,
    obs: &dyn flasher::progress::Observer,
) -> flasher::Result<WriteReport> {
    let f = std::fs::File::open(bundle).unwrap();
    pipeline::write(
        std::io::BufReader::new(f),
        target,
        &WriteOptions::default(),
        obs,
    )
}

/// The byte ranges (offset, length) of the image range that the fix-ups in
/// `report` legitimately changed, computed from what they did: the protective
/// MBR or grown MBR entries, the primary GPT header (new backup location, last
/// usable LBA), its entry array when a partition grew, and the image's own
/// backup header (moved to the target's end; never written at the old place).
fn fixup_changes(report: &WriteReport) -> Vec<(u64, u64)> {
    use flasher::fixup::TableKind;
    let Some(f) = &report.fixup else {
        return Vec::new();
    };
    let ss = 512;
    let mut v = Vec::new();
    match f.table {
        TableKind::Gpt => {
            if f.pmbr_updated {
                v.push((446, 64));
            }
            if f.changed() {
                v.push((ss, ss));
            }
            if f.grown.is_some() {
                // Entries at LBA 2.., 128 entries of 128 bytes in these images.
                v.push((2 * ss, 32 * ss));
            }
            if let Some((old, new)) = f.backup_lba {
                if old != new {
                    v.push((old * ss, ss));
                }
            }
        }
        TableKind::Mbr => {
            if f.grown.is_some() {
                v.push((446, 64));
            }
        }
        TableKind::None => {}
    }
    v
}

/// The flashed target matches the image byte for byte over the whole image
/// range, except the bytes the fix-ups changed ([`fixup_changes`]).
/// `sfdisk --verify` is clean.
fn assert_flashed(img: &Image, target: &Path, report: &WriteReport) {
    let want = read_range(&img.path, 0, img.size);
    let got = read_range(target, 0, img.size);
    let skip = fixup_changes(report);
    let first_diff = (0..img.size).find(|&i| {
        want[i as usize] != got[i as usize] && !skip.iter().any(|&(o, n)| o <= i && i < o + n)
    });
    assert_eq!(
        first_diff, None,
        "target differs from the image at byte {first_diff:?} (fix-up changes excluded: {skip:?})"
    );
    let dir = target.parent().unwrap();
    let ext = dir.join("flashed-ext4");
    extract(target, img.ext4, &ext);
    e2fsck(&ext);
    let fat = dir.join("flashed-fat");
    extract(target, img.fat, &fat);
    fsck_vfat(&fat);
}

#[test]
fn real_image_raw_and_compressed_flash_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_gpt_image(dir.path(), IMAGE_SIZE);
    let raw_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&img.path).unwrap()))
    };
    // Compressed copies made by the real tools; names deliberately lie.
    let gz = dir.path().join("gz.img");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -1 -c {} > {}",
        img.path.display(),
        gz.display()
    )));
    let xz = dir.path().join("xz.raw");
    run(Command::new("sh").arg("-c").arg(format!(
        "xz -1 -T2 -c {} > {}",
        img.path.display(),
        xz.display()
    )));
    let zst = dir.path().join("zst.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "zstd -q -1 -c {} > {}",
        img.path.display(),
        zst.display()
    )));

    let mut manifests = Vec::new();
    for (i, input) in [&img.path, &gz, &xz, &zst].into_iter().enumerate() {
        let out = dir.path().join(format!("b{i}.bundle"));
        let m = make_bundle(input, &out, None);
        assert_eq!(m.image_size, IMAGE_SIZE);
        assert_eq!(m.image_sha256, raw_sha, "input {}", input.display());
        assert_eq!(
            m.bytes_of(ExtentKind::DontCare),
            0,
            "without a bmap nothing is dont-care"
        );
        assert!(
            m.bytes_of(ExtentKind::MustBeZero) > 4 << 20,
            "zero ranges are found"
        );
        manifests.push(m);
    }
    let digests = |m: &Manifest| {
        m.chunks
            .iter()
            .map(|c| c.digest(m.digest_alg()).to_string())
            .collect::<Vec<_>>()
    };
    assert!(manifests
        .iter()
        .all(|m| digests(m).iter().all(|d| d.len() == 64)));
    assert!(manifests
        .windows(2)
        .all(|w| w[0].extents == w[1].extents && digests(&w[0]) == digests(&w[1])));

    // Flash the xz-made bundle onto a larger target full of stale data.
    let target = dir.path().join("target.img");
    garbage_file(&target, 64 << 20);
    let rec = Recorder::default();
    let report = flash(&dir.path().join("b2.bundle"), &target, &rec).unwrap();
    assert_eq!(report.image_sha256, raw_sha);
    assert_eq!(report.image_size, IMAGE_SIZE);
    assert_eq!(report.bytes_written + report.bytes_zeroed, IMAGE_SIZE);
    // The image, plus the fix-up writes (the backup entry array at the end).
    assert_eq!(report.bytes_verified, IMAGE_SIZE + 32 * 512);
    assert_eq!(
        rec.phases(),
        vec![
            flasher_format::Phase::Writing,
            flasher_format::Phase::Verifying,
            flasher_format::Phase::Finishing
        ]
    );
    assert_flashed(&img, &target, &report);
}

#[test]
fn real_image_flashes_to_a_loop_block_device() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_gpt_image(dir.path(), IMAGE_SIZE);
    let out = dir.path().join("b.bundle");
    make_bundle(&img.path, &out, None);
    let backing = dir.path().join("disk");
    garbage_file(&backing, 64 << 20);
    let report = {
        let lo = Loop::attach(&backing, false);
        let r = flash(&out, &lo.0, &Null).unwrap();
        assert_eq!(r.target_size, 64 << 20);
        r
    };
    assert!(report.direct_io, "loop block devices take O_DIRECT");
    assert!(
        report.fixup.as_ref().is_some_and(|f| f.changed()),
        "backup GPT moved to the device end"
    );
    assert_flashed(&img, &backing, &report);
}

#[test]
fn bmaptool_bmap_imports_and_flashes() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_gpt_image(dir.path(), IMAGE_SIZE);
    let bmap = dir.path().join("disk.bmap");
    run(Command::new("bmaptool")
        .args(["create", "-o"])
        .arg(&bmap)
        .arg(&img.path));
    let out = dir.path().join("b.bundle");
    let m = make_bundle(&img.path, &out, Some(bmap.clone()));
    assert!(
        m.bytes_of(ExtentKind::DontCare) > 4 << 20,
        "unmapped blocks are dont-care"
    );
    assert_eq!(m.source.bmap.as_deref(), Some("disk.bmap"));
    let target = dir.path().join("target.img");
    garbage_file(&target, 40 << 20);
    let report = flash(&out, &target, &Null).unwrap();
    assert_eq!(
        report.bytes_written + report.bytes_zeroed,
        IMAGE_SIZE - m.bytes_of(ExtentKind::DontCare)
    );
    // Every data and must-be-zero byte is exact (dont-care holds stale data).
    let want = read_range(&img.path, 0, img.size);
    let got = read_range(&target, 0, img.size);
    for e in m.extents.iter().filter(|e| e.kind != ExtentKind::DontCare) {
        let (a, b) = (e.offset as usize, e.end() as usize);
        let lo = a.max(34 * 512);
        let hi = b.min((img.size - 33 * 512) as usize);
        if lo < hi {
            assert!(
                want[lo..hi] == got[lo..hi],
                "{:?} extent {a}..{b} differs",
                e.kind
            );
        }
    }
    let ext = dir.path().join("flashed-ext4");
    extract(&target, img.ext4, &ext);
    e2fsck(&ext);
    let fat = dir.path().join("flashed-fat");
    extract(&target, img.fat, &fat);
    fsck_vfat(&fat);

    // The bmap's checksums are checked: change a mapped byte of the image.
    let ext_sb = img.ext4.offset + 1024 + 100;
    let mut bytes = std::fs::read(&img.path).unwrap();
    bytes[ext_sb as usize] ^= 0xff;
    let bad = dir.path().join("bad.img");
    std::fs::write(&bad, &bytes).unwrap();
    let e = source::bundle_image(
        &bad,
        &dir.path().join("bad.bundle"),
        &BundleOptions {
            bmap: Some(bmap),
            ..bundle_opts()
        },
    )
    .unwrap_err();
    assert!(matches!(e, source::Error::RangeChecksum { .. }), "{e:?}");
}

fn bundle_bytes(dir: &Path) -> (Image, Vec<u8>, Manifest) {
    let img = build_gpt_image(dir, IMAGE_SIZE);
    let out = dir.join("b.bundle");
    let m = make_bundle(&img.path, &out, None);
    (img, std::fs::read(&out).unwrap(), m)
}

#[test]
fn flipped_chunk_byte_fails_naming_the_chunk_without_a_partition_table() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut bytes, m) = bundle_bytes(dir.path());
    let hdr = bundle::Header::parse(bytes[..bundle::HEADER_LEN].try_into().unwrap()).unwrap();
    let data_start = bundle::HEADER_LEN as u64 + hdr.manifest_len;
    // Flip a byte in the middle of the largest chunk after the first.
    let (idx, c) = m
        .chunks
        .iter()
        .enumerate()
        .skip(1)
        .max_by_key(|(_, c)| c.compressed_size)
        .unwrap();
    let start: u64 = data_start
        + m.chunks[..idx]
            .iter()
            .map(|c| c.compressed_size)
            .sum::<u64>();
    bytes[(start + c.compressed_size / 2) as usize] ^= 0x20;
    let bad = dir.path().join("bad.bundle");
    std::fs::write(&bad, &bytes).unwrap();
    let target = dir.path().join("target.img");
    garbage_file(&target, 64 << 20);
    let e = flash(&bad, &target, &Null).unwrap_err();
    assert!(
        matches!(&e, flasher::Error::Bundle(bundle::Error::ChunkDigest { index, .. } | bundle::Error::ChunkCorrupt { index, .. }) if *index == idx),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!("chunk {idx}")), "{e}");
    let head = read_range(&target, 0, 1 << 20);
    assert!(
        flasher_disk::gpt::primary_extent(&head, 512).is_none(),
        "the image's partition table must not be on the target"
    );
    assert_ne!(head, read_range(&img.path, 0, 1 << 20));
    // sfdisk sees no partition table.
    let out = Command::new("sfdisk")
        .arg("-d")
        .arg(&target)
        .output()
        .unwrap();
    assert!(!out.status.success() || !String::from_utf8_lossy(&out.stdout).contains("label: gpt"));
}

#[test]
fn refusals_assert_their_variants() {
    let dir = tempfile::tempdir().unwrap();
    let (img, bytes, _) = bundle_bytes(dir.path());
    let good = dir.path().join("b.bundle");

    // Too small: untouched.
    let small = dir.path().join("small.img");
    garbage_file(&small, IMAGE_SIZE - 512);
    let before = std::fs::read(&small).unwrap();
    let e = flash(&good, &small, &Null).unwrap_err();
    assert!(
        matches!(&e, flasher::Error::Pipeline(pipeline::Error::TargetTooSmall { target, image, .. }) if *target == IMAGE_SIZE - 512 && *image == IMAGE_SIZE),
        "{e:?}"
    );
    assert!(e.to_string().contains("MiB"), "{e}");
    assert!(std::fs::read(&small).unwrap() == before);

    // Read-only: a read-only loop device (a file mode would not stop root).
    let ro_backing = dir.path().join("ro.img");
    garbage_file(&ro_backing, 64 << 20);
    {
        let lo = Loop::attach(&ro_backing, true);
        let e = flash(&good, &lo.0, &Null).unwrap_err();
        assert!(
            matches!(
                e,
                flasher::Error::BlockDev(flasher::blockdev::Error::ReadOnly { .. })
            ),
            "{e:?}"
        );
    }

    // Unknown version: untouched.
    let target = dir.path().join("t.img");
    garbage_file(&target, 64 << 20);
    let before = read_range(&target, 0, 2 << 20);
    let mut v3 = bytes.clone();
    v3[8..12].copy_from_slice(&3u32.to_le_bytes());
    let p = dir.path().join("v3.bundle");
    std::fs::write(&p, &v3).unwrap();
    let e = flash(&p, &target, &Null).unwrap_err();
    assert!(
        matches!(
            e,
            flasher::Error::Bundle(bundle::Error::UnknownVersion {
                found: 3,
                supported: bundle::VERSION
            })
        ),
        "{e:?}"
    );
    assert!(read_range(&target, 0, 2 << 20) == before);

    // Truncated in the manifest: untouched. Truncated in the chunks: no partition table.
    for cut in [200usize, bytes.len() - 1000] {
        let p = dir.path().join("cut.bundle");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        let e = flash(&p, &target, &Null).unwrap_err();
        assert!(
            matches!(e, flasher::Error::Bundle(bundle::Error::Truncated { .. })),
            "cut at {cut}: {e:?}"
        );
        assert!(flasher_disk::gpt::primary_extent(&read_range(&target, 0, 1024), 512).is_none());
    }
    assert!(
        flasher_disk::Table::read(&mut std::fs::File::open(&img.path).unwrap())
            .unwrap()
            .is_gpt()
    );
}

#[test]
fn bundle_in_a_larger_partition_with_trailing_garbage_flashes() {
    let dir = tempfile::tempdir().unwrap();
    let (img, mut bytes, _) = bundle_bytes(dir.path());
    bytes.extend(std::iter::repeat_n(0x5a, 3 << 20));
    let part = dir.path().join("payload-partition");
    std::fs::write(&part, &bytes).unwrap();
    let target = dir.path().join("t.img");
    garbage_file(&target, IMAGE_SIZE);
    // Through the CLI entry points: `flasher write`.
    mkflasher::flasher_cli::write::run(mkflasher::flasher_cli::write::Args {
        payload: part,
        target: target.clone(),
        verify: mkflasher::flasher_cli::write::VerifyArg::Full,
        expand_data: false,
        no_direct: false,
        image_digest: true,
        workers: Some(2),
        skip_equal: false,
        root: "/".into(),
        trust: vec![],
        json: false,
    })
    .unwrap();
    assert!(std::fs::read(&target).unwrap() == std::fs::read(&img.path).unwrap());
    // Same size target: `sfdisk --verify` is clean without any fix-up.
    let out = run(Command::new("sfdisk").arg("--verify").arg(&target));
    assert!(out.contains("No errors detected"), "{out}");
}

#[test]
fn expand_data_grows_the_last_partition_to_the_target_end() {
    let dir = tempfile::tempdir().unwrap();
    let img = build_gpt_image(dir.path(), IMAGE_SIZE);
    let out = dir.path().join("b.bundle");
    make_bundle(&img.path, &out, None);
    let target = dir.path().join("t.img");
    garbage_file(&target, 48 << 20);
    let opts = WriteOptions {
        expand_data: true,
        ..WriteOptions::default()
    };
    let report = pipeline::write(
        std::io::BufReader::new(std::fs::File::open(&out).unwrap()),
        &target,
        &opts,
        &Null,
    )
    .unwrap();
    let grown = report
        .fixup
        .as_ref()
        .and_then(|f| f.grown.clone())
        .expect("a partition was grown");
    assert_eq!(grown.number, 2);
    assert!(grown.new_end_lba * 512 > (47 << 20), "{grown:?}");
    let out = run(Command::new("sfdisk").arg("--verify").arg(&target));
    assert!(out.contains("No errors detected"), "{out}");
    // The filesystem inside is unchanged (growing it is the OS's first-boot job).
    let ext = dir.path().join("flashed-ext4");
    extract(&target, img.ext4, &ext);
    e2fsck(&ext);
}
