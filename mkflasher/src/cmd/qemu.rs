//! `mkflasher qemu`: boot a flasher card on a virtual board against a virtual
//! target disk, stream the console, collect the JSON events, inject faults.
//! What the board writes to the card is kept on the card file, as with a
//! physical card (`--discard-card-writes` boots a throwaway copy). The result
//! can be written as JSON (`--json`) and JUnit XML (`--junit`) for CI
//! (`crate::qemu_report`). Exit status 0 only when the flasher reported
//! success and the VM powered off.

use crate::qemu_report::{self, Report};
use flasher_format::io::IoContext;
use flasher_qemu::{self as qemu, CardWrites, Fault, QemuOptions, VirtualBoard};
use std::path::{Path, PathBuf};
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
    /// Boot a throwaway copy of the card: what the board writes to it (the
    /// unit record, unit-pool claims) is lost. Without it, a card that cannot
    /// be written is refused before the VM starts.
    #[arg(long)]
    pub discard_card_writes: bool,
    /// Write the result as one JSON object here ("-": standard output, and
    /// the console is then not streamed there): verdict, phases and their
    /// times, blink class, the unit record, the console and events files.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the result as JUnit XML here (one test suite, one test case).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Save the guest console here. Default with --json FILE or --junit FILE:
    /// beside it, as NAME.console.log.
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
}

/// `-` as a file name: standard output.
pub(crate) const STDOUT: &str = "-";

impl RunArgs {
    /// Where the console log goes: `--console-log`, else beside the first
    /// report file (not standard output), else nowhere.
    fn console_log_path(&self) -> Option<PathBuf> {
        self.console_log.clone().or_else(|| {
            [&self.json, &self.junit]
                .into_iter()
                .flatten()
                .find(|p| p.as_os_str() != STDOUT)
                .map(|p| p.with_extension("console.log"))
        })
    }

    fn json_to_stdout(&self) -> bool {
        self.json.as_deref() == Some(Path::new(STDOUT))
    }
}

pub fn run(args: Args) -> crate::Result<()> {
    let args = *args.run;
    let board: VirtualBoard = args.board.parse()?;
    let faults = args
        .fault
        .iter()
        .map(|f| f.parse::<Fault>())
        .collect::<qemu::Result<Vec<_>>>()?;
    let mut opts = QemuOptions::new(board, args.card.clone(), args.target.clone());
    opts.target_size = args
        .target_size
        .as_deref()
        .map(qemu::parse_size)
        .transpose()?;
    opts.events = args.events.clone();
    opts.timeout = Duration::from_secs(args.timeout);
    opts.append = args.append.clone();
    opts.faults = faults;
    // The JSON on standard output must stay parseable.
    opts.stream_console = !args.json_to_stdout();
    opts.work_dir = args.work_dir.clone();
    opts.card_writes = if args.discard_card_writes {
        CardWrites::Discard
    } else {
        CardWrites::Persist
    };
    let reporting = args.json.is_some() || args.junit.is_some();
    let console = args.console_log_path();
    let (report, result) = qemu_report::run_reported(&opts, console.as_deref(), reporting);
    if report.verdict != qemu::Verdict::Error {
        eprintln!(
            "mkflasher qemu: {} after {:.0} s; phases: {}",
            report.verdict,
            report.elapsed_s,
            report.phase_names()
        );
    }
    if let Some(s) = report.init_to_first_write_s {
        eprintln!("mkflasher qemu: /init start to first write: {s:.2} s");
    }
    if reporting {
        write_reports(&args, &report)?;
    }
    result
}

/// Write `--json` and `--junit`, where asked.
fn write_reports(args: &RunArgs, report: &Report) -> crate::Result<()> {
    if let Some(path) = &args.json {
        let text = report.to_json().context("rendering the --json report")?;
        write_out(path, &text)?;
    }
    if let Some(path) = &args.junit {
        let xml = report.junit().context("rendering the --junit report")?;
        write_out(path, &xml)?;
    }
    Ok(())
}

pub(crate) fn write_out(path: &Path, text: &str) -> crate::Result<()> {
    if path.as_os_str() == STDOUT {
        print!("{text}");
        return Ok(());
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
