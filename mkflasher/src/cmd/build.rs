//! `mkflasher build`: the flasher card image for a board (see `card`).

use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

use flasher_format::bundle;

use crate::card::{self, CardSpec};
use crate::cmd::initramfs as initrd;
use crate::cpio::Compression;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Board name, e.g. qemu-x86_64-nuc.
    #[arg(long)]
    pub board: String,
    /// The bundle made by `mkflasher bundle` (stored byte for byte), or an OS
    /// image (raw, .gz, .xz, .zst), which is bundled first as `mkflasher bundle`
    /// would.
    #[arg(long)]
    pub payload: PathBuf,
    /// With an image as --payload: its bmap (unmapped blocks become don't-care).
    #[arg(long)]
    pub bmap: Option<PathBuf>,
    /// Output card image.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Kernel image. QEMU boards default to qemu-fixtures/cache/kernel/boot/vmlinuz-*,
    /// armv7 boards to Debian's armmp kernel (debian-parts/armmp/boot/vmlinuz-*).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// A ready initramfs; by default one is built (as `mkflasher initramfs`).
    #[arg(long)]
    pub initramfs: Option<PathBuf>,
    /// Module tree for the built initramfs (see `mkflasher initramfs`).
    #[arg(long)]
    pub kernel_modules: Option<PathBuf>,
    /// The static init for the built initramfs.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// A board file to use instead of the built-in one.
    #[arg(long)]
    pub board_file: Option<PathBuf>,
    /// Files copied to the root of flash-boot (MLO, u-boot.img, dtbs/, ...).
    /// U-Boot boards: each of the board's Debian pieces found here (by name)
    /// replaces Debian's, and dtbs/ replaces Debian's device trees.
    #[arg(long)]
    pub bootloader_files: Option<PathBuf>,
    /// systemd-boot EFI binary for x86 boards. Default: the QEMU fixture cache.
    #[arg(long)]
    pub systemd_boot: Option<PathBuf>,
    /// Extra kernel command-line options, e.g. "flasher.verify=full".
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// flasher-log partition size in bytes. Default: room for 10,000 records
    /// (15 MiB), more with --unit-data (a claim and a result per row, twice
    /// over); a size too small for the pool is refused.
    #[arg(long)]
    pub log_size: Option<u64>,
    /// Per-unit data: a CSV with a header row (e.g. hostname,serial,wifi_psk)
    /// and one row per unit. Each board run claims the next row and writes it
    /// into the flashed OS (config.json, flasher-unit.json); docs/factory.md.
    #[arg(long, value_name = "FILE.csv")]
    pub unit_data: Option<PathBuf>,
    /// With --unit-data: a folder of per-unit files (keys, certificates); a
    /// CSV value naming a file in it puts that file on the card's units/ and
    /// onto that unit's boot partition.
    #[arg(long, value_name = "DIR", requires = "unit_data")]
    pub unit_files: Option<PathBuf>,
    /// Make the image at least this many bytes (e.g. 67108864: QEMU's sd-card
    /// needs a power of two). The backup GPT goes at the real end.
    #[arg(long, default_value_t = 0)]
    pub image_size: u64,
    /// Round the image size up to a power of two, so that QEMU's sd-card
    /// takes the card as it is. Not needed for `mkflasher qemu`: it boots a
    /// padded copy of any other card and copies the board's writes back.
    #[arg(long)]
    pub power_of_two: bool,
    /// Trust this signing key on the board (NAME.pub); repeatable. The card's
    /// /init then writes only bundles signed by one of them; the payload and
    /// the bootloader files are checked here first.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
    /// With an image as --payload: sign the bundle made from it with this key,
    /// pinning the board's bootloader files from --bootloader-files.
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
}

/// Resolve defaults into a [`CardSpec`], building the initramfs if needed.
pub fn spec_from_args(args: &Args) -> crate::Result<CardSpec> {
    let ir_args = initrd::Args {
        board: args.board.clone(),
        output: PathBuf::new(),
        kernel_modules: args.kernel_modules.clone(),
        init: args.init.clone(),
        board_file: args.board_file.clone(),
        compress: Compression::Zstd,
        trust: args.trust.clone(),
    };
    let ir_spec = initrd::spec_from_args(&ir_args)?;
    let board = ir_spec.board.clone();
    let cache = flasher_qemu::locate::fixture_cache();
    let unit_pool = args
        .unit_data
        .as_deref()
        .map(|csv| crate::pool::read(csv, args.unit_files.as_deref()))
        .transpose()?;
    let log_size = log_size(args.log_size, unit_pool.as_ref())?;
    // The kernel and the board's boot parts before the payload, which may
    // be bundled first (slow, and a file to clean up).
    let kernel = match &args.kernel {
        Some(k) => k.clone(),
        None => match default_kernel(&board) {
            Some(k) => k,
            None => {
                return Err(card::Error::NoKernel {
                    board: board.name.clone(),
                    hint: if card::is_qemu_board(&board) {
                        " (or run qemu-fixtures/setup to fetch the Debian kernel)".into()
                    } else if board.arch == boards::Arch::Armv7 {
                        " (or run scripts/fetch-debian-parts to fetch Debian's armmp kernel)".into()
                    } else {
                        String::new()
                    },
                }
                .into())
            }
        },
    };
    let parts = if card::is_x86(&board) {
        card::BootParts::default()
    } else {
        card::resolve_parts(
            &board,
            &flasher_qemu::locate::debian_parts(),
            args.bootloader_files.as_deref(),
        )?
    };
    // Check the payload before the (slower) initramfs build.
    let payload = match card::check_bundle(&args.payload) {
        Ok(()) => args.payload.clone(),
        Err(card::Error::NotABundle { .. }) => {
            let out = auto_bundle_path(&args.output);
            tracing::info!(
                "{} is not a bundle: bundling it into {} first",
                args.payload.display(),
                out.display()
            );
            let mut opts = crate::source::BundleOptions {
                bmap: args.bmap.clone(),
                ..Default::default()
            };
            if let Some(k) = &args.sign {
                opts.writer.sign = Some(bundle::read_secret_key(k).map_err(flasher::Error::from)?);
                opts.writer.files = boot_files(&board, args.bootloader_files.as_deref())?
                    .into_iter()
                    .chain(unit_pool.as_ref().map(pool_pin))
                    .map(|(name, data)| bundle::PinnedFile::new(name, &data))
                    .collect();
            }
            crate::source::bundle_image(&args.payload, &out, &opts)?;
            out
        }
        Err(e) => return Err(e.into()),
    };
    if args.sign.is_some() && payload == args.payload {
        return Err(crate::Error::Usage(format!(
            "--sign signs an image bundled by build; {} is already a bundle (sign it with `mkflasher bundle --sign`)",
            args.payload.display()
        )));
    }
    if !ir_spec.trust.is_empty() {
        check_trusted(
            &payload,
            &ir_spec.trust,
            &board,
            args.bootloader_files.as_deref(),
            unit_pool.as_ref(),
        )?;
    }
    let systemd_boot = if card::is_x86(&board) {
        let p = args
            .systemd_boot
            .clone()
            .unwrap_or_else(|| flasher_qemu::locate::qemu_systemd_boot(&cache));
        if !p.is_file() {
            return Err(card::Error::NoSystemdBoot {
                board: board.name.clone(),
                looked: format!("{} does not exist", p.display()),
            }
            .into());
        }
        Some(p)
    } else {
        None
    };
    let initramfs = match &args.initramfs {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => initrd::build(&ir_spec)?.0,
    };
    Ok(CardSpec {
        board,
        payload,
        kernel,
        initramfs,
        systemd_boot,
        bootloader_files: args.bootloader_files.clone(),
        parts,
        cmdline_extra: args.cmdline.clone(),
        unit_files: unit_pool
            .as_ref()
            .map(|p| p.card_files())
            .unwrap_or_default(),
        log_size,
        boot_size: 0,
        image_size: args.image_size,
    })
}

/// Debian's kernel for a board that has a default: the QEMU boards, and every
/// armv7 board (the armmp kernel, `scripts/fetch-debian-parts`).
pub fn default_kernel(board: &boards::Board) -> Option<PathBuf> {
    if !card::is_qemu_board(board) && board.arch != boards::Arch::Armv7 {
        return None;
    }
    flasher_qemu::locate::qemu_kernel_for(
        &flasher_qemu::locate::kernel_cache(board.arch),
        board.arch,
    )
}

/// The board's bootloader files (its placements) as the card will carry them.
fn boot_files(board: &boards::Board, dir: Option<&Path>) -> crate::Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for p in &board.bootloader {
        let file = match p {
            boards::Placement::Raw { file, .. } | boards::Placement::EmmcBoot { file, .. } => file,
        };
        let Some(dir) = dir else {
            return Err(crate::Error::Usage(format!(
                "board {} places bootloader file {file}; pass --bootloader-files DIR",
                board.name
            )));
        };
        let path = dir.join(file.trim_start_matches('/'));
        let data = std::fs::read(&path)
            .with_context(|| format!("read bootloader file {}", path.display()))?;
        out.push((file.clone(), data));
    }
    Ok(out)
}

/// The pool file as a card file to pin: (name, bytes). It pins the `units/`
/// files in turn (it carries their digests).
fn pool_pin(p: &crate::pool::PoolFiles) -> (String, Vec<u8>) {
    (flasher_format::pool::POOL_FILE.to_string(), p.bytes.clone())
}

/// The flasher-log size: `--log-size` if given (refused when smaller than the
/// pool needs), else what the pool needs, at least the default.
fn log_size(given: Option<u64>, pool: Option<&crate::pool::PoolFiles>) -> crate::Result<u64> {
    let need = pool.map(|p| p.log_size()).unwrap_or(0);
    match given {
        Some(n) if n < need => Err(crate::Error::Usage(format!(
            "--log-size {n} bytes is too small for the {} rows of --unit-data: a claim and a result per row, with margin, need {need} bytes; leave --log-size out to size it",
            pool.map(|p| p.pool.rows.len()).unwrap_or(0)
        ))),
        Some(n) => Ok(n),
        None => Ok(need.max(card::DEFAULT_LOG_SIZE)),
    }
}

/// What the board's /init will check, checked on the host first: the payload
/// is signed by a trusted key, and the bootloader files and the unit pool are
/// pinned by its manifest.
fn check_trusted(
    payload: &Path,
    keys: &[bundle::PublicKey],
    board: &boards::Board,
    bootloader_files: Option<&Path>,
    unit_pool: Option<&crate::pool::PoolFiles>,
) -> crate::Result<()> {
    let trust = bundle::Trust::new(keys.to_vec());
    let opened = bundle::read_manifest_file(payload).map_err(flasher::Error::from)?;
    let signer = trust.check(&opened).map_err(flasher::Error::from)?;
    for (name, data) in boot_files(board, bootloader_files)?
        .into_iter()
        .chain(unit_pool.map(pool_pin))
    {
        trust
            .check_file(&opened.manifest, &name, &data)
            .map_err(flasher::Error::from)?;
    }
    tracing::info!("payload signed by trusted key {signer}");
    Ok(())
}

/// Where an image given as `--payload` is bundled: next to the card, removed
/// once the card holds it.
pub fn auto_bundle_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.file_name().unwrap_or_default().to_os_string();
    name.push(".payload.bundle");
    output.with_file_name(name)
}

pub fn run(args: Args) -> crate::Result<()> {
    run_to(&args, &mut std::io::stdout())
}

/// `mkflasher build`, its summary (the card's size, partitions, boot files,
/// command line) written to `out` (`mkflasher qemu-matrix` keeps it in a
/// log file).
pub fn run_to(args: &Args, out: &mut dyn std::io::Write) -> crate::Result<()> {
    let mut spec = spec_from_args(args)?;
    let built = build_with(args, &mut spec, out);
    if spec.payload != args.payload {
        // Our own intermediate bundle; the card now carries it byte for byte.
        let _ = std::fs::remove_file(&spec.payload);
    }
    built
}

fn build_with(args: &Args, spec: &mut CardSpec, out: &mut dyn std::io::Write) -> crate::Result<()> {
    if args.power_of_two {
        // Lay out once to learn the natural size, then round it up.
        let natural = card::natural_size(spec)?;
        spec.image_size = spec.image_size.max(natural).next_power_of_two();
    }
    let r = card::build_card(&args.output, spec)?;
    let mut text = format!(
        "card {}: {} bytes, {:?}\n",
        args.output.display(),
        r.disk.size,
        r.table
    );
    for (name, off, size) in &r.disk.partitions {
        text += &format!("  {name:<16} offset {off:>12}  size {size:>12}\n");
    }
    text += &format!("  boot files: {}\n", r.boot_files.join(", "));
    for (offset, file) in &spec.parts.raw {
        text += &format!("  raw at byte {offset:>7}: {}\n", file.display());
    }
    text += &format!("  cmdline: {}\n", r.cmdline);
    out.write_all(text.as_bytes())
        .context("writing the card's summary")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Item 2 of issue 14: the log is sized for the pool; a `--log-size`
    /// too small for it is refused, a larger one kept.
    #[test]
    fn log_size_follows_the_pool() {
        assert_eq!(log_size(None, None).unwrap(), card::DEFAULT_LOG_SIZE);
        assert_eq!(log_size(Some(1 << 20), None).unwrap(), 1 << 20);
        let t = tempfile::tempdir().unwrap();
        let csv = t.path().join("u.csv");
        let rows: String = (0..20_000)
            .map(|i| format!("unit-{i},{}\n", "k".repeat(64)))
            .collect();
        std::fs::write(&csv, format!("hostname,key\n{rows}")).unwrap();
        let p = crate::pool::read(&csv, None).unwrap();
        let need = p.log_size();
        assert!(need > card::DEFAULT_LOG_SIZE, "{need}");
        assert_eq!(log_size(None, Some(&p)).unwrap(), need);
        assert_eq!(log_size(Some(need + 1), Some(&p)).unwrap(), need + 1);
        assert!(matches!(
            log_size(Some(need - 1), Some(&p)),
            Err(crate::Error::Usage(_))
        ));
    }
}
