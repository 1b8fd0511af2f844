//! `mkflasher qemu`: boot a flasher card on a virtual board against a virtual
//! target disk, stream the console, collect the JSON events, inject faults.
//! Exit status 0 only when the flasher reported success and the VM powered off.

use flasher_qemu::{self as qemu, Fault, QemuOptions, VirtualBoard};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Boxed: keeps `mkflasher`'s command enum small (clippy::large_enum_variant).
    #[command(flatten)]
    pub run: Box<RunArgs>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Virtual board: qemu-x86_64-sd, qemu-x86_64-nuc or qemu-imx6-nitrogen6x.
    #[arg(long)]
    pub board: String,
    /// The flasher card image (from `mkflasher build`).
    pub card: PathBuf,
    /// The target disk image (the board's internal storage).
    #[arg(
        long,
        required_unless_present = "no_target",
        conflicts_with = "no_target"
    )]
    pub target: Option<PathBuf>,
    /// Boot with no internal disk at all (the flasher must refuse clearly).
    #[arg(long)]
    pub no_target: bool,
    /// Create the target at this size if it does not exist (e.g. 64M).
    #[arg(long)]
    pub target_size: Option<String>,
    /// Write the flasher's JSON event lines here.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Seconds before the VM is killed.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// io-error@OFFSET (every write touching that byte's sector fails),
    /// read-error@OFFSET (every read of it fails; QEMU's sd-card then returns
    /// its previous buffer without an error) or power-cut-at=PERCENT (kill
    /// the VM when writing reaches it). Repeatable.
    #[arg(long)]
    pub fault: Vec<String>,
    /// Extra kernel arguments, e.g. "flasher.board=bogus".
    #[arg(long)]
    pub append: Vec<String>,
    /// Keep scratch files (card copies, OVMF vars, blkdebug config) here.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

pub fn run(args: Args) -> crate::Result<()> {
    let args = *args.run;
    let board: VirtualBoard = args.board.parse()?;
    let faults = args
        .fault
        .iter()
        .map(|f| f.parse::<Fault>())
        .collect::<qemu::Result<Vec<_>>>()?;
    let mut opts = QemuOptions::new(board, args.card, args.target);
    opts.target_size = args
        .target_size
        .as_deref()
        .map(qemu::parse_size)
        .transpose()?;
    opts.events = args.events;
    opts.timeout = Duration::from_secs(args.timeout);
    opts.append = args.append;
    opts.faults = faults;
    opts.stream_console = true;
    opts.work_dir = args.work_dir;
    let outcome = qemu::run(&opts)?;
    eprintln!(
        "mkflasher qemu: {} after {:.0} s; phases: {}",
        if outcome.succeeded() {
            "success"
        } else {
            "FAILED"
        },
        outcome.elapsed.as_secs_f64(),
        outcome.phase_names()
    );
    if let Some(d) = outcome.init_to_first_write() {
        eprintln!(
            "mkflasher qemu: /init start to first write: {:.2} s",
            d.as_secs_f64()
        );
    }
    outcome.check(opts.timeout, qemu::fault::power_cut(&opts.faults))?;
    Ok(())
}
