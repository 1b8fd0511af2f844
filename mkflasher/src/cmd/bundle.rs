//! `mkflasher bundle IMAGE -o OUT [--bmap FILE]`: turn a raw, .gz, .xz or .zst
//! OS image (detected by magic bytes) into a flasher bundle. Thin: options in,
//! `source::bundle_image` does the work, a summary out.

use crate::source::{self, BundleOptions};
use flasher_format::bundle::{self, ExtentKind, PinnedFile, WriterOptions, DEFAULT_CHUNK_SIZE};
use flasher_format::io::IoContext;
use flasher_format::units::iec;
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
    /// Uncompressed chunk size in KiB (multiple of 4, 64..=4096).
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
    /// Sign the manifest with this key (`mkflasher keygen`).
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Pin a file the board will copy from the card (bootloader, config.json)
    /// by its digest in the manifest: a file pins under its name, a directory
    /// pins every file in it by its path inside. Repeatable. With trusted keys
    /// on the board, unpinned card files are not written.
    #[arg(long, value_name = "PATH")]
    pub pin: Vec<PathBuf>,
    /// Pin the per-unit data pool that `mkflasher build --unit-data FILE.csv`
    /// (with the same --unit-files) puts on the card; it pins the unit files.
    #[arg(long, value_name = "FILE.csv")]
    pub unit_data: Option<PathBuf>,
    /// The --unit-files folder for --unit-data.
    #[arg(long, value_name = "DIR", requires = "unit_data")]
    pub unit_files: Option<PathBuf>,
    /// Bundle format version: 2 (default) digests each chunk with BLAKE3, a
    /// few times cheaper for the board to check than SHA-256; 1 uses
    /// SHA-256, for flashers that read only version 1.
    #[arg(long, default_value_t = bundle::VERSION, value_parser = clap::value_parser!(u32).range(1..=2))]
    pub manifest_version: u32,
    /// What the board compares its read-back with: `xxh3-128` (default,
    /// version 2 only) adds an XXH3-128 per chunk, several times cheaper to
    /// compute than the chunk digest on a board without SIMD; `chunk` reads
    /// back against the chunk digest, as flashers before it do anyway.
    #[arg(long, default_value = bundle::READBACK_XXH3, value_parser = [bundle::READBACK_XXH3, "chunk"])]
    pub readback_digest: String,
}

pub fn run(args: Args) -> crate::Result<()> {
    let mut writer = WriterOptions {
        chunk_size: args.chunk_kib * 1024,
        level: args.level,
        sign: args
            .sign
            .as_deref()
            .map(bundle::read_secret_key)
            .transpose()
            .map_err(flasher::Error::from)?,
        files: pins(&args.pin)?,
        chunk_digest: if args.manifest_version == 1 {
            bundle::ChunkDigest::Sha256
        } else {
            bundle::ChunkDigest::Blake3
        },
        readback_digest: args.readback_digest == bundle::READBACK_XXH3,
        ..Default::default()
    };
    if let Some(csv) = &args.unit_data {
        let p = crate::pool::read(csv, args.unit_files.as_deref())?;
        writer
            .files
            .push(PinnedFile::new(flasher_format::pool::POOL_FILE, &p.bytes));
    }
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
    if let Some(k) = &opts.writer.sign {
        tracing::info!(
            "signed by {}; {} card file(s) pinned",
            k.public().fingerprint(),
            m.files.len()
        );
    }
    tracing::info!(
        "bundled {} ({} bytes, sha256 {}): {} data, {} must-be-zero, {} don't-care, {} chunks; bundle {} (version {}, chunk digest {}, read-back digest {}) is {}",
        iec(m.image_size),
        m.image_size,
        m.image_sha256,
        iec(m.bytes_of(ExtentKind::Data)),
        iec(m.bytes_of(ExtentKind::MustBeZero)),
        iec(m.bytes_of(ExtentKind::DontCare)),
        m.chunks.len(),
        args.output.display(),
        m.version,
        m.chunk_digest,
        if m.readback_digest.is_empty() {
            &m.chunk_digest
        } else {
            &m.readback_digest
        },
        iec(len)
    );
    Ok(())
}

/// The pins for `--pin` paths: a file under its own name, each file of a
/// directory (recursively) under its path inside it, `/`-separated, named as
/// the card builder names the files it copies from a directory.
pub fn pins(paths: &[PathBuf]) -> crate::Result<Vec<PinnedFile>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files = Vec::new();
            crate::card::add_tree(p, "", &mut files)?;
            out.extend(files.iter().map(|f| PinnedFile::new(&f.path, &f.data)));
        } else {
            let data =
                std::fs::read(p).with_context(|| format!("read {} to pin it", p.display()))?;
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            out.push(PinnedFile::new(name, &data));
        }
    }
    Ok(out)
}

/// Bundle-format errors surface as the flasher crate's bundle errors (the same
/// variants `flasher write` reports); image-reading errors keep their own type.
fn source_error(e: source::Error) -> crate::Error {
    match e {
        source::Error::Bundle(b) => crate::Error::Flasher(flasher::Error::Bundle(b)),
        source::Error::Io(e) => crate::Error::Io(e),
        other => crate::Error::Source(other),
    }
}
