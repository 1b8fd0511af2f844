//! The harness's one error type: what could not be run (tools, fixtures, the
//! card, QEMU itself) and the verdicts of a run that did not succeed.

use crate::VirtualBoard;
use std::path::PathBuf;

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
    #[error(
        "card {path} cannot be opened for writing ({reason}): what the board writes to it \
         during the run (its unit log, unit-pool claims) would be lost. Make the card file \
         writable, or pass --discard-card-writes (QemuOptions::card_writes = \
         CardWrites::Discard) to boot a throwaway copy"
    )]
    CardNotWritable { path: PathBuf, reason: String },
    #[error(
        "card {path} is in use by another run (another mkflasher qemu, or a test holding its \
         lock): one card boots one board at a time, as a physical card does; wait for that run \
         to end, or give this run a copy of the card"
    )]
    CardBusy { path: PathBuf },
    #[error("target {path} does not exist: pass --target-size to create it")]
    TargetMissing { path: PathBuf },
    #[error("QEMU failed ({status}): {stderr}")]
    QemuFailed { status: String, stderr: String },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
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

impl Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
