//! Shared set-up for the QEMU scenarios: the demo OS image, its bundle and the
//! flasher cards, and the i.MX6 twin's smaller image and card, built once per
//! test binary with the real `mkflasher`; and a
//! lock so VMs run one at a time (2 shared cores, software emulation).
#![allow(dead_code)]

pub use flasher_format::event::{Event, SCHEMA_VERSION};
pub use flasher_format::{ErrorClass, Phase};
use flasher_qemu::{self as qemu, QemuOptions, QemuOutcome, VirtualBoard};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// Generous: a TCG boot through OVMF takes ~40 s, a flash of ~26 MiB well under a minute.
pub const TIMEOUT: Duration = Duration::from_secs(420);

/// One VM at a time per test binary.
pub fn vm_lock() -> MutexGuard<'static, ()> {
    static L: Mutex<()> = Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// The workspace's `mkflasher` (built by `cargo test --workspace --all-targets`).
pub fn mkflasher_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> → target/<profile>/mkflasher
    let bin = exe.parent().unwrap().parent().unwrap().join("mkflasher");
    assert!(
        bin.is_file(),
        "{} missing: run `cargo build -p mkflasher --bin mkflasher` (the README's test command does)",
        bin.display()
    );
    bin
}

pub fn mkflasher(args: &[&str]) {
    let st = Command::new(mkflasher_bin()).args(args).status().unwrap();
    assert!(st.success(), "mkflasher {args:?} failed: {st}");
}

fn run_setup() {
    static SETUP: OnceLock<()> = OnceLock::new();
    SETUP.get_or_init(|| {
        let setup = Path::new(env!("CARGO_MANIFEST_DIR")).join("../qemu-fixtures/setup");
        let st = Command::new(&setup).status().unwrap();
        assert!(st.success(), "{} failed", setup.display());
    });
}

/// Files shared by the scenarios of one test binary.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub os: PathBuf,
    pub bundle: PathBuf,
}

impl Fixture {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The flasher card for `board`, built once. Scenarios run on parallel
    /// test threads: the lock keeps a second one from using a card that is
    /// still being written (it would find no partition table), and the card
    /// appears under its name only when complete.
    pub fn card(&self, board: VirtualBoard) -> PathBuf {
        static BUILD: Mutex<()> = Mutex::new(());
        let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        let card = self.path(&format!("card-{}.img", board.name()));
        if !card.exists() {
            let part = self.path(&format!("card-{}.img.part", board.name()));
            mkflasher(&[
                "build",
                "--board",
                board.name(),
                "--payload",
                self.bundle.to_str().unwrap(),
                "-o",
                part.to_str().unwrap(),
            ]);
            std::fs::rename(&part, &card).unwrap();
        }
        card
    }

    /// A card whose payload has one byte flipped inside the chunk data.
    pub fn corrupted_card(&self, board: VirtualBoard) -> PathBuf {
        let bad_bundle = self.path("corrupt.bundle");
        let mut b = std::fs::read(&self.bundle).unwrap();
        // Past the header and manifest, inside compressed chunk data: the
        // manifest and header stay valid, a chunk digest must not.
        let at = b.len() * 3 / 4;
        b[at] ^= 0x5a;
        std::fs::write(&bad_bundle, &b).unwrap();
        let card = self.path(&format!("card-corrupt-{}.img", board.name()));
        mkflasher(&[
            "build",
            "--board",
            board.name(),
            "--payload",
            bad_bundle.to_str().unwrap(),
            "-o",
            card.to_str().unwrap(),
        ]);
        card
    }
}

/// Build the demo OS image and its bundle once per test binary.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        run_setup();
        let dir = tempfile::tempdir().unwrap();
        let os = dir.path().join("demo-os.img");
        mkflasher::demo::build_demo_os_from_fixtures(&os).unwrap();
        let bundle = dir.path().join("demo-os.bundle");
        mkflasher(&[
            "bundle",
            os.to_str().unwrap(),
            "-o",
            bundle.to_str().unwrap(),
        ]);
        Fixture { dir, os, bundle }
    })
}

/// The demo OS image alone (no bundle, no card): for boot-chain checks.
pub fn demo_os_only() -> PathBuf {
    static OS: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    OS.get_or_init(|| {
        run_setup();
        let dir = tempfile::tempdir().unwrap();
        let os = dir.path().join("demo-os.img");
        mkflasher::demo::build_demo_os_from_fixtures(&os).unwrap();
        (dir, os)
    })
    .1
    .clone()
}

pub fn options(board: VirtualBoard, card: &Path, target: Option<PathBuf>) -> QemuOptions {
    let mut o = QemuOptions::new(board, card, target);
    o.timeout = TIMEOUT;
    o
}

/// One VM run. Whatever the scenario expects of the flash, the event stream
/// must be sound: every line on the event port a typed [`Event`] of this
/// schema version, with `t_ms` never going back; a bad line fails the scenario,
/// quoted.
pub fn run(opts: &QemuOptions) -> QemuOutcome {
    let _g = vm_lock();
    let out = qemu::run(opts).unwrap();
    eprintln!(
        "{}: phases {}, {} events, powered_off {}, {:.0} s, /init to first write {:?}, failure {:?}",
        opts.board,
        out.phase_names(),
        out.events.len(),
        out.powered_off,
        out.elapsed.as_secs_f64(),
        out.init_to_first_write(),
        out.failure_message()
    );
    assert_event_stream(&out);
    out
}

/// The acceptance check on a run's events (see [`run`]).
pub fn assert_event_stream(out: &QemuOutcome) {
    if let Some(bad) = out.bad_lines.first() {
        panic!(
            "{} event line(s) do not parse as Event; first: {:?}: {}",
            out.bad_lines.len(),
            bad.line,
            bad.reason
        );
    }
    assert!(!out.events.is_empty(), "the run produced no event lines");
    for (i, e) in out.events.iter().enumerate() {
        assert_eq!(
            e.v,
            SCHEMA_VERSION,
            "event {} has schema version {}",
            i + 1,
            e.v
        );
    }
    if let Err(e) = flasher_format::event::check_stream(&out.events) {
        panic!("{e}");
    }
}

pub fn boots(board: VirtualBoard, disk: &Path) -> bool {
    let _g = vm_lock();
    qemu::boot_disk(board, disk, TIMEOUT, qemu::DEMO_MARKER).unwrap()
}

/// A fresh blank target of `size` bytes.
pub fn blank_target(f: &Fixture, name: &str, size: u64) -> PathBuf {
    let p = f.path(name);
    let _ = std::fs::remove_file(&p);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// The target holds the image byte for byte over the image's range.
pub fn assert_target_equals_image(target: &Path, image: &Path) {
    let img = std::fs::read(image).unwrap();
    let tgt = std::fs::read(target).unwrap();
    assert!(tgt.len() >= img.len(), "target smaller than image");
    // The partition-table fix-up rewrites the protective MBR and the primary GPT
    // header (backup location, usable range) and moves the backup GPT to the
    // target's real end: LBA 0-1 and the image's last 33 sectors may differ.
    // Everything else, partition entries and data, must match.
    let (from, to) = (2 * 512, img.len() - 33 * 512);
    if let Some(i) = (from..to).find(|&i| img[i] != tgt[i]) {
        panic!("target differs from the image at byte {i}");
    }
}

/// The target's GPT passes `sgdisk --verify`.
pub fn assert_gpt_verifies(target: &Path) {
    let out = Command::new("sgdisk")
        .arg("--verify")
        .arg(target)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "sgdisk --verify {}: {text}",
        target.display()
    );
}

/// Phases `writing`, `verifying`, `success` are entered in that order.
pub fn assert_phase_order(out: &QemuOutcome) {
    let p = out.phases();
    let pos = |phase: Phase| {
        p.iter()
            .position(|x| *x == phase)
            .unwrap_or_else(|| panic!("no {phase} phase in {p:?}"))
    };
    assert!(pos(Phase::Writing) < pos(Phase::Verifying), "{p:?}");
    assert!(pos(Phase::Verifying) < pos(Phase::Success), "{p:?}");
}

/// The error class of the first failure event that carries one.
pub fn failure_class(out: &QemuOutcome) -> Option<ErrorClass> {
    out.failure_class()
}

/// A write fault at byte `offset` of the target (`from_end`: counted back from
/// the image's end) fails the run closed: no success, the failure is the last
/// phase (every event from the first failure on stays in it), sector 0 of the
/// target is zero, and neither `sfdisk --dump` nor `blkid -p` finds a table.
pub fn assert_fault_fails_closed(board: VirtualBoard, name: &str, offset: u64, from_end: bool) {
    let f = fixture();
    let image_len = std::fs::metadata(&f.os).unwrap().len();
    let offset = if from_end { image_len - offset } else { offset };
    let target = blank_target(f, name, 64 << 20);
    let mut o = options(board, &f.card(board), Some(target.clone()));
    o.faults = vec![flasher_qemu::Fault::IoError { offset }];
    let out = run(&o);
    assert!(
        !out.succeeded(),
        "fault at byte {offset}: the run succeeded"
    );
    assert!(!out.has_phase(Phase::Success));
    let first = out
        .events
        .iter()
        .position(Event::is_failure)
        .expect("a failure event");
    let after: Vec<Phase> = out.events[first..].iter().map(|e| e.phase).collect();
    assert!(
        after.iter().all(|p| *p == Phase::Failure),
        "phases after the failure: {after:?}"
    );
    let class = failure_class(&out);
    assert!(
        class == Some(ErrorClass::WriteIo) || class == Some(ErrorClass::VerifyMismatch),
        "class {class:?}: {:?}",
        out.failure_message()
    );
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes[..512].iter().all(|&b| b == 0), "sector 0 is not zero");
    let dump = Command::new("sfdisk")
        .arg("--dump")
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        !dump.status.success() || !String::from_utf8_lossy(&dump.stdout).contains("start="),
        "sfdisk found a table: {}",
        String::from_utf8_lossy(&dump.stdout)
    );
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&blkid.stdout).contains("PTTYPE="),
        "blkid found a table: {}",
        String::from_utf8_lossy(&blkid.stdout)
    );
}

/// True when no byte of the file is non-zero (nothing was written).
pub fn all_zero(path: &Path) -> bool {
    std::fs::read(path).unwrap().iter().all(|&b| b == 0)
}

/// The i.MX6 twin's payload: a 16 MiB real GPT image (the USB stick reads at
/// about 1 MB/s, so not the x86 demo OS).
pub const IMX6_IMAGE_SIZE: u64 = 16 << 20;
/// The i.MX6 twin's target: QEMU's sd-card needs a power of two; room for the
/// image and the moved backup GPT.
pub const IMX6_TARGET_SIZE: u64 = 32 << 20;

/// The i.MX6 twin's image and card, built once per test binary.
pub struct Imx6Fixture {
    pub dir: tempfile::TempDir,
    pub os: PathBuf,
    pub card: PathBuf,
}

impl Imx6Fixture {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn blank_target(&self, name: &str, size: u64) -> PathBuf {
        let p = self.path(name);
        let _ = std::fs::remove_file(&p);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }
}

/// The image (FAT + ext4, with fresh bytes so that no run flashes an image
/// seen before) and its card for the twin, built by the real `mkflasher
/// build` from the image itself.
pub fn imx6_fixture() -> &'static Imx6Fixture {
    use std::io::{Seek, SeekFrom, Write};
    static F: OnceLock<Imx6Fixture> = OnceLock::new();
    F.get_or_init(|| {
        run_setup();
        let dir = tempfile::tempdir().unwrap();
        let img = e2e::build_gpt_image(dir.path(), IMX6_IMAGE_SIZE);
        // Fresh data in the FAT partition's unused tail (its files sit at the
        // start): the filesystems stay valid, the image is new to every run.
        let fresh =
            flasher_format::testing::noise(512 << 10, flasher_format::testing::fresh_seed());
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&img.path)
            .unwrap();
        file.seek(SeekFrom::Start(
            img.fat.offset + img.fat.size - fresh.len() as u64,
        ))
        .unwrap();
        file.write_all(&fresh).unwrap();
        let card = dir.path().join("card-imx6.img");
        mkflasher(&[
            "build",
            "--board",
            VirtualBoard::Imx6.name(),
            "--payload",
            img.path.to_str().unwrap(),
            "-o",
            card.to_str().unwrap(),
        ]);
        Imx6Fixture {
            os: img.path,
            card,
            dir,
        }
    })
}
