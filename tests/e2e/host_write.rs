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
    std::fs::write(&raw, &v).unwrap();
    let p = dir.join("os.img.zst");
    e2e::run(
        Command::new("zstd")
            .args(["-1", "-q", "-f"])
            .arg(&raw)
            .arg("-o")
            .arg(&p),
    );
    (v, p)
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

#[test]
fn a_mounted_loop_device_is_unmounted_then_written() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path());
    let backing = dir.path().join("disk");
    garbage_file(&backing, 16 * MIB);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = {
        let Some(lo) = try_loop(&backing) else { return };
        e2e::run(Command::new("mkfs.ext4").arg("-q").arg(&lo.0));
        let mounted = Command::new("mount")
            .arg(&lo.0)
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipping: cannot mount ext4 here");
            return;
        }
        let mut o = live_opts(dir.path());
        o.allow_non_removable = true;
        let r = hostwrite::write(&img, std::slice::from_ref(&lo.0), &o, &Display::Quiet);
        // Whatever happened, leave nothing mounted.
        let still = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*mnt.to_string_lossy());
        if still {
            let _ = Command::new("umount").arg(&mnt).status();
        }
        assert!(!still, "the target's filesystem is still mounted");
        r.unwrap()
    };
    out[0].result.as_ref().unwrap();
    let got = std::fs::read(&backing).unwrap();
    assert!(got[..raw.len()] == raw[..]);
}

#[test]
fn a_partition_is_refused_naming_the_whole_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (_, img) = image(dir.path());
    let disk = e2e::build_gpt_image(dir.path(), 48 * MIB);
    let before = sha(&disk.path);
    let Some(lo) = try_loop(&disk.path) else {
        return;
    };
    // Let the kernel see the partitions (losetup -P on an attached device).
    e2e::run(Command::new("partx").arg("-a").arg(&lo.0));
    let part = PathBuf::from(format!("{}p1", lo.0.display()));
    for _ in 0..50 {
        if part.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut o = live_opts(dir.path());
    o.allow_non_removable = true;
    let e = hostwrite::write(&img, std::slice::from_ref(&part), &o, &Display::Quiet).unwrap_err();
    assert!(
        matches!(&e, hostwrite::Error::Partition { disk, .. } if disk == &lo.0),
        "{e:?}"
    );
    let _ = Command::new("partx").arg("-d").arg(&lo.0).status();
    drop(lo);
    assert_eq!(sha(&disk.path), before);
}

/// Run `mkflasher write` on a pseudo-terminal, answering `answer`.
fn interactive(img: &Path, target: &Path, answer: &str) -> (bool, String) {
    let cmd = format!(
        "{} write {} {} --allow-non-removable",
        bin("mkflasher").display(),
        img.display(),
        target.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (bsdutils) runs");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn confirmation_shows_the_drive_and_only_yes_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (raw, img) = image(dir.path());
    let backing = dir.path().join("disk");
    garbage_file(&backing, 16 * MIB);
    let before = sha(&backing);
    let Some(lo) = try_loop(&backing) else { return };
    let (ok, screen) = interactive(&img, &lo.0, "no");
    assert!(!ok, "{screen}");
    assert!(screen.contains("Type yes to go on"), "{screen}");
    assert!(
        screen.contains(&format!(
            "{}: loop, {}, 16.8 MB",
            lo.0.display(),
            backing.display()
        )),
        "{screen}"
    );
    assert!(
        screen.contains("not confirmed; nothing was written"),
        "{screen}"
    );
    assert_eq!(sha(&backing), before, "written after a no");
    let (ok, screen) = interactive(&img, &lo.0, "yes");
    assert!(ok, "{screen}");
    drop(lo);
    let got = std::fs::read(&backing).unwrap();
    assert!(got[..raw.len()] == raw[..]);
}

/// A loop device detached and attached to another file between the drive
/// list and the open (the same `/dev/loopN`, a new `diskseq`) is refused
/// before anything is written; both files stay as they were.
#[test]
fn a_loop_device_reattached_after_it_was_shown_is_refused_untouched() {
    use mkflasher::drives;
    let dir = tempfile::tempdir().unwrap();
    let (_, img) = image(dir.path());
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    garbage_file(&a, 16 * MIB);
    garbage_file(&b, 16 * MIB);
    let (sa, sb) = (sha(&a), sha(&b));
    {
        let Some(lo) = try_loop(&a) else { return };
        let root = Path::new("/");
        let ctx = drives::Context::for_image(&img).unwrap();
        let shown = drives::survey(root, &ctx).unwrap();
        let checked =
            hostwrite::check_targets(&img, std::slice::from_ref(&lo.0), &shown, root, true)
                .unwrap();
        // Unplug one card, plug another: the same node, another medium.
        e2e::run(Command::new("losetup").arg("-d").arg(&lo.0));
        e2e::run(Command::new("losetup").arg(&lo.0).arg(&b));
        let Err(e) = hostwrite::open_checked(root, &checked[0], &Default::default()) else {
            panic!("the re-attached loop device was opened for writing");
        };
        assert!(
            matches!(
                e,
                hostwrite::Error::TargetChanged { .. } | hostwrite::Error::TargetSwapped { .. }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("nothing was written"), "{e}");
    }
    assert_eq!(sha(&a), sa, "the first file was written");
    assert_eq!(sha(&b), sb, "the second file was written");
}
