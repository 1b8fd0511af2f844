//! `skip_equal`: only differing blocks are written, the result is the image
//! whatever the target held, and the held-back head and the table commit
//! still run last.

use super::tests::{bundle_of, garbage, gpt_like_image, Run};
use super::*;
use crate::pipeline::{Plain, Target, WriteOptions};
use proptest::prelude::*;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};

/// A target that records every positioned write, zeroing and read.
struct Counting {
    inner: Plain<Cursor<Vec<u8>>>,
    /// (offset, length, zeroing)
    writes: Vec<(u64, u64, bool)>,
    /// (offset, length)
    reads: Vec<(u64, u64)>,
    /// A byte that every write covering it stores flipped (a write that
    /// "succeeds" but lands wrong).
    lands_wrong: Option<u64>,
}

impl Counting {
    fn new(bytes: Vec<u8>) -> Self {
        Counting {
            inner: Plain::new(Cursor::new(bytes)).unwrap(),
            writes: Vec::new(),
            reads: Vec::new(),
            lands_wrong: None,
        }
    }
    /// How many times each byte of `a..b` was read, per byte (all equal: one value).
    fn times_read(&self, a: u64, b: u64) -> Vec<usize> {
        let mut n: Vec<usize> = (a..b)
            .map(|p| {
                self.reads
                    .iter()
                    .filter(|(o, l)| *o <= p && p < o + l)
                    .count()
            })
            .collect();
        n.dedup();
        n
    }
    /// The recorded writes that touch `a..b`.
    fn touching(&self, a: u64, b: u64) -> Vec<(u64, u64, bool)> {
        let w = self.writes.iter();
        w.filter(|(o, n, _)| *o < b && a < o + n).copied().collect()
    }
}

impl Read for Counting {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(b)
    }
}
impl Write for Counting {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let pos = self.inner.inner.position();
        self.writes.push((pos, b.len() as u64, false));
        self.inner.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
impl Seek for Counting {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(p)
    }
}
impl Target for Counting {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn write_at(&mut self, o: u64, d: &[u8]) -> std::io::Result<()> {
        self.writes.push((o, d.len() as u64, false));
        self.inner.write_at(o, d)?;
        match self.lands_wrong {
            Some(p) if o <= p && p < o + d.len() as u64 => {
                let b = &mut self.inner.inner.get_mut()[p as usize];
                *b ^= 0xff;
                Ok(())
            }
            _ => Ok(()),
        }
    }
    fn read_at(&mut self, o: u64, b: &mut [u8]) -> std::io::Result<()> {
        self.reads.push((o, b.len() as u64));
        self.inner.read_at(o, b)
    }
    fn zero_range(&mut self, o: u64, n: u64) -> std::io::Result<()> {
        self.writes.push((o, n, true));
        self.inner.zero_range(o, n)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.inner.sync()
    }
}

/// Write `bundle` onto a target holding `held`.
fn write_onto(bundle: &[u8], held: Vec<u8>, o: &WriteOptions) -> (Counting, WriteReport) {
    let mut t = Counting::new(held);
    let r = write_to(Cursor::new(bundle), &mut t, o, &crate::progress::Null).unwrap();
    (t, r)
}

/// Step 3's compare read is the read-back of what it found equal: on an
/// identical target every streamed byte is read once, not twice, and the
/// report still counts every byte as verified.
#[test]
fn an_identical_target_is_read_once_and_counted_verified() {
    let (bundle, img) = image();
    let (t, r) = write_onto(&bundle, img, &skip_opts());
    // Chunks 1..=6 (1..7 MiB) lie outside the held-back head and tail.
    assert_eq!(
        t.times_read(MIB as u64, 7 * MIB as u64),
        [1],
        "{:?}",
        t.reads
    );
    assert!(r.bytes_verified >= 8 * MIB as u64, "{}", r.bytes_verified);
}

/// A chunk with any block rewritten is read back whole after the flush; the
/// chunks found equal are not read again.
#[test]
fn a_changed_chunk_is_read_back_and_the_others_are_not() {
    let (bundle, img) = image();
    let mut held = img.clone();
    held[2 * MIB + 5] ^= 0x5a; // chunk 2
    held[4 * MIB + 7] = 1; // the must-be-zero piece (4..5 MiB)
    let (t, r) = write_onto(&bundle, held, &skip_opts());
    assert!(t.inner.inner.get_ref() == &img);
    assert_eq!(t.times_read(2 * MIB as u64, 3 * MIB as u64), [2]);
    assert_eq!(t.times_read(4 * MIB as u64, 5 * MIB as u64), [2]);
    for chunk in [1, 3, 5, 6] {
        let a = (chunk * MIB) as u64;
        assert_eq!(t.times_read(a, a + MIB as u64), [1], "chunk {chunk}");
    }
    assert!(r.bytes_verified >= 8 * MIB as u64, "{}", r.bytes_verified);
}

/// A rewritten block whose write lands wrong fails the write, naming the
/// chunk: skipping the second read of equal chunks does not weaken the
/// read-back of written ones.
#[test]
fn a_rewritten_block_that_lands_wrong_fails_the_write() {
    let (bundle, img) = image();
    let mut held = img.clone();
    let p = 3 * MIB + 70_000; // chunk 3
    held[p] ^= 0x5a;
    let mut t = Counting::new(held);
    t.lands_wrong = Some(p as u64 + 1);
    let e = write_to(
        Cursor::new(&bundle),
        &mut t,
        &skip_opts(),
        &crate::progress::Null,
    )
    .unwrap_err();
    assert!(
        matches!(&e, crate::Error::Pipeline(Error::VerifyMismatch { offset, what, .. }) if *offset == 3 * MIB as u64 && what == "chunk 3"),
        "{e:?}"
    );
    // Failed closed: the table sectors were never written.
    assert!(t.inner.inner.get_ref()[512..1024].iter().all(|&b| b == 0));
}

fn skip_opts() -> WriteOptions {
    WriteOptions {
        workers: 2,
        skip_equal: true,
        ..Default::default()
    }
}

const MIB: usize = 1 << 20;

/// A GPT image of 8 MiB: data, a 1 MiB must-be-zero run at 4 MiB, data.
fn image() -> (Vec<u8>, Vec<u8>) {
    let mut img = gpt_like_image(8 * MIB);
    img[4 * MIB..5 * MIB].fill(0);
    let runs = [
        Run::Data(img[..4 * MIB].to_vec()),
        Run::Zero(MIB as u64),
        Run::Data(img[5 * MIB..].to_vec()),
    ];
    let (bundle, _, logical) = bundle_of(&runs, 1 << 20);
    assert_eq!(logical, img);
    (bundle, img)
}

#[test]
fn only_the_differing_blocks_are_written() {
    let (bundle, img) = image();
    // The target holds the image, except: two changed data bytes (one at a
    // block edge), a dirty spot in the must-be-zero run, and no table sectors.
    let mut held = img.clone();
    let changed = [2 * MIB + 5, 6 * MIB + 65_535];
    for &c in &changed {
        held[c] ^= 0x5a;
    }
    let dirty = 4 * MIB + 300_000;
    held[dirty..dirty + 10].fill(0xee);
    held[..MIB].fill(0);
    let (t, r) = write_onto(&bundle, held, &skip_opts());

    assert!(
        t.inner.inner.get_ref() == &img,
        "the target holds the image"
    );
    // Between the held-back head (1 MiB) and tail (the last MiB), only the
    // 64 KiB blocks with a difference were written or zeroed.
    let mid = t.touching(MIB as u64, 7 * MIB as u64);
    for &c in changed.iter().chain([&dirty]) {
        assert!(
            mid.iter()
                .any(|(o, n, _)| *o <= c as u64 && (c as u64) < o + n),
            "byte {c} rewritten: {mid:?}"
        );
    }
    assert_eq!(mid.len(), 3, "one write per differing block: {mid:?}");
    assert!(mid.iter().all(|(_, n, _)| *n <= SKIP_BLOCK), "{mid:?}");
    assert!(
        t.touching(dirty as u64, dirty as u64 + 1)[0].2,
        "zeroed, not written"
    );
    assert_eq!(r.bytes_skipped, 6 * MIB as u64 - 3 * SKIP_BLOCK);
    // Every byte was still read back (and the backup GPT the fix-up wrote).
    assert!(r.bytes_verified >= 8 * MIB as u64, "{}", r.bytes_verified);
}

#[test]
fn an_identical_target_gets_only_the_head_tail_and_table_rewritten() {
    let (bundle, img) = image();
    let (t, r) = write_onto(&bundle, img.clone(), &skip_opts());
    assert!(t.inner.inner.get_ref() == &img);
    assert!(
        t.touching(MIB as u64, 7 * MIB as u64).is_empty(),
        "{:?}",
        t.writes
    );
    assert_eq!(r.bytes_skipped, 6 * MIB as u64);
    // Fail closed as a normal write: the first MiB was wiped before anything
    // else and the table sectors (sector 0, the GPT header) written last.
    assert_eq!(t.writes[0], (0, MIB as u64, true), "{:?}", t.writes);
    let last_head = t.writes.iter().rposition(|(o, _, _)| *o < 4096).unwrap();
    let last_mid = t
        .writes
        .iter()
        .rposition(|(o, _, _)| *o >= MIB as u64)
        .unwrap();
    assert!(
        last_head > last_mid,
        "the table is committed last: {:?}",
        t.writes
    );
}

#[test]
fn without_skip_equal_everything_is_written() {
    let (bundle, img) = image();
    let o = WriteOptions {
        skip_equal: false,
        ..skip_opts()
    };
    let (t, r) = write_onto(&bundle, img, &o);
    assert_eq!(r.bytes_skipped, 0);
    let mid: u64 = t
        .touching(MIB as u64, 7 * MIB as u64)
        .iter()
        .map(|w| w.1)
        .sum();
    assert_eq!(mid, 6 * MIB as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, ..ProptestConfig::default() })]
    /// Whatever mix of image bytes and garbage the target holds, a skip-equal
    /// write leaves the image's data and zeros on it, bit-exact.
    #[test]
    fn any_target_ends_up_holding_the_image(
        seed in any::<u64>(),
        blocks in prop::collection::vec(any::<bool>(), 48),
    ) {
        let mut img = garbage(3 * MIB);
        img[MIB..MIB + 200_000].fill(0);
        let mut x = seed | 1;
        for b in img.iter_mut().step_by(997) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            *b = x as u8;
        }
        let runs = [
            Run::Data(img[..MIB].to_vec()),
            Run::Zero(200_000),
            Run::Data(img[MIB + 200_000..].to_vec()),
        ];
        let (bundle, _, logical) = bundle_of(&runs, 64 << 10);
        // Per 64 KiB block, the target holds the image's bytes or garbage.
        let mut held = garbage(3 * MIB + 4096);
        for (i, same) in blocks.iter().enumerate() {
            let a = i * (64 << 10);
            if *same {
                held[a..a + (64 << 10)].copy_from_slice(&logical[a..a + (64 << 10)]);
            }
        }
        let (t, r) = write_onto(&bundle, held, &skip_opts());
        let after = t.inner.inner.into_inner();
        prop_assert!(after[..logical.len()] == logical[..]);
        prop_assert!(r.bytes_skipped <= 3 * MIB as u64);
    }
}
