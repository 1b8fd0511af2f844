use super::*;
use crate::pipeline::{Plain, Target, Verify, WriteOptions};
use crate::progress::Recorder;
use crate::Error as CrateError;
use flasher_format::bundle::testing::{relabel_as_version_1, reseal};
use flasher_format::bundle::{BundleWriter, ChunkDigest, WriterOptions};
use proptest::prelude::*;
use std::io::Cursor;

#[derive(Debug, Clone)]
pub(super) enum Run {
    Data(Vec<u8>),
    Zero(u64),
    DontCare(u64),
}

pub(super) type Spans = Vec<(ExtentKind, u64, u64)>;

/// Both chunk digests: version 1 (SHA-256) and version 2 (BLAKE3) bundles.
const ALGS: [ChunkDigest; 2] = [ChunkDigest::Sha256, ChunkDigest::Blake3];

/// (bundle bytes, the spans pushed, the logical image).
pub(super) fn bundle_of(runs: &[Run], chunk_size: u64) -> (Vec<u8>, Spans, Vec<u8>) {
    bundle_with(runs, chunk_size, ChunkDigest::default())
}

fn bundle_with(
    runs: &[Run],
    chunk_size: u64,
    chunk_digest: ChunkDigest,
) -> (Vec<u8>, Spans, Vec<u8>) {
    bundle_holding(runs, chunk_size, chunk_digest, Vec::new())
}

/// A bundle whose manifest lists `hold` (held-back signature ranges).
pub(super) fn bundle_holding(
    runs: &[Run],
    chunk_size: u64,
    chunk_digest: ChunkDigest,
    hold: Vec<bundle::HoldRange>,
) -> (Vec<u8>, Spans, Vec<u8>) {
    let opts = WriterOptions {
        chunk_size,
        level: 1,
        workers: 2,
        chunk_digest,
        hold,
        ..Default::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    let mut logical = Vec::new();
    let mut spans = Vec::new();
    for r in runs {
        let off = logical.len() as u64;
        match r {
            Run::Data(d) => {
                w.push_data(d).unwrap();
                logical.extend_from_slice(d);
                spans.push((ExtentKind::Data, off, d.len() as u64));
            }
            Run::Zero(n) => {
                w.push_zero(*n).unwrap();
                logical.resize(logical.len() + *n as usize, 0);
                spans.push((ExtentKind::MustBeZero, off, *n));
            }
            Run::DontCare(n) => {
                w.push_dont_care(*n).unwrap();
                logical.resize(logical.len() + *n as usize, 0);
                spans.push((ExtentKind::DontCare, off, *n));
            }
        }
    }
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    (out, spans, logical)
}

pub(super) fn garbage(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[2] | 1)
        .collect()
}

fn opts() -> WriteOptions {
    WriteOptions {
        workers: 3,
        ..Default::default()
    }
}

fn run_strategy() -> impl Strategy<Value = Vec<Run>> {
    let run = prop_oneof![
        (1usize..200_000, any::<u8>()).prop_map(|(n, seed)| Run::Data(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 0x80)
                .collect()
        )),
        (1u64..300_000).prop_map(Run::Zero),
        (1u64..300_000).prop_map(Run::DontCare),
    ];
    prop::collection::vec(run, 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Random images (data, zero runs, dont-care, odd sizes) onto a target
    /// pre-filled with garbage: data and zeros land bit-exact; dont-care bytes
    /// outside the wiped first/last MiB stay as they were.
    #[test]
    fn round_trip_onto_garbage(runs in run_strategy(), extra in 0usize..70_000, chunk in prop_oneof![Just(64u64 << 10), Just(128 << 10)], alg in prop_oneof![Just(ChunkDigest::Sha256), Just(ChunkDigest::Blake3)]) {
        let (bundle, spans, logical) = bundle_with(&runs, chunk, alg);
        let size = logical.len() + extra;
        let before = garbage(size);
        let mut t = Plain::new(Cursor::new(before.clone())).unwrap();
        let rec = Recorder::default();
        let r = write_to(Cursor::new(&bundle), &mut t, &opts(), &rec).unwrap();
        let after = t.into_inner().into_inner();
        prop_assert_eq!(after.len(), size);
        prop_assert_eq!(&r.image_sha256, &flasher_format::bundle::sha256_hex(&logical));
        let wiped = |i: usize| i < (1 << 20) || i >= size.saturating_sub(1 << 20);
        for (kind, off, len) in spans {
            let (a, b) = (off as usize, (off + len) as usize);
            match kind {
                ExtentKind::DontCare => {
                    for i in a..b {
                        if !wiped(i) {
                            prop_assert_eq!(after[i], before[i], "dont-care byte {} changed", i);
                        }
                    }
                }
                _ => prop_assert!(after[a..b] == logical[a..b], "{:?} {}..{} differs", kind, a, b),
            }
        }
        prop_assert_eq!(rec.phases()[..2].to_vec(), vec![Phase::Writing, Phase::Verifying]);
    }
}

/// Patterned bytes with a real GPT (128 entries at LBA 2, one partition).
pub(super) fn gpt_like_image(size: usize) -> Vec<u8> {
    let img: Vec<u8> = (0..size).map(|i| (i % 251) as u8 + 1).collect();
    let mut c = Cursor::new(img);
    let p = flasher_disk::gpt::NewPartition {
        name: "p".into(),
        type_guid: flasher_disk::table::LINUX_FS,
        part_guid: [3; 16],
        first_lba: 2048,
        last_lba: 4095,
        attributes: 0,
    };
    flasher_disk::gpt::write_new(&mut c, 512, size as u64, [4; 16], &[p]).unwrap();
    c.into_inner()
}

/// Whether a GPT header signature sits at LBA 1 (512-byte sectors).
fn gpt_signature_at_lba1(b: &[u8]) -> bool {
    flasher_disk::gpt::primary_extent(b, 512).is_some()
}

#[test]
fn head_len_follows_the_gpt_entry_array() {
    let img = gpt_like_image(8 << 20);
    assert_eq!(head_len(Some(&img), 8 << 20), 1 << 20);
    // The probe only sizes the held-back head, so it trusts the entry count even
    // where the strict parser would refuse it (number of entries at header byte 80).
    let mut big = img.clone();
    big[512 + 80..512 + 84].copy_from_slice(&20_000u32.to_le_bytes());
    // 1024 + 20000*128 = 2 561 024 -> rounded up to 4096.
    assert_eq!(head_len(Some(&big), 8 << 20), 2_564_096);
    assert_eq!(head_len(None, 1000), 1000);
}

/// Both versions on a `Cursor`: written bit-exact, every byte read back and
/// checked, the report naming the image's SHA-256 either way.
#[test]
fn both_versions_write_and_verify() {
    let img = plain_image(3 << 20);
    for alg in ALGS {
        let (bundle, _, logical) =
            bundle_with(&[Run::Data(img.clone()), Run::Zero(1 << 20)], 1 << 20, alg);
        let opened = flasher_format::bundle::read_manifest(&mut Cursor::new(&bundle)).unwrap();
        assert_eq!(opened.manifest.version, alg.version());
        let mut t = Plain::new(Cursor::new(vec![0xeeu8; 5 << 20])).unwrap();
        let o = WriteOptions {
            image_digest: true,
            verify: Verify::Full,
            ..opts()
        };
        let r = write_to(Cursor::new(&bundle), &mut t, &o, &crate::progress::Null).unwrap();
        assert_eq!(r.image_sha256, flasher_format::bundle::sha256_hex(&logical));
        assert!(r.bytes_verified >= 4 << 20, "{alg:?}: every byte read back");
        assert!(
            t.into_inner().into_inner()[..4 << 20] == logical[..],
            "{alg:?}: bit-exact"
        );
    }
}

#[test]
fn corrupt_chunk_fails_naming_it_and_head_is_never_written() {
    for alg in ALGS {
        corrupt_chunk(alg);
    }
}

/// A chunk whose compressed bytes still decode, but to other data (chunk
/// 2's frame in chunk 1's place): only the digest can catch it, with the
/// manifest's algorithm, and before any write.
#[test]
fn substituted_chunk_fails_its_digest_before_any_write() {
    let fill = |b: u8| Run::Data(vec![b; 1 << 20]);
    for alg in ALGS {
        let (bundle, _, _) = bundle_with(&[fill(0x11), fill(0x22), fill(0x33)], 1 << 20, alg);
        let opened = flasher_format::bundle::read_manifest(&mut Cursor::new(&bundle)).unwrap();
        let start = flasher_format::bundle::HEADER_LEN + opened.header.manifest_len as usize;
        let c = &opened.manifest.chunks;
        let len = c[1].compressed_size as usize;
        assert_eq!(
            len as u64, c[2].compressed_size,
            "equal fills compress alike"
        );
        let (one, two) = (
            start + c[0].compressed_size as usize,
            start + c[0].compressed_size as usize + len,
        );
        let mut bad = bundle.clone();
        bad.copy_within(two..two + len, one);
        let mut t = Plain::new(Cursor::new(vec![0xeeu8; 4 << 20])).unwrap();
        let e = write_to(Cursor::new(&bad), &mut t, &opts(), &crate::progress::Null).unwrap_err();
        assert!(
            matches!(&e, CrateError::Bundle(bundle::Error::ChunkDigest { index: 1, algorithm, .. }) if *algorithm == alg.label()),
            "{e:?}"
        );
        assert!(
            t.into_inner().into_inner().iter().all(|&b| b == 0xee),
            "nothing written"
        );
    }
}

fn corrupt_chunk(alg: ChunkDigest) {
    let img = gpt_like_image(3 << 20);
    let (mut bundle, _, _) = bundle_with(&[Run::Data(img)], 1 << 20, alg);
    let opened = flasher_format::bundle::read_manifest(&mut Cursor::new(&bundle)).unwrap();
    let start = flasher_format::bundle::HEADER_LEN + opened.header.manifest_len as usize;
    let c = &opened.manifest.chunks;
    let pos = start + c[0].compressed_size as usize + c[1].compressed_size as usize / 2;
    bundle[pos] ^= 0x01;
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 4 << 20])).unwrap();
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CrateError::Bundle(
                bundle::Error::ChunkDigest { index: 1, .. }
                    | bundle::Error::ChunkCorrupt { index: 1, .. }
            )
        ),
        "{e:?}"
    );
    let after = t.into_inner().into_inner();
    // The corrupt chunk is the first one outside the held-back head, so the
    // failure comes before the first write: the target is untouched.
    assert!(
        after.iter().all(|&b| b == 0xee),
        "nothing may be written before the first chunk to write checks out"
    );
    assert!(!gpt_signature_at_lba1(&after));
}

#[test]
fn too_small_target_is_refused_untouched() {
    let (bundle, _, _) = bundle_of(&[Run::Data(vec![7u8; 100_001])], 64 << 10);
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 100_000])).unwrap();
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            CrateError::Pipeline(Error::TargetTooSmall {
                target: 100_000,
                image: 100_001,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(t.into_inner().into_inner().iter().all(|&b| b == 0xee));
}

#[test]
fn truncated_bundle_is_refused_before_the_head() {
    let img = gpt_like_image(3 << 20);
    let (bundle, _, _) = bundle_of(&[Run::Data(img)], 1 << 20);
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 4 << 20])).unwrap();
    let e = write_to(
        Cursor::new(&bundle[..bundle.len() - 100]),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(e, CrateError::Bundle(bundle::Error::Truncated { .. })),
        "{e:?}"
    );
    assert!(!gpt_signature_at_lba1(&t.into_inner().into_inner()));
}

/// A target whose reads of one range come back wrong: verify names the range.
struct Flaky {
    inner: Plain<Cursor<Vec<u8>>>,
    bad: (u64, u64),
}
io_through_inner!(Flaky);
impl Target for Flaky {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&mut self, o: u64, d: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(o, d)
    }
    fn read_at(&mut self, o: u64, b: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(o, b)?;
        for (i, x) in b.iter_mut().enumerate() {
            let p = o + i as u64;
            if p >= self.bad.0 && p < self.bad.1 {
                *x ^= 0xff;
            }
        }
        Ok(())
    }
    fn zero_range(&mut self, o: u64, n: u64) -> std::io::Result<()> {
        self.inner.zero_range(o, n)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn verify_mismatch_names_the_range_and_leaves_head_unwritten() {
    for alg in ALGS {
        verify_mismatch(alg);
    }
}

fn verify_mismatch(alg: ChunkDigest) {
    let img = gpt_like_image(4 << 20);
    let (bundle, _, _) = bundle_with(
        &[Run::Data(img.clone()), Run::Zero(2 << 20), Run::Data(img)],
        1 << 20,
        alg,
    );
    let mk = |bad| Flaky {
        inner: Plain::new(Cursor::new(vec![0x55u8; 12 << 20])).unwrap(),
        bad,
    };
    // A bad byte inside a streamed chunk (chunk 2 covers 2..3 MiB).
    let mut t = mk(((2 << 20) + 5, (2 << 20) + 6));
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CrateError::Pipeline(Error::VerifyMismatch { offset, length, what }) if *offset == 2 << 20 && *length == 1 << 20 && what == "chunk 2"),
        "{e:?}"
    );
    assert!(!gpt_signature_at_lba1(&t.inner.into_inner().into_inner()));
    // A bad byte inside a zeroed range.
    let mut t = mk(((5 << 20) + 100, (5 << 20) + 101));
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(e, CrateError::Pipeline(Error::VerifyMismatch { .. })),
        "{e:?}"
    );
    // With --verify none the same target "succeeds" (nothing read back). The
    // fake GPT header would (rightly) fail the fix-ups, so use plain data.
    let plain = plain_image(4 << 20);
    let (bundle, _, _) = bundle_of(
        &[
            Run::Data(plain.clone()),
            Run::Zero(2 << 20),
            Run::Data(plain),
        ],
        1 << 20,
    );
    let mut t = mk(((5 << 20) + 100, (5 << 20) + 101));
    let r = write_to(
        Cursor::new(&bundle),
        &mut t,
        &WriteOptions {
            verify: Verify::None,
            ..opts()
        },
        &crate::progress::Null,
    )
    .unwrap();
    assert_eq!(r.bytes_verified, 0);
}

fn plain_image(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8 + 1).collect()
}

#[test]
fn report_counts_and_phase_events() {
    let img = plain_image(3 << 20);
    let (bundle, _, logical) = bundle_of(
        &[
            Run::Data(img),
            Run::Zero(3 << 20),
            Run::DontCare(1 << 20),
            Run::Data(vec![9; 5000]),
        ],
        1 << 20,
    );
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 9 << 20])).unwrap();
    let rec = Recorder::default();
    let r = write_to(Cursor::new(&bundle), &mut t, &opts(), &rec).unwrap();
    assert_eq!(r.image_size, logical.len() as u64);
    assert_eq!(r.bytes_written, (3 << 20) + 5000);
    assert_eq!(r.bytes_zeroed, 3 << 20);
    assert_eq!(r.bytes_verified, (6 << 20) + 5000);
    assert_eq!(
        rec.phases(),
        vec![Phase::Writing, Phase::Verifying, Phase::Finishing]
    );
    let last_write = rec
        .events()
        .into_iter()
        .rfind(|e| e.phase == Phase::Writing)
        .unwrap();
    let (done, total, _) = last_write.bytes().unwrap();
    assert_eq!(done, total);
    assert_eq!(
        r.fixup.as_ref().map(|f| f.table),
        Some(crate::fixup::TableKind::None)
    );
    let out = t.into_inner().into_inner();
    assert_eq!(&out[..3 << 20], &logical[..3 << 20]);
}

#[test]
fn deferred_split_covers_everything_once() {
    let d = Deferred {
        head: 100,
        tail: 1000,
        extra: Arc::from(vec![(200u64, 50u64, 0usize), (600, 10, 50)]),
    };
    for (off, len) in [
        (0u64, 50u64),
        (50, 100),
        (90, 2000),
        (500, 10),
        (990, 20),
        (1000, 5),
    ] {
        let (a, b) = d.split(off, len);
        let sum: u64 = a.iter().chain(b.iter()).map(|r| r.1).sum();
        assert_eq!(sum, len, "{off} {len}");
        assert!(a.iter().all(|&(o, l)| o >= 100 && o + l <= 1000));
    }
    let small = Deferred {
        head: 100,
        tail: 50,
        extra: Arc::from(vec![]),
    };
    let (a, b) = small.split(0, 200);
    assert!(a.is_empty());
    assert_eq!(b.iter().map(|r| r.1).sum::<u64>(), 200);
}

#[test]
fn wrong_image_digest_fails_before_the_head_unless_disabled() {
    let img = plain_image(3 << 20);
    let (bundle, _, _) = bundle_of(&[Run::Data(img.clone()), Run::Zero(1 << 20)], 1 << 20);
    let bad = reseal(&bundle, None, |m| {
        m["image_sha256"] = "ab".repeat(32).into()
    });
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 5 << 20])).unwrap();
    let checked = WriteOptions {
        image_digest: true,
        ..opts()
    };
    let e = write_to(Cursor::new(&bad), &mut t, &checked, &crate::progress::Null).unwrap_err();
    assert!(
        matches!(e, CrateError::Bundle(bundle::Error::ImageDigest { .. })),
        "{e:?}"
    );
    let out = t.into_inner().into_inner();
    assert!(
        out[..1 << 20].iter().all(|&b| b == 0),
        "head wiped, never written"
    );
    assert_eq!(&out[1 << 20..3 << 20], &img[1 << 20..3 << 20]);
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 5 << 20])).unwrap();
    let o = WriteOptions {
        image_digest: false,
        ..opts()
    };
    let r = write_to(Cursor::new(&bad), &mut t, &o, &crate::progress::Null).unwrap();
    assert!(!r.image_digest_checked);
    assert_eq!(&t.into_inner().into_inner()[..3 << 20], &img[..]);
}

#[test]
fn manifest_with_a_gap_is_refused_untouched() {
    let (bundle, _, _) = bundle_of(
        &[Run::Data(plain_image(200_000)), Run::Zero(100_000)],
        64 << 10,
    );
    let bad = reseal(&bundle, None, |m| {
        let l = m["extents"][1]["length"].as_u64().unwrap();
        m["extents"][1]["length"] = (l - 1).into();
    });
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 400_000])).unwrap();
    let e = write_to(Cursor::new(&bad), &mut t, &opts(), &crate::progress::Null).unwrap_err();
    assert!(
        matches!(e, CrateError::Bundle(bundle::Error::InvalidManifest(_))),
        "{e:?}"
    );
    assert!(t.into_inner().into_inner().iter().all(|&b| b == 0xee));
}

/// Issue 10 item 7: a manifest with uppercase hex digests (another tool wrote
/// it) writes and verifies, image digest included, instead of a false mismatch.
#[test]
fn uppercase_hex_manifest_writes_and_verifies() {
    let img = plain_image(3 << 20);
    let (bundle, _, logical) = bundle_of(&[Run::Data(img), Run::Zero(1 << 20)], 1 << 20);
    let upper = reseal(&bundle, None, |m| {
        let up = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_ascii_uppercase();
        m["image_sha256"] = up(&m["image_sha256"]).into();
        for c in m["chunks"].as_array_mut().unwrap() {
            c["blake3"] = up(&c["blake3"]).into();
        }
    });
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 5 << 20])).unwrap();
    let o = WriteOptions {
        image_digest: true,
        verify: Verify::Full,
        ..opts()
    };
    let r = write_to(Cursor::new(&upper), &mut t, &o, &crate::progress::Null).unwrap();
    assert!(r.image_digest_checked);
    assert_eq!(r.image_sha256, flasher_format::bundle::sha256_hex(&logical));
    assert_eq!(&t.into_inner().into_inner()[..4 << 20], &logical[..]);
}

/// Trust (docs/SECURITY.md): every refusal happens before the first write, so
/// the target is byte-for-byte what it was.
mod trust {
    use super::*;
    use flasher_format::bundle::testing::{alter_manifest, alter_signature, strip_signature};
    use flasher_format::bundle::{Error as BundleError, SecretKey, Trust};

    fn signed_bundle(key: &SecretKey) -> Vec<u8> {
        signed_bundle_with(key, ChunkDigest::default())
    }

    fn signed_bundle_with(key: &SecretKey, chunk_digest: ChunkDigest) -> Vec<u8> {
        let opts = WriterOptions {
            chunk_size: 64 << 10,
            level: 1,
            workers: 1,
            sign: Some(key.clone()),
            chunk_digest,
            ..Default::default()
        };
        let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
        w.push_data(&garbage(300_000)).unwrap();
        w.push_zero(2 << 20).unwrap();
        w.push_data(&garbage(70_000)).unwrap();
        let mut out = Vec::new();
        w.finish(&mut out).unwrap();
        out
    }

    fn write_with(bundle: &[u8], trust: &Trust) -> (crate::Result<WriteReport>, bool) {
        let before = garbage(4 << 20);
        let mut t = Plain::new(Cursor::new(before.clone())).unwrap();
        let o = WriteOptions {
            trust: trust.clone(),
            ..opts()
        };
        let r = write_to(Cursor::new(bundle), &mut t, &o, &Recorder::default());
        let unchanged = t.into_inner().into_inner() == before;
        (r, unchanged)
    }

    #[test]
    fn refusals_leave_the_target_untouched() {
        let k = SecretKey::from_seed(&[1; 32]);
        let trust = Trust::new(vec![k.public()]);
        let signed = signed_bundle(&k);
        let other = signed_bundle(&SecretKey::from_seed(&[2; 32]));
        type Case = (&'static str, Vec<u8>, fn(&BundleError) -> bool);
        let cases: [Case; 4] = [
            ("unsigned", strip_signature(&signed), |e| {
                matches!(e, BundleError::Unsigned { .. })
            }),
            ("other key", other, |e| {
                matches!(e, BundleError::UntrustedSigner { .. })
            }),
            ("altered manifest", alter_manifest(&signed), |e| {
                matches!(e, BundleError::ManifestAltered { .. })
            }),
            ("altered signature", alter_signature(&signed), |e| {
                matches!(e, BundleError::BadSignature { .. })
            }),
        ];
        for (name, bundle, want) in cases {
            let (r, unchanged) = write_with(&bundle, &trust);
            match r {
                Err(CrateError::Bundle(e)) => assert!(want(&e), "{name}: {e}"),
                other => panic!("{name}: expected a refusal, got {other:?}"),
            }
            assert!(unchanged, "{name}: the target was modified");
        }
    }

    /// Both versions sign and flash; a signed version 2 bundle relabelled
    /// as a well-formed version 1 (header, manifest version, digest keys)
    /// is refused by the signature before any write.
    #[test]
    fn signed_versions_flash_and_a_relabel_breaks_the_signature() {
        let k = SecretKey::from_seed(&[1; 32]);
        let trust = Trust::new(vec![k.public()]);
        for alg in ALGS {
            let (r, _) = write_with(&signed_bundle_with(&k, alg), &trust);
            assert_eq!(r.unwrap().signer, k.public().fingerprint(), "{alg:?}");
        }
        let relabelled = reseal(&signed_bundle(&k), Some(1), relabel_as_version_1);
        let (r, unchanged) = write_with(&relabelled, &trust);
        assert!(
            matches!(
                r,
                Err(CrateError::Bundle(BundleError::ManifestAltered { .. }))
            ),
            "{r:?}"
        );
        assert!(unchanged, "the target was modified");
    }

    #[test]
    fn a_trusted_signature_is_written_and_reported() {
        let k = SecretKey::from_seed(&[1; 32]);
        let (r, _) = write_with(&signed_bundle(&k), &Trust::new(vec![k.public()]));
        assert_eq!(r.unwrap().signer, k.public().fingerprint());
        let rec = Recorder::default();
        let mut t = Plain::new(Cursor::new(vec![0u8; 4 << 20])).unwrap();
        let unsigned = strip_signature(&signed_bundle(&k));
        let r = write_to(Cursor::new(&unsigned), &mut t, &opts(), &rec).unwrap();
        assert_eq!(
            r.signer, "unsigned",
            "no key trusted: written, reported unsigned"
        );
        // The engine reports the phases of the write only; the warning is
        // the front end's (an event on the board, a log line on the host).
        assert_eq!(rec.phases()[0], Phase::Writing);
    }
}

/// The read-back is compared with the manifest's XXH3-128 (version 2): a
/// bundle whose chunk 2 XXH3 is wrong (its BLAKE3, checked before writing, is
/// right) fails that chunk's read-back, with the table never made live.
#[test]
fn the_readback_is_compared_with_the_xxh3() {
    let img = plain_image(6 << 20);
    let (bundle, _, _) = bundle_of(&[Run::Data(img)], 1 << 20);
    let bad = reseal(&bundle, None, |m| {
        assert_eq!(m["readback_digest"], "xxh3-128");
        m["chunks"][2]["xxh3"] = "0".repeat(32).into();
    });
    let mut t = Plain::new(Cursor::new(vec![0x55u8; 8 << 20])).unwrap();
    let e = write_to(Cursor::new(&bad), &mut t, &opts(), &crate::progress::Null).unwrap_err();
    assert!(
        matches!(&e, CrateError::Pipeline(Error::VerifyMismatch { offset, what, .. }) if *offset == 2 << 20 && what == "chunk 2"),
        "{e:?}"
    );
    // The same bundle resealed unchanged writes and verifies.
    let good = reseal(&bundle, None, |_| {});
    let mut t = Plain::new(Cursor::new(vec![0x55u8; 8 << 20])).unwrap();
    write_to(Cursor::new(&good), &mut t, &opts(), &crate::progress::Null).unwrap();
}

/// Issue 22, finding 3: a primary GPT header with a valid CRC whose other
/// fields point anywhere (the alternate LBA near 2^55 made `lba * 512` wrap,
/// and one sector of the image's data was held back as if it were the old
/// backup header: success with zeros there). Every such header is refused
/// before the first write: the target is left byte for byte as it was.
#[test]
fn a_hostile_gpt_header_is_refused_before_the_first_write() {
    let img = gpt_like_image(4 << 20);
    let set = |field: usize, value: u64| {
        let mut b = img.clone();
        b[512 + field..512 + field + 8].copy_from_slice(&value.to_le_bytes());
        let crc = flasher_disk::gpt::header_crc(&b[512..1024], 92);
        b[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        b
    };
    let last = (4u64 << 20) / 512 - 1;
    let cases = [
        ("alternate LBA 2^55 (wraps times 512)", set(32, 1 << 55)),
        ("alternate LBA u64::MAX", set(32, u64::MAX)),
        ("alternate LBA inside the usable range", set(32, 3000)),
        ("last usable LBA 2^60", set(48, 1 << 60)),
        ("first usable LBA before the entry array ends", set(40, 3)),
        ("entry array at LBA 2^58", set(72, 1 << 58)),
        ("entry array inside the usable range", set(72, 2048)),
        ("alternate LBA 1 (the primary's own)", set(32, 1)),
    ];
    for (what, hostile) in cases {
        assert_ne!(hostile, img, "{what}");
        let (bundle, _, _) = bundle_of(&[Run::Data(hostile)], 1 << 20);
        let before = vec![0xeeu8; 8 << 20];
        let mut t = Plain::new(Cursor::new(before.clone())).unwrap();
        let r = write_to(
            Cursor::new(&bundle),
            &mut t,
            &opts(),
            &crate::progress::Null,
        );
        assert!(r.is_err(), "{what}: the write succeeded");
        assert!(
            t.into_inner().into_inner() == before,
            "{what}: the target was written before the refusal"
        );
    }
    // The untouched image still writes (last LBA {last} is its backup header).
    let (bundle, _, _) = bundle_of(&[Run::Data(img.clone())], 1 << 20);
    let mut t = Plain::new(Cursor::new(vec![0xeeu8; 8 << 20])).unwrap();
    write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_or_else(|e| panic!("the genuine image (backup at LBA {last}): {e}"));
}

#[path = "hold_tests.rs"]
mod hold_tests;
