//! The board's PID 1: the library behind `flasher-init`, the only binary that
//! runs as `/init` (in the initramfs of a flasher card). Owns the early mounts,
//! module loading, the watchdog, power-off, the console and event output, the
//! unit log, the panic hook, and the orchestration of a whole flash. The
//! `flasher.*` kernel command line options are parsed by
//! `flasher_format::cmdline`; the flash itself (storage, pipeline, eMMC) is the
//! engine's, the `flasher` crate.
//!
//! Each piece takes a root path or an injected backend, so all of it is tested
//! without being PID 1 (docs/architecture.md rule 6); real boots run in the QEMU
//! tests.
//!
//! - [`run`]: the sequence over the [`run::Steps`] trait; [`real`] implements it.
//! - [`mounts`]: the early mount table, the console.
//! - [`modules`]: `finit_module` in load order, waiting for block devices.
//! - [`watchdog`]: feeding while the run makes progress, and the magic close.
//! - [`power`]: sync and `reboot(2)`, or park forever.
//! - [`card`]: the target's boot FAT, files on the card's flash-boot FAT.
//! - [`emmc`]: the eMMC health gate and the boot-partition enable.
//! - [`unit_log`]: the unit log on the card: room, attempt counting, records.
//! - [`sinks`]: the event fan-out to the console, event lines, watchdog and LEDs.
//! - [`console`]: readable lines and JSON event lines.
//! - [`log`]: library `tracing` lines on the console.
//! - [`panic`](mod@panic): the panic hook (error class 8).

pub mod card;

pub mod console;
pub mod emmc;
pub mod log;
pub mod modules;
pub mod mounts;
pub mod panic;
pub mod power;
pub mod real;
pub mod run;
pub mod sinks;
pub mod unit_log;
pub mod watchdog;

use std::path::{Path, PathBuf};
use std::time::Duration;

use flasher_format::ErrorClass;
use nix::errno::Errno;

pub use flasher_format::cmdline::After;
pub use flasher_format::cmdline::Options;
pub use run::{drive, Outcome, Step, Steps};

/// Errors of the board's PID 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{command} failed: {errno}; is the kernel built with this filesystem?")]
    Mount { command: String, errno: Errno },
    #[error("create mount point {path}: {source}")]
    MountPoint {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open console {path}: {source}; output goes to the kernel's initial stdout")]
    Console {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("attach the console to fd {fd}: {errno}")]
    Dup { fd: i32, errno: Errno },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cmdline(#[from] flasher_format::cmdline::Error),
    #[error(
        "no storage appeared after {} s (saw: {seen}); check the board's kernel modules, or raise flasher.timeout=",
        (waited.as_millis() + 500) / 1000
    )]
    NoBlockDevices { waited: Duration, seen: String },
    #[error("open watchdog {path}: {source}; check the board's watchdog setting")]
    Watchdog {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("open events output {path}: {source}; check flasher.events=")]
    Events {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no flasher-payload partition{}; is the flasher card inserted, and was it made with `mkflasher build`? saw: {seen}",
        disk.as_ref().map(|d| format!(" on boot disk {d}")).unwrap_or_else(|| " on any disk".into()))]
    NoPayload { disk: Option<String>, seen: String },
    #[error("flasher.target={name} refused: {why}; saw: {seen}")]
    TargetRefused {
        name: String,
        why: String,
        seen: String,
    },
    #[error("target {identity} already had {attempts} flash attempts that failed or never finished (a watchdog reset on a hang, a power cut), per the unit log on {}{}; not writing it again. Check or replace this unit's storage, or add flasher.retry-unit to the kernel command line to try it anyway",
        log.display(),
        last.as_ref().map(|m| format!("; the last recorded failure: {m}")).unwrap_or_default())]
    UnitAttempts {
        identity: String,
        attempts: u32,
        log: PathBuf,
        /// How the last recorded attempt ended, if it got that far.
        last: Option<String>,
    },
    #[error("bootloader file {file} is not on the card's flash-boot partition{}; rebuild the card with the board's bootloader files",
        card.as_ref().map(|c| format!(" ({})", c.display())).unwrap_or_else(|| " (no flash-boot partition found)".into()))]
    BootloaderFile { file: String, card: Option<PathBuf> },
    #[error("the image written to {target} has no FAT boot partition to copy the card's configuration onto; remove the configuration from the card or use an image with a FAT boot partition")]
    NoTargetBoot { target: PathBuf },
    #[error("no flasher-log partition on the boot medium; this run is not recorded (rebuild the card with `mkflasher build` to get one)")]
    NoLog,
    #[error("the card has a per-unit data pool but no flasher-log partition to record the claim in, so a row could be handed out twice; nothing was written. Rebuild the card with `mkflasher build --unit-data`")]
    PoolWithoutLog,
    #[error("{what} is not available: {detail}")]
    NotAvailable { what: &'static str, detail: String },
    #[error("internal error: {0}")]
    Panic(String),
    /// The engine's errors (pipeline, storage, eMMC, bundle, board, records).
    #[error(transparent)]
    Engine(#[from] flasher::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The engine's own error domains convert through `flasher::Error`, so `?`
/// works on them in the init as it does in the engine.
macro_rules! via_engine {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Engine(e.into())
            }
        })*
    };
}
via_engine!(
    flasher_format::io::IoError,
    flasher_format::bundle::Error,
    flasher_format::record::Error,
    flasher_format::pool::Error,
    flasher::pipeline::Error,
    flasher::blockdev::Error,
    flasher::fixup::Error,
    flasher::storage::Error,
    flasher::emmc::Error,
    flasher::config_inject::Error,
    boards::Error,
);

impl Error {
    /// The class of one of this module's errors, without knowing the step
    /// (docs/leds.md). `Internal` here means "no class of its own": a step
    /// gives such errors its class (`Step::classify`).
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        match self {
            Error::Engine(e) => e.class(),
            Error::Cmdline(e) => e.class(),
            Error::NoBlockDevices { .. } => C::NoStorage,
            Error::NoPayload { .. } | Error::PoolWithoutLog => C::PayloadInvalid,
            Error::BootloaderFile { .. } | Error::NoTargetBoot { .. } | Error::NoLog => {
                C::PostWrite
            }
            Error::TargetRefused { .. } | Error::UnitAttempts { .. } => C::TargetRefused,
            Error::Watchdog { .. } | Error::NotAvailable { .. } => C::BoardConfig,
            Error::Mount { .. }
            | Error::MountPoint { .. }
            | Error::Console { .. }
            | Error::Dup { .. }
            | Error::Read { .. }
            | Error::Events { .. }
            | Error::Panic(_) => C::Internal,
        }
    }
}

impl Step {
    /// The class a step's failures have when the error says nothing more specific.
    pub fn class(self) -> ErrorClass {
        use ErrorClass as C;
        match self {
            Step::Mount => C::Internal,
            Step::Cmdline | Step::Board | Step::Watchdog => C::BoardConfig,
            Step::Modules | Step::Storage | Step::Target => C::NoStorage,
            Step::Payload => C::PayloadInvalid,
            Step::Write | Step::Commit => C::WriteIo,
            Step::Fixups | Step::Bootloader | Step::Config | Step::Record => C::PostWrite,
        }
    }

    fn is_post_write(self) -> bool {
        matches!(
            self,
            Step::Fixups | Step::Bootloader | Step::Config | Step::Record
        )
    }

    /// The class of an error in this step. Post-write steps are always
    /// `PostWrite` (the image is on the target, something after it failed); a
    /// panic is always `Internal`; an error with no class of its own (plain I/O,
    /// "not available") takes the step's class.
    pub fn classify(self, e: &crate::Error) -> ErrorClass {
        match e {
            Error::Panic(_) => ErrorClass::Internal,
            _ if self.is_post_write() => ErrorClass::PostWrite,
            Error::NotAvailable { .. }
            | crate::Error::Engine(flasher::Error::Io(_))
            | crate::Error::Engine(flasher::Error::Usage(_)) => self.class(),
            i if !matches!(i, Error::Engine(_)) && i.class() == ErrorClass::Internal => {
                self.class()
            }
            other => other.class(),
        }
    }
}

/// Run as PID 1. Never returns and never exits: every ending is a power-off, a
/// reboot, or parking forever.
///
/// The root is `/`, or `$FLASHER_ROOT` for trying the sequence on a fake tree. When
/// not PID 1 (`flasher-init` run by hand on a workstation) the early mounts, the
/// console takeover and `reboot(2)` are skipped: they would disturb the host.
pub fn main() -> ! {
    let root = std::env::var_os("FLASHER_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    let pid1 = std::process::id() == 1;
    // Library log lines (e.g. the pipeline's O_DIRECT fallback) go to the console.
    log::ConsoleLog::install(tracing::Level::INFO);
    let r = std::panic::catch_unwind(|| {
        let mut steps = real::Real::new(&root, pid1);
        panic::install(steps.observer());
        // `drive` ends in `finish`, which powers off or parks; it returns only if
        // the reboot call came back.
        let _ = drive(&mut steps);
    });
    if let Err(payload) = r {
        eprintln!(
            "flasher: internal error outside a step: {}",
            panic::message(&*payload)
        );
    }
    park()
}

/// Sleep forever. PID 1 must never exit: the kernel would panic.
pub fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Where a path from board data or the command line lives under `root`.
pub(crate) fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass as C;

    fn init(e: impl Into<crate::Error>) -> crate::Error {
        e.into()
    }

    #[test]
    fn classes() {
        let cmd = Error::Cmdline(flasher_format::cmdline::Error {
            option: "flasher.board".into(),
            value: "x".into(),
            reason: "unknown".into(),
        });
        assert_eq!(cmd.class(), C::BoardConfig);
        assert_eq!(Step::Cmdline.classify(&init(cmd)), C::BoardConfig);
        let nodev = Error::NoBlockDevices {
            waited: Duration::from_secs(30),
            seen: String::new(),
        };
        let nodev = init(nodev);
        assert_eq!(Step::Modules.classify(&nodev), C::NoStorage);
        assert_eq!(Step::Config.classify(&nodev), C::PostWrite);
        assert_eq!(
            Step::Write.classify(&init(Error::Panic("x".into()))),
            C::Internal
        );
        let io = flasher::Error::Io(flasher_format::io::IoError::new(
            "write /dev/mmcblk1",
            std::io::Error::other("EIO"),
        ));
        assert_eq!(io.class(), C::Internal);
        let io = init(io);
        assert_eq!(Step::Write.classify(&io), C::WriteIo);
        assert_eq!(Step::Config.classify(&io), C::PostWrite);
        assert_eq!(Step::Target.classify(&io), C::NoStorage);
        let read = Error::Read {
            path: "/proc/cmdline".into(),
            source: std::io::Error::other("x"),
        };
        let read = init(read);
        assert_eq!(Step::Cmdline.classify(&read), C::BoardConfig);
        assert_eq!(Step::Mount.classify(&read), C::Internal);
    }

    #[test]
    fn classes_of_other_parts() {
        let unknown = crate::Error::Engine(flasher::Error::Board(boards::Error::UnknownBoard {
            name: "bbx".into(),
            known: vec!["beaglebone-black".into()],
        }));
        assert_eq!(Step::Board.classify(&unknown), C::BoardConfig);
        let verify = crate::Error::Engine(flasher::Error::Pipeline(
            flasher::pipeline::Error::VerifyMismatch {
                offset: 4096,
                length: 4096,
                what: "image data".into(),
            },
        ));
        assert_eq!(Step::Write.classify(&verify), C::VerifyMismatch);
        let small = crate::Error::Engine(flasher::Error::Pipeline(
            flasher::pipeline::Error::TargetTooSmall {
                path: "/dev/mmcblk1".into(),
                target: 1 << 30,
                image: 4 << 30,
            },
        ));
        assert_eq!(Step::Write.classify(&small), C::TargetRefused);
        let ro = crate::Error::Engine(flasher::Error::BlockDev(
            flasher::blockdev::Error::ReadOnly {
                path: "/dev/mmcblk1".into(),
                reason: "force_ro".into(),
            },
        ));
        assert_eq!(Step::Write.classify(&ro), C::TargetRefused);
        let werr =
            crate::Error::Engine(flasher::Error::Pipeline(flasher::pipeline::Error::Write {
                offset: 0,
                length: 512,
                source: std::io::Error::other("EIO"),
            }));
        assert_eq!(Step::Write.classify(&werr), C::WriteIo);
        let full = crate::Error::Engine(flasher::Error::Record(
            flasher_format::record::Error::LogFull {
                used: 1,
                capacity: 1,
                needed: 2,
            },
        ));
        assert_eq!(Step::Record.classify(&full), C::PostWrite);
        assert_eq!(full.class(), C::PostWrite);
    }

    #[test]
    fn messages_carry_values() {
        let e = Error::NoBlockDevices {
            waited: Duration::from_secs(30),
            seen: "loop0, ram0".into(),
        };
        assert_eq!(
            e.to_string(),
            "no storage appeared after 30 s (saw: loop0, ram0); check the board's kernel modules, or raise flasher.timeout="
        );
    }
}

#[cfg(test)]
mod e2e_tests;
