//! Board detection on a running system. Order of precedence:
//! 1. a name the caller passes (e.g. `flasher detect --board`),
//! 2. `flasher.board=` on the kernel command line (`<root>/proc/cmdline`),
//! 3. the device-tree `compatible` list: the board whose string appears earliest
//!    (most specific) wins, so a BeagleBone Green, whose list also carries
//!    `ti,am335x-bone-black`, is detected as the Green,
//! 4. DMI (`<root>/sys/class/dmi/id/*`).
//!
//! Two boards matching equally well is an error, never a guess.
//!
//! On the board, `/init` also knows the board the card was built for (the
//! initramfs's board file) and calls [`detect_for`]: a device tree or DMI that
//! identifies another board is refused before anything is written, and a tie
//! between boards sharing an identity (a board and its QEMU twin, which boots
//! the real board's device tree) goes to the built-for board.

use crate::{find_in, glob_match, under, Board, Error, Result};
use std::path::Path;

/// The board found and how.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    pub board: Board,
    pub how: How,
}

/// How the board was selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum How {
    /// Named by the caller.
    Named,
    /// `flasher.board=` on the kernel command line.
    Cmdline,
    /// This device-tree `compatible` string matched.
    Compatible(String),
    /// These DMI fields matched, as `field=value` pairs.
    Dmi(String),
    /// Nothing identified the board, and the card was built for a board that
    /// has no identity of its own (the QEMU x86 boards).
    BuiltFor,
}

impl std::fmt::Display for How {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            How::Named => write!(f, "its name (--board or flasher.board=)"),
            How::Cmdline => write!(f, "flasher.board= on the kernel command line"),
            How::Compatible(c) => write!(f, "device-tree compatible {c:?}"),
            How::Dmi(d) => write!(f, "DMI {d}"),
            How::BuiltFor => write!(f, "the card's board file (the board has no identity)"),
        }
    }
}

/// The value of the last `flasher.board=` on `<root>/proc/cmdline`, if any.
/// A missing `/proc/cmdline` means none (a host without it, or a bare fake root).
pub fn cmdline_board(root: &Path) -> Result<Option<String>> {
    let path = under(root, "/proc/cmdline");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(Error::Io(flasher_format::io::IoError::new(
                format!("read {}", path.display()),
                source,
            )))
        }
    };
    // The kernel lets a later parameter override an earlier one; do the same.
    Ok(text
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("flasher.board="))
        .map(|v| v.trim_matches('"').to_string())
        .next_back())
}

/// The device-tree `compatible` strings, most specific first; empty without a DT.
pub fn read_compatible(root: &Path) -> Result<Vec<String>> {
    for p in [
        "/proc/device-tree/compatible",
        "/sys/firmware/devicetree/base/compatible",
    ] {
        let path = under(root, p);
        match std::fs::read(&path) {
            Ok(bytes) => {
                return Ok(bytes
                    .split(|b| *b == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).trim().to_string())
                    .collect())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(Error::Io(flasher_format::io::IoError::new(
                    format!("read {}", path.display()),
                    source,
                )))
            }
        }
    }
    Ok(Vec::new())
}

/// The DMI fields boards can match on, as (field, value); absent fields are left out.
pub fn read_dmi(root: &Path) -> Result<Vec<(&'static str, String)>> {
    let mut out = Vec::new();
    for field in ["sys_vendor", "product_name", "board_vendor", "board_name"] {
        let path = under(root, &format!("/sys/class/dmi/id/{field}"));
        match std::fs::read_to_string(&path) {
            Ok(v) => out.push((field, v.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(Error::Io(flasher_format::io::IoError::new(
                    format!("read {}", path.display()),
                    source,
                )))
            }
        }
    }
    Ok(out)
}

/// Detect the board under `root` among `boards`. `named` (a caller's explicit
/// choice) wins, then `flasher.board=` from `<root>/proc/cmdline`, then the device
/// tree, then DMI. An unknown name is [`Error::UnknownBoard`], never a fallback.
///
/// A QEMU twin (`qemu-*`) claims its real board's identity; on its own, with
/// no card built for the twin, a tie between the two is the real board.
pub fn detect(root: &Path, named: Option<&str>, boards: &[Board]) -> Result<Detected> {
    match detect_for(root, named, None, boards) {
        Err(Error::Ambiguous {
            candidates,
            evidence,
        }) => {
            let real: Vec<&String> = candidates
                .iter()
                .filter(|c| !c.starts_with("qemu-"))
                .collect();
            if let [one] = real.as_slice() {
                return detect_for(root, None, Some(one), boards);
            }
            Err(Error::Ambiguous {
                candidates,
                evidence,
            })
        }
        other => other,
    }
}

/// [`detect`] on a card built for `built_for`: when the device tree or DMI
/// identifies the board, it must be `built_for` ([`Error::WrongBoard`]
/// otherwise); among boards that match equally well, `built_for` is chosen.
/// When nothing identifies the board, `built_for` is used only if it has no
/// identity of its own ([`Error::NotDetected`] otherwise). A name given by the
/// caller or on the kernel command line is the operator's choice and is not
/// checked.
pub fn detect_for(
    root: &Path,
    named: Option<&str>,
    built_for: Option<&str>,
    boards: &[Board],
) -> Result<Detected> {
    if let Some(name) = named {
        let board = find_in(boards, name)?.clone();
        return Ok(Detected {
            board,
            how: How::Named,
        });
    }
    if let Some(name) = cmdline_board(root)? {
        let board = find_in(boards, &name)?.clone();
        return Ok(Detected {
            board,
            how: How::Cmdline,
        });
    }
    let names = |list: &[&Board]| list.iter().map(|b| b.name.clone()).collect();
    match (identify(root, boards)?, built_for) {
        (Some((list, how)), Some(want)) => match list.iter().find(|b| b.name == want) {
            Some(b) => Ok(Detected {
                board: (*b).clone(),
                how,
            }),
            None => Err(Error::WrongBoard {
                built_for: want.to_string(),
                found: names(&list),
                evidence: how.to_string(),
            }),
        },
        (Some((list, how)), None) if list.len() == 1 => Ok(Detected {
            board: list[0].clone(),
            how,
        }),
        (Some((list, how)), None) => Err(Error::Ambiguous {
            candidates: names(&list),
            evidence: how.to_string(),
        }),
        // Nothing identifies the board: only a card for a board without an
        // identity of its own may go on (a board with one is not this board).
        (None, Some(want)) => {
            let b = find_in(boards, want)?;
            if b.identity.compatible.is_empty() && b.identity.dmi.is_empty() {
                return Ok(Detected {
                    board: b.clone(),
                    how: How::BuiltFor,
                });
            }
            Err(not_detected(root, boards)?)
        }
        (None, None) => Err(not_detected(root, boards)?),
    }
}

/// [`Error::NotDetected`] with what the device tree and DMI say.
fn not_detected(root: &Path, boards: &[Board]) -> Result<Error> {
    Ok(Error::NotDetected {
        compatible: read_compatible(root)?,
        dmi: read_dmi(root)?
            .iter()
            .map(|(f, v)| format!("{f}={v:?}"))
            .collect::<Vec<_>>()
            .join(" "),
        known: boards.iter().map(|b| b.name.clone()).collect(),
    })
}

/// The boards the device tree (else DMI) points at, all equally well, and how;
/// None when nothing matches.
fn identify<'a>(root: &Path, boards: &'a [Board]) -> Result<Option<(Vec<&'a Board>, How)>> {
    let compatible = read_compatible(root)?;
    // Rank each board by the position of its best match in the DT list.
    let mut best: Option<(usize, Vec<&Board>)> = None;
    for board in boards {
        let pos = compatible.iter().position(|c| {
            board
                .identity
                .compatible
                .iter()
                .any(|pat| glob_match(pat, c))
        });
        let Some(pos) = pos else { continue };
        match &mut best {
            Some((p, list)) if *p == pos => list.push(board),
            Some((p, _)) if *p < pos => {}
            _ => best = Some((pos, vec![board])),
        }
    }
    if let Some((pos, list)) = best {
        return Ok(Some((list, How::Compatible(compatible[pos].clone()))));
    }

    let dmi = read_dmi(root)?;
    let value = |field: &str| {
        dmi.iter()
            .find(|(f, _)| *f == field)
            .map(|(_, v)| v.as_str())
    };
    let mut hits: Vec<&Board> = Vec::new();
    let mut evidence = String::new();
    for board in boards {
        let hit = board.identity.dmi.iter().find(|m| {
            let fields = m.fields();
            !fields.is_empty()
                && fields.iter().all(|(f, pat)| {
                    // Firmware is inconsistent about case ("intel" from U-Boot's
                    // SMBIOS, "Intel Corporation" from AMI), so DMI ignores it.
                    // ASCII case only: SMBIOS strings are ASCII in practice,
                    // and full Unicode folding costs the static /init about
                    // 4 KB of tables (docs/building.md).
                    value(f).is_some_and(|v| {
                        glob_match(&pat.to_ascii_lowercase(), &v.to_ascii_lowercase())
                    })
                })
        });
        if let Some(m) = hit {
            if hits.is_empty() {
                evidence = m
                    .fields()
                    .iter()
                    .map(|(f, _)| format!("{f}={:?}", value(f).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            hits.push(board);
        }
    }
    Ok((!hits.is_empty()).then_some((hits, How::Dmi(evidence))))
}
