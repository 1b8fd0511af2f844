//! The writer's memory bound (docs/SECURITY.md): `flasher write` stays within
//! 64 MiB of peak RSS for the most demanding bundle it accepts: the largest
//! chunk size, incompressible data (compressed chunks as large as decoded
//! ones), more workers than the bound allows, and the image digest on.
//! Peak RSS is the child's own `VmHWM` (its `--json` report's `peak_rss_kib`):
//! `ru_maxrss` from wait4 would include the test process's memory inherited
//! at fork.

use std::io::Cursor;
use std::process::Command;

use flasher_format::bundle::{BundleWriter, WriterOptions, MAX_CHUNK_SIZE};

const LIMIT_KIB: i64 = 64 * 1024;

/// xorshift: incompressible bytes, reproducible.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn peak_rss_stays_under_64_mib_for_the_largest_accepted_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let chunk = MAX_CHUNK_SIZE as usize;
    let image = noise(96 << 20, 7);
    let opts = WriterOptions {
        chunk_size: chunk as u64,
        level: 1,
        ..WriterOptions::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    w.push_data(&image).unwrap();
    w.push_zero(32 << 20).unwrap();
    w.push_data(&noise(8 << 20, 9)).unwrap();
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
        .args(["write", "--json", "--workers", "16", "--image-digest", "--no-direct"])
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
    let rss_kib = report["peak_rss_kib"].as_i64().expect("peak_rss_kib reported");
    assert!(rss_kib > 1024, "a plausible reading: {rss_kib} KiB");
    eprintln!("peak RSS of flasher write: {rss_kib} KiB (limit {LIMIT_KIB} KiB)");
    assert!(
        rss_kib <= LIMIT_KIB,
        "peak RSS {rss_kib} KiB is over {LIMIT_KIB} KiB"
    );
}
