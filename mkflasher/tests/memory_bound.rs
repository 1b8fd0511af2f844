//! The writer's memory bound (docs/SECURITY.md): `flasher write` stays within
//! 64 MiB of peak RSS for the most demanding bundle it accepts: the largest
//! chunk size, incompressible data (compressed chunks as large as decoded
//! ones), more workers than the bound allows, and the image digest on.
//! Two measurements: the `flasher` binary's own peak RSS (`VmHWM`, its
//! `--json` report's `peak_rss_kib`; `ru_maxrss` from wait4 would include this
//! process's memory inherited at fork), and, with a slow target so that every
//! queue fills, the engine's peak live heap counted by this test binary's
//! allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use flasher::pipeline::{self, Plain, Target, WriteOptions};
use flasher_format::bundle::{BundleWriter, WriterOptions, MAX_CHUNK_SIZE};

/// One test at a time: the counters are the whole process's, and the other
/// tests build large bundles in this process (the heap test read their
/// allocations as the engine's when they overlapped: 60 MiB under CI load).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts live heap bytes and their peak.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), SeqCst) + l.size(), SeqCst);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            PEAK.fetch_max(LIVE.fetch_add(l.size(), SeqCst) + l.size(), SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), SeqCst);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const LIMIT_KIB: i64 = 64 * 1024;

/// A target that takes 150 ms per write, so the reader and the workers run
/// ahead of the writer and every queue fills to its bound.
struct Slow(Plain<Cursor<Vec<u8>>>);

impl Read for Slow {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}
impl Write for Slow {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl Seek for Slow {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.0.seek(p)
    }
}
impl Target for Slow {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(150));
        self.0.write_at(offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.zero_range(offset, len)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.0.sync()
    }
}

/// The engine's own heap while writing, beyond the bundle and the target
/// (both held by the test), stays within 48 MiB: the 64 MiB bound less room
/// for the manifest, the binary and the thread stacks.
#[test]
fn engine_heap_is_bounded_when_the_target_is_slow() {
    let _one = serial();
    let mut w = BundleWriter::new(
        WriterOptions {
            chunk_size: MAX_CHUNK_SIZE,
            level: 1,
            ..WriterOptions::default()
        },
        Cursor::new(Vec::new()),
    )
    .unwrap();
    w.push_data(&flasher_format::testing::noise(200 << 20, 3))
        .unwrap();
    let mut bundle = Vec::new();
    let m = w.finish(&mut bundle).unwrap();
    let mut target = Slow(Plain::new(Cursor::new(vec![0u8; m.image_size as usize])).unwrap());
    // skip_equal adds its read buffer while streaming; the target holds
    // zeros, so every chunk is read, compared and written.
    let opts = WriteOptions {
        workers: 16,
        image_digest: true,
        skip_equal: true,
        ..WriteOptions::default()
    };
    let base = LIVE.load(SeqCst);
    PEAK.store(base, SeqCst);
    pipeline::write_to(
        Cursor::new(&bundle),
        &mut target,
        &opts,
        &flasher::progress::Null,
    )
    .unwrap();
    let peak = (PEAK.load(SeqCst) - base) >> 20;
    eprintln!("engine peak heap with a slow target: {peak} MiB");
    assert!(peak <= 48, "engine peak heap {peak} MiB is over 48 MiB");
}

/// `flasher write --json` of `payload` onto a fresh target of `size` bytes:
/// its peak RSS in KiB, after checking the write succeeded.
fn flasher_write_peak_rss(dir: &std::path::Path, payload: &[u8], size: u64) -> i64 {
    let bundle = dir.join("payload.bundle");
    std::fs::write(&bundle, payload).unwrap();
    let target = dir.join("target.img");
    std::fs::File::create(&target)
        .unwrap()
        .set_len(size)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flasher"))
        .args(["write", "--json", "--no-direct"])
        .arg("--payload")
        .arg(&bundle)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flasher write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["peak_rss_kib"]
        .as_i64()
        .expect("peak_rss_kib reported")
}

/// Issue 22, finding 4: every chunk touching the held-back head or tail was
/// kept whole to the end, each in its own page-rounded buffer, so a bundle
/// of thousands of tiny chunks in the first MiB (a manifest well within its
/// 4 MiB bound) needed far more than 64 MiB. Now only the held-back bytes
/// are kept (at most the head and the tail) and the chunks that straddle
/// their edges.
#[test]
fn tiny_chunks_in_the_held_back_regions_stay_within_64_mib() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::new(
        WriterOptions {
            level: 1,
            ..WriterOptions::default()
        },
        Cursor::new(Vec::new()),
    )
    .unwrap();
    // One data byte, then 51 zero bytes, over and over: a chunk (and two
    // extents) per byte, as many as the 4 MiB manifest bound allows.
    let n = 10_800;
    for i in 0..n {
        w.push_data(&[(i % 251) as u8 + 1]).unwrap();
        w.push_zero(51).unwrap();
    }
    w.push_zero(8 << 20).unwrap();
    let mut bundle = Vec::new();
    let m = w.finish(&mut bundle).unwrap();
    assert_eq!(m.chunks.len(), n);
    let rss_kib = flasher_write_peak_rss(dir.path(), &bundle, m.image_size);
    eprintln!(
        "peak RSS with {} chunks in the held-back head: {rss_kib} KiB (limit {LIMIT_KIB} KiB)",
        m.chunks.len()
    );
    assert!(
        rss_kib <= LIMIT_KIB,
        "peak RSS {rss_kib} KiB is over {LIMIT_KIB} KiB"
    );
}

#[test]
fn peak_rss_stays_under_64_mib_for_the_largest_accepted_chunks() {
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let chunk = MAX_CHUNK_SIZE as usize;
    let image = flasher_format::testing::noise(96 << 20, 7);
    let opts = WriterOptions {
        chunk_size: chunk as u64,
        level: 1,
        ..WriterOptions::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    w.push_data(&image).unwrap();
    w.push_zero(32 << 20).unwrap();
    w.push_data(&flasher_format::testing::noise(8 << 20, 9))
        .unwrap();
    let mut bundle = Vec::new();
    let m = w.finish(&mut bundle).unwrap();
    assert!(
        m.data_len() > 100 << 20,
        "the chunks are incompressible ({} bytes)",
        m.data_len()
    );
    let payload = dir.path().join("noise.bundle");
    std::fs::write(&payload, &bundle).unwrap();
    drop((bundle, image));
    let target = dir.path().join("target.img");
    std::fs::write(&target, b"").unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&target)
        .unwrap()
        .set_len(m.image_size)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flasher"))
        .args([
            "write",
            "--json",
            "--workers",
            "16",
            "--image-digest",
            "--no-direct",
        ])
        .arg("--payload")
        .arg(&payload)
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flasher write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rss_kib = report["peak_rss_kib"]
        .as_i64()
        .expect("peak_rss_kib reported");
    assert!(rss_kib > 1024, "a plausible reading: {rss_kib} KiB");
    eprintln!("peak RSS of flasher write: {rss_kib} KiB (limit {LIMIT_KIB} KiB)");
    assert!(
        rss_kib <= LIMIT_KIB,
        "peak RSS {rss_kib} KiB is over {LIMIT_KIB} KiB"
    );
}
