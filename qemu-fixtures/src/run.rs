//! One run, start to end: [`run`] boots a card against a target (preparing
//! the target, the boot files or OVMF, the faults, and the card through
//! [`crate::card_writes`], so that what the board writes to it lands on the
//! card file) and reports a [`QemuOutcome`]; [`boot_disk`] boots a flashed
//! disk on its own.

use crate::args::{blockdev, direct_append, machine_args, on_failure, target_serial, Boot};
use crate::board::{check_tools, imx6_dtb, EVENTS_TTY, OVMF_VARS};
use crate::card_writes::{BootCard, CardWrites};
use crate::events::EventHook;
use crate::process::{qemu_error, spawn, supervise};
use crate::work::{copy, file_size, grow, Work};
use crate::{card, fault, Error, Fault, QemuOutcome, Result, VirtualBoard};
use flasher_format::cmdline;
use flasher_format::io::IoContext;
use flasher_format::units::iec;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    /// Keep what the board writes to the card (the default, as with a
    /// physical card) or boot a throwaway copy.
    pub card_writes: CardWrites,
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
            .field("card_writes", &self.card_writes)
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
            card_writes: CardWrites::Persist,
        }
    }
}

/// Prepare the target: create it if missing, grow it to a power of two for SD.
fn prepare_target(opts: &QemuOptions, target: &Path) -> Result<()> {
    if !target.exists() {
        let size = opts.target_size.ok_or_else(|| Error::TargetMissing {
            path: target.into(),
        })?;
        let f = std::fs::File::create(target)
            .with_context(|| format!("creating {}", target.display()))?;
        f.set_len(size)
            .with_context(|| format!("sizing {} to {size} bytes", target.display()))?;
        tracing::info!("created target {} ({})", target.display(), iec(size));
    }
    if matches!(opts.board, VirtualBoard::Sd | VirtualBoard::Imx6) {
        let size = file_size(target)?;
        if !size.is_power_of_two() {
            let grown = size.next_power_of_two();
            tracing::warn!(
                "target {} is {}; QEMU's sd-card needs a power-of-two size, so the file grows to {} (the flasher sees {})",
                target.display(),
                iec(size),
                iec(grown),
                iec(grown)
            );
            grow(target, grown)?;
        }
    }
    Ok(())
}

/// What a card's boot FAT gives a board the harness boots directly: the
/// kernel and initramfs, written into the work directory, and the card's
/// kernel arguments.
struct BootFiles {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
}

/// Take the kernel, initramfs and command line from `card`'s boot FAT (see
/// [`card::boot_spec`]) and write the two files into `work`, where QEMU's
/// `-kernel`/`-initrd` read them: the harness playing U-Boot.
fn extract_boot_files(work: &Work, card: &Path) -> Result<BootFiles> {
    let spec = card::boot_spec(card)?;
    let kernel = work.path("kernel");
    std::fs::write(&kernel, &spec.kernel).context("writing the kernel")?;
    let initrd = match &spec.initrd {
        Some(i) => {
            let p = work.path("initrd");
            std::fs::write(&p, i).context("writing the initramfs")?;
            Some(p)
        }
        None => None,
    };
    Ok(BootFiles {
        kernel,
        initrd,
        cmdline: spec.cmdline,
    })
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
    // Locked for the run, and refused before anything else happens if what
    // the board writes to it could not be kept (see `card_writes`).
    let mut boot_card = BootCard::open(&opts.card, opts.card_writes)?;
    if let Some(t) = &opts.target {
        prepare_target(opts, t)?;
    }
    let events_path = opts
        .events
        .clone()
        .unwrap_or_else(|| work.path("events.jsonl"));
    if let Some(parent) = events_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // QEMU opens the serial file itself; start from empty so old events never count.
    std::fs::write(&events_path, b"")
        .with_context(|| format!("creating {}", events_path.display()))?;
    let blkdebug = match fault::blkdebug_config(&opts.faults) {
        Some(cfg) => {
            let p = work.path("blkdebug.conf");
            std::fs::write(&p, cfg).with_context(|| format!("writing {}", p.display()))?;
            Some(p)
        }
        None => None,
    };
    let target_args = opts.target.as_deref().map(|t| {
        (
            blockdev("t0", t, blkdebug.as_deref(), false),
            target_serial(t),
        )
    });

    let (files, vars, dtb);
    let boot = match opts.board {
        VirtualBoard::Sd | VirtualBoard::Imx6 => {
            files = extract_boot_files(&work, &opts.card)?;
            let size = file_size(&opts.card)?;
            // The i.MX6 twin's card is a USB stick: any size. QEMU's sd-card
            // refuses a size that is not a power of two: a padded copy is
            // booted, and the board's writes are copied back after the run.
            let pad = (opts.board == VirtualBoard::Sd && !size.is_power_of_two())
                .then(|| size.next_power_of_two());
            if pad.is_some() || boot_card.discards() {
                boot_card.use_copy(work.path("card-sd.img"), pad)?;
            }
            if let Some(padded) = pad {
                tracing::info!(
                    "card {} is {}: booting a copy padded to {} (QEMU's sd-card needs a power of two); what the board writes to it is {}",
                    opts.card.display(),
                    iec(size),
                    iec(padded),
                    boot_card.fate()
                );
            }
            dtb = match opts.board {
                VirtualBoard::Imx6 => Some(imx6_dtb()?),
                _ => None,
            };
            Boot::Direct {
                kernel: &files.kernel,
                initrd: files.initrd.as_deref(),
                append: direct_append(opts.board, &files.cmdline, &opts.append),
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
            let copy_to = work.path("card-nuc.img");
            if !extra.is_empty() {
                // Firmware reads the arguments from the card, so they go into
                // the loader entries of a copy; that patch never reaches the
                // card, the board's own writes do.
                boot_card.use_patched_copy(copy_to, |c| {
                    card::append_loader_options(c, &extra.join(" ")).map(drop)
                })?;
                tracing::info!(
                    "booting a copy of {} with kernel arguments: {}; what the board writes to it is {}",
                    opts.card.display(),
                    extra.join(" "),
                    boot_card.fate()
                );
            } else if boot_card.discards() {
                boot_card.use_copy(copy_to, None)?;
            }
            Boot::Ovmf { vars: &vars }
        }
    };
    let card_used = boot_card.booted().to_path_buf();
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
    boot_card.starting();
    let end = supervise(
        running,
        &events_path,
        opts.timeout,
        fault::power_cut(&opts.faults),
        opts.on_event.as_ref(),
        opts.board != VirtualBoard::Imx6,
    )?;
    // Whatever the run's verdict, QEMU has stopped: the board's writes go
    // back to the card now (a power cut leaves what a real one would).
    let card_writes = boot_card.finish()?;
    if let Some(e) = qemu_error(&end) {
        return Err(e);
    }
    let exited = end.status.is_some() || end.guest_stopped;
    // A copy in a temporary work directory is gone after this function; the
    // card file holds what the board wrote (unless it was discarded).
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
        card_writes,
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
    let (files, vars);
    let mut disk_used = disk.to_path_buf();
    let boot = match board {
        VirtualBoard::Nuc => {
            vars = work.path("OVMF_VARS.fd");
            copy(Path::new(OVMF_VARS), &vars)?;
            Boot::Ovmf { vars: &vars }
        }
        VirtualBoard::Sd | VirtualBoard::Imx6 => {
            files = extract_boot_files(&work, disk)?;
            let size = file_size(disk)?;
            if !size.is_power_of_two() {
                disk_used = work.path("disk-sd.img");
                copy(disk, &disk_used)?;
                grow(&disk_used, size.next_power_of_two())?;
            }
            Boot::Direct {
                kernel: &files.kernel,
                initrd: files.initrd.as_deref(),
                append: format!("console=ttyS0 panic=-1 {}", files.cmdline),
                dtb: None,
            }
        }
    };
    // The same serial the disk had while it was flashed (one file, one unit).
    let target = (blockdev("t0", &disk_used, None, true), target_serial(disk));
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
