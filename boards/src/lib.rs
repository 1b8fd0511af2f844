//! Boards as data: one TOML file per board under `boards/data/`, compiled into the
//! binary (as JSON, see `build.rs`), the typed schema they parse into, and board
//! detection from the device tree, DMI and the kernel command line.
//!
//! - [`builtin`] parses every shipped board; [`find`] looks one up by name;
//!   [`load_file`] reads a board file given at run time, TOML (with the `toml`
//!   feature, on the host) or JSON (what `mkflasher` puts into the initramfs); it
//!   overrides the built-in board of the same name, see [`with_override`].
//! - [`detect`] picks the board on a running system (all paths under a root).

mod detect;
mod schema;

pub use detect::{cmdline_board, detect, detect_for, read_compatible, read_dmi, Detected, How};
pub use schema::*;

use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

/// Errors from parsing board files and detecting the board.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[cfg(feature = "toml")]
    #[error("board file {file}: {source}")]
    Parse {
        file: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("board file {file}: {source}")]
    ParseJson {
        file: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("board file {file} is TOML, which this build cannot read; give it to mkflasher, which stores boards as JSON")]
    TomlUnsupported { file: String },
    #[error("board file {file}: {reason}")]
    Invalid { file: String, reason: String },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    #[error("unknown board {name:?}; known boards: {}", known.join(", "))]
    UnknownBoard { name: String, known: Vec<String> },
    #[error("board not detected: device-tree compatible [{}], DMI [{dmi}] match no board file; \
             put flasher.board=NAME on the kernel command line (known: {})",
            compatible.join(", "), known.join(", "))]
    NotDetected {
        compatible: Vec<String>,
        dmi: String,
        known: Vec<String>,
    },
    #[error("board detection is ambiguous: {evidence} matches {}; put flasher.board=NAME on the kernel command line",
            candidates.join(" and "))]
    Ambiguous {
        candidates: Vec<String>,
        evidence: String,
    },
    #[error("this card was built for board {built_for}, but {evidence} identifies {}; \
             refusing to write: build a card for this board (mkflasher build --board NAME), \
             or put flasher.board=NAME on the kernel command line to override",
            found.join(" or "))]
    WrongBoard {
        built_for: String,
        found: Vec<String>,
        evidence: String,
    },
}

impl Error {
    /// Every board error is a detection or configuration error.
    pub fn class(&self) -> flasher_format::ErrorClass {
        flasher_format::ErrorClass::BoardConfig
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

include!(concat!(env!("OUT_DIR"), "/builtin.rs"));

/// Parse one TOML board file's text. `file` names it in errors. The board is
/// validated (see [`validate`]); when `file` ends in `.toml` its stem must equal `name`.
#[cfg(feature = "toml")]
pub fn parse(file: &str, text: &str) -> Result<Board> {
    let board: Board = toml::from_str(text).map_err(|source| Error::Parse {
        file: file.to_string(),
        source,
    })?;
    checked(file, board)
}

/// [`parse`] for a board in JSON (the built-in boards, the initramfs's board file).
pub fn parse_json(file: &str, text: &str) -> Result<Board> {
    // from_slice, as every other JSON reader on the board: one deserializer copy.
    let board: Board =
        serde_json::from_slice(text.as_bytes()).map_err(|source| Error::ParseJson {
            file: file.to_string(),
            source,
        })?;
    checked(file, board)
}

/// Validate a parsed board; a `NAME.toml` file must hold board `NAME`.
fn checked(file: &str, board: Board) -> Result<Board> {
    validate(&board).map_err(|reason| Error::Invalid {
        file: file.to_string(),
        reason,
    })?;
    let stem = Path::new(file)
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_suffix(".toml"));
    if let Some(stem) = stem {
        if stem != board.name {
            return Err(Error::Invalid {
                file: file.to_string(),
                reason: format!(
                    "name {:?} differs from the file name; rename one so they agree",
                    board.name
                ),
            });
        }
    }
    Ok(board)
}

#[cfg(feature = "toml")]
/// The `[card]` table: names are plain, `fdt` is one of `dtbs`, each U-Boot
/// piece goes either into the FAT or raw between the MBR and the first
/// partition (its end is checked when the card is built, knowing its size).
fn validate_card(board: &Board) -> Result<(), String> {
    let card = &board.card;
    if card.is_empty() {
        return Ok(());
    }
    if matches!(board.arch, Arch::X86_64 | Arch::X86) {
        return Err("[card] is for U-Boot boards; x86 cards boot through UEFI".into());
    }
    let plain = |s: &str| !s.is_empty() && !s.contains('/') && s != "." && s != "..";
    if let Some(d) = card.dtbs.iter().find(|d| !plain(d) || !d.ends_with(".dtb")) {
        return Err(format!(
            "card.dtbs entry {d:?} must be a file name ending in .dtb"
        ));
    }
    if let Some(f) = card.fdt.as_ref().filter(|f| !card.dtbs.contains(f)) {
        return Err(format!("card.fdt {f:?} must be one of card.dtbs"));
    }
    if card.needs.is_some() && !card.uboot.is_empty() {
        return Err(
            "card.needs (parts Debian lacks) and card.uboot (Debian's parts) exclude each other"
                .into(),
        );
    }
    for p in &card.uboot {
        if p.debian.is_empty()
            || p.debian.starts_with('/')
            || p.debian.split('/').any(|c| c == "..")
        {
            return Err(format!(
                "card.uboot debian = {:?} must be a relative path under /usr/lib/u-boot",
                p.debian
            ));
        }
        match (&p.fat, p.offset) {
            (Some(f), None) if plain(f) => {}
            (Some(f), None) => {
                return Err(format!("card.uboot fat = {f:?} must be a file name"));
            }
            (None, Some(off)) if (CARD_MBR_SIZE..CARD_FIRST_PARTITION).contains(&off) => {}
            (None, Some(off)) => {
                return Err(format!(
                    "card.uboot {}: offset {off} bytes must be at least {CARD_MBR_SIZE} (after the MBR) \
                     and below {CARD_FIRST_PARTITION} (the first partition)",
                    p.debian
                ));
            }
            _ => {
                return Err(format!(
                    "card.uboot {}: give exactly one of fat (a FAT file) or offset (raw)",
                    p.debian
                ));
            }
        }
    }
    Ok(())
}

/// Checks serde cannot express. Returns the reason a board is unusable.
pub fn validate(board: &Board) -> Result<(), String> {
    let name_ok = !board.name.is_empty()
        && board
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "name {:?} must be non-empty lowercase ASCII letters, digits, '-' or '_'",
            board.name
        ));
    }
    let rules = &board.target;
    if rules.transports.is_empty() {
        return Err(
            "target.transports is empty; list at least one of mmc, nvme, sata, usb, virtio".into(),
        );
    }
    for (i, t) in rules.transports.iter().enumerate() {
        if rules.transports[..i].contains(t) {
            return Err(format!("target.transports lists {t} twice"));
        }
    }
    if (rules.mmc_type.is_some() || rules.require_boot_partitions)
        && !rules.transports.contains(&Transport::Mmc)
    {
        return Err(
            "target.mmc_type / require_boot_partitions need \"mmc\" in target.transports".into(),
        );
    }
    if rules
        .controllers
        .iter()
        .any(|c| c.is_empty() || c.contains('/'))
    {
        return Err("target.controllers entries must be one path component like \"481d8000.mmc\" or \"0000:00:06.0\"".into());
    }
    if let Some(c) = rules
        .controllers
        .iter()
        .find(|c| board.boot_medium.controllers.contains(c))
    {
        return Err(format!(
            "controller {c} is listed both for the target and for the boot medium"
        ));
    }
    for p in &board.bootloader {
        if let Placement::EmmcBoot { .. } = p {
            if !rules.require_boot_partitions {
                return Err(
                    "an emmc-boot bootloader placement needs target.require_boot_partitions = true"
                        .into(),
                );
            }
        }
    }
    if let Some(e) = &board.emmc {
        validate_emmc(board, e)?;
    }
    // Without the `toml` feature `[card]` is always empty (Board::card).
    #[cfg(feature = "toml")]
    validate_card(board)?;
    if let Some(w) = &board.watchdog {
        if !w.starts_with("/dev/") {
            return Err(format!("watchdog {w:?} must be a /dev path"));
        }
    }
    if board
        .watchdog_stall_s
        .is_some_and(|s| !(5..=3600).contains(&s))
    {
        return Err(format!(
            "watchdog_stall_s {} must be 5 to 3600 seconds",
            board.watchdog_stall_s.unwrap_or_default()
        ));
    }
    if board
        .modules
        .iter()
        .any(|m| m.is_empty() || m.contains('/') || m.ends_with(".ko"))
    {
        return Err("modules are bare module names like \"sdhci-pci\" (no paths, no .ko)".into());
    }
    Ok(())
}

/// The `[emmc]` table: a limit in whole 10 % bands; booting from a partition
/// only on an eMMC with boot partitions, and from boot0/boot1 only when the
/// board writes its bootloader there (enabling a partition the flasher did
/// not write could leave the board unbootable).
fn validate_emmc(board: &Board, e: &Emmc) -> Result<(), String> {
    if let Some(p) = e.life_time_limit_percent {
        if !(10..=100).contains(&p) || p % 10 != 0 {
            return Err(format!(
                "emmc.life_time_limit_percent {p} must be a multiple of 10 from 10 to 100 (the eMMC reports life used in 10 % bands)"
            ));
        }
    }
    let Some(enable) = e.boot_enable else {
        if e.boot_ack.is_some() {
            return Err("emmc.boot_ack needs emmc.boot_enable".into());
        }
        return Ok(());
    };
    if !board.target.require_boot_partitions {
        return Err(
            "emmc.boot_enable needs target.require_boot_partitions = true (an eMMC target)".into(),
        );
    }
    if let Some(part) = enable.partition() {
        let written = board
            .bootloader
            .iter()
            .any(|p| matches!(p, Placement::EmmcBoot { partition, .. } if *partition == part));
        if !written {
            return Err(format!(
                "emmc.boot_enable = \"{}\" needs an emmc-boot bootloader placement into {}",
                part.suffix(),
                part.suffix()
            ));
        }
    }
    Ok(())
}

/// Every shipped board, parsed and validated, sorted by name.
pub fn builtin() -> Result<Vec<Board>> {
    let mut boards = BUILTIN_JSON
        .iter()
        .map(|(file, text)| parse_json(file, text))
        .collect::<Result<Vec<_>>>()?;
    boards.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    Ok(boards)
}

/// The names of the shipped boards.
pub fn builtin_names() -> Vec<String> {
    BUILTIN_JSON
        .iter()
        .map(|(f, _)| f.trim_end_matches(".toml").to_string())
        .collect()
}

/// The built-in board called `name`.
pub fn find(name: &str) -> Result<Board> {
    find_in(&builtin()?, name).cloned()
}

/// The board called `name` in `boards`.
pub fn find_in<'a>(boards: &'a [Board], name: &str) -> Result<&'a Board> {
    boards
        .iter()
        .find(|b| b.name == name)
        .ok_or_else(|| Error::UnknownBoard {
            name: name.to_string(),
            known: boards.iter().map(|b| b.name.clone()).collect(),
        })
}

/// Read and parse a board file given at run time. Its name need not match the file
/// name (users keep variants like `my-bbb.toml` that still say `name = "beaglebone-black"`).
pub fn load_file(path: &Path) -> Result<Board> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read board file {}", path.display()))?;
    let label = path.display().to_string();
    let board: Board = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_slice(text.as_bytes()).map_err(|source| Error::ParseJson {
            file: label.clone(),
            source,
        })?
    } else {
        from_toml(&label, &text)?
    };
    validate(&board).map_err(|reason| Error::Invalid {
        file: label,
        reason,
    })?;
    Ok(board)
}

/// The built-in boards with `extra` replacing the built-in board of the same name
/// (or added, if new). This is how a run-time board file overrides the shipped one.
pub fn with_override(mut boards: Vec<Board>, extra: Board) -> Vec<Board> {
    boards.retain(|b| b.name != extra.name);
    boards.push(extra);
    boards.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    boards
}

#[cfg(feature = "toml")]
fn from_toml(label: &str, text: &str) -> Result<Board> {
    toml::from_str(text).map_err(|source| Error::Parse {
        file: label.to_string(),
        source,
    })
}

#[cfg(not(feature = "toml"))]
fn from_toml(label: &str, _text: &str) -> Result<Board> {
    Err(Error::TomlUnsupported {
        file: label.to_string(),
    })
}

/// A board as JSON: what `mkflasher` stores in the initramfs for `/init`.
pub fn to_json(board: &Board) -> Result<String> {
    serde_json::to_string_pretty(board).map_err(|e| Error::Invalid {
        file: board.name.clone(),
        reason: format!("cannot be written as JSON: {e}"),
    })
}

/// A board as TOML, in the board-file format (what `flasher boards NAME` prints).
#[cfg(feature = "toml")]
pub fn to_toml(board: &Board) -> Result<String> {
    toml::to_string(board).map_err(|e| Error::Invalid {
        file: board.name.clone(),
        reason: format!("cannot be written as TOML: {e}"),
    })
}

/// `root` joined with an absolute path like `/proc/cmdline`.
pub(crate) fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

/// Match `value` against `pattern`, where each `*` matches any run of characters
/// (`NUC*`, `*edison*`). There are no other wildcards.
pub fn glob_match(pattern: &str, value: &str) -> bool {
    let mut parts = pattern.split('*');
    // split always yields at least one item.
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = value.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    let Some((last, middle)) = tail.split_last() else {
        // No `*` at all: exact match.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests;
