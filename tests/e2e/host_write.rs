//! `mkflasher write` on real loop devices (as root; skipped where loop
//! devices cannot be attached): a loop device is refused without
//! `--allow-non-removable` and left untouched, written with it, and several
//! loop devices plus a file are written at once from one read of a
//! compressed image, each validated.

use e2e::{bin, garbage_file, Loop};
use mkflasher::hostwrite::{self, Display, Options};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// Attach a loop device over `file`, or None (with a note) where this
/// machine cannot (not root, no loop driver).
fn try_loop(file: &Path) -> Option<Loop> {
    let ok = Command::new("losetup")
        .arg("-f")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok || !is_root() {
        eprintln!("skipping: loop devices are not available here (needs root and losetup)");
        return None;
    }
    Some(Loop::attach(file, false))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn sha(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A 12 MiB image with data runs and zeros, zstd-compressed; returns
/// (raw image bytes, compressed path).
fn image(dir: &Path) -> (Vec<u8>, PathBuf) {
    let raw = dir.join("raw.img");
    garbage_file(&raw, 12 * MIB);
    let mut v = std::fs::read(&raw).unwrap();
    v[(4 * MIB) as usize..(8 * MIB) as usize].fill(0);
    let p = dir.join("os.img.zst");
    std::fs::write(&p, zstd_compress(&v)).unwrap();
    (v, p)
}

fn zstd_compress(v: &[u8]) -> Vec<u8> {
    let out = Command::new("zstd")
        .args(["-1", "-c", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(v)?;
            c.wait_with_output()
        })
        .expect("zstd (scripts/setup-host installs it)");
    assert!(out.status.success());
    out.stdout
}

fn live_opts(tmp: &Path) -> Options {
    Options {
        yes: true,
        tmp_dir: tmp.to_owned(),
        ..Default::default()
    }
}

#[test]
fn loop_device_refused_without_the_override_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img) = image(dir.path());
    let backing = dir.path().join("disk");
    garbage_file(&backing, 16 * MIB);
    let before = sha(&backing);
    {
        let Some(lo) = try_loop(&backing) else { return };
        let e = hostwrite::write(
            &img,
            std::slice::from_ref(&lo.0),
            &live_opts(dir.path()),
            &Display::Quiet,
        )
        .unwrap_err();
        assert!(
            matches!(e, hostwrite::Error::Virtual { ref what, .. } if what == "loop"),
            "{e:?}"
        );
        assert!(e.to_string().contains("--allow-non-removable"), "{e}");
        // The binary too, even with --yes.
        let out = Command::new(bin("mkflasher"))
            .arg("write")
            .arg(&img)
            .arg(&lo.0)
            .arg("--yes")
            .arg("--tmp-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{out:?}");
    }
    assert_eq!(sha(&backing), before, "the refused loop device was written");
}

#[test]
fn loop_device_written_with_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path());
    let backing = dir.path().join("disk");
    garbage_file(&backing, 16 * MIB);
    let out = {
        let Some(lo) = try_loop(&backing) else { return };
        let mut o = live_opts(dir.path());
        o.allow_non_removable = true;
        hostwrite::write(&img, std::slice::from_ref(&lo.0), &o, &Display::Quiet).unwrap()
    };
    let r = out[0].result.as_ref().unwrap();
    assert!(r.direct_io, "loop devices take O_DIRECT");
    assert_eq!(r.bytes_verified, raw.len() as u64);
    let got = std::fs::read(&backing).unwrap();
    assert!(got[..raw.len()] == raw[..]);
}

#[test]
fn several_loop_devices_and_a_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path());
    let backings: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("card{i}")))
        .collect();
    for b in &backings {
        garbage_file(b, 16 * MIB);
    }
    let file = dir.path().join("card.img");
    let out = {
        let Some(l0) = try_loop(&backings[0]) else {
            return;
        };
        let Some(l1) = try_loop(&backings[1]) else {
            return;
        };
        Command::new(bin("mkflasher"))
            .arg("write")
            .arg(&img)
            .args([&l0.0, &l1.0, &file])
            .args(["--yes", "--allow-non-removable", "--json", "--tmp-dir"])
            .arg(dir.path())
            .output()
            .unwrap()
    };
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for l in &lines {
        assert!(l.contains("\"ok\":true"), "{l}");
        assert!(
            l.contains(&format!("\"bytes_verified\":{}", raw.len())),
            "{l}"
        );
    }
    for p in backings.iter().chain([&file]) {
        let got = std::fs::read(p).unwrap();
        assert!(got[..raw.len()] == raw[..], "{} differs", p.display());
    }
}
