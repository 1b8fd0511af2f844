//! The manifest's held-back signature ranges (`hold`, issue 22 finding 5):
//! not written while streaming, written by the table commit after everything
//! else (with a deferred commit: only then, after the bootloader and config
//! steps, which see them through `TableCommit::overlay`), read back, and
//! zeroed again when the commit fails.

use super::*;

fn held(offset: u64, length: u64, what: &str) -> bundle::HoldRange {
    bundle::HoldRange {
        offset,
        length,
        what: what.into(),
    }
}

/// A 6 MiB image of non-zero bytes with a zero run, and four signature
/// ranges: in the head, in the middle, across a chunk edge, in the tail.
fn image() -> (Vec<u8>, Vec<bundle::HoldRange>, Vec<u8>) {
    let hold = vec![
        held(4096, 4096, "ext4 superblock"),
        held(
            (2 << 20) + (64 << 10),
            8192,
            "ext4 superblock in partition 2",
        ),
        held((3 << 20) - 4096, 8192, "swap signature"),
        held((6 << 20) - 8192, 4096, "btrfs backup"),
    ];
    let (bundle, _, logical) = bundle_holding(
        &[
            Run::Data(plain_image(4 << 20)),
            Run::Zero(1 << 20),
            Run::Data(plain_image(1 << 20)),
        ],
        1 << 20,
        ChunkDigest::default(),
        hold.clone(),
    );
    (bundle, hold, logical)
}

/// A target that records its writes and can fail one write or corrupt reads.
struct Logged {
    inner: Plain<Cursor<Vec<u8>>>,
    /// (offset, length) of every non-zero write, in order.
    writes: Vec<(u64, u64)>,
    /// Fail a non-zero write touching this byte.
    fail_write: Option<u64>,
    /// Reads of this range come back flipped.
    bad_read: (u64, u64),
}

impl Logged {
    fn new(before: Vec<u8>) -> Logged {
        Logged {
            inner: Plain::new(Cursor::new(before)).unwrap(),
            writes: Vec::new(),
            fail_write: None,
            bad_read: (0, 0),
        }
    }
    fn bytes(self) -> Vec<u8> {
        self.inner.into_inner().into_inner()
    }
}
io_through_inner!(Logged);
impl Target for Logged {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&mut self, o: u64, d: &[u8]) -> std::io::Result<()> {
        if !bundle::is_zero(d) {
            if let Some(f) = self.fail_write {
                if (o..o + d.len() as u64).contains(&f) {
                    return Err(std::io::Error::other("injected write error"));
                }
            }
            self.writes.push((o, d.len() as u64));
        }
        self.inner.write_at(o, d)
    }
    fn read_at(&mut self, o: u64, b: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(o, b)?;
        for (i, x) in b.iter_mut().enumerate() {
            if (self.bad_read.0..self.bad_read.1).contains(&(o + i as u64)) {
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

fn touches(w: (u64, u64), r: &bundle::HoldRange) -> bool {
    w.0 < r.end() && r.offset < w.0 + w.1
}

#[test]
fn held_signature_ranges_land_bit_exact_and_after_everything_else() {
    let (bundle, hold, logical) = image();
    let mut t = Logged::new(garbage(8 << 20));
    let r = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap();
    assert!(r.bytes_verified >= logical.len() as u64);
    // The table commit's sector 0 (this image has no table: its own first
    // sector) is the very last write; leave it out.
    let mut writes = t.writes.clone();
    assert_eq!(writes.pop(), Some((0, 512)), "sector 0 is not last");
    let out = t.bytes();
    assert!(out[..logical.len()] == logical[..], "image differs");
    // Every write touching a signature range comes after every other write.
    let first_sig = writes
        .iter()
        .position(|w| hold.iter().any(|r| touches(*w, r)))
        .expect("the signatures were written");
    assert!(
        writes[first_sig..]
            .iter()
            .all(|w| hold.iter().any(|r| touches(*w, r))),
        "a write outside the signature ranges after them: {writes:?}"
    );
    // And no write touching one of them spills outside it.
    for w in &writes[first_sig..] {
        assert!(
            hold.iter().any(|r| w.0 >= r.offset && w.0 + w.1 <= r.end()),
            "{w:?} is wider than its signature range"
        );
    }
}

fn assert_signatures_zero(out: &[u8], hold: &[bundle::HoldRange]) {
    for r in hold {
        let b = &out[r.offset as usize..r.end() as usize];
        assert!(
            bundle::is_zero(b),
            "{} ({}..{}) is not zero",
            r.what,
            r.offset,
            r.end()
        );
    }
}

#[test]
fn a_write_error_among_the_signatures_leaves_every_one_zero() {
    let (bundle, hold, _) = image();
    // The signatures are written from the image's end down: the tail's and
    // the chunk-edge one land first, then this write fails.
    let mut t = Logged::new(garbage(8 << 20));
    t.fail_write = Some(hold[1].offset + 10);
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(matches!(e, CrateError::Pipeline(_)), "{e:?}");
    let landed = t.writes.iter().any(|w| touches(*w, &hold[3]));
    assert!(
        landed,
        "the tail's signature was written before the failure"
    );
    assert_signatures_zero(&t.bytes(), &hold);
}

#[test]
fn a_readback_mismatch_in_a_signature_leaves_every_one_zero() {
    let (bundle, hold, _) = image();
    let mut t = Logged::new(garbage(8 << 20));
    // The middle one: reads of the first and last MiB are also the wipe's
    // read-back, which would fail first.
    t.bad_read = (hold[1].offset + 100, hold[1].offset + 101);
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(&e, CrateError::Pipeline(Error::VerifyMismatch { what, .. }) if what.contains("ext4 superblock")),
        "{e:?}"
    );
    assert_signatures_zero(&t.bytes(), &hold);
}

#[test]
fn a_failure_while_streaming_never_writes_a_signature() {
    let (bundle, hold, _) = image();
    let mut t = Logged::new(garbage(8 << 20));
    t.fail_write = Some((3 << 20) + (512 << 10));
    write_to(
        Cursor::new(&bundle),
        &mut t,
        &opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        !t.writes.iter().any(|w| hold.iter().any(|r| touches(*w, r))),
        "a signature range was written while streaming: {:?}",
        t.writes
    );
}

/// The board's run (commit deferred): the engine returns with every
/// signature range untouched on the target and carried by the commit; a
/// later step reads them and writes into one through the overlay; only the
/// commit puts them on the target, with that step's change.
#[test]
fn a_deferred_commit_carries_the_signatures_until_it_is_applied() {
    let (bundle, hold, logical) = image();
    let before = garbage(8 << 20);
    let mut t = Logged::new(before.clone());
    let o = WriteOptions {
        defer_commit: true,
        ..opts()
    };
    let r = write_to(Cursor::new(&bundle), &mut t, &o, &crate::progress::Null).unwrap();
    assert!(
        !t.writes.iter().any(|w| hold.iter().any(|h| touches(*w, h))),
        "a signature range was written before the commit: {:?}",
        t.writes
    );
    let mut commit = r.commit.expect("a deferred commit");
    let carried: u64 = commit.signatures.iter().map(|s| s.1.len() as u64).sum();
    assert_eq!(carried, hold.iter().map(|h| h.length).sum::<u64>());
    // A step between the engine and the commit (config, bootloader): it reads
    // the image's bytes in a signature range, and changes 16 bytes of one and
    // 16 bytes just after it (which go to the target at once).
    let sig = &hold[1];
    let mut seen = vec![0u8; 64];
    let mut ov = commit.overlay(&mut t);
    ov.read_at(sig.offset, &mut seen).unwrap();
    assert_eq!(seen, logical[sig.offset as usize..sig.offset as usize + 64]);
    ov.write_at(sig.end() - 16, &[0xab; 32]).unwrap();
    // A write over a table sector is refused (the commit would overwrite it).
    assert!(ov.write_at(0, &[1; 512]).is_err());
    let mid = t.writes.clone();
    assert_eq!(
        mid.last(),
        Some(&(sig.end(), 16)),
        "only the part outside the range reached the target"
    );
    let on_target = t.inner.inner.get_ref()[sig.offset as usize..sig.end() as usize].to_vec();
    assert_eq!(
        on_target[..],
        before[sig.offset as usize..sig.end() as usize],
        "the range was written before the commit"
    );
    commit.apply(&mut t).unwrap();
    let out = t.bytes();
    let mut want = logical.clone();
    want[(sig.end() - 16) as usize..(sig.end() + 16) as usize].fill(0xab);
    assert!(
        out[..want.len()] == want[..],
        "after the commit the target is not the image with the step's change"
    );
}

/// A deferred commit that fails (sector 0 cannot be written) zeroes every
/// signature it had written.
#[test]
fn a_failed_deferred_commit_leaves_every_signature_zero() {
    let (bundle, hold, _) = image();
    let mut t = Logged::new(garbage(8 << 20));
    let o = WriteOptions {
        defer_commit: true,
        ..opts()
    };
    let r = write_to(Cursor::new(&bundle), &mut t, &o, &crate::progress::Null).unwrap();
    t.fail_write = Some(100);
    r.commit.unwrap().apply(&mut t).unwrap_err();
    assert!(
        t.writes.iter().any(|w| touches(*w, &hold[0])),
        "the signatures were written first"
    );
    assert_signatures_zero(&t.bytes(), &hold);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]
    /// Random images and random hold lists: a clean run lands bit-exact, and
    /// a write error at a random signature byte leaves every range zero.
    #[test]
    fn random_hold_lists(
        runs in run_strategy(),
        picks in prop::collection::vec((any::<u64>(), 1u64..10_000), 0..12),
        fail in any::<u64>(),
    ) {
        let size: u64 = runs.iter().map(|r| match r {
            Run::Data(d) => d.len() as u64,
            Run::Zero(n) | Run::DontCare(n) => *n,
        }).sum();
        let hold: Vec<_> = picks.iter().map(|&(o, l)| held(o % size, l, "sig")).collect();
        let (bundle, spans, logical) = bundle_holding(&runs, 64 << 10, ChunkDigest::default(), hold);
        let m = bundle::read_manifest(&mut Cursor::new(&bundle)).unwrap().manifest;
        let target = garbage(size as usize + 8192);
        let mut t = Logged::new(target.clone());
        write_to(Cursor::new(&bundle), &mut t, &opts(), &crate::progress::Null).unwrap();
        let out = t.bytes();
        for (kind, off, len) in spans {
            let (a, b) = (off as usize, (off + len) as usize);
            if kind != ExtentKind::DontCare {
                prop_assert!(out[a..b] == logical[a..b], "{:?} {}..{} differs", kind, a, b);
            }
        }
        // A write error inside a signature range with data in it.
        let data_in_sig: Vec<u64> = m.hold.iter().flat_map(|r| r.offset..r.end())
            .filter(|&i| logical[i as usize] != 0).step_by(997).collect();
        if !data_in_sig.is_empty() {
            let mut t = Logged::new(target);
            t.fail_write = Some(data_in_sig[(fail % data_in_sig.len() as u64) as usize]);
            prop_assert!(write_to(Cursor::new(&bundle), &mut t, &opts(), &crate::progress::Null).is_err());
            let out = t.bytes();
            for r in &m.hold {
                // Don't-care bytes are never written; the rest is zero.
                let zero = (r.offset..r.end()).all(|i| {
                    out[i as usize] == 0 || !spans_written(&m, i)
                });
                prop_assert!(zero, "{}..{} not zero after the failure", r.offset, r.end());
            }
        }
    }
}

/// Whether image byte `i` is data or must-be-zero (written by the engine).
fn spans_written(m: &Manifest, i: u64) -> bool {
    m.extents
        .iter()
        .any(|e| e.kind != ExtentKind::DontCare && e.offset <= i && i < e.end())
}
