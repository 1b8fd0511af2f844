//! The QEMU harness: two virtual boards that boot a flasher card against a
//! virtual target disk, stream the console, collect the flasher's JSON events
//! from a second serial port, and inject faults (blkdebug I/O errors, power cuts).
//!
//! - `qemu-x86_64-sd`: q35, the card as an SD card on `sdhci-pci` at 05.0 and the
//!   target "eMMC" as an SD card at 06.0. No firmware reads the card, so the
//!   harness plays U-Boot: kernel, initramfs and arguments come from the card's
//!   `flash-boot` FAT (see [`card`]).
//! - `qemu-x86_64-nuc`: OVMF boots the card (USB stick, `removable=on`, on xHCI)
//!   through systemd-boot; the target is an NVMe disk.
//! - `qemu-imx6-nitrogen6x`: `qemu-system-arm -M sabrelite` with Debian's armmp
//!   kernel and the real `imx6q-nitrogen6x.dtb`; the card is a USB stick on the
//!   i.MX6 USB H1 host, the target an SD card on usdhc4. As on the sd board the
//!   harness plays U-Boot (kernel, initramfs, arguments from the card's FAT).
//!   No `flasher.board=`: `/init` finds the board by its device tree. The guest
//!   cannot switch QEMU off, so the harness ends the run when the kernel says
//!   it powered down or halted.
//!
//! Software emulation only (`-accel tcg`): KVM does not work on the project's
//! machines. The fixtures (QEMU, OVMF, the Debian kernel) come from
//! `qemu-fixtures/setup`.

pub mod card;
pub mod fault;
pub mod locate;

pub use fault::Fault;

use flasher_format::cmdline::{self, After};
use flasher_format::event::{Body, Event};
use flasher_format::Phase;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the demo OS's `/init` prints once it is up (see `bin/demo-os-init.rs`).
pub const DEMO_MARKER: &str = "FLASHER-DEMO-OS: booted OK";
/// OVMF firmware from Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The guest serial port the flasher writes JSON events to.
pub const EVENTS_TTY: &str = "/dev/ttyS1";
/// The same on the i.MX6 twin: UART1 (QEMU's first `-serial`); the console is
/// UART2, `ttymxc1`, as on the real Nitrogen6x.
pub const IMX6_EVENTS_TTY: &str = "/dev/ttymxc0";
/// The device tree the i.MX6 twin boots, from Debian's armmp kernel package.
pub const IMX6_DTB: &str = "imx6q-nitrogen6x.dtb";
const QEMU: &str = "qemu-system-x86_64";
const QEMU_ARM: &str = "qemu-system-arm";
/// What the ARM kernel prints when the guest has stopped for good: sabrelite
/// has no power switch QEMU models, and a reboot after a panic fails.
const GUEST_STOPPED: [&str; 3] = [
    "reboot: Power down",
    "reboot: System halted",
    "Reboot failed -- System halted",
];
/// OVMF prints this when it found nothing bootable and fell back to its shell:
/// the run can stop there instead of waiting for the timeout.
pub const FIRMWARE_GAVE_UP: &str = "UEFI Interactive Shell";
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{binary} not found: run qemu-fixtures/setup to install QEMU and OVMF")]
    QemuMissing { binary: String },
    #[error("OVMF firmware {path} not found: run qemu-fixtures/setup (installs Debian's ovmf)")]
    OvmfMissing { path: PathBuf },
    #[error(
        "unknown virtual board {name:?}; known: qemu-x86_64-sd, qemu-x86_64-nuc, qemu-imx6-nitrogen6x"
    )]
    UnknownBoard { name: String },
    #[error("device tree {name} not found in {cache}: run qemu-fixtures/setup (fetches Debian's armmp kernel through scripts/fetch-debian-parts)")]
    DtbMissing { name: String, cache: PathBuf },
    #[error("{board} cannot {what}")]
    Unsupported { board: VirtualBoard, what: String },
    #[error("bad fault {spec:?}: {reason}")]
    BadFault { spec: String, reason: String },
    #[error("bad size {text:?}: use bytes or a K/M/G suffix, e.g. 64M")]
    BadSize { text: String },
    #[error("card {path}: {reason}")]
    Card { path: PathBuf, reason: String },
    #[error("target {path} does not exist: pass --target-size to create it")]
    TargetMissing { path: PathBuf },
    #[error("QEMU failed ({status}): {stderr}")]
    QemuFailed { status: String, stderr: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the flasher reported failure: {message}")]
    FlashFailed { message: String },
    #[error(
        "the VM did not finish within {seconds} s (last phase: {last_phase}); see the console log"
    )]
    TimedOut { seconds: u64, last_phase: String },
    #[error("power cut injected at {percent}% of writing; the flash did not complete (expected)")]
    PowerCut { percent: f64 },
    #[error(
        "the VM stopped without the flasher reporting success (last phase: {last_phase}, {how})"
    )]
    NoSuccess { last_phase: String, how: String },
    #[error("bad event stream from the flasher: {reason}")]
    BadEvents { reason: String },
}

impl Error {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A virtual board: how QEMU's machine is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualBoard {
    Sd,
    Nuc,
    /// The i.MX6 twin of the Nitrogen6x.
    Imx6,
}

impl VirtualBoard {
    pub fn name(self) -> &'static str {
        match self {
            VirtualBoard::Sd => "qemu-x86_64-sd",
            VirtualBoard::Nuc => "qemu-x86_64-nuc",
            VirtualBoard::Imx6 => "qemu-imx6-nitrogen6x",
        }
    }

    fn qemu(self) -> &'static str {
        match self {
            VirtualBoard::Sd | VirtualBoard::Nuc => QEMU,
            VirtualBoard::Imx6 => QEMU_ARM,
        }
    }
}

impl std::str::FromStr for VirtualBoard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "qemu-x86_64-sd" => Ok(VirtualBoard::Sd),
            "qemu-x86_64-nuc" => Ok(VirtualBoard::Nuc),
            "qemu-imx6-nitrogen6x" => Ok(VirtualBoard::Imx6),
            _ => Err(Error::UnknownBoard { name: s.into() }),
        }
    }
}

impl std::fmt::Display for VirtualBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `64M`, `1G`, `512K`, `4096`, `32MiB` → bytes.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = || Error::BadSize { text: text.into() };
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        Some((i, 'T' | 't')) => (&t[..i], 40),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes % (1 << 30) == 0 {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{} MiB", flasher_format::units::tenths(bytes, 1 << 20))
    } else {
        format!("{bytes} bytes")
    }
}

/// Called with each event as it arrives (live progress).
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// One run of a card against a target.
#[derive(Clone)]
pub struct QemuOptions {
    pub board: VirtualBoard,
    pub card: PathBuf,
    /// None: the VM has no internal disk at all.
    pub target: Option<PathBuf>,
    /// Create the target at this size when it does not exist.
    pub target_size: Option<u64>,
    /// Where the flasher's JSON event lines go (also returned in the outcome).
    pub events: Option<PathBuf>,
    pub timeout: Duration,
    pub faults: Vec<Fault>,
    /// Extra kernel arguments (`flasher.board=...` overrides, `flasher.verify=...`).
    pub append: Vec<String>,
    /// Copy the guest console to our stdout as it arrives.
    pub stream_console: bool,
    pub memory_mib: u32,
    /// Scratch files (card copies, OVMF vars, blkdebug config); a temporary
    /// directory, removed afterwards, when None.
    pub work_dir: Option<PathBuf>,
    pub on_event: Option<EventHook>,
}

impl std::fmt::Debug for QemuOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuOptions")
            .field("board", &self.board)
            .field("card", &self.card)
            .field("target", &self.target)
            .field("target_size", &self.target_size)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("faults", &self.faults)
            .field("append", &self.append)
            .finish_non_exhaustive()
    }
}

impl QemuOptions {
    pub fn new(board: VirtualBoard, card: impl Into<PathBuf>, target: Option<PathBuf>) -> Self {
        QemuOptions {
            board,
            card: card.into(),
            target,
            target_size: None,
            events: None,
            timeout: Duration::from_secs(300),
            faults: Vec::new(),
            append: Vec::new(),
            stream_console: false,
            memory_mib: 512,
            work_dir: None,
            on_event: None,
        }
    }
}

/// An event line that did not parse as an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line as received (trimmed).
    pub line: String,
    /// Why it is not an event.
    pub reason: String,
}

/// What happened in one run.
#[derive(Debug, Clone)]
pub struct QemuOutcome {
    /// Every event line, parsed, in order.
    pub events: Vec<Event>,
    /// Lines on the event port that are not events (there should be none).
    pub bad_lines: Vec<BadLine>,
    /// The guest powered itself off (QEMU exited on its own, kernel said "Power down").
    pub powered_off: bool,
    /// The guest rebooted (with `-no-reboot` QEMU exits instead).
    pub rebooted: bool,
    pub timed_out: bool,
    /// The harness killed QEMU for a `power-cut-at` fault.
    pub power_cut: bool,
    /// OVMF found nothing bootable (the card did not boot) and the run was stopped.
    pub firmware_gave_up: bool,
    /// Guest serial console (ttyS0) and QEMU's own stderr.
    pub console_log: String,
    pub elapsed: Duration,
    /// The card image QEMU actually booted (a padded or patched copy, or the card).
    pub card_used: PathBuf,
}

impl QemuOutcome {
    /// Distinct phases in the order the flasher entered them. The LEDs' echo
    /// (`led` events, written a moment later by another thread) and the unit
    /// record do not count: they follow the phases, they do not move them.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for e in self.events.iter().filter(|e| e.is_flasher_state()) {
            if out.last() != Some(&e.phase) {
                out.push(e.phase);
            }
        }
        out
    }

    /// [`Self::phases`] as text, for messages: `writing → verifying → success`.
    pub fn phase_names(&self) -> String {
        let names: Vec<&str> = self.phases().iter().map(|p| p.as_str()).collect();
        names.join(" → ")
    }

    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases().contains(&phase)
    }

    /// From `/init` starting (its first event, the `starting` phase) to the
    /// first event of the `writing` phase, by the guest's own clock; `None` if
    /// the run never started writing. The boot before `/init` (firmware, kernel)
    /// is not counted: it is the board's, not the flasher's.
    pub fn init_to_first_write(&self) -> Option<Duration> {
        let start = self.events.iter().find(|e| e.phase == Phase::Starting)?;
        let write = self.events.iter().find(|e| e.phase == Phase::Writing)?;
        Some(Duration::from_millis(write.t_ms.checked_sub(start.t_ms)?))
    }

    /// The first failure report: the cause. Later failure events are
    /// consequences (e.g. the unit record could not be appended).
    pub fn failure(&self) -> Option<&Event> {
        self.events.iter().find(|e| e.is_failure())
    }

    /// The message of the first failure event that carries one: the cause.
    pub fn failure_message(&self) -> Option<String> {
        self.events
            .iter()
            .filter(|e| e.is_failure())
            .find_map(|e| e.text())
            .map(str::to_string)
            .or_else(|| {
                self.has_phase(Phase::Failure)
                    .then(|| "(no message)".to_string())
            })
    }

    /// The stream itself is sound: every line parsed as an [`Event`] of this
    /// schema version, and the timestamps never go back.
    pub fn check_events(&self) -> Result<()> {
        if let Some(b) = self.bad_lines.first() {
            return Err(Error::BadEvents {
                reason: format!(
                    "{} line(s) are not events; the first: {:?} ({})",
                    self.bad_lines.len(),
                    b.line,
                    b.reason
                ),
            });
        }
        flasher_format::event::check_stream(&self.events).map_err(|e| Error::BadEvents {
            reason: e.to_string(),
        })
    }

    /// The flasher reported success and the VM powered off.
    pub fn succeeded(&self) -> bool {
        self.has_phase(Phase::Success) && self.powered_off && !self.has_phase(Phase::Failure)
    }

    /// Ok only on success; otherwise the most telling error.
    pub fn check(&self, timeout: Duration, power_cut_at: Option<f64>) -> Result<()> {
        self.check_events()?;
        if self.succeeded() {
            return Ok(());
        }
        if let Some(message) = self.failure_message() {
            return Err(Error::FlashFailed { message });
        }
        let last_phase = self
            .phases()
            .last()
            .map_or_else(|| "none".to_string(), |p| p.to_string());
        if self.power_cut {
            return Err(Error::PowerCut {
                percent: power_cut_at.unwrap_or(0.0),
            });
        }
        if self.timed_out {
            return Err(Error::TimedOut {
                seconds: timeout.as_secs(),
                last_phase,
            });
        }
        let how = if self.firmware_gave_up {
            "OVMF found nothing bootable on the card and stopped in its shell".to_string()
        } else if self.rebooted {
            "the guest rebooted".to_string()
        } else if self.console_log.contains("Kernel panic") {
            "kernel panic".to_string()
        } else if self.powered_off {
            "powered off".to_string()
        } else {
            "QEMU exited".to_string()
        };
        Err(Error::NoSuccess { last_phase, how })
    }
}

/// Escape a path for a QEMU `key=value,...` option (commas double).
fn q(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// A scratch directory, removed on drop unless the caller supplied it.
struct Work {
    dir: PathBuf,
    owned: bool,
}

impl Work {
    fn new(given: Option<&Path>) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let (dir, owned) = match given {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    std::env::temp_dir().join(format!("mkflasher-qemu-{}-{n}", std::process::id())),
                    true,
                )
            }
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Work { dir, owned })
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn check_tools(board: VirtualBoard) -> Result<()> {
    let qemu = board.qemu();
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(qemu).is_file()))
        .unwrap_or(false);
    if !found {
        return Err(Error::QemuMissing {
            binary: qemu.into(),
        });
    }
    if board == VirtualBoard::Nuc {
        for p in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(p).is_file() {
                return Err(Error::OvmfMissing { path: p.into() });
            }
        }
    }
    Ok(())
}

/// Make `path` at least `size` bytes (sparse).
fn grow(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    f.set_len(size)
        .map_err(|e| Error::io(format!("growing {} to {size} bytes", path.display()), e))
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .map_err(|e| Error::io(format!("reading the size of {}", path.display()), e))?
        .len())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::io(format!("copying {} to {}", from.display(), to.display()), e))
}

/// A block device for the guest: `-blockdev` node `node`, optionally behind blkdebug.
fn blockdev(node: &str, file: &Path, blkdebug: Option<&Path>, snapshot: bool) -> Vec<String> {
    let mut v = match blkdebug {
        Some(cfg) => vec![
            "-blockdev".into(),
            format!(
                "driver=raw,node-name={node},file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={}",
                q(cfg),
                q(file)
            ),
        ],
        None if snapshot => vec![
            "-drive".into(),
            format!("if=none,id={node},format=raw,snapshot=on,file={}", q(file)),
        ],
        None => vec![
            "-blockdev".into(),
            format!("driver=raw,node-name={node},file.driver=file,file.filename={}", q(file)),
        ],
    };
    v.shrink_to_fit();
    v
}

/// What the guest is given to boot from.
enum Boot<'a> {
    /// `-kernel`/`-initrd`/`-append` (the SD board; U-Boot's job on real boards).
    Direct {
        kernel: &'a Path,
        initrd: Option<&'a Path>,
        append: String,
        /// `-dtb` (the i.MX6 twin).
        dtb: Option<&'a Path>,
    },
    /// OVMF firmware with this writable vars copy.
    Ovmf { vars: &'a Path },
}

/// The QEMU argument list for one machine. Pure: unit-tested.
fn machine_args(
    board: VirtualBoard,
    boot: &Boot,
    card: Option<Vec<String>>,
    target: Option<Vec<String>>,
    events: &Path,
    memory_mib: u32,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        match board {
            VirtualBoard::Sd | VirtualBoard::Nuc => "q35",
            VirtualBoard::Imx6 => "sabrelite",
        },
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (console, events) = ("stdio".to_string(), format!("file:{}", events.display()));
    // x86: ttyS0 console, ttyS1 events. i.MX6: UART1 (ttymxc0) events, UART2
    // (ttymxc1) the console, as the Nitrogen6x's device tree and U-Boot use it.
    let serials = match board {
        VirtualBoard::Sd | VirtualBoard::Nuc => [console, events],
        VirtualBoard::Imx6 => [events, console],
    };
    for s in serials {
        a.extend(["-serial".into(), s]);
    }
    a.push("-m".into());
    a.push(format!("{memory_mib}M"));
    match boot {
        Boot::Direct {
            kernel,
            initrd,
            append,
            dtb,
        } => {
            a.push("-kernel".into());
            a.push(kernel.display().to_string());
            if let Some(d) = dtb {
                a.push("-dtb".into());
                a.push(d.display().to_string());
            }
            if let Some(i) = initrd {
                a.push("-initrd".into());
                a.push(i.display().to_string());
            }
            a.push("-append".into());
            a.push(append.clone());
        }
        Boot::Ovmf { vars } => {
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            a.push("-drive".into());
            a.push(format!("if=pflash,format=raw,unit=1,file={}", q(vars)));
        }
    }
    match board {
        VirtualBoard::Sd => {
            // Order matters: a bus-less sd-card lands on the last sdhci-pci added,
            // so each controller is followed by its card (checked with `info qtree`).
            a.extend(["-device".into(), "sdhci-pci,addr=05.0".into()]);
            if let Some(c) = card {
                a.extend(c);
                a.extend(["-device".into(), "sd-card,drive=card".into()]);
            }
            a.extend(["-device".into(), "sdhci-pci,addr=06.0".into()]);
            if let Some(t) = target {
                a.extend(t);
                a.extend(["-device".into(), "sd-card,drive=t0".into()]);
            }
        }
        VirtualBoard::Nuc => {
            a.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
            if let Some(c) = card {
                a.extend(c);
                // bootindex: OVMF must boot the stick even when the NVMe already
                // holds a bootable OS (the second run after a power cut).
                a.extend([
                    "-device".into(),
                    "usb-storage,bus=xhci.0,drive=card,removable=on,bootindex=0".into(),
                ]);
            }
            if let Some(t) = target {
                a.extend(t);
                a.extend([
                    "-device".into(),
                    "nvme,drive=t0,serial=flasher-target,bootindex=1".into(),
                ]);
            }
        }
        VirtualBoard::Imx6 => {
            if let Some(c) = card {
                a.extend(c);
                // usb-bus.1 is the i.MX6 USB H1 host (2184200.usb); the OTG
                // port's bus (usb-bus.0) stays free.
                a.extend([
                    "-device".into(),
                    "usb-storage,drive=card,bus=usb-bus.1".into(),
                ]);
            }
            if let Some(t) = target {
                a.extend(t);
                // All four usdhc buses share the name sd-bus: a bus-less
                // sd-card lands on usdhc4, the slot of the real board's eMMC.
                a.extend(["-device".into(), "sd-card,drive=t0".into()]);
            }
        }
    }
    a
}

/// What the flasher does after a failure inside the harness (the board default,
/// `wait`, would keep the VM running until the timeout).
fn on_failure() -> String {
    cmdline::arg(cmdline::key::ON_FAILURE, After::PowerOff)
}

/// Kernel arguments for the boards the harness boots directly: console, board
/// (the sd board only: the i.MX6 twin is found by its device tree), events,
/// then the card's own arguments, then the caller's (later ones win in the
/// flasher's parser).
fn direct_append(board: VirtualBoard, card_cmdline: &str, extra: &[String]) -> String {
    let mut parts = vec![
        // A dead /init should end the run at once, not at the timeout.
        "panic=-1".to_string(),
        // In a VM nobody reads the blink code: end the run once the failure is
        // reported and recorded, rather than at the harness timeout.
        on_failure(),
    ];
    match board {
        VirtualBoard::Imx6 => {
            parts.insert(0, "console=ttymxc1,115200".into());
            // QEMU's sabrelite does not emulate the i.MX6 SDMA engine, and the
            // imx UART driver sends through SDMA on every port but the
            // console: the events port would stay silent. Without the SDMA
            // driver the UART falls back to interrupt-driven transmission.
            // (SD and USB use their own DMA.)
            parts.push("initcall_blacklist=sdma_driver_init".into());
            parts.push(cmdline::arg(cmdline::key::EVENTS, IMX6_EVENTS_TTY));
        }
        VirtualBoard::Sd | VirtualBoard::Nuc => {
            parts.insert(0, "console=ttyS0".into());
            parts.insert(2, cmdline::arg(cmdline::key::BOARD, board.name()));
            parts.insert(3, cmdline::arg(cmdline::key::EVENTS, EVENTS_TTY));
        }
    }
    let card_args: Vec<&str> = card_cmdline
        .split_whitespace()
        // The twin's serial wiring is fixed (console UART2, events UART1): a
        // card built for another i.MX6 board names that board's console
        // (HummingBoard: ttymxc0, the twin's events port), so it is dropped.
        .filter(|a| board != VirtualBoard::Imx6 || !a.starts_with("console="))
        .collect();
    if !card_args.is_empty() {
        parts.push(card_args.join(" "));
    }
    parts.extend(extra.iter().cloned());
    parts.join(" ")
}

/// A whole saved event stream (`mkflasher qemu --events FILE`), parsed by the
/// same rules as a live run: the events, and the lines that are not events.
pub fn parse_events(bytes: &[u8]) -> (Vec<Event>, Vec<BadLine>) {
    let mut buf = bytes.to_vec();
    buf.push(b'\n');
    let (mut events, mut bad) = (Vec::new(), Vec::new());
    drain_events(&mut buf, &mut events, &mut bad, None);
    (events, bad)
}

/// Parse complete event lines out of `buf`, leaving a trailing partial line.
/// From the first event on, every non-blank line must be an [`Event`]; one that
/// is not goes to `bad` as received, so the run can fail quoting it.
fn drain_events(
    buf: &mut Vec<u8>,
    out: &mut Vec<Event>,
    bad: &mut Vec<BadLine>,
    hook: Option<&EventHook>,
) {
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line);
        // A tty in cooked mode adds \r; a UART may idle as NULs between lines.
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if text.is_empty() {
            continue;
        }
        match Event::parse(text) {
            Ok(e) => {
                if let Some(h) = hook {
                    h(&e);
                }
                out.push(e);
            }
            // Before the flasher's first event the port carries the firmware's
            // own output (OVMF writes to every serial port): not event lines.
            Err(_) if out.is_empty() => {
                tracing::debug!("before the first event: {text}");
            }
            Err(e) => bad.push(BadLine {
                line: text.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// How far the writing phase has got, in percent, by this event.
fn writing_fraction(e: &Event) -> Option<f64> {
    match e.body {
        Body::Progress { done, total, .. } if e.phase == Phase::Writing && total > 0 => {
            Some(100.0 * done as f64 / total as f64)
        }
        _ => None,
    }
}

struct Running {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn spawn(qemu: &str, args: &[String], stream: bool) -> Result<Running> {
    tracing::debug!("{qemu} {}", args.join(" "));
    let mut child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::QemuMissing {
                binary: qemu.into(),
            },
            _ => Error::io(format!("starting {qemu}"), e),
        })?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    let pipes: Vec<(Box<dyn Read + Send>, bool)> = [
        child
            .stdout
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, stream)),
        child
            .stderr
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, false)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (mut pipe, echo) in pipes {
        let console = Arc::clone(&console);
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                console
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        }));
    }
    Ok(Running {
        child,
        console,
        readers,
    })
}

/// How a VM run ended.
struct Ended {
    status: Option<std::process::ExitStatus>,
    timed_out: bool,
    power_cut: bool,
    gave_up: bool,
    /// The guest stopped for good but QEMU kept running (the i.MX6 twin); the
    /// harness then ended QEMU.
    guest_stopped: bool,
    console: String,
    events: Vec<Event>,
    bad_lines: Vec<BadLine>,
    elapsed: Duration,
}

/// Run QEMU to its end, the timeout, or a power cut; tail the events file.
/// `exits_itself`: QEMU ends when the guest powers off (x86); otherwise the
/// kernel's last words ([`GUEST_STOPPED`]) end the run.
fn supervise(
    mut run: Running,
    events_path: &Path,
    timeout: Duration,
    cut_at: Option<f64>,
    hook: Option<&EventHook>,
    exits_itself: bool,
) -> Result<Ended> {
    let start = Instant::now();
    let mut events = Vec::new();
    let mut bad_lines = Vec::new();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    let read_new = |offset: &mut u64, pending: &mut Vec<u8>| {
        use std::io::{Seek, SeekFrom};
        if let Ok(mut f) = std::fs::File::open(events_path) {
            if f.seek(SeekFrom::Start(*offset)).is_ok() {
                let mut more = Vec::new();
                if f.read_to_end(&mut more).is_ok() {
                    *offset += more.len() as u64;
                    pending.extend_from_slice(&more);
                }
            }
        }
    };
    let (mut timed_out, mut power_cut, mut gave_up) = (false, false, false);
    let mut guest_stopped = false;
    let status = loop {
        let st = run
            .child
            .try_wait()
            .map_err(|e| Error::io("waiting for QEMU", e))?;
        let before = events.len();
        read_new(&mut offset, &mut pending);
        drain_events(&mut pending, &mut events, &mut bad_lines, hook);
        if let Some(st) = st {
            break Some(st);
        }
        if let Some(cut) = cut_at {
            if events[before..]
                .iter()
                .filter_map(writing_fraction)
                .any(|p| p >= cut)
            {
                tracing::warn!("power cut: killing the VM at {cut}% of writing");
                power_cut = true;
                let _ = run.child.kill();
                let _ = run.child.wait();
                break None;
            }
        }
        let tail = {
            let c = run.console.lock().unwrap_or_else(|e| e.into_inner());
            // The banners are short; look only at the tail so this stays cheap.
            String::from_utf8_lossy(&c[c.len().saturating_sub(8192)..]).into_owned()
        };
        if tail.contains(FIRMWARE_GAVE_UP) {
            gave_up = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        if !exits_itself && GUEST_STOPPED.iter().any(|m| tail.contains(m)) {
            // Everything the guest wrote went out before the kernel's last line.
            guest_stopped = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in run.readers.drain(..) {
        let _ = r.join();
    }
    read_new(&mut offset, &mut pending);
    if status.is_some() || guest_stopped {
        // The guest ended by itself: each event went out in one write, so a
        // last line without its newline is still a whole line, or a real fault.
        pending.push(b'\n');
    } else {
        // Killed (power cut, timeout): the line being written when QEMU died is
        // cut short by the harness, not by the flasher; drop it.
        drain_events(&mut pending, &mut events, &mut bad_lines, hook);
        pending.clear();
    }
    drain_events(&mut pending, &mut events, &mut bad_lines, hook);
    let console = String::from_utf8_lossy(&run.console.lock().unwrap_or_else(|e| e.into_inner()))
        .into_owned();
    Ok(Ended {
        status,
        timed_out,
        power_cut,
        gave_up,
        guest_stopped,
        console,
        events,
        bad_lines,
        elapsed: start.elapsed(),
    })
}

/// Fail on QEMU's own errors (bad arguments, missing files): it exited non-zero
/// by itself before the guest could do anything.
fn qemu_error(end: &Ended) -> Option<Error> {
    let st = end.status?;
    if st.success() {
        return None;
    }
    let stderr: Vec<&str> = end
        .console
        .lines()
        .filter(|l| l.contains("qemu-system"))
        .collect();
    Some(Error::QemuFailed {
        status: st.to_string(),
        stderr: if stderr.is_empty() {
            end.console
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        } else {
            stderr.join(" | ")
        },
    })
}

/// The twin's device tree from the Debian parts cache (Debian's armmp package).
fn imx6_dtb() -> Result<PathBuf> {
    let cache = crate::locate::debian_parts();
    crate::locate::armmp_dtb(&cache, IMX6_DTB).ok_or_else(|| Error::DtbMissing {
        name: IMX6_DTB.into(),
        cache,
    })
}

/// Prepare the target: create it if missing, grow it to a power of two for SD.
fn prepare_target(opts: &QemuOptions, target: &Path) -> Result<()> {
    if !target.exists() {
        let size = opts.target_size.ok_or_else(|| Error::TargetMissing {
            path: target.into(),
        })?;
        let f = std::fs::File::create(target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        f.set_len(size)
            .map_err(|e| Error::io(format!("sizing {} to {size} bytes", target.display()), e))?;
        tracing::info!("created target {} ({})", target.display(), human(size));
    }
    if matches!(opts.board, VirtualBoard::Sd | VirtualBoard::Imx6) {
        let size = file_size(target)?;
        if !size.is_power_of_two() {
            let grown = size.next_power_of_two();
            tracing::warn!(
                "target {} is {}; QEMU's sd-card needs a power-of-two size, so the file grows to {} (the flasher sees {})",
                target.display(),
                human(size),
                human(grown),
                human(grown)
            );
            grow(target, grown)?;
        }
    }
    Ok(())
}

/// Boot `opts.card` on the virtual board against `opts.target`, and report.
///
/// Returns Ok with the outcome whatever the flasher did; Err only when the VM
/// could not be run (missing QEMU, bad card, QEMU refusing its arguments).
/// Use [`QemuOutcome::check`] for pass/fail.
pub fn run(opts: &QemuOptions) -> Result<QemuOutcome> {
    check_tools(opts.board)?;
    let work = Work::new(opts.work_dir.as_deref())?;
    if !opts.card.is_file() {
        return Err(Error::Card {
            path: opts.card.clone(),
            reason: "not found; build it with `mkflasher build`".into(),
        });
    }
    if let Some(t) = &opts.target {
        prepare_target(opts, t)?;
    }
    let events_path = opts
        .events
        .clone()
        .unwrap_or_else(|| work.path("events.jsonl"));
    if let Some(parent) = events_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    // QEMU opens the serial file itself; start from empty so old events never count.
    std::fs::write(&events_path, b"")
        .map_err(|e| Error::io(format!("creating {}", events_path.display()), e))?;
    let blkdebug = match fault::blkdebug_config(&opts.faults) {
        Some(cfg) => {
            let p = work.path("blkdebug.conf");
            std::fs::write(&p, cfg)
                .map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
            Some(p)
        }
        None => None,
    };
    let target_args = opts
        .target
        .as_deref()
        .map(|t| blockdev("t0", t, blkdebug.as_deref(), false));

    let (card_used, kernel, initrd, vars, dtb);
    let boot = match opts.board {
        VirtualBoard::Sd | VirtualBoard::Imx6 => {
            let spec = card::boot_spec(&opts.card)?;
            kernel = work.path("kernel");
            std::fs::write(&kernel, &spec.kernel)
                .map_err(|e| Error::io("writing the kernel", e))?;
            initrd = match &spec.initrd {
                Some(i) => {
                    let p = work.path("initrd");
                    std::fs::write(&p, i).map_err(|e| Error::io("writing the initramfs", e))?;
                    Some(p)
                }
                None => None,
            };
            let size = file_size(&opts.card)?;
            card_used = if opts.board == VirtualBoard::Imx6 || size.is_power_of_two() {
                // The twin's card is a USB stick: any size.
                opts.card.clone()
            } else {
                // QEMU refuses SD images whose size is not a power of two; the
                // user's card stays as it is, a padded copy is booted.
                let c = work.path("card-sd.img");
                copy(&opts.card, &c)?;
                grow(&c, size.next_power_of_two())?;
                tracing::info!(
                    "card {} is {}: booting a copy padded to {} (QEMU's sd-card needs a power of two)",
                    opts.card.display(),
                    human(size),
                    human(size.next_power_of_two())
                );
                c
            };
            dtb = match opts.board {
                VirtualBoard::Imx6 => Some(imx6_dtb()?),
                _ => None,
            };
            Boot::Direct {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                append: direct_append(opts.board, &spec.cmdline, &opts.append),
                dtb: dtb.as_deref(),
            }
        }
        VirtualBoard::Nuc => {
            vars = work.path("OVMF_VARS.fd");
            copy(Path::new(OVMF_VARS), &vars)?;
            let spec = card::boot_spec(&opts.card)?;
            let mut extra: Vec<String> = Vec::new();
            let card_args: Vec<String> =
                spec.cmdline.split_whitespace().map(String::from).collect();
            if !cmdline::sets(&card_args, "console") {
                extra.push("console=ttyS0".into());
            }
            if !cmdline::sets(&card_args, cmdline::key::EVENTS) {
                extra.push(cmdline::arg(cmdline::key::EVENTS, EVENTS_TTY));
            }
            if !cmdline::sets(&card_args, cmdline::key::ON_FAILURE) {
                extra.push(on_failure());
            }
            extra.extend(opts.append.iter().cloned());
            card_used = if extra.is_empty() {
                opts.card.clone()
            } else {
                let c = work.path("card-nuc.img");
                copy(&opts.card, &c)?;
                card::append_loader_options(&c, &extra.join(" "))?;
                tracing::info!(
                    "booting a copy of {} with kernel arguments: {}",
                    opts.card.display(),
                    extra.join(" ")
                );
                c
            };
            Boot::Ovmf { vars: &vars }
        }
    };
    let card_args = blockdev("card", &card_used, None, false);
    let args = machine_args(
        opts.board,
        &boot,
        Some(card_args),
        target_args,
        &events_path,
        opts.memory_mib,
    );
    let running = spawn(opts.board.qemu(), &args, opts.stream_console)?;
    let end = supervise(
        running,
        &events_path,
        opts.timeout,
        fault::power_cut(&opts.faults),
        opts.on_event.as_ref(),
        opts.board != VirtualBoard::Imx6,
    )?;
    if let Some(e) = qemu_error(&end) {
        return Err(e);
    }
    let exited = end.status.is_some() || end.guest_stopped;
    // When the card was a temporary copy, the caller may still want it (log partition).
    let card_used = if card_used.starts_with(&work.dir) && work.owned {
        opts.card.clone()
    } else {
        card_used
    };
    // On the twin no power-off handler registers, so the kernel turns the
    // flasher's power-off into a halt ("reboot: System halted"): that is the
    // twin's end of a run.
    let halted = opts.board == VirtualBoard::Imx6 && end.console.contains("reboot: System halted");
    Ok(QemuOutcome {
        powered_off: exited && (end.console.contains("reboot: Power down") || halted),
        rebooted: exited && end.console.contains("reboot: Restarting system"),
        timed_out: end.timed_out,
        power_cut: end.power_cut,
        firmware_gave_up: end.gave_up,
        events: end.events,
        bad_lines: end.bad_lines,
        console_log: end.console,
        elapsed: end.elapsed,
        card_used,
    })
}

/// Boot `disk` alone on the board (as the internal disk: NVMe + OVMF for the nuc,
/// the 06.0 SD slot with its own boot FAT for the sd board) and report whether
/// the console showed `expect_marker` before the guest stopped or `timeout` passed.
/// The disk is attached copy-on-write (`snapshot=on`): booting never changes it.
pub fn boot_disk(
    board: VirtualBoard,
    disk: &Path,
    timeout: Duration,
    expect_marker: &str,
) -> Result<bool> {
    // A disk with no readable boot partition (sd board) simply does not boot.
    match boot_disk_log(board, disk, timeout) {
        Ok(log) => Ok(log.contains(expect_marker)),
        Err(Error::Card { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`boot_disk`], returning the whole console log.
pub fn boot_disk_log(board: VirtualBoard, disk: &Path, timeout: Duration) -> Result<String> {
    if board == VirtualBoard::Imx6 {
        // The flashed OS would need its own ARM kernel and U-Boot; the twin's
        // scenarios compare the target with the image byte for byte instead.
        return Err(Error::Unsupported {
            board,
            what: "boot a flashed disk (no firmware chain yet, see docs/qemu.md)".into(),
        });
    }
    check_tools(board)?;
    let work = Work::new(None)?;
    let events = work.path("events");
    let (kernel, initrd, vars);
    let mut disk_used = disk.to_path_buf();
    let boot = match board {
        VirtualBoard::Nuc => {
            vars = work.path("OVMF_VARS.fd");
            copy(Path::new(OVMF_VARS), &vars)?;
            Boot::Ovmf { vars: &vars }
        }
        VirtualBoard::Sd | VirtualBoard::Imx6 => {
            let spec = card::boot_spec(disk)?;
            kernel = work.path("kernel");
            std::fs::write(&kernel, &spec.kernel)
                .map_err(|e| Error::io("writing the kernel", e))?;
            initrd = match &spec.initrd {
                Some(i) => {
                    let p = work.path("initrd");
                    std::fs::write(&p, i).map_err(|e| Error::io("writing the initramfs", e))?;
                    Some(p)
                }
                None => None,
            };
            let size = file_size(disk)?;
            if !size.is_power_of_two() {
                disk_used = work.path("disk-sd.img");
                copy(disk, &disk_used)?;
                grow(&disk_used, size.next_power_of_two())?;
            }
            Boot::Direct {
                kernel: &kernel,
                initrd: initrd.as_deref(),
                append: format!("console=ttyS0 panic=-1 {}", spec.cmdline),
                dtb: None,
            }
        }
    };
    let target = blockdev("t0", &disk_used, None, true);
    let args = machine_args(board, &boot, None, Some(target), &events, 512);
    let end = supervise(
        spawn(board.qemu(), &args, false)?,
        &events,
        timeout,
        None,
        None,
        true,
    )?;
    if let Some(e) = qemu_error(&end) {
        return Err(e);
    }
    Ok(end.console)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(matches!(parse_size("lots"), Err(Error::BadSize { .. })));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(Error::BadSize { .. })
        ));
    }

    #[test]
    fn boards_by_name() {
        assert_eq!(
            "qemu-x86_64-sd".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Sd
        );
        assert_eq!(
            "qemu-x86_64-nuc".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Nuc
        );
        assert!(matches!(
            "beaglebone".parse::<VirtualBoard>(),
            Err(Error::UnknownBoard { .. })
        ));
    }

    #[test]
    fn sd_machine_pairs_each_controller_with_its_card() {
        let boot = Boot::Direct {
            kernel: Path::new("/k"),
            initrd: Some(Path::new("/i")),
            append: direct_append(VirtualBoard::Sd, "quiet", &["flasher.board=bogus".into()]),
            dtb: None,
        };
        let a = machine_args(
            VirtualBoard::Sd,
            &boot,
            Some(blockdev("card", Path::new("/c,d.img"), None, false)),
            Some(blockdev(
                "t0",
                Path::new("/t.img"),
                Some(Path::new("/bd.conf")),
                false,
            )),
            Path::new("/ev"),
            512,
        );
        let s = a.join(" ");
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in {s}"))
        };
        assert!(pos("sdhci-pci,addr=05.0") < pos("sd-card,drive=card"));
        assert!(pos("sd-card,drive=card") < pos("sdhci-pci,addr=06.0"));
        assert!(pos("sdhci-pci,addr=06.0") < pos("sd-card,drive=t0"));
        assert!(s.contains("file.filename=/c,,d.img"));
        assert!(s.contains("file.driver=blkdebug,file.config=/bd.conf"));
        assert!(s.contains("-serial stdio -serial file:/ev"));
        assert!(s.contains("-accel tcg"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttyS0 panic=-1 flasher.board=qemu-x86_64-sd flasher.events=/dev/ttyS1 flasher.on-failure=poweroff quiet flasher.board=bogus"
        );
    }

    #[test]
    fn nuc_machine_uses_ovmf_usb_and_nvme() {
        let a = machine_args(
            VirtualBoard::Nuc,
            &Boot::Ovmf {
                vars: Path::new("/v.fd"),
            },
            Some(blockdev("card", Path::new("/c.img"), None, false)),
            Some(blockdev("t0", Path::new("/t.img"), None, true)),
            Path::new("/ev"),
            512,
        )
        .join(" ");
        assert!(a.contains(&format!("file={OVMF_CODE}")));
        assert!(a.contains("if=pflash,format=raw,unit=1,file=/v.fd"));
        assert!(a.contains("usb-storage,bus=xhci.0,drive=card,removable=on"));
        assert!(a.contains("nvme,drive=t0,serial=flasher-target"));
        assert!(a.contains("snapshot=on,file=/t.img"));
        assert!(!a.contains("-kernel"));
    }

    #[test]
    fn imx6_machine_is_sabrelite_with_the_dtb_a_usb_stick_and_an_sd_target() {
        let boot = Boot::Direct {
            kernel: Path::new("/k"),
            initrd: Some(Path::new("/i")),
            append: direct_append(VirtualBoard::Imx6, "", &[]),
            dtb: Some(Path::new("/n.dtb")),
        };
        let a = machine_args(
            VirtualBoard::Imx6,
            &boot,
            Some(blockdev("card", Path::new("/c.img"), None, false)),
            Some(blockdev("t0", Path::new("/t.img"), None, false)),
            Path::new("/ev"),
            512,
        );
        let s = a.join(" ");
        assert!(s.starts_with("-machine sabrelite -accel tcg"), "{s}");
        assert!(s.contains("-kernel /k -dtb /n.dtb -initrd /i"), "{s}");
        assert!(s.contains("usb-storage,drive=card,bus=usb-bus.1"), "{s}");
        assert!(s.contains("sd-card,drive=t0"), "{s}");
        // UART1 carries the events, UART2 (ttymxc1) is the console.
        assert!(s.contains("-serial file:/ev -serial stdio"), "{s}");
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttymxc1,115200 panic=-1 flasher.on-failure=poweroff \
             initcall_blacklist=sdma_driver_init flasher.events=/dev/ttymxc0"
        );
        // Found by its device tree, never pinned by the harness.
        assert!(!append.contains("flasher.board="));
        assert_eq!(
            "qemu-imx6-nitrogen6x".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Imx6
        );
    }

    fn at(t_ms: u64, phase: Phase, body: Body) -> Event {
        Event::at(t_ms, phase, body)
    }

    fn entered(t_ms: u64, phase: Phase) -> Event {
        Event::phase(phase).with_t_ms(t_ms)
    }

    #[test]
    fn events_are_parsed_across_partial_reads() {
        let writing = at(
            1,
            Phase::Writing,
            Body::Progress {
                done: 5,
                total: 10,
                rate: 1,
            },
        )
        .to_line();
        let verifying = entered(2, Phase::Verifying).to_line();
        let (v1, v2) = verifying.split_at(20);
        // Firmware output before the first event (OVMF writes to every serial
        // port) is not an event line; after it, every line must be one.
        let mut buf = format!("BdsDxe: loading Boot0001\r\n{writing}\r\n{v1}").into_bytes();
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        drain_events(&mut buf, &mut out, &mut bad, None);
        assert!(bad.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(writing_fraction(&out[0]), Some(50.0));
        let success = entered(3, Phase::Success).to_line();
        buf.extend_from_slice(format!("{v2}\n\n\0{success}\nnoise\n").as_bytes());
        drain_events(&mut buf, &mut out, &mut bad, None);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].phase, Phase::Verifying);
        assert!(buf.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, "noise");
    }

    fn outcome(events: Vec<Event>) -> QemuOutcome {
        QemuOutcome {
            events,
            bad_lines: Vec::new(),
            powered_off: true,
            rebooted: false,
            timed_out: false,
            power_cut: false,
            firmware_gave_up: false,
            console_log: String::new(),
            elapsed: Duration::ZERO,
            card_used: PathBuf::new(),
        }
    }

    #[test]
    fn init_to_first_write_is_from_the_first_starting_event() {
        let run = outcome(vec![
            entered(3380, Phase::Starting),
            entered(3700, Phase::Searching),
            entered(4150, Phase::Writing),
            entered(9000, Phase::Verifying),
        ]);
        assert_eq!(run.init_to_first_write(), Some(Duration::from_millis(770)));
        let refused = outcome(vec![
            entered(3380, Phase::Starting),
            entered(3700, Phase::Failure),
        ]);
        assert_eq!(refused.init_to_first_write(), None);
    }

    #[test]
    fn outcome_verdicts() {
        let progress = |t, done| {
            at(
                t,
                Phase::Writing,
                Body::Progress {
                    done,
                    total: 2,
                    rate: 1,
                },
            )
        };
        let mut o = outcome(vec![
            progress(1, 1),
            progress(2, 2),
            entered(3, Phase::Verifying),
            // The LEDs' echo of the writing pattern, late: not a phase change.
            Event::led(Phase::Writing, "running-light", vec![], None).with_t_ms(3),
            entered(4, Phase::Success),
        ]);
        assert_eq!(
            o.phases(),
            [Phase::Writing, Phase::Verifying, Phase::Success]
        );
        assert_eq!(o.phase_names(), "writing → verifying → success");
        assert!(o.check(Duration::from_secs(1), None).is_ok());
        o.powered_off = false;
        assert!(matches!(
            o.check(Duration::from_secs(1), None),
            Err(Error::NoSuccess { .. })
        ));
        o.events.push(
            Event::failure(
                flasher_format::ErrorClass::WriteIo,
                "write error at byte 20971520",
            )
            .with_t_ms(5),
        );
        match o.check(Duration::from_secs(1), None) {
            Err(Error::FlashFailed { message }) => assert!(message.contains("20971520")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            o.failure().and_then(Event::error_class),
            Some(flasher_format::ErrorClass::WriteIo)
        );
        o.events.clear();
        o.timed_out = true;
        assert!(matches!(
            o.check(Duration::from_secs(1), None),
            Err(Error::TimedOut { .. })
        ));
    }

    #[test]
    fn a_bad_stream_fails_the_run_quoting_the_line() {
        let mut o = outcome(vec![
            entered(5, Phase::Starting),
            entered(9, Phase::Success),
        ]);
        assert!(o.check_events().is_ok());
        o.bad_lines.push(BadLine {
            line: r#"{"phase":"writing"}"#.into(),
            reason: "missing field `v`".into(),
        });
        match o.check(Duration::from_secs(1), None) {
            Err(Error::BadEvents { reason }) => {
                assert!(reason.contains(r#"{\"phase\":\"writing\"}"#), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        o.bad_lines.clear();
        o.events.push(entered(8, Phase::Success));
        assert!(matches!(o.check_events(), Err(Error::BadEvents { .. })));
    }
}
