//! `flasher write --skip-equal` through the binary: a re-flash of the same
//! bundle leaves the equal bytes alone (reported in `bytes_skipped`), still
//! reads every byte back, and a changed target byte is put right.

use flasher_format::bundle::{BundleWriter, WriterOptions};
use std::io::Cursor;
use std::process::Command;

fn write(payload: &std::path::Path, target: &std::path::Path, skip: bool) -> serde_json::Value {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flasher"));
    c.args(["write", "--json", "--no-direct", "--payload"])
        .arg(payload)
        .arg("--target")
        .arg(target);
    if skip {
        c.arg("--skip-equal");
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_reflash_skips_what_is_equal_and_fixes_what_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let image: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8 | 1).collect();
    let mut w = BundleWriter::new(WriterOptions::default(), Cursor::new(Vec::new())).unwrap();
    w.push_data(&image).unwrap();
    let mut bundle = Vec::new();
    w.finish(&mut bundle).unwrap();
    let payload = dir.path().join("b.bundle");
    std::fs::write(&payload, &bundle).unwrap();
    let target = dir.path().join("t.img");
    std::fs::write(&target, vec![0u8; image.len()]).unwrap();

    let first = write(&payload, &target, false);
    assert_eq!(first["bytes_skipped"], 0);
    // Damage one byte in the middle, then re-flash with --skip-equal.
    let mut held = std::fs::read(&target).unwrap();
    held[4 << 20] ^= 0xff;
    std::fs::write(&target, &held).unwrap();
    let again = write(&payload, &target, true);
    assert!(std::fs::read(&target).unwrap() == image);
    // Everything but the held-back first and last MiB and the one damaged
    // 64 KiB block was left as it was.
    assert_eq!(again["bytes_skipped"], (6 << 20) - (64 << 10));
    assert_eq!(again["bytes_verified"], image.len() as u64);
}
