//! The QEMU harness: three virtual boards that boot a flasher card against a
//! virtual target disk, stream the console, collect the flasher's JSON events
//! from a serial port of their own, and inject faults (blkdebug I/O errors,
//! power cuts). Used by `mkflasher qemu`, `mkflasher demo` and the QEMU
//! scenarios in `tests/e2e`.
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
//! machines. The fixtures (QEMU, OVMF, the Debian kernels) come from
//! `qemu-fixtures/setup`; docs/qemu.md describes the boards and the scenarios.
//!
//! The modules, by concern (the public API is re-exported here):
//!
//! - `board`: the virtual boards and what each needs on the host;
//! - `args`: the QEMU command line and the kernel arguments per board;
//! - `process`: spawning QEMU, tailing the events, ending the run;
//! - `events`: the event stream, parsed line by line;
//! - `outcome`: what a run produced and the verdicts on it;
//! - `run`: one run start to end ([`run()`], [`boot_disk`]), on scratch space
//!   from `work`;
//! - `card_writes`: the card behaves like a physical card: what the board
//!   writes to it lands on the card file ([`CardWrites`], [`CardWriteBack`]);
//! - `size`: sizes as typed (`64M`);
//! - [`card`] (boot files from a card's FAT), [`fault`] (fault specs),
//!   [`locate`] (where the fixtures and board binaries are).

mod args;
mod board;
pub mod card;
mod card_writes;
mod error;
mod events;
pub mod fault;
pub mod locate;
mod outcome;
mod process;
mod run;
mod size;
mod work;

pub use args::target_serial;
pub use board::{VirtualBoard, EVENTS_TTY, IMX6_DTB, IMX6_EVENTS_TTY, OVMF_CODE, OVMF_VARS};
pub use card_writes::{CardWriteBack, CardWrites};
pub use error::{Error, Result};
pub use events::{parse_events, BadLine, EventHook};
pub use fault::Fault;
pub use outcome::{PhaseTime, QemuOutcome, Verdict};
pub use process::FIRMWARE_GAVE_UP;
pub use run::{boot_disk, boot_disk_log, run, QemuOptions};
pub use size::parse_size;

/// What the demo OS's `/init` prints once it is up (see `bin/demo-os-init.rs`).
pub const DEMO_MARKER: &str = "FLASHER-DEMO-OS: booted OK";
