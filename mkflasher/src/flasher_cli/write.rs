//! `flasher write`: write a bundle onto a block device or file and verify it.
//! Thin: parse, pick a progress display (an indicatif bar when stderr is a
//! terminal, log lines otherwise), call `pipeline::write_bundle`, print the report.

use flasher::pipeline::{self, Verify, WriteOptions};
use flasher::progress::{Event, Observer};
use flasher_format::io::IoContext;
use flasher_format::units::iec;
use flasher_format::Phase;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bundle (a file, or a raw partition holding one; bytes after the bundle are ignored).
    #[arg(long)]
    pub payload: PathBuf,
    /// The block device or regular file to write (must be at least the image size).
    #[arg(long)]
    pub target: PathBuf,
    /// Read back every written byte after a flush (full) or not (none).
    #[arg(long, value_enum, default_value_t = VerifyArg::Full)]
    pub verify: VerifyArg,
    /// Grow the last partition to the end of a larger target.
    #[arg(long)]
    pub expand_data: bool,
    /// Use buffered I/O instead of O_DIRECT.
    #[arg(long)]
    pub no_direct: bool,
    /// Decompression threads (default: CPUs, at most 4).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Also recompute the whole-image SHA-256 (zeros included) and check it
    /// before the first blocks are written. Every chunk's digest is always
    /// checked; this costs a full-image hash.
    #[arg(long)]
    pub image_digest: bool,
    /// Read each range of the target first and write only the blocks that
    /// differ (re-flashing a target that holds the same or a similar image);
    /// every byte is still read from the device and compared once (chunks
    /// found equal by that first read are not read again).
    #[arg(long)]
    pub skip_equal: bool,
    /// Root of /proc and /sys for the mounted-target check (for tests).
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
    /// Write only bundles signed by this key (a `.pub` file from `mkflasher
    /// keygen`); repeat for several. Without it an unsigned bundle is written
    /// with a warning.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// Print the write report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `--verify`: the engine's [`Verify`] as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyArg {
    /// Read back every written or zeroed byte, bypassing the page cache.
    Full,
    /// Trust the writes (chunk digests are still checked before writing).
    None,
}

impl From<VerifyArg> for Verify {
    fn from(v: VerifyArg) -> Verify {
        match v {
            VerifyArg::Full => Verify::Full,
            VerifyArg::None => Verify::None,
        }
    }
}

pub fn run(args: Args) -> flasher::Result<()> {
    pipeline::fixed_mmap_threshold();
    let defaults = WriteOptions::default();
    let opts = WriteOptions {
        verify: args.verify.into(),
        expand_data: args.expand_data,
        root: args.root.clone(),
        direct: !args.no_direct,
        workers: args.workers.unwrap_or(defaults.workers).max(1),
        image_digest: args.image_digest,
        defer_commit: false,
        require_boot_fat: false,
        skip_equal: args.skip_equal,
        trust: flasher_format::bundle::Trust::from_files(&args.trust)?,
    };

    let f = std::fs::File::open(&args.payload)
        .with_context(|| format!("open payload {}", args.payload.display()))?;
    // Chunk reads larger than the buffer bypass it (no extra copy).
    let payload = std::io::BufReader::with_capacity(256 << 10, f);
    let obs: Box<dyn Observer> = if std::io::stderr().is_terminal() {
        Box::new(Bar::default())
    } else {
        Box::new(LogLines::default())
    };
    let mut payload = payload;
    let opened = flasher_format::bundle::read_manifest(&mut payload)?;
    if opts.trust.check(&opened)? == flasher_format::bundle::Signer::Unsigned {
        tracing::warn!("{}", flasher_format::bundle::UNSIGNED_WARNING);
    }
    let report = pipeline::write_bundle(&opened, payload, &args.target, &opts, obs.as_ref())?;
    drop(obs);
    tracing::info!(
        "wrote {} ({} bytes, sha256 {}, {}) to {}: {} data, {} zeroed, {} left as it was, {} verified, {} written last; write {:.1}s, verify {:.1}s, finish {:.1}s{}",
        iec(report.image_size),
        report.image_size,
        report.image_sha256,
        report.signer,
        args.target.display(),
        iec(report.bytes_written),
        iec(report.bytes_zeroed),
        iec(report.bytes_skipped),
        iec(report.bytes_verified),
        iec(report.held_back),
        report.durations.write.as_secs_f64(),
        report.durations.verify.as_secs_f64(),
        report.durations.finish.as_secs_f64(),
        if report.direct_io { "" } else { " (buffered I/O)" }
    );
    if args.json {
        #[derive(serde::Serialize)]
        struct Output<'a> {
            #[serde(flatten)]
            report: &'a pipeline::WriteReport,
            /// This process's peak resident memory (VmHWM), for benchmarks
            /// and the memory-bound test.
            peak_rss_kib: Option<u64>,
        }
        let out = Output {
            report: &report,
            peak_rss_kib: peak_rss_kib(),
        };
        let s = serde_json::to_string(&out)
            .map_err(|e| flasher::Error::Usage(format!("report to JSON: {e}")))?;
        println!("{s}");
    }
    Ok(())
}

/// `VmHWM` from /proc/self/status: the peak RSS of this process image (it
/// starts afresh at exec, unlike a parent's view through wait4).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Progress as an indicatif bar per byte-counting phase.
#[derive(Default)]
struct Bar(Mutex<Option<(Phase, indicatif::ProgressBar)>>);

impl Observer for Bar {
    fn event(&self, e: &Event) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some((done, total, _)) = e.bytes() else {
            if let Some((_, b)) = g.take() {
                b.finish();
            }
            if let Some(m) = e.text() {
                eprintln!("{}: {m}", e.phase);
            }
            return;
        };
        if g.as_ref().map(|(p, _)| *p) != Some(e.phase) {
            if let Some((_, b)) = g.take() {
                b.finish();
            }
            let b = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_message(e.phase.to_string());
            *g = Some((e.phase, b));
        }
        if let Some((_, b)) = g.as_ref() {
            b.set_position(done);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some((_, b)) = self.0.lock().unwrap_or_else(|p| p.into_inner()).take() {
            b.finish();
        }
    }
}

/// Progress as log lines: each phase start and every 10 %.
#[derive(Default)]
struct LogLines(Mutex<Option<(Phase, u64)>>);

impl Observer for LogLines {
    fn event(&self, e: &Event) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some((done, total, rate)) = e.bytes() else {
            tracing::info!(
                "{}{}",
                e.phase,
                e.text().map(|m| format!(": {m}")).unwrap_or_default()
            );
            *g = None;
            return;
        };
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        let step = pct / 10;
        match *g {
            Some((p, s)) if p == e.phase && s == step => {}
            _ => {
                tracing::info!(
                    "{}: {pct}% ({} of {}, {}/s)",
                    e.phase,
                    iec(done),
                    iec(total),
                    iec(rate)
                );
                *g = Some((e.phase, step));
            }
        }
    }
}
