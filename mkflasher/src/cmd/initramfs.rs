//! `mkflasher initramfs`: the on-board userspace as one compressed newc archive.
//!
//! Layout (see docs/card-format.md):
//! - `/init`: the statically linked flasher binary;
//! - `/etc/flasher/board.json`: the board the init runs with (from the TOML
//!   board file, as JSON);
//! - `/lib/modules/NAME.ko` for the board's module closure, plus
//!   `/lib/modules/load-order`: one absolute path per line, dependencies first,
//!   which the init loads in order with `finit_module`;
//! - `/dev/console` (char 5:1), `/dev/null` (char 1:3), and the empty mount
//!   points `/proc /sys /dev /run /mnt /tmp`.

use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

use crate::card;
use crate::cpio::{self, Archive, Compression, CpioSink};
use crate::modules::{self, ModuleTree};
use flasher_format::bundle::PublicKey;
use flasher_format::card::initramfs as layout;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Board name (see `flasher boards`), e.g. qemu-x86_64-sd.
    #[arg(long)]
    pub board: String,
    /// Output file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Kernel module tree (lib/modules/VERSION) matching the kernel you boot.
    /// QEMU boards default to qemu-fixtures/cache/kernel/lib/modules/*.
    #[arg(long)]
    pub kernel_modules: Option<PathBuf>,
    /// The static init binary. Default: the board's architecture's build,
    /// target/x86_64-unknown-linux-gnu/release/flasher-init (scripts/build-init) or
    /// target/armv7-unknown-linux-gnueabihf/release/flasher-init (scripts/build-init-armv7).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// A board file to use instead of the built-in one of the same name.
    #[arg(long)]
    pub board_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Compression::Zstd)]
    pub compress: Compression,
    /// Trust this signing key (`mkflasher keygen`'s NAME.pub); repeatable.
    /// With any, /init writes only bundles signed by one of them.
    #[arg(long = "trust", value_name = "KEY.pub")]
    pub trust: Vec<PathBuf>,
}

/// Everything the archive is made of.
#[derive(Debug, Clone)]
pub struct Spec {
    pub board: boards::Board,
    /// The board, stored as JSON in /etc/flasher/board.json.
    pub board_json: String,
    pub init: PathBuf,
    pub kernel_modules: Option<PathBuf>,
    pub compress: Compression,
    /// Trusted keys for /etc/flasher/trusted.
    pub trust: Vec<PublicKey>,
}

/// What went into an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Module file names in load order.
    pub modules: Vec<String>,
    pub uncompressed: u64,
    pub compressed: u64,
}

/// Errors specific to assembling the initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "init binary {path} not found; build it with scripts/build-init (x86_64) or \
         scripts/build-init-armv7 (armv7), or pass --init FILE"
    )]
    NoInit { path: PathBuf },
    #[error(
        "{path} is an ELF for machine {machine} but board {board} is {arch}; pass the \
         {arch} build (scripts/build-init-armv7 for armv7) with --init FILE"
    )]
    WrongArch {
        path: PathBuf,
        machine: u16,
        board: String,
        arch: boards::Arch,
    },
    #[error(
        "{path} is not a static executable ({why}); /init must be statically linked: \
         build it with scripts/build-init"
    )]
    NotStatic { path: PathBuf, why: String },
    #[error(
        "board {board} needs kernel modules ({modules}) but no module tree was given; \
         pass --kernel-modules lib/modules/VERSION of the kernel you boot{hint}"
    )]
    NoModuleTree {
        board: String,
        modules: String,
        hint: String,
    },
}

/// Check that `elf` is an executable without a program interpreter.
pub fn check_static(elf: &[u8]) -> Result<(), String> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    let is64 = elf[4] == 2;
    let le = elf[5] == 1;
    let rd = |o: usize, n: usize| -> Option<u64> {
        let b = elf.get(o..o + n)?;
        let mut v = 0u64;
        for i in 0..n {
            let byte = if le { b[n - 1 - i] } else { b[i] };
            v = (v << 8) | u64::from(byte);
        }
        Some(v)
    };
    let bad = || "truncated ELF header".to_string();
    let (phoff, phentsize, phnum) = if is64 {
        (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2))
    } else {
        (rd(0x1c, 4), rd(0x2a, 2), rd(0x2c, 2))
    };
    let (phoff, phentsize, phnum) = (
        phoff.ok_or_else(bad)?,
        phentsize.ok_or_else(bad)?,
        phnum.ok_or_else(bad)?,
    );
    let etype = rd(0x10, 2).ok_or_else(bad)?;
    if etype != 2 && etype != 3 {
        return Err(format!("ELF type {etype} is not an executable"));
    }
    for i in 0..phnum {
        let at = usize::try_from(phoff + i * phentsize).map_err(|_| bad())?;
        const PT_INTERP: u64 = 3;
        if rd(at, 4).ok_or_else(bad)? == PT_INTERP {
            return Err("it has a program interpreter (dynamically linked)".into());
        }
    }
    Ok(())
}

/// The ELF header's `e_machine` (0 for anything too short to have one).
/// Little-endian: every board this project builds for is.
fn elf_machine(elf: &[u8]) -> u16 {
    elf.get(0x12..0x14)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]))
}

/// The ELF `e_machine` of binaries for `arch` (EM_386 3, EM_ARM 40,
/// EM_X86_64 62, EM_AARCH64 183).
fn machine_of(arch: boards::Arch) -> u16 {
    match arch {
        boards::Arch::X86 => 3,
        boards::Arch::Armv7 => 40,
        boards::Arch::X86_64 => 62,
        boards::Arch::Aarch64 => 183,
    }
}

/// Build the archive. Returns the compressed bytes and a summary.
pub fn build(spec: &Spec) -> crate::Result<(Vec<u8>, Summary)> {
    let init = std::fs::read(&spec.init).map_err(|_| Error::NoInit {
        path: spec.init.clone(),
    })?;
    check_static(&init).map_err(|why| Error::NotStatic {
        path: spec.init.clone(),
        why,
    })?;
    let machine = elf_machine(&init);
    if machine != machine_of(spec.board.arch) {
        return Err(Error::WrongArch {
            path: spec.init.clone(),
            machine,
            board: spec.board.name.clone(),
            arch: spec.board.arch,
        }
        .into());
    }
    let mut a = Archive::new();
    for d in layout::DIRS {
        a.dir(d, 0o755)?;
    }
    a.dev_node("dev/console", 0o600, false, 5, 1)?;
    a.dev_node("dev/null", 0o666, false, 1, 3)?;
    a.file("init", 0o755, &init)?;
    a.file(layout::BOARD_FILE, 0o644, spec.board_json.as_bytes())?;
    if !spec.trust.is_empty() {
        a.dir(layout::TRUSTED_DIR, 0o755)?;
        for k in &spec.trust {
            // Named by fingerprint: unique, and the same key twice is one file.
            let fp = k.fingerprint().replace(':', "-");
            let path = format!("{}/{fp}.pub", layout::TRUSTED_DIR);
            a.file(&path, 0o644, k.to_text("").as_bytes())?;
        }
    }
    let mut loaded = Vec::new();
    if !spec.board.modules.is_empty() {
        let Some(dir) = &spec.kernel_modules else {
            return Err(Error::NoModuleTree {
                board: spec.board.name.clone(),
                modules: spec.board.modules.join(", "),
                hint: if card::is_qemu_board(&spec.board) {
                    " (or run qemu-fixtures/setup to fetch the Debian kernel)".into()
                } else {
                    String::new()
                },
            }
            .into());
        };
        let tree = ModuleTree::open(dir)?;
        let mut order = String::new();
        for m in tree.closure(&spec.board.modules)? {
            let path = format!("lib/modules/{}", m.file_name);
            a.file(&path, 0o644, &modules::read_module(&m.path)?)?;
            order.push_str(&format!("/{path}\n"));
            loaded.push(m.file_name);
        }
        a.file(layout::LOAD_ORDER, 0o644, order.as_bytes())?;
    } else {
        a.file(layout::LOAD_ORDER, 0o644, b"")?;
    }
    let raw = a.to_bytes()?;
    let out = cpio::compress(&raw, spec.compress)?;
    let summary = Summary {
        modules: loaded,
        uncompressed: raw.len() as u64,
        compressed: out.len() as u64,
    };
    Ok((out, summary))
}

/// The board and its JSON for the initramfs: `--board-file` wins, else the
/// built-in board.
pub fn board_and_json(name: &str, file: Option<&Path>) -> crate::Result<(boards::Board, String)> {
    let b = match file {
        Some(f) => {
            let b = boards::load_file(f)?;
            if b.name != name {
                return Err(crate::Error::Usage(format!(
                    "board file {} describes {:?}, not {name:?}",
                    f.display(),
                    b.name
                )));
            }
            b
        }
        None => boards::find(name)?,
    };
    let json = boards::to_json(&b)?;
    Ok((b, json))
}

/// Resolve defaults (init path, QEMU module tree) into a [`Spec`].
pub fn spec_from_args(args: &Args) -> crate::Result<Spec> {
    let (board, board_json) = board_and_json(&args.board, args.board_file.as_deref())?;
    let init = args
        .init
        .clone()
        .unwrap_or_else(|| flasher_qemu::locate::init_for(board.arch));
    let kernel_modules = match &args.kernel_modules {
        Some(d) => Some(d.clone()),
        // The QEMU boards and every armv7 board (Debian's armmp kernel) have a
        // default kernel, and so a default module tree.
        None if card::is_qemu_board(&board) || board.arch == boards::Arch::Armv7 => {
            flasher_qemu::locate::qemu_modules_dir_for(
                &flasher_qemu::locate::kernel_cache(board.arch),
                board.arch,
            )
        }
        None => None,
    };
    Ok(Spec {
        board,
        board_json,
        init,
        kernel_modules,
        compress: args.compress,
        trust: flasher_format::bundle::Trust::from_files(&args.trust)
            .map_err(flasher::Error::from)?
            .keys,
    })
}

pub fn run(args: Args) -> crate::Result<()> {
    let spec = spec_from_args(&args)?;
    let (bytes, s) = build(&spec)?;
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    println!(
        "initramfs {}: {} bytes ({} uncompressed), board {}, modules: {}",
        args.output.display(),
        s.compressed,
        s.uncompressed,
        spec.board.name,
        if s.modules.is_empty() {
            "none".to_string()
        } else {
            s.modules.join(" ")
        }
    );
    Ok(())
}

/// A minimal static ELF64 x86_64 executable header (no program headers), for
/// tests that need an `/init` without building the real one.
pub fn fake_static_init() -> Vec<u8> {
    fake_static_init_for(boards::Arch::X86_64)
}

/// [`fake_static_init`] for a board of `arch` (its ELF machine number).
pub fn fake_static_init_for(arch: boards::Arch) -> Vec<u8> {
    let mut e = vec![0u8; 128];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e[0x10] = 2; // ET_EXEC
    e[0x36] = 56; // phentsize
    e[64..].copy_from_slice(&[0x90; 64]);
    e[0x12..0x14].copy_from_slice(&machine_of(arch).to_le_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_check() {
        assert!(check_static(&fake_static_init()).is_ok());
        assert!(check_static(b"#!/bin/sh\n").is_err());
        // This test binary itself is dynamically linked (PT_INTERP).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(check_static(&me).unwrap_err().contains("interpreter"));
    }

    #[test]
    fn archive_for_sd_board_with_fake_tree() {
        let t = tempfile::tempdir().unwrap();
        modules::fake_tree(t.path()).unwrap();
        let init = t.path().join("init");
        std::fs::write(&init, fake_static_init()).unwrap();
        let (board, board_json) = board_and_json("qemu-x86_64-sd", None).unwrap();
        let spec = Spec {
            board,
            board_json,
            init,
            kernel_modules: Some(t.path().to_path_buf()),
            compress: Compression::Zstd,
            trust: vec![],
        };
        let (bytes, s) = build(&spec).unwrap();
        assert_eq!(
            s.modules,
            [
                "mmc_core.ko",
                "sdhci.ko",
                "cqhci.ko",
                "sdhci-pci.ko",
                "mmc_block.ko"
            ]
        );
        let recs = cpio::parse(&cpio::decompress(&bytes).unwrap()).unwrap();
        let get = |n: &str| recs.iter().find(|r| r.name == n).unwrap();
        assert_eq!(get("init").data, fake_static_init());
        assert_eq!(get("init").header.mode, cpio::S_IFREG | 0o755);
        assert_eq!(
            String::from_utf8(get("lib/modules/load-order").data.clone()).unwrap(),
            "/lib/modules/mmc_core.ko\n/lib/modules/sdhci.ko\n/lib/modules/cqhci.ko\n\
             /lib/modules/sdhci-pci.ko\n/lib/modules/mmc_block.ko\n"
        );
        let text = String::from_utf8(get(layout::BOARD_FILE).data.clone()).unwrap();
        assert_eq!(
            boards::parse_json("board.json", &text).unwrap(),
            boards::find("qemu-x86_64-sd").unwrap()
        );
        assert_eq!(get("dev/console").header.rdev_major, 5);
        // Reproducible.
        assert_eq!(build(&spec).unwrap().0, bytes);
    }

    #[test]
    fn errors() {
        let t = tempfile::tempdir().unwrap();
        let (board, board_json) = board_and_json("qemu-x86_64-sd", None).unwrap();
        let mut spec = Spec {
            board,
            board_json,
            init: t.path().join("missing"),
            kernel_modules: None,
            compress: Compression::Gzip,
            trust: vec![],
        };
        let inner = |e: crate::Error| match e {
            crate::Error::Initramfs(e) => Box::new(e),
            other => panic!("{other:?}"),
        };
        assert!(matches!(
            *inner(build(&spec).unwrap_err()),
            Error::NoInit { .. }
        ));
        std::fs::write(t.path().join("missing"), b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            *inner(build(&spec).unwrap_err()),
            Error::NotStatic { .. }
        ));
        // An ARM /init for an x86_64 board is refused, naming both.
        std::fs::write(
            t.path().join("missing"),
            fake_static_init_for(boards::Arch::Armv7),
        )
        .unwrap();
        assert!(matches!(
            *inner(build(&spec).unwrap_err()),
            Error::WrongArch { machine: 40, .. }
        ));
        std::fs::write(t.path().join("missing"), fake_static_init()).unwrap();
        assert!(matches!(
            *inner(build(&spec).unwrap_err()),
            Error::NoModuleTree { .. }
        ));
        spec.board.modules.clear();
        assert!(build(&spec).is_ok());
    }
}
