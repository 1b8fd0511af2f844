//! The generic engine. Threads (all scoped): the caller's thread reads
//! compressed chunks from the payload; `workers` threads decompress and check
//! each chunk's digest; one writer thread takes the results in manifest order
//! (a queue of per-chunk reply channels keeps the order and bounds memory to a
//! few chunks) and writes them; one thread hashes the logical image.
//!
//! Fail closed (docs/fail-closed.md): before the first write the table is
//! planned from the image's head (`commit::plan`: fix-up feasibility, the final
//! table sectors); then the target's first and last 1 MiB are zeroed and
//! flushed, so an old partition table cannot survive a failed flash. The first
//! `head` bytes of the image (at least 1 MiB, more if the GPT entry array
//! reaches further) and its last 1 MiB are held in memory and written only
//! after everything else has been written, flushed and read back, with the
//! table sectors (sector 0, GPT headers) still zero; then the fix-up writes,
//! read back; then the table commit (GPT headers, sector 0), unless the caller
//! defers it to after its own writes (bootloader, config).

use super::commit::{self, Plan};
use super::readback::{check_range, read, write, write_parts, write_verified, zero};
use super::{Error, PhaseDurations, Target, Verify, WriteOptions, WriteReport};
use crate::blockdev::AlignedBuf;
use crate::progress::{Event, Observer};
use crossbeam_channel::{bounded, Receiver, Sender};
use flasher_format::bundle::{
    self, decode_chunk, ChunkReader, ExtentKind, Manifest, Opened, RawChunk,
};
use flasher_format::units::iec;
use flasher_format::Phase;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Minimum held-back head and the held-back tail.
const HOLD: u64 = MIB;
/// A GPT claiming its entries reach further than this is not trusted to size
/// the held-back head (memory bound); the head is then this long. A standard
/// GPT's entries end at 17 KiB.
const MAX_HEAD: u64 = 4 * MIB;
/// Chunk bytes (decoded plus compressed) between the payload reader and the
/// writer at most: with the other bounded buffers (docs/SECURITY.md) the
/// writer stays within 64 MiB of memory for any bundle it accepts, whatever
/// the worker count.
const IN_FLIGHT: u64 = 40 * MIB;
/// Zeroing and zero-verification piece size (progress granularity).
const ZERO_PIECE: u64 = 64 * MIB;
/// Spare decoded and compressed chunk buffers kept for reuse, each.
const POOLED: usize = 2;

type Decoded = (usize, Arc<AlignedBuf>);
type Reply = Receiver<Result<Decoded, bundle::Error>>;

/// Read the manifest from `payload`, then [`write_opened`].
pub fn write_to<R: Read, T: Target>(
    mut payload: R,
    target: &mut T,
    opts: &WriteOptions,
    obs: &dyn Observer,
) -> crate::Result<WriteReport> {
    let opened = bundle::read_manifest(&mut payload)?;
    write_opened(&opened, payload, target, opts, obs, Path::new("target"))
}

/// Write an opened bundle whose chunk stream `payload` is positioned at its
/// first chunk. `path` only names the target in messages.
pub fn write_opened<R: Read, T: Target>(
    opened: &Opened,
    payload: R,
    target: &mut T,
    opts: &WriteOptions,
    obs: &dyn Observer,
    path: &Path,
) -> crate::Result<WriteReport> {
    let t0 = Instant::now();
    let m = &opened.manifest;
    // The signature first: an untrusted bundle is refused before anything
    // about the target is even looked at.
    let signer = opts.trust.check(opened)?;
    if target.size() < m.image_size {
        return Err(Error::TargetTooSmall {
            path: path.to_owned(),
            target: target.size(),
            image: m.image_size,
        }
        .into());
    }
    let mut report = WriteReport {
        image_sha256: m.image_sha256.clone(),
        signer: signer.to_string(),
        image_size: m.image_size,
        target_size: target.size(),
        bytes_written: 0,
        bytes_zeroed: 0,
        bytes_skipped: 0,
        bytes_verified: 0,
        held_back: 0,
        image_digest_checked: opts.image_digest,
        direct_io: target.is_direct(),
        durations: PhaseDurations::default(),
        fixup: None,
        commit: None,
    };
    report.durations.preflight = t0.elapsed();

    let t_write = Instant::now();
    let streamed = stream(m, payload, target, opts, obs)?;
    target.sync().map_err(Error::Sync)?;
    report.durations.write = t_write.elapsed();
    report.bytes_written = m.bytes_of(ExtentKind::Data);
    report.bytes_zeroed = m.bytes_of(ExtentKind::MustBeZero);
    report.bytes_skipped = streamed.skipped;
    report.direct_io = target.is_direct();
    let d = streamed.deferred.clone();
    let plan = streamed
        .plan
        .clone()
        .ok_or_else(|| Error::Internal("no table plan after streaming".into()))?;
    report.held_back = d.held_back(m);

    let t_verify = Instant::now();
    if opts.verify == Verify::Full {
        report.bytes_verified += verify_streamed(
            m,
            &streamed.checks,
            &streamed.kept,
            &d,
            target,
            obs,
            opts.workers,
        )?;
        report.bytes_verified += streamed.verified_by_compare;
    }
    report.durations.verify = t_verify.elapsed();

    let t_finish = Instant::now();
    obs.event(&Event::phase(Phase::Finishing).with_message(format!(
        "writing the held-back first {} and last {} of the image",
        iec(d.head),
        iec(m.image_size - d.tail)
    )));
    let (parts, signatures) = deferred_parts(&streamed, &d, &plan.hold, &m.hold);
    // The signatures go with the table commit: written and read back first
    // when it is applied, zeroed again if it fails, and until then nowhere
    // on the target (docs/fail-closed.md, "Held-back signatures").
    let mut commit = plan.commit.clone();
    commit.signatures = signatures;
    report.bytes_verified += write_parts(target, &parts, opts.verify == Verify::Full)?;
    // The fix-up writes other than the table sectors (backup entry array at the
    // real end, a grown entry array), each read back.
    for (off, data) in &plan.fixup_writes {
        write_verified(target, *off, data, "partition-table fix-up")?;
        report.bytes_verified += data.len() as u64;
    }
    for n in &plan.fixup.notes {
        tracing::info!("partition-table fix-up: {n}");
    }
    report.fixup = Some(plan.fixup.clone());
    if opts.defer_commit {
        report.commit = Some(commit);
    } else {
        commit.apply(target)?;
        if opts.verify == Verify::Full {
            report.bytes_verified += commit
                .signatures
                .iter()
                .map(|s| s.1.len() as u64)
                .sum::<u64>();
        }
    }
    report.durations.finish = t_finish.elapsed();
    Ok(report)
}

/// (offset, length) pairs.
type Ranges = Vec<(u64, u64)>;

/// The held-back regions: `[0, head)`, `[tail, image_size)` and the
/// manifest's `hold` ranges between them.
#[derive(Debug, Clone)]
struct Deferred {
    head: u64,
    tail: u64,
    /// The manifest's held-back signature ranges clipped to `[head, tail)`
    /// (the head and tail hold the rest): (offset, length, index of their
    /// first byte in [`Held::extra`]). Sorted and disjoint (validated), at
    /// most `MAX_HOLD_BYTES` in all.
    extra: Arc<[(u64, u64, usize)]>,
}

/// Which buffer of [`Held`] a held-back byte is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Head,
    Tail,
    Extra(usize),
}

impl Deferred {
    fn new(head: u64, tail: u64, m: &Manifest) -> Deferred {
        let mid_end = tail.max(head);
        let mut base = 0usize;
        let mut extra = Vec::new();
        for r in &m.hold {
            let (a, b) = (r.offset.max(head), r.end().min(mid_end));
            if a < b {
                extra.push((a, b - a, base));
                base += (b - a) as usize;
            }
        }
        Deferred {
            head,
            tail,
            extra: extra.into(),
        }
    }

    /// The region holding byte `off` (which must be held back) and its
    /// index in that region's buffer.
    fn locate(&self, off: u64) -> (Region, usize) {
        if off < self.head {
            return (Region::Head, off as usize);
        }
        let mid_end = self.tail.max(self.head);
        if off >= mid_end {
            return (Region::Tail, (off - mid_end) as usize);
        }
        let i = self.extra.partition_point(|&(o, l, _)| o + l <= off);
        let (o, _, base) = self.extra[i];
        (Region::Extra(i), base + (off - o) as usize)
    }

    /// Split `[off, off+len)` into the parts outside and inside the held-back regions.
    fn split(&self, off: u64, len: u64) -> (Ranges, Ranges) {
        let end = off + len;
        let mut outside = Vec::new();
        let mut inside = Vec::new();
        let push = |v: &mut Vec<(u64, u64)>, a: u64, b: u64| {
            if a < b {
                v.push((a, b - a));
            }
        };
        let mid_a = off.max(self.head);
        let mid_b = end.min(self.tail);
        push(&mut inside, off, end.min(self.head));
        if mid_a < mid_b {
            // The held-back signature ranges in between are held too.
            let mut a = mid_a;
            for &(o, l, _) in self.extra.iter() {
                let (x, y) = (o.max(mid_a), (o + l).min(mid_b));
                if x < y {
                    push(&mut outside, a, x);
                    push(&mut inside, x, y);
                    a = y;
                }
            }
            push(&mut outside, a, mid_b);
        }
        push(&mut inside, off.max(self.tail).max(self.head), end);
        (outside, inside)
    }
    fn held_back(&self, m: &Manifest) -> u64 {
        let mut n = 0;
        for e in m.extents.iter().filter(|e| e.kind != ExtentKind::DontCare) {
            n += self
                .split(e.offset, e.length)
                .1
                .iter()
                .map(|r| r.1)
                .sum::<u64>();
        }
        n
    }
}

/// How far the head must reach: 1 MiB, or the end of the GPT header and entry
/// array if the first chunk carries a GPT header (512- or 4096-byte sectors).
fn head_len(first_chunk: Option<&[u8]>, image_size: u64) -> u64 {
    let mut head = HOLD;
    if let Some(b) = first_chunk {
        for ss in [512u64, 4096] {
            if let Some(entries_end) = flasher_disk::gpt::primary_extent(b, ss) {
                head = head.max(entries_end.div_ceil(4096) * 4096).min(MAX_HEAD);
            }
        }
    }
    head.min(image_size)
}

/// What must be read back after streaming.
enum Check {
    /// A chunk written whole: compare the read-back digest.
    Chunk(usize),
    /// A zeroed range.
    Zero(u64, u64),
}

struct Streamed {
    checks: Vec<Check>,
    /// Chunks that straddle an edge of a held-back region, kept whole (index,
    /// bytes) for the read-back of their streamed part: at most one per edge.
    kept: Vec<Decoded>,
    /// The image's bytes in the held-back regions.
    held: Held,
    deferred: Deferred,
    /// Made before the first write to the target.
    plan: Option<Plan>,
    /// Bytes found equal on the target and not written (`skip_equal`).
    skipped: u64,
    /// Bytes of whole chunks and zero pieces that the `skip_equal` compare
    /// found equal: that O_DIRECT read of the target (after the wipe, checked
    /// against the digest-checked chunk) is their read-back, so they get no
    /// second one. A chunk or piece with any block rewritten is read back
    /// whole after the flush, as in a normal write.
    verified_by_compare: u64,
}

/// The image's bytes in the held-back head, tail and signature ranges, copied
/// out of their chunks as they stream by: memory is the regions' size (at most
/// [`MAX_HEAD`] + [`HOLD`] + `MAX_HOLD_BYTES`), whatever the number of chunks there (issue 22:
/// keeping each chunk whole, page-rounded, let a manifest of thousands of
/// tiny chunks in the first MiB need over 100 MiB).
#[derive(Default)]
struct Held {
    /// `[0, d.head)` of the image; zero where it is must-be-zero or not set.
    head: Vec<u8>,
    /// `[d.tail, image_size)` of the image.
    tail: Vec<u8>,
    /// The signature ranges of `d.extra`, one after the other.
    extra: Vec<u8>,
    ready: bool,
    /// The ranges to write (data and must-be-zero; not dont-care), adjacent
    /// ones merged.
    ranges: Ranges,
}

impl Held {
    /// Size the buffers for `d` (once).
    fn init(&mut self, d: &Deferred, image_size: u64) {
        if !self.ready {
            self.ready = true;
            self.head = vec![0; d.head as usize];
            self.tail = vec![0; image_size.saturating_sub(d.tail.max(d.head)) as usize];
            self.extra = vec![0; d.extra.iter().map(|r| r.1 as usize).sum()];
        }
    }

    fn buf(&self, r: Region) -> &Vec<u8> {
        match r {
            Region::Head => &self.head,
            Region::Tail => &self.tail,
            Region::Extra(_) => &self.extra,
        }
    }

    fn buf_mut(&mut self, r: Region) -> &mut Vec<u8> {
        match r {
            Region::Head => &mut self.head,
            Region::Tail => &mut self.tail,
            Region::Extra(_) => &mut self.extra,
        }
    }

    /// Record `[off, off+len)` (inside one region) to be written, with
    /// `bytes` (None: zeros, which the buffers already hold).
    fn put(&mut self, d: &Deferred, off: u64, len: u64, bytes: Option<&[u8]>) {
        let (region, i) = d.locate(off);
        if let Some(b) = bytes {
            self.buf_mut(region)[i..i + len as usize].copy_from_slice(b);
        }
        match self.ranges.last_mut() {
            // Never from one region into the next (other buffers, or other
            // places in one), even where the regions touch.
            Some((o, l)) if *o + *l == off && d.locate(*o).0 == region => *l += len,
            _ => self.ranges.push((off, len)),
        }
    }

    /// The bytes of a recorded range.
    fn bytes(&self, d: &Deferred, off: u64, len: u64) -> &[u8] {
        let (region, i) = d.locate(off);
        &self.buf(region)[i..i + len as usize]
    }
}

/// Before the first write: plan the table from the image's head (the held
/// bytes so far and `cur`, the chunk about to be written; zeros elsewhere), which
/// refuses an image whose fix-ups cannot be done, then wipe the target's first
/// and last MiB (old tables) and flush, so nothing written later can be paired
/// with an old table by a volatile write cache.
fn ensure_planned<T: Target>(
    out: &mut Streamed,
    d: &Deferred,
    cur: Option<(u64, &[u8])>,
    m: &Manifest,
    target: &mut T,
    (expand_data, require_boot_fat): (bool, bool),
) -> crate::Result<()> {
    if out.plan.is_some() {
        return Ok(());
    }
    let mut head = out.held.head.clone();
    if let Some((off, b)) = cur {
        let end = (off + b.len() as u64).min(d.head);
        if off < end {
            head[off as usize..end as usize].copy_from_slice(&b[..(end - off) as usize]);
        }
    }
    let plan = commit::plan(
        &head,
        m.image_size,
        target.size(),
        target.sector_size(),
        expand_data,
    )?;
    if require_boot_fat {
        commit::require_fat(&head)?;
    }
    let size = target.size();
    let wipe = HOLD.min(size);
    zero(target, 0, wipe)?;
    zero(target, size - wipe, wipe)?;
    target.sync().map_err(Error::Sync)?;
    // The wipe is read back before anything of the image is written: a
    // medium that drops a write without an error (the fail-closed campaign's
    // first finding: a whole 1 MiB zeroing lost for one bad sector) would
    // otherwise keep the old table over the new data. Both ends are wiped
    // first, so a failure here still leaves no old backup GPT header.
    target.drop_cache();
    let mut buf = AlignedBuf::zeroed(MIB as usize);
    for (off, what) in [
        (0, "the wipe of the target's first MiB"),
        (size - wipe, "the wipe of the target's last MiB"),
    ] {
        check_range(target, off, None, wipe, &mut buf, what)?;
    }
    out.plan = Some(plan);
    Ok(())
}

struct Progress<'a> {
    obs: &'a dyn Observer,
    phase: Phase,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
}

impl<'a> Progress<'a> {
    fn new(obs: &'a dyn Observer, phase: Phase, total: u64) -> Self {
        let now = Instant::now();
        obs.event(&Event::progress(phase, 0, total, 0));
        Progress {
            obs,
            phase,
            total,
            done: 0,
            start: now,
            last: now,
        }
    }
    fn add(&mut self, n: u64) {
        self.done += n;
        let now = Instant::now();
        if now.duration_since(self.last) >= Duration::from_millis(100) || self.done >= self.total {
            self.last = now;
            let secs = now.duration_since(self.start).as_secs_f64();
            let rate = if secs > 0.0 {
                (self.done as f64 / secs) as u64
            } else {
                0
            };
            self.obs
                .event(&Event::progress(self.phase, self.done, self.total, rate));
        }
    }
}

/// Compare granularity of `skip_equal`: a block that differs anywhere is
/// rewritten whole (a multiple of every sector size, so the writes stay aligned).
const SKIP_BLOCK: u64 = 64 << 10;

/// `skip_equal`: read `off..off+len` of the target into `buf` (in pieces of its
/// capacity), compare with `want` (None: zeros), and write or zero only the runs
/// of [`SKIP_BLOCK`]s that differ. Returns the bytes left as they were. Only
/// the engine's own writes follow (never a partial result): a power cut leaves
/// every block either as it was or as the image has it, as a normal write does.
fn write_diff<T: Target>(
    t: &mut T,
    off: u64,
    want: Option<&[u8]>,
    len: u64,
    buf: &mut AlignedBuf,
) -> Result<u64, Error> {
    let mut skipped = 0;
    let mut o = 0u64;
    while o < len {
        let n = (len - o).min(buf.capacity() as u64);
        buf.set_len(n as usize);
        read(t, off + o, &mut buf[..])?;
        // A run of differing blocks starts at `run` and ends at the first
        // equal block (or the piece's end), where it is written.
        let mut run: Option<u64> = None;
        let mut b = 0u64;
        loop {
            let e = (b + SKIP_BLOCK).min(n);
            let differs = b < n && {
                let have = &buf[b as usize..e as usize];
                match want {
                    Some(w) => have != &w[(o + b) as usize..(o + e) as usize],
                    None => !bundle::is_zero(have),
                }
            };
            if differs {
                run.get_or_insert(b);
            } else {
                if let Some(s) = run.take() {
                    match want {
                        Some(w) => write(t, off + o + s, &w[(o + s) as usize..(o + b) as usize])?,
                        None => zero(t, off + o + s, b - s)?,
                    }
                }
                if b >= n {
                    break;
                }
                skipped += e - b;
            }
            b = e;
        }
        o += n;
    }
    Ok(skipped)
}

enum HashMsg {
    Data(Arc<AlignedBuf>),
    Zeros(u64),
}

/// Chunks that may wait for the writer, and decompression workers, so that
/// `(queued + 2)` chunks of decoded plus compressed bytes fit [`IN_FLIGHT`]
/// (at least one queued, so decoding overlaps writing).
fn in_flight(chunk_size: u64, workers: usize) -> (usize, usize) {
    // A compressed chunk is at most about its decoded size (zstd's bound).
    let per_chunk = 2 * chunk_size.max(1);
    let queued = ((IN_FLIGHT / per_chunk).saturating_sub(2) as usize).max(1);
    (queued, workers.clamp(1, queued + 1))
}

/// Read-back hashing threads and pieces in flight: one piece being read, one
/// queued, one per hasher, within [`IN_FLIGHT`] (the streaming buffers are
/// freed by then). `workers` hashers (as many as decompress), at most 4.
fn verify_threads(piece: u64, workers: usize) -> (usize, usize) {
    let most = (IN_FLIGHT / piece.max(1)).max(3) as usize;
    let hashers = workers.clamp(1, 4).min(most - 2);
    (hashers, hashers + 2)
}

/// A chunk-sized buffer, or an error instead of an abort.
fn alloc(len: u64, what: &str) -> Result<AlignedBuf, bundle::Error> {
    usize::try_from(len)
        .ok()
        .and_then(AlignedBuf::try_zeroed)
        .ok_or_else(|| bundle::Error::OutOfMemory {
            what: what.into(),
            bytes: len,
        })
}

fn stream<R: Read, T: Target>(
    m: &Manifest,
    payload: R,
    target: &mut T,
    opts: &WriteOptions,
    obs: &dyn Observer,
) -> crate::Result<Streamed> {
    let (queued, workers) = in_flight(m.chunk_size, opts.workers);
    std::thread::scope(|s| {
        let (job_tx, job_rx) =
            bounded::<(RawChunk, Sender<Result<Decoded, bundle::Error>>)>(workers);
        // Buffers come back for reuse: a fresh chunk-sized buffer costs a page
        // fault per 4 KiB on its first touch, which was a third of the write
        // phase's CPU (docs/benchmarks.md). Decoded buffers return from the
        // hash thread (their last user, unless the writer keeps the chunk),
        // compressed ones from the workers; a full pool drops the buffer.
        let (pool_tx, pool_rx) = bounded::<AlignedBuf>(POOLED);
        let (spare_tx, spare_rx) = bounded::<Vec<u8>>(POOLED);
        // Bounded memory: a chunk lives from the read of its compressed bytes
        // to the end of its write; at most `queued` wait for the writer, one
        // is being written and one read.
        let (ord_tx, ord_rx) = bounded::<Reply>(queued);
        for _ in 0..workers {
            let (job_rx, pool_rx, spare_tx) = (job_rx.clone(), pool_rx.clone(), spare_tx.clone());
            s.spawn(move || {
                for (raw, reply) in job_rx.iter() {
                    let len = raw.chunk.length;
                    let buf = match pool_rx.try_recv() {
                        Ok(mut b) if b.capacity() as u64 >= len => {
                            b.set_len(len as usize);
                            Ok(b)
                        }
                        _ => alloc(len, "a decompressed chunk"),
                    };
                    let r = buf.and_then(|mut buf| {
                        decode_chunk(&raw, &mut buf).map(|()| (raw.index, Arc::new(buf)))
                    });
                    let _ = spare_tx.try_send(raw.compressed);
                    // The writer may have stopped on an error; nothing to do then.
                    let _ = reply.send(r);
                }
            });
        }
        drop(job_rx);
        let (hash_tx, hash_rx) = bounded::<HashMsg>(2);
        let check_digest = opts.image_digest;
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            let zeros = vec![0u8; if check_digest { MIB as usize } else { 0 }];
            for msg in hash_rx.iter() {
                match msg {
                    HashMsg::Data(b) => {
                        if check_digest {
                            h.update(&b[..]);
                        }
                        if let Ok(b) = Arc::try_unwrap(b) {
                            let _ = pool_tx.try_send(b);
                        }
                    }
                    HashMsg::Zeros(_) if !check_digest => {}
                    HashMsg::Zeros(mut n) => {
                        while n > 0 {
                            let k = n.min(MIB) as usize;
                            h.update(&zeros[..k]);
                            n -= k as u64;
                        }
                    }
                }
            }
            hex::encode(h.finalize())
        });
        let flags = (opts.expand_data, opts.require_boot_fat);
        // The read buffer of `skip_equal`: one chunk (and at least one compare
        // block), outside IN_FLIGHT like the read-back pieces (docs/SECURITY.md).
        let skip = if opts.skip_equal {
            Some(alloc(
                m.chunk_size.max(SKIP_BLOCK),
                "a skip-equal read buffer",
            )?)
        } else {
            None
        };
        let writer = s.spawn(move || write_loop(m, ord_rx, hash_tx, target, obs, flags, skip));

        // This thread reads the payload. It stops when the writer hangs up.
        let mut chunks = ChunkReader::new(payload, m);
        while let Some(raw) = {
            if let Ok(v) = spare_rx.try_recv() {
                chunks.give_back(v);
            }
            chunks.next()
        } {
            let (tx, rx) = bounded(1);
            match raw {
                Ok(raw) => {
                    if ord_tx.send(rx).is_err() || job_tx.send((raw, tx)).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    let _ = ord_tx.send(rx);
                    break;
                }
            }
        }
        drop(job_tx);
        drop(ord_tx);
        let streamed = writer
            .join()
            .map_err(|_| Error::Internal("writer thread panicked".into()))??;
        let digest = hasher
            .join()
            .map_err(|_| Error::Internal("hash thread panicked".into()))?;
        if check_digest && digest != m.image_sha256 {
            return Err(bundle::Error::ImageDigest {
                expected: m.image_sha256.clone(),
                actual: digest,
            }
            .into());
        }
        Ok(streamed)
    })
}

fn write_loop<T: Target>(
    m: &Manifest,
    ord_rx: Receiver<Reply>,
    hash_tx: Sender<HashMsg>,
    target: &mut T,
    obs: &dyn Observer,
    flags: (bool, bool),
    mut skip: Option<AlignedBuf>,
) -> crate::Result<Streamed> {
    let hash = |msg| {
        hash_tx
            .send(msg)
            .map_err(|_| Error::Internal("hash thread stopped".into()))
    };
    let next = || -> crate::Result<Decoded> {
        let rx = ord_rx
            .recv()
            .map_err(|_| Error::Internal("payload reader stopped early".into()))?;
        Ok(rx
            .recv()
            .map_err(|_| Error::Internal("decompression worker stopped".into()))??)
    };
    // The head length depends on the first chunk's GPT header, so it is fixed
    // when the first extent is seen, before anything of the image is written.
    let mut d: Option<Deferred> = None;
    // Aligned down so the streamed part ends on a block boundary.
    let tail = m.image_size.saturating_sub(HOLD) / 4096 * 4096;
    let mut out = Streamed {
        checks: Vec::new(),
        kept: Vec::new(),
        held: Held::default(),
        deferred: Deferred::new(0, tail, m),
        plan: None,
        skipped: 0,
        verified_by_compare: 0,
    };
    let total: u64 = m.bytes_of(ExtentKind::Data) + m.bytes_of(ExtentKind::MustBeZero);
    let mut progress = Progress::new(obs, Phase::Writing, total);
    if skip.is_some() {
        // On the buffered fallback the comparison must not see stale pages.
        target.drop_cache();
    }
    let mut ci = 0usize;
    for e in &m.extents {
        match e.kind {
            ExtentKind::DontCare => {
                d.get_or_insert_with(|| Deferred::new(head_len(None, m.image_size), tail, m));
                hash(HashMsg::Zeros(e.length))?;
            }
            ExtentKind::MustBeZero => {
                let dd = d
                    .get_or_insert_with(|| Deferred::new(head_len(None, m.image_size), tail, m))
                    .clone();
                hash(HashMsg::Zeros(e.length))?;
                out.held.init(&dd, m.image_size);
                let (outside, inside) = dd.split(e.offset, e.length);
                if !outside.is_empty() {
                    ensure_planned(&mut out, &dd, None, m, target, flags)?;
                }
                for (off, len) in outside {
                    let mut o = off;
                    while o < off + len {
                        let n = (off + len - o).min(ZERO_PIECE);
                        let same = match skip.as_mut() {
                            Some(b) => write_diff(target, o, None, n, b)?,
                            None => {
                                zero(target, o, n)?;
                                0
                            }
                        };
                        out.skipped += same;
                        if same == n {
                            out.verified_by_compare += n;
                        } else {
                            out.checks.push(Check::Zero(o, n));
                        }
                        progress.add(n);
                        o += n;
                    }
                }
                progress.add(inside.iter().map(|r| r.1).sum());
                for (off, len) in inside {
                    out.held.put(&dd, off, len, None);
                }
            }
            ExtentKind::Data => {
                while ci < m.chunks.len() && m.chunks[ci].offset < e.end() {
                    let c = &m.chunks[ci];
                    let (index, buf) = next()?;
                    if index != ci {
                        return Err(Error::Internal(format!(
                            "chunk {index} arrived in place of chunk {ci}"
                        ))
                        .into());
                    }
                    let dd = d
                        .get_or_insert_with(|| {
                            let first = (c.offset == 0).then_some(&buf[..]);
                            Deferred::new(head_len(first, m.image_size), tail, m)
                        })
                        .clone();
                    out.held.init(&dd, m.image_size);
                    let (outside, inside) = dd.split(c.offset, c.length);
                    if !outside.is_empty() {
                        let cur = Some((c.offset, &buf[..]));
                        ensure_planned(&mut out, &dd, cur, m, target, flags)?;
                    }
                    for &(off, len) in &inside {
                        let a = (off - c.offset) as usize;
                        out.held.put(&dd, off, len, Some(&buf[a..a + len as usize]));
                    }
                    let mut same = 0;
                    for (off, len) in &outside {
                        let a = (off - c.offset) as usize;
                        let data = &buf[a..a + *len as usize];
                        match skip.as_mut() {
                            Some(b) => same += write_diff(target, *off, Some(data), *len, b)?,
                            None => write(target, *off, data)?,
                        }
                    }
                    out.skipped += same;
                    if !inside.is_empty() {
                        // Its streamed part is read back against these bytes.
                        if !outside.is_empty() {
                            out.kept.push((ci, buf.clone()));
                        }
                    } else if same == c.length {
                        out.verified_by_compare += same;
                    } else {
                        out.checks.push(Check::Chunk(ci));
                    }
                    progress.add(c.length);
                    hash(HashMsg::Data(buf))?;
                    ci += 1;
                }
            }
        }
    }
    out.deferred = d.unwrap_or_else(|| Deferred::new(head_len(None, m.image_size), tail, m));
    // An image that lies wholly in the held-back regions wrote nothing yet.
    let dd = out.deferred.clone();
    out.held.init(&dd, m.image_size);
    ensure_planned(&mut out, &dd, None, m, target, flags)?;
    Ok(out)
}

fn verify_streamed<T: Target>(
    m: &Manifest,
    checks: &[Check],
    kept: &[Decoded],
    d: &Deferred,
    t: &mut T,
    obs: &dyn Observer,
    workers: usize,
) -> crate::Result<u64> {
    t.drop_cache();
    let mut total: u64 = 0;
    for c in checks {
        total += match c {
            Check::Chunk(i) => m.chunks[*i].length,
            Check::Zero(_, n) => *n,
        };
    }
    for (i, _) in kept {
        total += d
            .split(m.chunks[*i].offset, m.chunks[*i].length)
            .0
            .iter()
            .map(|r| r.1)
            .sum::<u64>();
    }
    let progress = Progress::new(obs, Phase::Verifying, total);
    let piece = m.chunk_size.max(MIB) as usize;
    let (hashers, pieces) = verify_threads(piece as u64, workers);
    // First pass, pipelined: one thread reads (O_DIRECT) while `hashers`
    // threads hash and compare (the manifest's chunk digest), so the device
    // never waits for the hash.
    // Mismatches are collected and retried one by one afterwards.
    let progress = std::sync::Mutex::new(progress);
    let mut bad = std::thread::scope(|s| -> crate::Result<Vec<usize>> {
        // Both directions carry `(check index, buffer)` (the index is unused on
        // the way back): one channel type is one copy of its code in `/init`.
        let (full_tx, full_rx) = bounded::<(usize, AlignedBuf)>(pieces);
        let (free_tx, free_rx) = bounded::<(usize, AlignedBuf)>(pieces);
        for _ in 0..pieces {
            let _ = free_tx.send((0, alloc(piece as u64, "a read-back buffer")?));
        }
        let tt = &mut *t;
        let reader = s.spawn(move || -> Result<(), Error> {
            for (ci, c) in checks.iter().enumerate() {
                let (off, len) = match *c {
                    Check::Chunk(i) => (m.chunks[i].offset, m.chunks[i].length),
                    Check::Zero(off, len) => (off, len),
                };
                let mut o = 0;
                while o < len {
                    let Ok((_, mut buf)) = free_rx.recv() else {
                        return Ok(());
                    };
                    let n = (len - o).min(piece as u64);
                    buf.set_len(n as usize);
                    read(tt, off + o, &mut buf[..])?;
                    if full_tx.send((ci, buf)).is_err() {
                        return Ok(());
                    }
                    o += n;
                }
            }
            Ok(())
        });
        let workers: Vec<_> = (0..hashers)
            .map(|_| {
                let (full_rx, free_tx, progress) = (full_rx.clone(), free_tx.clone(), &progress);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for (ci, buf) in full_rx.iter() {
                        let good = match checks[ci] {
                            Check::Chunk(i) => m.readback_matches(i, &buf[..]),
                            Check::Zero(..) => bundle::is_zero(&buf[..]),
                        };
                        if !good {
                            bad.push(ci);
                        }
                        progress
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .add(buf.len() as u64);
                        let _ = free_tx.send((0, buf));
                    }
                    bad
                })
            })
            .collect();
        drop((full_rx, free_tx));
        let mut bad = Vec::new();
        for w in workers {
            bad.extend(
                w.join()
                    .map_err(|_| Error::Internal("verify hasher panicked".into()))?,
            );
        }
        reader
            .join()
            .map_err(|_| Error::Internal("verify reader panicked".into()))??;
        Ok(bad)
    })?;
    bad.sort_unstable();
    bad.dedup();
    let mut progress = progress.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut buf = alloc(piece as u64, "a read-back buffer")?;
    for ci in bad {
        match checks[ci] {
            Check::Chunk(i) => {
                let ch = &m.chunks[i];
                tracing::warn!(
                    "chunk {i} (target bytes {}..{}) read back wrong; dropping caches and reading once more",
                    ch.offset,
                    ch.end()
                );
                t.drop_cache();
                buf.set_len(ch.length as usize);
                read(t, ch.offset, &mut buf[..])?;
                if !m.readback_matches(i, &buf[..]) {
                    // The bytes are not kept (streamed), so a rewrite is not possible.
                    return Err(Error::VerifyMismatch {
                        offset: ch.offset,
                        length: ch.length,
                        what: format!("chunk {i}"),
                    }
                    .into());
                }
            }
            Check::Zero(off, len) => {
                check_range(t, off, None, len, &mut buf, "must-be-zero range")?;
            }
        }
    }
    for (i, data) in kept {
        let ch = &m.chunks[*i];
        for (off, len) in d.split(ch.offset, ch.length).0 {
            let a = (off - ch.offset) as usize;
            check_range(
                t,
                off,
                Some(&data[a..a + len as usize]),
                len,
                &mut buf,
                &format!("chunk {i}"),
            )?;
            progress.add(len);
        }
    }
    Ok(total)
}

/// A held-back part: (offset, bytes to write, what). The table sectors in
/// `hold` are zero in it (they are written by the table commit, last).
type Part = (u64, Vec<u8>, String);

/// The held-back parts in write order, and apart from them the held-back
/// signature ranges (the manifest's `hold`, wherever they are: in the head,
/// the tail or between), which are written after all of them. Each list runs
/// from the image's end to its start (the tail first, the head last).
fn deferred_parts(
    s: &Streamed,
    d: &Deferred,
    hold: &[(u64, u64)],
    signatures: &[bundle::HoldRange],
) -> (Vec<Part>, Vec<Part>) {
    let (mut parts, mut sigs) = (Vec::new(), Vec::new());
    for &(off, len) in &s.held.ranges {
        let part = |a: u64, b: u64, what: String| -> Part {
            let start = (a - off) as usize;
            let mut bytes = s.held.bytes(d, off, len)[start..start + (b - a) as usize].to_vec();
            commit::mask(hold, a, &mut bytes);
            (a, bytes, format!("{what}, bytes {a}..{b}"))
        };
        let region = match d.locate(off).0 {
            Region::Head => "held-back head",
            Region::Tail => "held-back tail",
            Region::Extra(_) => "held-back range",
        };
        let (end, mut a) = (off + len, off);
        for r in signatures {
            let (x, y) = (r.offset.max(a), r.end().min(end));
            if x < y {
                if a < x {
                    parts.push(part(a, x, region.into()));
                }
                sigs.push(part(x, y, format!("held-back signature ({})", r.what)));
                a = y;
            }
        }
        if a < end {
            parts.push(part(a, end, region.into()));
        }
    }
    parts.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
    sigs.sort_unstable_by_key(|p| std::cmp::Reverse(p.0));
    (parts, sigs)
}

/// `Read`, `Write` and `Seek` for a test target wrapping a `Plain` in its
/// `inner` field, passed straight through.
#[cfg(test)]
macro_rules! io_through_inner {
    ($t:ty) => {
        impl std::io::Read for $t {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.inner.read(b)
            }
        }
        impl std::io::Write for $t {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.inner.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl std::io::Seek for $t {
            fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
                self.inner.seek(p)
            }
        }
    };
}

#[cfg(test)]
mod skip_tests;
#[cfg(test)]
mod tests;
