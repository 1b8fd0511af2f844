//! `mkflasher qemu-matrix FILE`: the scenarios of a matrix file run in
//! parallel, with one report (`crate::qemu_matrix`; docs/qemu.md "Scenario
//! matrices"). Exit status 0 only when every scenario met its expectation.

use crate::qemu_matrix::{self, RunOptions};
use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The matrix file (TOML): [defaults] and [[scenario]] tables.
    pub matrix: PathBuf,
    /// Scenarios run at once (each QEMU run keeps about one core busy).
    /// Default: the file's `jobs`, else the number of usable CPUs.
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Where each scenario's folder (target, console log, events, scratch)
    /// and the cards built from images go. Default: NAME.work in the
    /// current directory, NAME being the matrix file's stem.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Write the summary as JSON here ("-": standard output, and the table
    /// goes to standard error): every scenario's report as `mkflasher qemu
    /// --json` writes it, its expectation and whether it was met.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one JUnit XML file: one test suite, one test case per scenario.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
}

pub fn run(args: Args) -> crate::Result<()> {
    let matrix = qemu_matrix::load(&args.matrix)?;
    let work_dir = args.work_dir.clone().unwrap_or_else(|| {
        let stem = args
            .matrix
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        PathBuf::from(format!("{stem}.work"))
    });
    let opts = RunOptions {
        jobs: args.jobs,
        work_dir,
        progress: true,
    };
    let summary = qemu_matrix::run(&matrix, &opts)?;
    let json_to_stdout = args.json.as_deref() == Some(Path::new(super::qemu::STDOUT));
    if let Some(path) = &args.json {
        let text = summary.to_json().context("rendering the --json summary")?;
        super::qemu::write_out(path, &text)?;
    }
    if let Some(path) = &args.junit {
        let xml = summary.junit().context("rendering the --junit report")?;
        super::qemu::write_out(path, &xml)?;
    }
    if json_to_stdout {
        eprint!("{}", summary.table());
    } else {
        print!("{}", summary.table());
    }
    Ok(summary.check()?)
}
