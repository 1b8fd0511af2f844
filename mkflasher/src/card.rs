//! The flasher card image: what goes into `flash-boot` for each kind of board,
//! and the three partitions around it (docs/card-format.md).
//!
//! - x86 boards: GPT; `flash-boot` is an EFI system partition holding
//!   systemd-boot as `EFI/BOOT/BOOTX64.EFI`, `loader/loader.conf` and
//!   `loader/entries/flasher.conf`, so UEFI firmware (OVMF included) boots it.
//! - U-Boot (ARM) boards: MBR, `flash-boot` is the bootable first partition
//!   (type 0x0c) with the bootloader files and `extlinux/extlinux.conf`, which
//!   U-Boot's distro boot reads. The board file's `[card]` table names the
//!   device trees, the console and Debian's U-Boot pieces: FAT files or raw
//!   bytes between the MBR and the first partition ([`resolve_parts`]).
//! - Every card: `vmlinuz`, `initramfs` and `cmdline.txt` in `flash-boot`, then
//!   `flasher-payload` (the bundle, byte for byte) and `flasher-log` (zeroed,
//!   for the unit records).

use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

use flasher_format::cmdline;

use crate::disk::{self, Contents, PartKind, PartSpec, Table};
use crate::fat::{self, FatFile};

pub use flasher_format::card::{
    BOOT_LABEL, BOOT_NAME, BOOT_NUMBER, CMDLINE_FILE, DEFAULT_LOG_SIZE, INITRAMFS_FILE,
    KERNEL_FILE, LOG_NAME, LOG_NUMBER, PAYLOAD_NAME, PAYLOAD_NUMBER,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} is not a flasher bundle (no {magic:?} magic); turn the OS image into one \
         first: mkflasher bundle {path} -o IMAGE.bundle"
    )]
    NotABundle { path: PathBuf, magic: String },
    #[error("no kernel for board {board}: pass --kernel FILE{hint}")]
    NoKernel { board: String, hint: String },
    #[error(
        "board {board} boots through UEFI and needs systemd-boot ({looked}); run \
         qemu-fixtures/setup or pass --systemd-boot FILE (Debian systemd-boot-efi: \
         usr/lib/systemd/boot/efi/systemd-bootx64.efi)"
    )]
    NoSystemdBoot { board: String, looked: String },
    #[error(
        "board {board} boots from first stages Debian does not ship: {needs}; pass \
         --bootloader-files DIR holding them (docs/boards.md)"
    )]
    NeedsBootloaderFiles { board: String, needs: String },
    #[error(
        "board {board} needs Debian's {what}, not found at {path}: run scripts/fetch-debian-parts \
         (qemu-fixtures/setup runs it), or pass --bootloader-files DIR holding it{hint}"
    )]
    MissingDebianPart {
        board: String,
        what: String,
        path: PathBuf,
        hint: &'static str,
    },
    #[error(
        "board {board}: {file} would be written raw at bytes {offset}..{end} of the card, which \
         {reason}; raw pieces must lie between the MBR (first {mbr} bytes) and the first \
         partition (at {first} bytes)",
        mbr = boards::CARD_MBR_SIZE,
        first = disk::ALIGN
    )]
    RawPlacement {
        board: String,
        file: PathBuf,
        offset: u64,
        end: u64,
        reason: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

pub fn is_qemu_board(b: &boards::Board) -> bool {
    b.name.starts_with("qemu-")
}

pub fn is_x86(b: &boards::Board) -> bool {
    matches!(b.arch, boards::Arch::X86_64 | boards::Arch::X86)
}

/// Everything a card is made of.
#[derive(Debug, Clone)]
pub struct CardSpec {
    pub board: boards::Board,
    /// The bundle file; must start with the bundle magic.
    pub payload: PathBuf,
    pub kernel: PathBuf,
    /// The compressed initramfs bytes.
    pub initramfs: Vec<u8>,
    /// x86: systemd-boot's EFI binary.
    pub systemd_boot: Option<PathBuf>,
    /// Files copied (recursively) to the root of flash-boot, e.g. MLO, u-boot.img.
    pub bootloader_files: Option<PathBuf>,
    /// The board's `[card]` parts found on disk ([`resolve_parts`]).
    pub parts: BootParts,
    /// Appended to the kernel command line.
    pub cmdline_extra: String,
    /// The per-unit data pool's files (`units.json`, `units/*`), if any.
    pub unit_files: Vec<FatFile>,
    pub log_size: u64,
    /// flash-boot size; 0 sizes it from its contents.
    pub boot_size: u64,
    /// Minimum image size (0: just what the partitions need), e.g. a power of
    /// two for QEMU's sd-card. The rest stays unpartitioned.
    pub image_size: u64,
}

/// A U-Boot board's `[card]` pieces, resolved to files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParts {
    /// Device trees: name (copied to `dtbs/NAME`) and file.
    pub dtbs: Vec<(String, PathBuf)>,
    /// Files for flash-boot's root: name and file.
    pub fat: Vec<(String, PathBuf)>,
    /// Raw pieces: byte offset on the card and file (checked to fit).
    pub raw: Vec<(u64, PathBuf)>,
}

/// Find the board's `[card]` pieces: device trees from the armmp kernel and
/// U-Boot files in Debian's parts cache `debian` (`locate::debian_parts`).
/// `--bootloader-files DIR` overrides per file: `DIR/dtbs/` replaces every
/// device tree, `DIR/NAME` a FAT piece named NAME (the tree copy brings it),
/// and `DIR/<file name>` a raw piece (`SPL` for `mx6cuboxi/SPL`). Raw pieces
/// are checked to lie between the MBR and the first partition and not to
/// overlap, before anything is written.
pub fn resolve_parts(
    board: &boards::Board,
    debian: &Path,
    dir: Option<&Path>,
) -> Result<BootParts, Error> {
    let card = &board.card;
    if let (Some(needs), None) = (&card.needs, dir) {
        return Err(Error::NeedsBootloaderFiles {
            board: board.name.clone(),
            needs: needs.clone(),
        });
    }
    let missing = |what: String, path: PathBuf, hint: &'static str| Error::MissingDebianPart {
        board: board.name.clone(),
        what,
        path,
        hint,
    };
    let mut out = BootParts::default();
    if !dir.is_some_and(|d| d.join("dtbs").is_dir()) {
        for name in &card.dtbs {
            let p = flasher_qemu::locate::armmp_dtb(debian, name).ok_or_else(|| {
                missing(
                    format!("device tree {name} (linux-image-*-armmp)"),
                    debian.join("armmp/usr/lib/linux-image-*").join(name),
                    " (with the device trees in DIR/dtbs/)",
                )
            })?;
            out.dtbs.push((name.clone(), p));
        }
    }
    for part in &card.uboot {
        let base = part.debian.rsplit('/').next().unwrap_or(&part.debian);
        let name = part.fat.as_deref().unwrap_or(base);
        let own = dir.map(|d| d.join(name)).filter(|p| p.is_file());
        let debian_file = || {
            let p = flasher_qemu::locate::uboot_file(debian, &part.debian);
            if p.is_file() {
                Ok(p)
            } else {
                Err(missing(
                    format!("U-Boot {} (u-boot-omap/u-boot-imx)", part.debian),
                    p,
                    "",
                ))
            }
        };
        match (part.fat.as_ref(), part.offset) {
            // DIR's own copy reaches the FAT with the rest of DIR.
            (Some(_), _) if own.is_some() => {}
            (Some(f), _) => out.fat.push((f.clone(), debian_file()?)),
            (None, Some(offset)) => {
                let file = match own {
                    Some(p) => p,
                    None => debian_file()?,
                };
                out.raw.push((offset, file));
            }
            // boards::validate rejects a piece with neither.
            (None, None) => {}
        }
    }
    check_raw(&board.name, &out.raw)?;
    Ok(out)
}

/// Raw pieces must start after the MBR, end before the first partition and
/// not overlap each other.
fn check_raw(board: &str, raw: &[(u64, PathBuf)]) -> Result<(), Error> {
    let mut spans = Vec::new();
    for (offset, file) in raw {
        let len = std::fs::metadata(file)
            .map_err(|source| Error::Read {
                path: file.clone(),
                source,
            })?
            .len();
        let end = offset + len;
        let err = |reason: String| Error::RawPlacement {
            board: board.to_string(),
            file: file.clone(),
            offset: *offset,
            end,
            reason,
        };
        if *offset < boards::CARD_MBR_SIZE {
            return Err(err("overlaps the MBR".into()));
        }
        if end > disk::ALIGN {
            return Err(err(format!(
                "runs {} bytes into the first partition",
                end - disk::ALIGN
            )));
        }
        if let Some((o, e, f)) = spans
            .iter()
            .find(|(o, e, _): &&(u64, u64, &PathBuf)| *offset < *e && *o < end)
        {
            return Err(err(format!("overlaps {} at bytes {o}..{e}", f.display())));
        }
        spans.push((*offset, end, file));
    }
    Ok(())
}

/// The kernel command line the card boots with.
pub fn cmdline(spec: &CardSpec) -> String {
    let mut c: Vec<String> = Vec::new();
    if is_x86(&spec.board) {
        // The last console= becomes /dev/console: the serial port, which
        // QEMU and headless factory stations read.
        c.extend(["console=tty0".into(), "console=ttyS0,115200".into()]);
    } else if let Some(console) = &spec.board.card.console {
        // The board's serial console, where its U-Boot prints too.
        c.push(format!("console={console}"));
    }
    // A board /init can recognise (device tree, DMI) is detected and checked
    // against the card's board file; pinning it here would skip that check.
    let id = &spec.board.identity;
    if id.compatible.is_empty() && id.dmi.is_empty() {
        c.push(cmdline::arg(cmdline::key::BOARD, &spec.board.name));
    }
    if !spec.cmdline_extra.trim().is_empty() {
        c.push(spec.cmdline_extra.trim().to_string());
    }
    c.join(" ")
}

/// Check the bundle magic at the start of `path`.
pub fn check_bundle(path: &Path) -> Result<(), Error> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let ok = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok();
    if !ok || head != flasher_format::bundle::MAGIC {
        return Err(Error::NotABundle {
            path: path.to_path_buf(),
            magic: String::from_utf8_lossy(&flasher_format::bundle::MAGIC).into_owned(),
        });
    }
    Ok(())
}

/// Every file under `dir`, by its `/`-separated path inside it (prefixed by
/// `prefix`), in name order: what `--bootloader-files` puts on flash-boot, and
/// what `mkflasher bundle --pin DIR` pins under the same names.
pub(crate) fn add_tree(dir: &Path, prefix: &str, out: &mut Vec<FatFile>) -> Result<(), Error> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if p.is_dir() {
            add_tree(&p, &rel, out)?;
        } else {
            out.push(FatFile::new(rel, read(&p)?));
        }
    }
    Ok(())
}

/// The files of flash-boot, in the order they are written.
pub fn boot_files(spec: &CardSpec) -> crate::Result<Vec<FatFile>> {
    let cmd = cmdline(spec);
    let mut files = Vec::new();
    if is_x86(&spec.board) {
        let sdboot = spec
            .systemd_boot
            .as_ref()
            .ok_or_else(|| Error::NoSystemdBoot {
                board: spec.board.name.clone(),
                looked: "no file given".into(),
            })?;
        files.push(FatFile::new("EFI/BOOT/BOOTX64.EFI", read(sdboot)?));
        files.push(FatFile::new(
            "loader/loader.conf",
            "default flasher.conf\ntimeout 0\nconsole-mode keep\neditor no\n",
        ));
        files.push(FatFile::new(
            "loader/entries/flasher.conf",
            format!(
                "title Flasher ({})\nlinux /{KERNEL_FILE}\ninitrd /{INITRAMFS_FILE}\noptions {cmd}\n",
                spec.board.name
            ),
        ));
    } else {
        // Debian's U-Boot FAT pieces first: MLO gets the first directory
        // entry and the first clusters, as on cards made by hand.
        for (name, path) in &spec.parts.fat {
            files.push(FatFile::new(name.clone(), read(path)?));
        }
        // U-Boot distro boot (boot_extlinux) reads this from the bootable
        // partition. FDT names the board's device tree; FDTDIR lets U-Boot
        // pick ${fdtfile} from /dtbs (boards with SoC variants).
        let dir_dtbs = spec
            .bootloader_files
            .as_ref()
            .map(|d| d.join("dtbs"))
            .filter(|d| d.is_dir());
        let has = |f: &String| {
            spec.parts.dtbs.iter().any(|(n, _)| n == f)
                || dir_dtbs.as_ref().is_some_and(|d| d.join(f).is_file())
        };
        let fdt = match &spec.board.card.fdt {
            Some(f) if has(f) => format!("FDT /dtbs/{f}\n"),
            _ if dir_dtbs.is_some() || !spec.parts.dtbs.is_empty() => "FDTDIR /dtbs\n".into(),
            _ => String::new(),
        };
        for (name, path) in &spec.parts.dtbs {
            files.push(FatFile::new(format!("dtbs/{name}"), read(path)?));
        }
        files.push(FatFile::new(
            "extlinux/extlinux.conf",
            format!(
                "DEFAULT flasher\nTIMEOUT 0\nLABEL flasher\n  KERNEL /{KERNEL_FILE}\n  INITRD /{INITRAMFS_FILE}\n  {fdt}  APPEND {cmd}\n"
            ),
        ));
    }
    if let Some(d) = &spec.bootloader_files {
        add_tree(d, "", &mut files)?;
    }
    files.push(FatFile::new(KERNEL_FILE, read(&spec.kernel)?));
    files.push(FatFile::new(INITRAMFS_FILE, spec.initramfs.clone()));
    files.push(FatFile::new(CMDLINE_FILE, format!("{cmd}\n")));
    files.extend(spec.unit_files.iter().cloned());
    Ok(files)
}

/// Size flash-boot for its files: a quarter more for FAT overhead and later
/// `configure` edits, plus 8 MiB, at least 32 MiB, in whole MiB.
pub fn boot_size_for(files: &[FatFile]) -> u64 {
    let data: u64 = files.iter().map(|f| f.data.len() as u64).sum();
    let want = (data + data / 4 + (8 << 20)).max(32 << 20);
    want.div_ceil(disk::ALIGN) * disk::ALIGN
}

/// The written card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardReport {
    pub table: Table,
    pub disk: disk::DiskReport,
    pub cmdline: String,
    pub boot_files: Vec<String>,
}

fn table_for(board: &boards::Board) -> Table {
    if is_x86(board) {
        Table::Gpt
    } else {
        Table::Mbr
    }
}

/// The three partitions, with flash-boot's contents given.
fn partitions(spec: &CardSpec, boot_size: u64, boot: Contents) -> Vec<PartSpec> {
    let table = table_for(&spec.board);
    vec![
        PartSpec {
            name: BOOT_NAME.into(),
            kind: match table {
                Table::Gpt => PartKind::Esp,
                Table::Mbr => PartKind::BasicData,
            },
            size: boot_size,
            bootable: table == Table::Mbr,
            contents: boot,
        },
        PartSpec {
            name: PAYLOAD_NAME.into(),
            kind: PartKind::Raw,
            size: 0,
            bootable: false,
            contents: Contents::File(spec.payload.clone()),
        },
        PartSpec {
            name: LOG_NAME.into(),
            kind: PartKind::Raw,
            size: spec.log_size.max(disk::ALIGN),
            bootable: false,
            contents: Contents::Zero,
        },
    ]
}

fn boot_size(spec: &CardSpec, files: &[FatFile]) -> u64 {
    if spec.boot_size == 0 {
        boot_size_for(files)
    } else {
        spec.boot_size
    }
}

/// The image size the partitions need, before any `image_size` padding.
pub fn natural_size(spec: &CardSpec) -> crate::Result<u64> {
    let files = boot_files(spec)?;
    let parts = partitions(spec, boot_size(spec, &files), Contents::Zero);
    Ok(disk::layout(table_for(&spec.board), &parts)?.size)
}

/// Build the card image at `out`.
pub fn build_card(out: &Path, spec: &CardSpec) -> crate::Result<CardReport> {
    check_bundle(&spec.payload)?;
    let files = boot_files(spec)?;
    let size = boot_size(spec, &files);
    let boot = fat::make_fat(size, BOOT_LABEL, &files)?;
    let table = table_for(&spec.board);
    let parts = partitions(spec, size, Contents::Bytes(boot));
    let report = disk::write_disk_sized(out, table, &parts, spec.image_size)?;
    write_raw(out, &spec.board.name, &spec.parts.raw)?;
    Ok(CardReport {
        table,
        disk: report,
        cmdline: cmdline(spec),
        boot_files: files.into_iter().map(|f| f.path).collect(),
    })
}

/// The card's unit log partition (`flasher-log`), found as the board finds it:
/// by GPT name, or by number on an MBR card. `inspect` and `records` read it.
pub fn find_log(table: Table, parts: &[disk::PartInfo]) -> Option<&disk::PartInfo> {
    disk::find_partition(table, parts, LOG_NAME, Some(LOG_NUMBER))
}

/// Write the raw pieces into the card image (checked again: a piece may have
/// changed since [`resolve_parts`]).
fn write_raw(out: &Path, board: &str, raw: &[(u64, PathBuf)]) -> crate::Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    if raw.is_empty() {
        return Ok(());
    }
    check_raw(board, raw)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .with_context(|| format!("opening {}", out.display()))?;
    for (offset, file) in raw {
        let data = read(file)?;
        f.seek(SeekFrom::Start(*offset))
            .and_then(|_| f.write_all(&data))
            .map_err(|e| {
                crate::Error::Io(flasher_format::io::IoError::new(
                    format!(
                        "writing {} at byte {offset} of {}",
                        file.display(),
                        out.display()
                    ),
                    e,
                ))
            })?;
    }
    Ok(f.sync_all()
        .with_context(|| format!("syncing {}", out.display()))?)
}

/// Open the flash-boot FAT of a card image for reading and writing.
pub fn open_boot(card: &Path) -> crate::Result<disk::PartitionSlice<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(card)
        .with_context(|| format!("opening {}", card.display()))?;
    let (slice, _) = disk::open_partition(f, BOOT_NAME, Some(BOOT_NUMBER))?;
    Ok(slice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_and_not_a_bundle() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("os.img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        assert!(matches!(check_bundle(&p), Err(Error::NotABundle { .. })));
        let spec = CardSpec {
            board: boards::find("beaglebone-black").unwrap(),
            payload: p,
            kernel: t.path().join("k"),
            initramfs: vec![],
            systemd_boot: None,
            bootloader_files: None,
            parts: BootParts::default(),
            cmdline_extra: " console=ttyS0,115200n8 ".into(),
            unit_files: vec![],
            log_size: DEFAULT_LOG_SIZE,
            boot_size: 0,
            image_size: 0,
        };
        // The BeagleBone is found by its device tree: no flasher.board=; its
        // board file names its console.
        assert_eq!(
            cmdline(&spec),
            "console=ttyO0,115200n8 console=ttyS0,115200n8"
        );
        let mut x86 = spec.clone();
        x86.board = boards::find("qemu-x86_64-nuc").unwrap();
        assert!(cmdline(&x86)
            .starts_with("console=tty0 console=ttyS0,115200 flasher.board=qemu-x86_64-nuc"));
        // The NUC is found by DMI.
        x86.board = boards::find("intel-nuc").unwrap();
        assert_eq!(
            cmdline(&x86),
            "console=tty0 console=ttyS0,115200 console=ttyS0,115200n8"
        );
    }
}
