//! `mkflasher bundle IMAGE -o OUT [--bmap FILE]`: turn a raw, .gz, .xz or .zst
//! OS image (detected by magic bytes) into a flasher bundle. Thin: options in,
//! `source::bundle_image` does the work, a summary out.

use crate::source::{self, BundleOptions};
use flasher::pipeline::human;
use flasher_format::bundle::{ExtentKind, WriterOptions, DEFAULT_CHUNK_SIZE};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The OS image: raw, gzip, xz or zstd (detected by content, not name).
    pub image: PathBuf,
    /// Where to write the bundle.
    #[arg(short, long)]
    pub output: PathBuf,
    /// A bmaptool block map (format 1.x or 2.0): unmapped blocks become
    /// don't-care and the range checksums are checked.
    #[arg(long)]
    pub bmap: Option<PathBuf>,
    /// Import a bmap whose checksums cannot be checked (sha1, md5) without checking them.
    #[arg(long)]
    pub skip_bmap_checksums: bool,
    /// Uncompressed chunk size in KiB (multiple of 4, 64..=65536).
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE / 1024)]
    pub chunk_kib: u64,
    /// zstd compression level (1..=19).
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Compression threads (default: CPUs, at most 8).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Zero runs at least this long (KiB) become must-be-zero extents.
    #[arg(long, default_value_t = 64)]
    pub min_zero_kib: u64,
}

pub fn run(args: Args) -> crate::Result<()> {
    let mut writer = WriterOptions {
        chunk_size: args.chunk_kib * 1024,
        level: args.level,
        ..Default::default()
    };
    if let Some(w) = args.workers {
        writer.workers = w.max(1);
    }
    let opts = BundleOptions {
        writer,
        min_zero_run: args.min_zero_kib * 1024,
        bmap: args.bmap.clone(),
        skip_bmap_checksums: args.skip_bmap_checksums,
    };
    let m = source::bundle_image(&args.image, &args.output, &opts).map_err(source_error)?;
    let len = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    tracing::info!(
        "bundled {} ({} bytes, sha256 {}): {} data, {} must-be-zero, {} don't-care, {} chunks; bundle {} is {}",
        human(m.image_size),
        m.image_size,
        m.image_sha256,
        human(m.bytes_of(ExtentKind::Data)),
        human(m.bytes_of(ExtentKind::MustBeZero)),
        human(m.bytes_of(ExtentKind::DontCare)),
        m.chunks.len(),
        args.output.display(),
        human(len)
    );
    Ok(())
}

/// Bundle-format errors surface as the flasher crate's bundle errors (the same
/// variants `flasher write` reports); image-reading errors keep their own type.
fn source_error(e: source::Error) -> crate::Error {
    match e {
        source::Error::Bundle(b) => crate::Error::Flasher(flasher::Error::Bundle(b)),
        source::Error::Io { context, source } => crate::Error::Io { context, source },
        other => crate::Error::Source(other),
    }
}
