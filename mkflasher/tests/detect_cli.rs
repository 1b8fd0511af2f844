//! `flasher detect` and `flasher boards` as a user runs them: the real binary on
//! generated kernel-shaped roots, checking the JSON and the exit status.

use flasher::storage::testing::scenarios;
use std::process::Command;

fn detect(root: &std::path::Path, extra: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_flasher"))
        .args(["detect", "--json", "--root"])
        .arg(root)
        .args(extra)
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), json)
}

#[test]
fn detect_picks_the_emmc_and_exits_zero() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), Some(0)).unwrap();
    let (ok, j) = detect(t.path(), &[]);
    assert!(ok, "{j}");
    assert_eq!(j["board"], "beaglebone-black");
    assert_eq!(j["target"]["name"], "mmcblk0");
}

#[test]
fn detect_refuses_with_non_zero_exit() {
    let t = tempfile::tempdir().unwrap();
    scenarios::beaglebone(t.path(), None).unwrap();
    let (ok, j) = detect(t.path(), &[]);
    assert!(!ok);
    assert_eq!(j["board"], "beaglebone-black");
    assert!(j["target"].is_null());
    assert!(j["error"]["message"]
        .as_str()
        .unwrap()
        .contains("mmcblk0: SD 15.9 GB on 48060000.mmc (boot medium)"));

    let t = tempfile::tempdir().unwrap();
    scenarios::nuc(t.path(), 2, false).unwrap();
    let (ok, j) = detect(t.path(), &[]);
    assert!(!ok);
    assert_eq!(j["board"], "intel-nuc");
}

#[test]
fn detect_on_the_qemu_boards() {
    let t = tempfile::tempdir().unwrap();
    scenarios::qemu_sd(t.path(), true).unwrap();
    let (ok, j) = detect(t.path(), &[]);
    assert!(ok, "{j}");
    assert_eq!(j["target"]["name"], "mmcblk1");
    let (ok, j) = detect(t.path(), &["--boot-disk", "mmcblk1"]);
    assert!(!ok, "{j}");

    let t = tempfile::tempdir().unwrap();
    scenarios::qemu_nuc(t.path()).unwrap();
    let (ok, j) = detect(t.path(), &["--board", "qemu-x86_64-nuc"]);
    assert!(ok, "{j}");
    assert_eq!(j["target"]["name"], "nvme0n1");
}

#[test]
fn boards_lists_with_status() {
    let out = Command::new(env!("CARGO_BIN_EXE_flasher"))
        .arg("boards")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text
        .lines()
        .any(|l| l.starts_with("beaglebone-black ") && l.contains("experimental")));
}
