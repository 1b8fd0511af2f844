//! The built-in demo (`mkflasher demo`) and the demo OS it flashes.
//!
//! The demo OS is the smallest OS that proves a flash worked end to end: a GPT
//! disk whose ESP holds systemd-boot, one loader entry, Debian's kernel (from
//! `qemu-fixtures/`) and an initramfs whose only file is the static
//! `demo-os-init`, which prints [`flasher_qemu::DEMO_MARKER`] and powers off.
//!
//! The demo itself: build that image, bundle it (`mkflasher bundle`), build the
//! flasher card for `qemu-x86_64-nuc` (`mkflasher build`), flash a virtual NVMe in
//! QEMU with live progress, then boot the NVMe alone and show the marker. The
//! bundle and build steps run the same `mkflasher` binary as subprocesses, so the
//! demo exercises exactly the commands a user types.

use crate::cpio::{self, CpioSink};
use crate::disk::{self, Contents, PartKind, PartSpec, Table};
use crate::fat::{self, FatFile};
use flasher_format::event::{Body, Event, RecordResult};
use flasher_format::io::IoContext;
use flasher_qemu::locate;
use flasher_qemu::{self as qemu, QemuOptions, VirtualBoard};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("QEMU fixtures missing: no {what} under {dir}; run qemu-fixtures/setup")]
    FixturesMissing { what: String, dir: PathBuf },
    #[error(
        "demo OS init binary not found (looked at {looked}); build it with scripts/build-init"
    )]
    InitMissing { looked: String },
    #[error("`mkflasher {step}` failed ({status}); see the output above")]
    Step { step: String, status: String },
    #[error("the flashed NVMe did not print {marker:?} when booted alone; console log: {log}")]
    NotBooted { marker: String, log: PathBuf },
    #[error("building the demo OS image: {0}")]
    Fat(#[from] fat::Error),
    #[error("building the demo OS image: {0}")]
    Disk(#[from] disk::Error),
    #[error("building the demo OS initramfs: {0}")]
    Cpio(#[from] cpio::Error),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Debian's kernel from the fixture cache.
pub fn fixture_kernel(cache: &Path) -> Result<PathBuf> {
    locate::qemu_kernel(cache).ok_or_else(|| Error::FixturesMissing {
        what: "kernel/boot/vmlinuz-*".into(),
        dir: cache.to_path_buf(),
    })
}

/// systemd-boot's EFI binary from the fixture cache.
pub fn fixture_systemd_boot(cache: &Path) -> Result<PathBuf> {
    let p = locate::qemu_systemd_boot(cache);
    if p.is_file() {
        Ok(p)
    } else {
        Err(Error::FixturesMissing {
            what: "systemd-boot/.../systemd-bootx64.efi".into(),
            dir: cache.to_path_buf(),
        })
    }
}

/// The static `demo-os-init` (see [`locate::static_binary_candidates`]).
pub fn find_demo_init() -> Result<PathBuf> {
    let candidates = locate::static_binary_candidates("demo-os-init", "FLASHER_DEMO_INIT");
    if let Some(found) = candidates.iter().find(|c| c.is_file()) {
        return Ok(found.clone());
    }
    Err(Error::InitMissing {
        looked: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The demo OS's initramfs: `/init` (the static demo init) and an empty `/dev`
/// for devtmpfs; gzip, reproducible.
pub fn demo_initramfs(init: &[u8]) -> Result<Vec<u8>> {
    let mut a = cpio::Archive::new();
    a.dir("dev", 0o755)?;
    a.file("init", 0o755, init)?;
    Ok(cpio::compress(&a.to_bytes()?, cpio::Compression::Gzip)?)
}

/// Size of the demo OS's ESP: room for the ~8 MiB kernel, the initramfs and
/// systemd-boot with slack.
pub const DEMO_ESP_SIZE: u64 = 24 << 20;

/// Write the demo OS disk image to `out`: GPT, one ESP with systemd-boot, a
/// loader entry, `kernel` and an initramfs around `init` (the static demo init).
/// `extra_options` go on the kernel command line (tests use it for a marker).
pub fn build_demo_os(
    out: &Path,
    kernel: &Path,
    systemd_boot: &Path,
    init: &Path,
    extra_options: &str,
) -> Result<disk::DiskReport> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let initrd = demo_initramfs(&read(init)?)?;
    let entry = format!(
        "title Flasher demo OS\nlinux /vmlinuz\ninitrd /initrd\noptions console=ttyS0 panic=-1 quiet {extra_options}\n"
    );
    let files = [
        FatFile::new("EFI/BOOT/BOOTX64.EFI", read(systemd_boot)?),
        FatFile::new("loader/loader.conf", "timeout 0\ndefault demo.conf\n"),
        FatFile::new("loader/entries/demo.conf", entry),
        FatFile::new("vmlinuz", read(kernel)?),
        FatFile::new("initrd", initrd),
    ];
    let esp = fat::make_fat(DEMO_ESP_SIZE, "DEMO-ESP", &files)?;
    Ok(disk::write_disk(
        out,
        Table::Gpt,
        &[PartSpec {
            name: "demo-esp".into(),
            kind: PartKind::Esp,
            size: DEMO_ESP_SIZE,
            bootable: false,
            contents: Contents::Bytes(esp),
        }],
    )?)
}

/// [`build_demo_os`] with the fixtures' kernel and systemd-boot and the built init.
pub fn build_demo_os_from_fixtures(out: &Path) -> Result<disk::DiskReport> {
    let cache = locate::fixture_cache();
    build_demo_os(
        out,
        &fixture_kernel(&cache)?,
        &fixture_systemd_boot(&cache)?,
        &find_demo_init()?,
        "",
    )
}

/// Run `mkflasher` (this very binary, or `mkflasher` beside it) with `args`.
fn mkflasher(mkflasher_bin: &Path, step: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    eprintln!("demo: mkflasher {step} ...");
    let status = std::process::Command::new(mkflasher_bin)
        .arg(step)
        .args(args)
        .status()
        .with_context(|| format!("running {} {step}", mkflasher_bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Step {
            step: step.into(),
            status: status.to_string(),
        })
    }
}

/// A one-line progress display fed by the flasher's events.
fn progress_hook() -> qemu::EventHook {
    Arc::new(|e: &Event| {
        if let Some(line) = progress_line(e) {
            eprintln!("flasher: {line}");
        }
    })
}

/// What the demo prints for one event, if anything.
fn progress_line(e: &Event) -> Option<String> {
    // As text: Phase's Display ignores the width.
    let phase = e.phase.as_str();
    Some(match &e.body {
        Body::Progress { done, total, .. } if *total > 0 => format!(
            "{phase:>10} {:5.1}%  {:.1}/{:.1} MiB",
            100.0 * *done as f64 / *total as f64,
            *done as f64 / 1048576.0,
            *total as f64 / 1048576.0
        ),
        // What a board with LEDs would show now.
        Body::Led { pattern, .. } => format!("{phase:>10} (LEDs: {pattern})"),
        Body::Record { seq, result, .. } => format!(
            "{phase:>10} unit record {seq} appended ({})",
            match result {
                RecordResult::Ok => "ok",
                RecordResult::Error => "error",
            }
        ),
        _ => format!("{phase:>10} {}", e.text()?),
    })
}

/// What the demo did, for callers and tests.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub demo_os: PathBuf,
    pub bundle: PathBuf,
    pub card: PathBuf,
    pub nvme: PathBuf,
    pub flash: qemu::QemuOutcome,
    pub boot_log: String,
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub work: PathBuf,
    /// The `mkflasher` binary to run for the bundle and build steps.
    pub mkflasher: PathBuf,
    /// Size of the virtual NVMe.
    pub nvme_size: u64,
    pub timeout: Duration,
    /// Stream the guest console while flashing.
    pub console: bool,
}

/// The whole demo. See the module docs.
pub fn run(opts: &DemoOptions) -> crate::Result<DemoReport> {
    let w = &opts.work;
    std::fs::create_dir_all(w).with_context(|| format!("creating {}", w.display()))?;
    let demo_os = w.join("demo-os.img");
    let bundle = w.join("demo-os.bundle");
    let card = w.join("flasher-card.img");
    let nvme = w.join("nvme.img");

    eprintln!("demo: building the demo OS image {}", demo_os.display());
    let report = build_demo_os_from_fixtures(&demo_os)?;
    eprintln!(
        "demo: demo OS is {} bytes (GPT + ESP with systemd-boot, Debian kernel, demo init)",
        report.size
    );
    mkflasher(
        &opts.mkflasher,
        "bundle",
        &[demo_os.as_os_str(), "-o".as_ref(), bundle.as_os_str()],
    )?;
    mkflasher(
        &opts.mkflasher,
        "build",
        &[
            "--board".as_ref(),
            "qemu-x86_64-nuc".as_ref(),
            "--payload".as_ref(),
            bundle.as_os_str(),
            "-o".as_ref(),
            card.as_os_str(),
        ],
    )?;
    // A fresh, blank NVMe each time: the demo shows a flash from nothing.
    let _ = std::fs::remove_file(&nvme);
    let mut q = QemuOptions::new(VirtualBoard::Nuc, &card, Some(nvme.clone()));
    q.target_size = Some(opts.nvme_size);
    q.events = Some(w.join("events.jsonl"));
    q.timeout = opts.timeout;
    q.stream_console = opts.console;
    q.on_event = Some(progress_hook());
    eprintln!(
        "demo: flashing the virtual NVMe in QEMU (qemu-x86_64-nuc: OVMF → systemd-boot → flasher)"
    );
    let flash = qemu::run(&q)?;
    std::fs::write(w.join("flash-console.log"), &flash.console_log)
        .context("writing flash-console.log")?;
    flash.check(q.timeout, None)?;
    eprintln!(
        "demo: flashed in {:.0} s; phases {}",
        flash.elapsed.as_secs_f64(),
        flash.phase_names()
    );
    eprintln!("demo: booting the NVMe alone (OVMF → systemd-boot → demo OS)");
    let boot_log = qemu::boot_disk_log(VirtualBoard::Nuc, &nvme, opts.timeout)?;
    let log_path = w.join("boot-console.log");
    std::fs::write(&log_path, &boot_log).context("writing boot-console.log")?;
    match boot_log.lines().find(|l| l.contains(qemu::DEMO_MARKER)) {
        Some(line) => eprintln!("demo: the flashed OS says: {}", line.trim()),
        None => {
            return Err(Error::NotBooted {
                marker: qemu::DEMO_MARKER.into(),
                log: log_path,
            }
            .into())
        }
    }
    Ok(DemoReport {
        demo_os,
        bundle,
        card,
        nvme,
        flash,
        boot_log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use flasher_format::Phase;

    #[test]
    fn progress_lines_per_kind() {
        let p = Event::progress(Phase::Writing, 1 << 20, 4 << 20, 0);
        assert_eq!(progress_line(&p).unwrap(), "   writing  25.0%  1.0/4.0 MiB");
        let l = Event::led(Phase::Success, "solid", vec![], None);
        assert_eq!(progress_line(&l).unwrap(), "   success (LEDs: solid)");
        let m = Event::message(Phase::Searching, "block devices: sda");
        assert_eq!(progress_line(&m).unwrap(), " searching block devices: sda");
        assert_eq!(progress_line(&Event::phase(Phase::Verifying)), None);
    }

    #[test]
    fn initramfs_holds_init_and_dev() {
        let gz = demo_initramfs(b"\x7fELF-fake").unwrap();
        let raw = cpio::decompress(&gz).unwrap();
        let recs = cpio::parse(&raw).unwrap();
        let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
        assert!(names.contains(&"init"), "{names:?}");
        assert!(names.contains(&"dev"), "{names:?}");
        assert_eq!(demo_initramfs(b"\x7fELF-fake").unwrap(), gz, "reproducible");
    }

    #[test]
    fn demo_os_image_boots_per_its_own_fat() {
        let dir = tempfile::tempdir().unwrap();
        let (k, sb, init) = (
            dir.path().join("k"),
            dir.path().join("sb"),
            dir.path().join("init"),
        );
        std::fs::write(&k, b"KERNEL").unwrap();
        std::fs::write(&sb, b"MZ-systemd-boot").unwrap();
        std::fs::write(&init, b"INIT").unwrap();
        let out = dir.path().join("os.img");
        build_demo_os(&out, &k, &sb, &init, "demo.x=1").unwrap();
        let part = qemu::card::boot_partition(&out).unwrap();
        assert!(part.esp);
        let spec = qemu::card::boot_spec(&out).unwrap();
        assert_eq!(spec.kernel, b"KERNEL");
        assert!(spec.cmdline.contains("demo.x=1"));
        assert!(spec.cmdline.contains("console=ttyS0"));
    }

    #[test]
    fn missing_fixtures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            fixture_kernel(dir.path()),
            Err(Error::FixturesMissing { .. })
        ));
        assert!(matches!(
            fixture_systemd_boot(dir.path()),
            Err(Error::FixturesMissing { .. })
        ));
    }
}
