//! `cargo bench -p flasher-format --bench digests`: the per-core speed of the
//! work a verified write does per byte (docs/benchmarks.md, "Cheaper digests
//! for slow-CPU boards"): SHA-256 (version 1 chunk digest), BLAKE3 (version 2
//! chunk digest), XXH3-128 (the read-back digest) over one 4 MiB chunk, and
//! zstd decoding of that chunk. The chunk is real binaries from /usr (random
//! bytes where there are none). A measurement, not a test: it prints MiB/s,
//! the best of three rounds, and checks nothing. Run it on the board's CPU
//! to choose for the board.

use flasher_format::bundle::{xxh3_hex, ChunkDigest};
use std::hint::black_box;
use std::time::Instant;

const CHUNK: usize = 4 << 20;
const ITERS: usize = 32;

/// Up to one chunk of the files under /usr/lib, then pseudo-random bytes.
fn chunk() -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK);
    let mut dirs = vec![std::path::PathBuf::from("/usr/lib")];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(t) if t.is_file() && out.len() < CHUNK => {
                    if let Ok(b) = std::fs::read(&p) {
                        out.extend_from_slice(&b[..b.len().min(CHUNK - out.len())]);
                    }
                }
                _ => {}
            }
        }
        if out.len() >= CHUNK {
            break;
        }
    }
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    while out.len() < CHUNK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(x as u8);
    }
    out
}

/// MiB/s of `f` over `bytes` per call, the best of three rounds.
fn speed(name: &str, bytes: usize, mut f: impl FnMut()) {
    let best = (0..3)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..ITERS {
                f();
            }
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    let mib_s = (bytes * ITERS) as f64 / (1 << 20) as f64 / best;
    println!("{name:<24} {mib_s:>9.0} MiB/s");
}

fn main() {
    let data = chunk();
    println!(
        "one 4 MiB chunk, {ITERS} passes per round, best of 3 ({} {})",
        std::env::consts::ARCH,
        if cfg!(debug_assertions) {
            "debug build: not representative"
        } else {
            "release build"
        }
    );
    speed("SHA-256 (version 1)", CHUNK, || {
        black_box(ChunkDigest::Sha256.digest(black_box(&data)));
    });
    speed("BLAKE3 (version 2)", CHUNK, || {
        black_box(ChunkDigest::Blake3.digest(black_box(&data)));
    });
    speed("XXH3-128 (read-back)", CHUNK, || {
        black_box(xxh3_hex(black_box(&data)));
    });
    let frame = zstd::bulk::compress(&data, 3).unwrap_or_default();
    let mut out = vec![0u8; CHUNK];
    speed("zstd -3 decode", CHUNK, || {
        let n = zstd::bulk::decompress_to_buffer(black_box(&frame), &mut out).unwrap_or(0);
        black_box(n);
    });
}
