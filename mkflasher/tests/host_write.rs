//! `mkflasher write` on regular-file targets: compressed images onto several
//! targets at once, each validated; a target changed behind the tool's back
//! fails validation (and the exit status) while the others complete; the
//! progress display in a pseudo-terminal and as plain lines.
//! Loop devices: tests/e2e/host_write.rs.

use flasher::pipeline::{self, Plain, WriteOptions};
use flasher::storage::testing::FakeRoot;
use mkflasher::hostwrite::{self, Display, Options, TamperFault};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;
const SIZE: usize = 8 * MIB;
/// Inside the second data run (6..7 MiB), which is streamed, not held back.
const TAMPER_AT: u64 = 6 * MIB as u64 + 4321;

/// 8 MiB: 3 MiB of data, zeros, 1 MiB of data at 6 MiB, zeros.
fn image() -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    let mut v = vec![0u8; SIZE];
    for r in [0..3 * MIB, 6 * MIB..7 * MIB] {
        for b in &mut v[r] {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
    }
    v
}

fn compressed(dir: &Path, kind: &str, data: &[u8]) -> PathBuf {
    // Names that do not tell the compression: detection is by content.
    let p = dir.join(format!("os-{kind}.img"));
    let bytes = match kind {
        "gz" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "xz" => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zst" => zstd::encode_all(data, 1).unwrap(),
        "raw" => data.to_vec(),
        _ => unreachable!("test kinds"),
    };
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Options over an empty fake root (files only, nothing mounted).
fn opts(root: &Path, tmp: &Path) -> Options {
    FakeRoot::new(root).unwrap();
    Options {
        root: root.to_owned(),
        tmp_dir: tmp.to_owned(),
        ..Default::default()
    }
}

#[test]
fn compressed_images_to_two_file_targets_both_validated() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    for kind in ["gz", "xz", "zst"] {
        let input = compressed(dir.path(), kind, &img);
        let a = dir.path().join(format!("{kind}-a"));
        let b = dir.path().join(format!("{kind}-b"));
        // `a` does not exist yet; `b` is larger and full of old bytes.
        std::fs::write(&b, vec![0x5a; SIZE + MIB]).unwrap();
        let o = opts(&dir.path().join("root"), dir.path());
        let out = hostwrite::write(&input, &[a.clone(), b.clone()], &o, &Display::Quiet).unwrap();
        assert_eq!(out.len(), 2);
        for (o, path) in out.iter().zip([&a, &b]) {
            let r = o.result.as_ref().unwrap();
            assert_eq!(r.image_size, SIZE as u64);
            assert_eq!(
                r.bytes_verified, SIZE as u64,
                "{kind}: every byte read back"
            );
            let got = std::fs::read(path).unwrap();
            assert!(got[..SIZE] == img[..], "{kind}: {} differs", path.display());
        }
        hostwrite::failures(&out).unwrap();
        // The temporary bundle is gone.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("mkflasher-write")
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn a_bundle_is_written_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let raw = compressed(dir.path(), "raw", &img);
    let bundle = dir.path().join("os.bundle");
    mkflasher::source::bundle_image(&raw, &bundle, &Default::default()).unwrap();
    let a = dir.path().join("a");
    let o = opts(&dir.path().join("root"), &dir.path().join("no-such-dir"));
    // The tmp dir does not exist: a bundle needs no spool.
    let out = hostwrite::write(&bundle, std::slice::from_ref(&a), &o, &Display::Quiet).unwrap();
    out[0].result.as_ref().unwrap();
    assert!(std::fs::read(&a).unwrap() == img);
}

#[test]
fn a_target_changed_behind_our_back_fails_validation_and_the_other_completes() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let input = compressed(dir.path(), "zst", &img);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut o = opts(&dir.path().join("root"), dir.path());
    o.tamper = Some(TamperFault {
        target: 1,
        offset: TAMPER_AT,
    });
    let out = hostwrite::write(&input, &[a.clone(), b.clone()], &o, &Display::Quiet).unwrap();
    out[0].result.as_ref().unwrap();
    assert!(std::fs::read(&a).unwrap() == img);
    match &out[1].result {
        Err(flasher::Error::Pipeline(pipeline::Error::VerifyMismatch {
            offset, length, ..
        })) => {
            assert!((*offset..offset + length).contains(&TAMPER_AT))
        }
        other => panic!("expected a verify mismatch, got {other:?}"),
    }
    match hostwrite::failures(&out) {
        Err(hostwrite::Error::Failed { failed, total, .. }) => assert_eq!((failed, total), (1, 2)),
        other => panic!("{other:?}"),
    }
    let table = hostwrite::table(&out);
    assert!(table.contains("FAILED: verify failed"), "{table}");
}

#[test]
fn the_binary_exits_non_zero_and_prints_one_json_object_per_target() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let input = compressed(dir.path(), "zst", &img);
    let root = dir.path().join("root");
    FakeRoot::new(&root).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mkflasher"))
        .arg("write")
        .arg(&input)
        .args([dir.path().join("a"), dir.path().join("b")])
        .arg("--json")
        .arg("--root")
        .arg(&root)
        .arg("--tmp-dir")
        .arg(dir.path())
        .arg("--fault-tamper")
        .arg(format!("1:{TAMPER_AT}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert_eq!(lines[0]["ok"], true);
    assert_eq!(lines[0]["report"]["bytes_verified"], SIZE as u64);
    assert_eq!(lines[1]["ok"], false);
    assert_eq!(
        lines[1]["error_class"],
        u8::from(flasher_format::ErrorClass::VerifyMismatch)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 of 2 targets failed"), "{stderr}");
    // Not a terminal: plain lines, no escape sequences.
    assert!(stderr.contains("a: writing 100%"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "{stderr}");
}

/// A bundle of [`image`] in memory, opened: (opened, chunk stream).
fn bundle_in_memory(img: &[u8]) -> (flasher_format::bundle::Opened, Cursor<Vec<u8>>) {
    let mut bundle = Vec::new();
    let mut w =
        flasher_format::bundle::BundleWriter::new(Default::default(), Cursor::new(Vec::new()))
            .unwrap();
    w.push_data(img).unwrap();
    w.finish(&mut bundle).unwrap();
    let mut r = Cursor::new(bundle);
    let opened = flasher_format::bundle::read_manifest(&mut r).unwrap();
    (opened, r)
}

#[test]
fn a_failing_target_does_not_stop_the_others() {
    let img = image();
    let (opened, r) = bundle_in_memory(&img);
    let targets = vec![
        (
            PathBuf::from("good1"),
            Plain::new(Cursor::new(vec![0u8; SIZE])).unwrap(),
        ),
        // Too small: refused at once, its thread hangs up.
        (
            PathBuf::from("small"),
            Plain::new(Cursor::new(vec![0u8; MIB])).unwrap(),
        ),
        (
            PathBuf::from("good2"),
            Plain::new(Cursor::new(vec![7u8; SIZE])).unwrap(),
        ),
    ];
    use flasher::progress::Null;
    let observers = [Null, Null, Null];
    let out = hostwrite::fan_out(&opened, r, targets, &WriteOptions::default(), &observers);
    assert!(out[0].0.is_ok() && out[2].0.is_ok(), "{out:?}");
    assert!(matches!(
        out[1].0,
        Err(flasher::Error::Pipeline(
            pipeline::Error::TargetTooSmall { .. }
        ))
    ));
}

/// A memory target whose first write waits until `gate` closes: a card
/// that stalls.
struct Stalled {
    inner: Cursor<Vec<u8>>,
    gate: Option<crossbeam_channel::Receiver<()>>,
}

impl std::io::Read for Stalled {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}
impl std::io::Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(g) = self.gate.take() {
            let _ = g.recv();
        }
        self.inner.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl std::io::Seek for Stalled {
    fn seek(&mut self, pos: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// Signals when its target reaches the finishing phase (written and verified).
struct Finished(crossbeam_channel::Sender<()>);
impl flasher::progress::Observer for Finished {
    fn event(&self, e: &flasher::progress::Event) {
        if e.phase == flasher_format::Phase::Finishing {
            let _ = self.0.send(());
        }
    }
}

#[test]
fn a_stalled_target_does_not_hold_the_others_back_within_its_buffer() {
    // 40 MiB of incompressible data: more than the stalled target's pipeline
    // holds by itself, less than that plus its 32 MiB fan-out buffer.
    const LEN: usize = 40 * MIB;
    let mut img = vec![0u8; LEN];
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for c in img.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let (opened, r) = bundle_in_memory(&img);
    let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
    let (done_tx, done_rx) = crossbeam_channel::unbounded();
    let target = |gate| {
        Plain::new(Stalled {
            inner: Cursor::new(vec![0u8; LEN]),
            gate,
        })
        .unwrap()
    };
    let targets = vec![
        (PathBuf::from("fast1"), target(None)),
        (PathBuf::from("stalled"), target(Some(gate_rx))),
        (PathBuf::from("fast2"), target(None)),
    ];
    let observers = [
        Finished(done_tx.clone()),
        Finished(crossbeam_channel::unbounded().0),
        Finished(done_tx),
    ];
    let opts = WriteOptions::default();
    std::thread::scope(|s| {
        let run = s.spawn(|| hostwrite::fan_out(&opened, r, targets, &opts, &observers));
        let wait = std::time::Duration::from_secs(60);
        let fast_done = (0..2).all(|_| done_rx.recv_timeout(wait).is_ok());
        // Let the stalled card go on either way, so the run ends.
        drop(gate_tx);
        let out = run.join().unwrap();
        assert!(
            fast_done,
            "the fast targets did not finish while the other stalled"
        );
        for (r, _) in &out {
            r.as_ref().unwrap();
        }
    });
}

#[test]
fn progress_bars_render_in_a_pseudo_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let input = compressed(dir.path(), "gz", &img);
    let root = dir.path().join("root");
    FakeRoot::new(&root).unwrap();
    let cmd = format!(
        "stty cols 140 rows 40; exec {} write {} {} {} --root {} --tmp-dir {}",
        env!("CARGO_BIN_EXE_mkflasher"),
        input.display(),
        dir.path().join("card-one").display(),
        dir.path().join("card-two").display(),
        root.display(),
        dir.path().display()
    );
    // `script` runs the command on a new pseudo-terminal and copies what it
    // shows to stdout.
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (bsdutils) runs");
    assert!(out.status.success(), "{out:?}");
    let screen = String::from_utf8_lossy(&out.stdout);
    // Cursor movement: a live multi-line display, not plain lines.
    assert!(screen.contains("\x1b["), "{screen}");
    for label in ["card-one", "card-two"] {
        let finished = screen
            .split(['\r', '\n'])
            .map(|l| l.rsplit("\x1b[1A").next().unwrap_or(l))
            .any(|l| {
                l.contains(label)
                    && l.contains(" done ")
                    && l.contains("[==============================]")
                    && l.contains("MiB/s")
                    && l.contains("eta")
            });
        assert!(finished, "no finished bar for {label}:\n{screen}");
        assert!(
            screen.contains(&format!("{label:<12} writing")),
            "no writing phase for {label}"
        );
        assert!(
            screen.contains(&format!("{label:<12} verifying")),
            "no verifying phase for {label}"
        );
    }
    assert!(!screen.contains(": writing 100%"), "plain lines on a tty");
}

#[test]
fn the_image_itself_and_a_repeated_target_are_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = image();
    let input = compressed(dir.path(), "raw", &img);
    let a = dir.path().join("a");
    std::fs::write(&a, b"old").unwrap();
    let o = opts(&dir.path().join("root"), dir.path());
    let e = hostwrite::write(&input, &[a.clone(), input.clone()], &o, &Display::Quiet).unwrap_err();
    assert!(matches!(e, hostwrite::Error::HoldsInput { .. }), "{e:?}");
    // The same file by another name.
    let again = dir.path().join(".").join("a");
    let e = hostwrite::write(&input, &[a.clone(), again], &o, &Display::Quiet).unwrap_err();
    assert!(matches!(e, hostwrite::Error::Duplicate { .. }), "{e:?}");
    assert_eq!(std::fs::read(&a).unwrap(), b"old");
    assert!(std::fs::read(&input).unwrap() == img);
}

// ---------------------------------------------------------------------------
// Each target is re-identified right before it is opened (issue 22, finding
// 6): a drive that changed since it was shown (another card in the same slot
// gets the same name) is refused and nothing is written. docs/host-safety.md.

/// A fake root with a USB stick `sdb` (diskseq 12, model "SD Card") whose
/// `/dev/sdb` stand-in (a regular file) holds old bytes. Returns the target
/// as `mkflasher write` checked it, and the stand-in's bytes.
fn shown_stick(root: &Path) -> (hostwrite::Checked, Vec<u8>) {
    let mut r = FakeRoot::new(root).unwrap();
    let sdb = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sdb", 16 * MIB as u64)
        .unwrap();
    std::fs::write(sdb.dir.join("diskseq"), "12\n").unwrap();
    std::fs::write(sdb.dir.join("device/model"), "SD Card\n").unwrap();
    let old: Vec<u8> = (0..16 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(root.join("dev/sdb"), &old).unwrap();
    let all = mkflasher::drives::survey(root, &Default::default()).unwrap();
    let drive = all.into_iter().find(|d| d.name == "sdb").unwrap();
    assert_eq!(drive.identity.diskseq, Some(12));
    let checked = hostwrite::Checked {
        path: root.join("dev/sdb"),
        drive: Some(drive),
    };
    (checked, old)
}

fn write_opts(root: &Path) -> WriteOptions {
    WriteOptions {
        root: root.to_owned(),
        ..Default::default()
    }
}

#[test]
fn an_unchanged_target_passes_the_identity_check() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = shown_stick(dir.path());
    hostwrite::reidentify(dir.path(), &t).unwrap();
}

#[test]
fn a_target_changed_since_it_was_shown_is_refused_before_the_open_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (t, old) = shown_stick(root);
    // Another card in the same slot: same name and number, new diskseq,
    // another model and size.
    let sys = std::fs::canonicalize(root.join("sys/block/sdb")).unwrap();
    std::fs::write(sys.join("diskseq"), "14\n").unwrap();
    std::fs::write(sys.join("device/model"), "Flash Disk\n").unwrap();
    std::fs::write(sys.join("size"), "62333952\n").unwrap();
    let Err(e) = hostwrite::open_checked(root, &t, &write_opts(root)) else {
        panic!("opened")
    };
    match &e {
        hostwrite::Error::TargetChanged { name, changes, .. } => {
            assert_eq!(name, "sdb");
            let got: Vec<(&str, &str, &str)> = changes
                .iter()
                .map(|c| (c.what, c.before.as_str(), c.after.as_str()))
                .collect();
            assert_eq!(
                got,
                [
                    ("diskseq", "12", "14"),
                    ("size", "16.8 MB", "31.9 GB"),
                    ("model", "'SD Card'", "'Flash Disk'"),
                ]
            );
        }
        other => panic!("expected TargetChanged, got {other:?}"),
    }
    assert!(e.to_string().contains("nothing was written"), "{e}");
    assert!(
        std::fs::read(&t.path).unwrap() == old,
        "the target was written"
    );
}

#[test]
fn a_target_gone_since_it_was_shown_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (t, old) = shown_stick(root);
    std::fs::remove_file(root.join("sys/block/sdb")).unwrap();
    let Err(e) = hostwrite::open_checked(root, &t, &write_opts(root)) else {
        panic!("opened")
    };
    assert!(
        matches!(&e, hostwrite::Error::TargetGone { name, .. } if name == "sdb"),
        "{e:?}"
    );
    assert!(std::fs::read(&t.path).unwrap() == old);
}

#[test]
fn a_target_node_replaced_between_the_check_and_the_open_is_refused_and_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // sysfs still shows the same drive, but what opens at the path is not
    // block device 8:0 (here a regular file: a node swapped behind our back).
    let (t, old) = shown_stick(root);
    let Err(e) = hostwrite::open_checked(root, &t, &write_opts(root)) else {
        panic!("opened")
    };
    match &e {
        hostwrite::Error::TargetSwapped {
            name,
            expected,
            found,
            ..
        } => {
            assert_eq!(name, "sdb");
            assert_eq!(expected.to_string(), "8:0");
            assert_eq!(*found, None);
        }
        other => panic!("expected TargetSwapped, got {other:?}"),
    }
    assert!(
        std::fs::read(&t.path).unwrap() == old,
        "the target was written"
    );
}
