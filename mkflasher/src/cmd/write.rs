//! `mkflasher write IMAGE TARGET...`: write an image (raw, .gz, .xz, .zst, a
//! bundle or a card) to cards or files, validated. Thin: options in,
//! `hostwrite::write` does the work, a table (and `--json` lines) out.

use crate::hostwrite::{self, Display, Options, TamperFault};
use flasher::pipeline::Verify;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image: raw, gzip, xz or zstd (detected by content), a bundle, or a
    /// card from `mkflasher build`.
    pub image: PathBuf,
    /// Block devices (whole disks, see `mkflasher drives`) or regular files.
    /// Several are written at once from one read of the image.
    #[arg(required = true)]
    pub targets: Vec<PathBuf>,
    /// Do not ask for confirmation before writing block devices.
    #[arg(short, long)]
    pub yes: bool,
    /// Do not read the targets back after writing.
    #[arg(long)]
    pub no_verify: bool,
    /// Allow internal (non-removable) disks and virtual devices such as loop
    /// devices. The system disk and the disk holding the image are never written.
    #[arg(long)]
    pub allow_non_removable: bool,
    /// Print one JSON result object per target on stdout (the table goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Where a raw or compressed image is prepared as a bundle (default: $TMPDIR,
    /// else /var/tmp); needs up to twice the compressed size while preparing.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,
    /// Use buffered I/O instead of O_DIRECT (the read-back then drops the page cache).
    #[arg(long)]
    pub no_direct: bool,
    /// Root of /proc and /sys (for tests).
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
    /// Fault injection for tests: INDEX:OFFSET flips the byte at OFFSET of
    /// target INDEX (from 0) between the write and the read-back.
    #[arg(long, hide = true, value_parser = parse_tamper)]
    pub fault_tamper: Option<TamperFault>,
}

fn parse_tamper(s: &str) -> Result<TamperFault, String> {
    let (t, o) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected INDEX:OFFSET"))?;
    Ok(TamperFault {
        target: t.parse().map_err(|e| format!("{t:?}: {e}"))?,
        offset: o.parse().map_err(|e| format!("{o:?}: {e}"))?,
    })
}

pub fn run(args: Args) -> crate::Result<()> {
    flasher::pipeline::fixed_mmap_threshold();
    let defaults = Options::default();
    let opts = Options {
        root: args.root,
        yes: args.yes,
        verify: if args.no_verify {
            Verify::None
        } else {
            Verify::Full
        },
        allow_non_removable: args.allow_non_removable,
        tmp_dir: args.tmp_dir.unwrap_or(defaults.tmp_dir),
        direct: !args.no_direct,
        tamper: args.fault_tamper,
    };
    let outcomes = hostwrite::write(&args.image, &args.targets, &opts, &Display::auto())?;
    let table = hostwrite::table(&outcomes);
    if args.json {
        eprint!("{table}");
        for o in &outcomes {
            let s = serde_json::to_string(&o.json())
                .map_err(|e| crate::Error::Usage(format!("result to JSON: {e}")))?;
            println!("{s}");
        }
    } else {
        print!("{table}");
    }
    Ok(hostwrite::failures(&outcomes)?)
}
