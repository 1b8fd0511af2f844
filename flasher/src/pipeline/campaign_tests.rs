//! The fail-closed campaign (issue 22, docs/fail-closed.md "The campaign"): a
//! property-based model of the whole host-side write (`write_to`: plan, wipe,
//! stream, read-back, held-back tail and head, fix-ups, table commit) over a
//! target model that injects every fault kind the invariant names, at a random
//! sector, armed after a random number of writes (so in any phase):
//!
//! - write error (EIO), persistent;
//! - write swallowed: reported done, nothing lands (SD firmware);
//! - write corrupted: lands with one byte changed, persistent;
//! - read error (EIO) on the read-back;
//! - read corrupted: the read-back sees one byte changed, the first time or
//!   every time;
//! - none.
//!
//! Images are generated: random data, must-be-zero and dont-care extents in
//! the head, the middle and the tail; odd sizes; GPT (512- and 4096-byte
//! sectors), hybrid MBR over GPT, MBR, or no table; held-back signature
//! ranges (the manifest's `hold`, as libblkid would list a bare filesystem's
//! or a partition's superblock); prior target contents of noise, an older
//! valid image, or the same image. Half the runs take the board's path: the
//! commit deferred, a write between the image and the commit (the
//! bootloader or config step) through `TableCommit::overlay`, then the
//! commit. The property: `Ok` means the target equals the image (with that
//! step's write) outside the fix-up sectors and dont-care ranges; `Err` means
//! sector 0 is zero, no GPT header is at LBA 1 or the target's end (unless the
//! fault sits on those very sectors, where the device decides), and no
//! signature range holds the image's bytes; no fault means `Ok`.
//!
//! `FLASHER_CAMPAIGN_CASES` sets the number of cases (default 300, what CI
//! runs); the long run and what it found are in docs/fail-closed.md.

use super::{write_to, Target, Verify, WriteOptions};
use flasher_format::bundle::{BundleWriter, WriterOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::io::{self, Cursor};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Data,
    Zero,
    DontCare,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Table {
    None,
    Mbr,
    Gpt512,
    Gpt4096,
    /// GPT (512-byte sectors) whose sector 0 has a second, real MBR entry
    /// beside the 0xEE one.
    Hybrid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    WriteEio,
    WriteLost,
    WriteCorrupt,
    ReadEio,
    ReadCorruptOnce,
    ReadCorruptAlways,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    kind: FaultKind,
    /// The target sector (512 bytes) it covers.
    sector: u64,
    /// Writes (of any range) let through before it is armed.
    after_writes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prior {
    Noise,
    OlderImage,
    SameImage,
}

#[derive(Clone)]
struct Case {
    table: Table,
    /// Per 4 KiB block of the image (the last may be partial).
    kinds: Vec<Kind>,
    /// Bytes past the last whole block (no table: odd sizes).
    odd: u64,
    target_extra_blocks: u64,
    prior: Prior,
    fault: Option<Fault>,
    seed: u64,
    /// Signature ranges as (first block, blocks); only data blocks are held.
    hold: Vec<(usize, usize)>,
    /// The board's path: the commit deferred, a 512-byte write at this
    /// sector of the image (modulo its size) through the overlay, the commit.
    board_step: Option<u64>,
}

impl std::fmt::Debug for Case {
    /// The block kinds as runs ("Data x12, Zero x300, ..."): a shrunk
    /// counterexample stays readable.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut runs: Vec<String> = Vec::new();
        let mut i = 0;
        while i < self.kinds.len() {
            let k = self.kinds[i];
            let n = self.kinds[i..].iter().take_while(|&&x| x == k).count();
            runs.push(format!("{k:?} x{n}"));
            i += n;
        }
        f.debug_struct("Case")
            .field("table", &self.table)
            .field("blocks", &runs.join(", "))
            .field("odd", &self.odd)
            .field("target_extra_blocks", &self.target_extra_blocks)
            .field("prior", &self.prior)
            .field("fault", &self.fault)
            .field("seed", &self.seed)
            .field("hold", &self.hold)
            .field("board_step", &self.board_step)
            .finish()
    }
}

/// xorshift bytes, never zero (so never all zero in a block).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut v = flasher_format::testing::noise(n, seed);
    v.iter_mut().for_each(|b| *b |= 1);
    v
}

impl Case {
    fn sector_size(&self) -> u64 {
        if self.table == Table::Gpt4096 {
            4096
        } else {
            512
        }
    }

    fn image_size(&self) -> u64 {
        self.kinds.len() as u64 * BLOCK + self.odd
    }

    fn target_size(&self) -> u64 {
        (self.kinds.len() as u64 + self.target_extra_blocks + 1) * BLOCK
    }

    /// The image and the kind of every byte's block (the table's blocks are
    /// data).
    fn image(&self) -> (Vec<u8>, Vec<Kind>) {
        let size = self.image_size() as usize;
        let mut img = noise(size, self.seed);
        let mut kinds = self.kinds.clone();
        if self.odd > 0 {
            kinds.push(Kind::Data);
        }
        for (b, k) in kinds.iter().enumerate() {
            if *k != Kind::Data {
                let a = b * BLOCK as usize;
                img[a..(a + BLOCK as usize).min(size)].fill(0);
            }
        }
        let ss = self.sector_size();
        let n = self.image_size() / ss;
        let mut c = Cursor::new(img);
        match self.table {
            Table::None => {}
            Table::Mbr => {
                let parts = [flasher_disk::mbr::NewPartition {
                    sys: 0x83,
                    bootable: true,
                    start_lba: 2048.min(n / 2),
                    sectors: n - 2048.min(n / 2),
                }];
                flasher_disk::mbr::write_new(&mut c, 512, [1, 2, 3, 4], &parts).unwrap();
            }
            Table::Gpt512 | Table::Gpt4096 | Table::Hybrid => {
                let first = if ss == 512 { 34 } else { 6 };
                let last_usable = n - if ss == 512 { 34 } else { 6 };
                let p = flasher_disk::gpt::NewPartition {
                    name: "root".into(),
                    type_guid: flasher_disk::table::LINUX_FS,
                    part_guid: [7; 16],
                    first_lba: first.max((MIB / ss).min(last_usable / 2)),
                    last_lba: last_usable,
                    attributes: 0,
                };
                let first_lba = p.first_lba;
                flasher_disk::gpt::write_new(&mut c, ss, self.image_size(), [9; 16], &[p]).unwrap();
                if self.table == Table::Hybrid {
                    // Entry 2: a Linux partition over the GPT partition's start.
                    let e = &mut c.get_mut()[446 + 16..446 + 32];
                    e.fill(0);
                    e[4] = 0x83;
                    e[8..12].copy_from_slice(&(first_lba as u32).to_le_bytes());
                    e[12..16].copy_from_slice(&(2048u32).to_le_bytes());
                }
            }
        }
        let img = c.into_inner();
        // Blocks the table touched become data.
        for (b, k) in kinds.iter_mut().enumerate() {
            let a = b * BLOCK as usize;
            let blk = &img[a..(a + BLOCK as usize).min(size)];
            if *k != Kind::Data && blk.iter().any(|&x| x != 0) {
                *k = Kind::Data;
            }
        }
        (img, kinds)
    }

    /// The signature ranges as byte ranges: the case's blocks that are data.
    fn hold_ranges(&self, kinds: &[Kind], size: u64) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        for &(b, n) in &self.hold {
            let first = b % kinds.len();
            for (blk, kind) in kinds.iter().enumerate().skip(first).take(n) {
                if *kind == Kind::Data {
                    let a = blk as u64 * BLOCK;
                    v.push((a, BLOCK.min(size - a)));
                }
            }
        }
        v
    }

    /// A bundle of the image, 64 KiB chunks, extents as `kinds` says,
    /// holding back `hold`.
    fn bundle(img: &[u8], kinds: &[Kind], hold: &[(u64, u64)]) -> Vec<u8> {
        let opts = WriterOptions {
            chunk_size: 64 << 10,
            level: 1,
            workers: 1,
            hold: hold
                .iter()
                .map(|&(offset, length)| flasher_format::bundle::HoldRange {
                    offset,
                    length,
                    what: "signature".into(),
                })
                .collect(),
            ..Default::default()
        };
        let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
        let mut b = 0;
        while b < kinds.len() {
            let k = kinds[b];
            let mut e = b;
            while e < kinds.len() && kinds[e] == k {
                e += 1;
            }
            let (a, z) = (b * BLOCK as usize, (e * BLOCK as usize).min(img.len()));
            match k {
                Kind::Data => w.push_data(&img[a..z]).unwrap(),
                Kind::Zero => w.push_zero((z - a) as u64).unwrap(),
                Kind::DontCare => w.push_dont_care((z - a) as u64).unwrap(),
            }
            b = e;
        }
        let mut out = Vec::new();
        w.finish(&mut out).unwrap();
        out
    }
}

/// A target over a `Vec<u8>` with one injected fault.
struct FaultyTarget {
    data: Vec<u8>,
    sector_size: u64,
    fault: Option<Fault>,
    writes: usize,
    /// Reads the `ReadCorruptOnce` fault has corrupted so far.
    corrupted_reads: usize,
    /// The position for `Read`/`Write`/`Seek` (fatfs-style users).
    pos: u64,
}

impl io::Read for FaultyTarget {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size().saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for FaultyTarget {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl io::Seek for FaultyTarget {
    fn seek(&mut self, p: io::SeekFrom) -> io::Result<u64> {
        let bad = || io::Error::from(io::ErrorKind::InvalidInput);
        self.pos = match p {
            io::SeekFrom::Start(p) => p,
            io::SeekFrom::End(d) => self.size().checked_add_signed(d).ok_or_else(bad)?,
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(bad)?,
        };
        Ok(self.pos)
    }
}

impl FaultyTarget {
    fn hit(&self, off: u64, len: u64) -> Option<FaultKind> {
        let f = self.fault?;
        let s = f.sector * 512;
        (self.writes > f.after_writes && off < s + 512 && s < off + len).then_some(f.kind)
    }
}

impl Target for FaultyTarget {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn sector_size(&self) -> u64 {
        self.sector_size
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.writes += 1;
        let end = off + data.len() as u64;
        if end > self.size() {
            return Err(io::Error::other("write beyond the end"));
        }
        match self.hit(off, data.len() as u64) {
            Some(FaultKind::WriteEio) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(FaultKind::WriteLost) => return Ok(()),
            Some(FaultKind::WriteCorrupt) => {
                self.data[off as usize..end as usize].copy_from_slice(data);
                let s = self.fault.map(|f| f.sector * 512).unwrap_or(0).max(off);
                self.data[s as usize] ^= 0x5a;
                return Ok(());
            }
            _ => {}
        }
        self.data[off as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = off as usize + buf.len();
        if end as u64 > self.size() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&self.data[off as usize..end]);
        // Read faults are armed like write faults (after N writes: the
        // read-back phase, not the skip-equal compare of a fresh target).
        match self.hit(off, buf.len() as u64) {
            Some(FaultKind::ReadEio) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Some(k @ (FaultKind::ReadCorruptOnce | FaultKind::ReadCorruptAlways))
                if k == FaultKind::ReadCorruptAlways || self.corrupted_reads == 0 =>
            {
                self.corrupted_reads += 1;
                let s = self.fault.map(|f| f.sector * 512).unwrap_or(0).max(off);
                buf[(s - off) as usize] ^= 0x5a;
            }
            _ => {}
        }
        Ok(())
    }
    fn zero_range(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.write_at(off, &vec![0u8; len as usize])
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kind_strategy() -> impl Strategy<Value = Kind> {
    prop_oneof![4 => Just(Kind::Data), 3 => Just(Kind::Zero), 1 => Just(Kind::DontCare)]
}

/// Runs of block kinds: long runs, so extents span the head, middle and tail.
fn kinds_strategy() -> impl Strategy<Value = Vec<Kind>> {
    prop::collection::vec((kind_strategy(), 1usize..300), 1..12).prop_map(|runs| {
        let mut v: Vec<Kind> = runs
            .into_iter()
            .flat_map(|(k, n)| std::iter::repeat_n(k, n))
            .collect();
        // At least 2 MiB + a block, at most 5 MiB: head, middle and tail.
        v.truncate(1280);
        while v.len() < 520 {
            v.push(Kind::Zero);
        }
        v
    })
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let table = prop_oneof![
        Just(Table::None),
        Just(Table::Mbr),
        Just(Table::Gpt512),
        Just(Table::Gpt4096),
        Just(Table::Hybrid)
    ];
    let prior = prop_oneof![
        Just(Prior::Noise),
        Just(Prior::OlderImage),
        Just(Prior::SameImage)
    ];
    let fault_kind = prop_oneof![
        Just(FaultKind::WriteEio),
        Just(FaultKind::WriteLost),
        Just(FaultKind::WriteCorrupt),
        Just(FaultKind::ReadEio),
        Just(FaultKind::ReadCorruptOnce),
        Just(FaultKind::ReadCorruptAlways),
    ];
    let fault = prop::option::weighted(
        0.85,
        (fault_kind, any::<prop::sample::Index>(), 0usize..400),
    );
    let hold = prop::collection::vec((any::<usize>(), 1usize..3), 0..4);
    let board_step = prop::option::of(any::<u64>());
    (
        (table, kinds_strategy(), 0u64..4096, 0u64..600),
        (prior, fault, any::<u64>(), hold, board_step),
    )
        .prop_map(
            |((table, kinds, odd, extra), (prior, fault, seed, hold, board_step))| {
                let odd = if table == Table::None { odd } else { 0 };
                let blocks = kinds.len() as u64 + extra + 1;
                let fault = fault.map(|(kind, i, after_writes)| Fault {
                    kind,
                    // Any sector of the target; often one in the held-back
                    // head or tail, where the holes were, or in a signature
                    // range.
                    sector: match i.index(4) {
                        0 => i.index((MIB / 512) as usize) as u64,
                        3 if !hold.is_empty() => {
                            (hold[0].0 % kinds.len()) as u64 * (BLOCK / 512) + i.index(8) as u64
                        }
                        1 => {
                            let end = (kinds.len() as u64 * BLOCK + odd) / 512;
                            end.saturating_sub(1 + i.index((MIB / 512) as usize) as u64)
                        }
                        _ => i.index((blocks * BLOCK / 512) as usize) as u64,
                    },
                    after_writes,
                });
                Case {
                    table,
                    kinds,
                    odd,
                    target_extra_blocks: extra,
                    prior,
                    fault,
                    seed,
                    hold,
                    board_step,
                }
            },
        )
}

/// Whether a GPT header signature sits at byte `off` of `data`.
fn gpt_at(data: &[u8], off: u64) -> bool {
    data.get(off as usize..off as usize + 8) == Some(b"EFI PART")
}

/// Run one case and check the invariant; Err(reason) on a violation.
fn check(case: &Case) -> Result<(), String> {
    let (mut img, kinds) = case.image();
    let hold = case.hold_ranges(&kinds, img.len() as u64);
    let bundle = Case::bundle(&img, &kinds, &hold);
    let tsize = case.target_size();
    let ss = case.sector_size();
    let mut prior = noise(tsize as usize, case.seed ^ 0xabcd);
    match case.prior {
        Prior::Noise => {}
        Prior::OlderImage => {
            let older = Case {
                seed: case.seed ^ 0x5555,
                ..case.clone()
            };
            let (o, _) = older.image();
            prior[..o.len()].copy_from_slice(&o);
        }
        Prior::SameImage => prior[..img.len()].copy_from_slice(&img),
    }
    let mut t = FaultyTarget {
        data: prior.clone(),
        sector_size: ss,
        fault: case.fault,
        writes: 0,
        corrupted_reads: 0,
        pos: 0,
    };
    let opts = WriteOptions {
        verify: Verify::Full,
        workers: 1,
        direct: false,
        defer_commit: case.board_step.is_some(),
        ..Default::default()
    };
    let r = write_to(Cursor::new(&bundle), &mut t, &opts, &crate::progress::Null);
    // The board's path: a step's write through the overlay, then the commit.
    let r = match (r, case.board_step) {
        (Ok(rep), Some(at)) => {
            let mut commit = rep.commit.clone().ok_or("no deferred commit")?;
            let sector = (at % (img.len() as u64 / 512)) * 512;
            let blob = [0xc3u8; 512];
            // A step over a table sector is refused by design (a board file
            // placing its bootloader there is wrong, and `post::place_raw`
            // says so): the model's step moves past the table sectors.
            let mut sector = sector;
            while let Some(end) = commit
                .sectors
                .iter()
                .find(|(o, d, _)| *o < sector + 512 && sector < o + d.len() as u64)
                .map(|(o, d, _)| o + d.len() as u64)
            {
                sector = end.div_ceil(512) * 512;
            }
            let room = sector + 512 <= img.len() as u64;
            let step = if room {
                let mut ov = commit.overlay(&mut t);
                super::readback::write_verified(&mut ov, sector, &blob, "board step")
            } else {
                Ok(()) // no sector left for the step: the run goes on without it
            };
            match step {
                // A refusal (a table sector, as `post::place_raw` refuses) or
                // an I/O error: the board's run fails here, the commit unapplied.
                Err(e) => Err(crate::Error::Pipeline(e)),
                Ok(()) => {
                    if room {
                        img[sector as usize..sector as usize + 512].copy_from_slice(&blob);
                    }
                    commit
                        .apply(&mut t)
                        .map(|()| rep)
                        .map_err(crate::Error::Pipeline)
                }
            }
        }
        (r, _) => r,
    };
    let out = &t.data;
    match r {
        Ok(_) => {
            // Fix-up sectors: sector 0 and, with GPT, LBA 1 and the image's
            // own backup header and entry array (moved to the target's end).
            let gpt_tail = match case.table {
                Table::Gpt512 | Table::Hybrid => 33 * 512,
                Table::Gpt4096 => 5 * 4096,
                _ => 0,
            };
            let fixup = |i: u64| {
                i < ss
                    || (gpt_tail > 0 && i < 2 * ss)
                    || (gpt_tail > 0 && i >= case.image_size() - gpt_tail)
            };
            for (b, k) in kinds.iter().enumerate() {
                if *k == Kind::DontCare {
                    continue;
                }
                let a = b * BLOCK as usize;
                let z = (a + BLOCK as usize).min(img.len());
                for i in a..z {
                    if out[i] != img[i] && !fixup(i as u64) {
                        return Err(format!(
                            "success, but target byte {i} is {:#04x} where the image has {:#04x} ({k:?} block)",
                            out[i], img[i]
                        ));
                    }
                }
            }
            Ok(())
        }
        Err(e) => {
            let Some(f) = case.fault else {
                return Err(format!("no fault, yet the write failed: {e}"));
            };
            // Where the fault sits on a table sector the device decides what
            // stays there (a write it drops cannot be undone).
            let fs = f.sector * 512;
            let on_table = fs < 2 * ss.max(512) || fs >= tsize - ss.max(512) * 2;
            if on_table {
                return Ok(());
            }
            // A refusal before the first write leaves the target as it was;
            // a failure of the wipe's own read-back leaves at most the wipe
            // (zeros in the first and last MiB), nothing of the image.
            let wiped = |i: usize| (i as u64) < MIB || i as u64 >= tsize - MIB;
            if out
                .iter()
                .zip(&prior)
                .enumerate()
                .all(|(i, (a, b))| a == b || (*a == 0 && wiped(i)))
            {
                return Ok(());
            }
            if out[..512].iter().any(|&x| x != 0) {
                return Err(format!("failed ({e}), and sector 0 is not zero"));
            }
            for s in [512u64, 4096] {
                if gpt_at(out, s) {
                    return Err(format!("failed ({e}), and a GPT header is at byte {s}"));
                }
                if gpt_at(out, tsize - s) {
                    return Err(format!(
                        "failed ({e}), and a GPT header is at the target's end (byte {})",
                        tsize - s
                    ));
                }
            }
            // No signature range holds the image's bytes (where they differ
            // from the prior content and are not zero): at most a stray
            // byte equal by chance.
            for &(a, n) in &hold {
                let (a, z) = (a as usize, (a + n) as usize);
                let differ: Vec<usize> = (a..z)
                    .filter(|&i| img[i] != prior[i] && img[i] != 0)
                    .collect();
                let landed = differ.iter().filter(|&&i| out[i] == img[i]).count();
                if !differ.is_empty() && landed * 2 > differ.len() {
                    return Err(format!(
                        "failed ({e}), and the held-back signature range {a}..{z} holds the image's bytes ({landed} of {})",
                        differ.len()
                    ));
                }
            }
            Ok(())
        }
    }
}

fn cases() -> u32 {
    std::env::var("FLASHER_CAMPAIGN_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// The campaign (module docs). A counterexample is shrunk by proptest and
/// printed; each one found becomes a named regression test below.
#[test]
fn fail_closed_campaign() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let t0 = std::time::Instant::now();
    let r = runner.run(&case_strategy(), |case| {
        check(&case).map_err(|why| TestCaseError::fail(format!("{why}\n{case:?}")))
    });
    eprintln!(
        "fail-closed campaign: {} cases in {:.1} s",
        cases(),
        t0.elapsed().as_secs_f64()
    );
    if let Err(e) = r {
        panic!("{e}");
    }
}

/// The campaign's counterexamples, each a named regression.
mod found {
    use super::*;

    /// The model's own first counterexample (the board's path added this
    /// session): its step landed on sector 0, which the overlay refuses by
    /// design, and the model took the refusal for a failed run. The step now
    /// moves past the table sectors; sector 0 and, with GPT, LBA 1.
    #[test]
    fn the_board_step_skips_the_table_sectors() {
        for table in [Table::Mbr, Table::Gpt512, Table::Gpt4096] {
            for at in [0, 1, 8] {
                let c = Case {
                    table,
                    kinds: vec![Kind::Data; 1190],
                    odd: 0,
                    target_extra_blocks: 0,
                    prior: Prior::Noise,
                    fault: None,
                    seed: 0,
                    hold: Vec::new(),
                    board_step: Some(at),
                };
                check(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    }

    fn case(table: Table, kinds: Vec<Kind>, prior: Prior, fault: Fault) -> Case {
        Case {
            table,
            kinds,
            odd: 0,
            target_extra_blocks: 0,
            prior,
            fault: Some(fault),
            seed: 0,
            hold: Vec::new(),
            board_step: None,
        }
    }

    /// First long run: a medium that drops the whole 1 MiB wipe of the
    /// target's start (one bad sector in it), without an error. The run
    /// failed later, at the held-back head, but the old sector 0 was still
    /// there: over an older image, its table over the new data. The wipe is
    /// now read back before anything else is written.
    #[test]
    fn a_swallowed_wipe_is_caught_before_any_data() {
        let mut kinds = vec![Kind::Data];
        kinds.resize(520, Kind::Zero);
        for prior in [Prior::Noise, Prior::OlderImage] {
            for table in [Table::None, Table::Mbr, Table::Gpt512] {
                let c = case(
                    table,
                    kinds.clone(),
                    prior,
                    Fault {
                        kind: FaultKind::WriteLost,
                        sector: 2,
                        after_writes: 0,
                    },
                );
                check(&c).unwrap_or_else(|e| panic!("{c:?}: {e}"));
            }
        }
    }
}
