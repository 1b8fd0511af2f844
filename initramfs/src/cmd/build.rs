//! `mkflasher build`: the flasher card image for a board (see `card`).

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
    /// flasher-log partition size in bytes.
    #[arg(long, default_value_t = card::DEFAULT_LOG_SIZE)]
    pub log_size: u64,
    /// Make the image at least this many bytes (e.g. 67108864: QEMU's sd-card
    /// needs a power of two). The backup GPT goes at the real end.
    #[arg(long, default_value_t = 0)]
    pub image_size: u64,
    /// Round the image size up to a power of two (for QEMU's sd-card).
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
    let cache = crate::locate::fixture_cache();
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
            &crate::locate::debian_parts(),
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
        )?;
    }
    let systemd_boot = if card::is_x86(&board) {
        let p = args
            .systemd_boot
            .clone()
            .unwrap_or_else(|| crate::locate::qemu_systemd_boot(&cache));
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
        Some(p) => {
            std::fs::read(p).map_err(|e| crate::Error::io(format!("reading {}", p.display()), e))?
        }
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
        log_size: args.log_size,
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
    crate::locate::qemu_kernel_for(&crate::locate::kernel_cache(board.arch), board.arch)
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
            .map_err(|e| crate::Error::io(format!("read bootloader file {}", path.display()), e))?;
        out.push((file.clone(), data));
    }
    Ok(out)
}

/// What the board's /init will check, checked on the host first: the payload
/// is signed by a trusted key, and the bootloader files are pinned by its
/// manifest.
fn check_trusted(
    payload: &Path,
    keys: &[bundle::PublicKey],
    board: &boards::Board,
    bootloader_files: Option<&Path>,
) -> crate::Result<()> {
    let trust = bundle::Trust::new(keys.to_vec());
    let opened = bundle::read_manifest_file(payload).map_err(flasher::Error::from)?;
    let signer = trust.check(&opened).map_err(flasher::Error::from)?;
    for (name, data) in boot_files(board, bootloader_files)? {
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
    let mut spec = spec_from_args(&args)?;
    let built = build_with(&args, &mut spec);
    if spec.payload != args.payload {
        // Our own intermediate bundle; the card now carries it byte for byte.
        let _ = std::fs::remove_file(&spec.payload);
    }
    built
}

fn build_with(args: &Args, spec: &mut CardSpec) -> crate::Result<()> {
    if args.power_of_two {
        // Lay out once to learn the natural size, then round it up.
        let natural = card::natural_size(spec)?;
        spec.image_size = spec.image_size.max(natural).next_power_of_two();
    }
    let r = card::build_card(&args.output, spec)?;
    println!(
        "card {}: {} bytes, {:?}",
        args.output.display(),
        r.disk.size,
        r.table
    );
    for (name, off, size) in &r.disk.partitions {
        println!("  {name:<16} offset {off:>12}  size {size:>12}");
    }
    println!("  boot files: {}", r.boot_files.join(", "));
    for (offset, file) in &spec.parts.raw {
        println!("  raw at byte {offset:>7}: {}", file.display());
    }
    println!("  cmdline: {}", r.cmdline);
    Ok(())
}
