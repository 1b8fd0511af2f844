//! The virtual boards by name, and what each needs on the host: the QEMU
//! binary, OVMF for the NUC, the twin's device tree from the Debian parts
//! cache, and the fixed serial ports the guest writes its events to.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// OVMF firmware from Debian's `ovmf` package.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// The guest serial port the flasher writes JSON events to.
pub const EVENTS_TTY: &str = "/dev/ttyS1";
/// The same on the i.MX6 twin: UART1 (QEMU's first `-serial`); the console is
/// UART2, `ttymxc1`, as on the real Nitrogen6x.
pub const IMX6_EVENTS_TTY: &str = "/dev/ttymxc0";
/// The device tree the i.MX6 twin boots, from Debian's armmp kernel package.
pub const IMX6_DTB: &str = "imx6q-nitrogen6x.dtb";
const QEMU: &str = "qemu-system-x86_64";
const QEMU_ARM: &str = "qemu-system-arm";

/// A virtual board: how QEMU's machine is put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualBoard {
    Sd,
    Nuc,
    /// The i.MX6 twin of the Nitrogen6x.
    Imx6,
}

impl VirtualBoard {
    pub fn name(self) -> &'static str {
        match self {
            VirtualBoard::Sd => "qemu-x86_64-sd",
            VirtualBoard::Nuc => "qemu-x86_64-nuc",
            VirtualBoard::Imx6 => "qemu-imx6-nitrogen6x",
        }
    }

    pub(crate) fn qemu(self) -> &'static str {
        match self {
            VirtualBoard::Sd | VirtualBoard::Nuc => QEMU,
            VirtualBoard::Imx6 => QEMU_ARM,
        }
    }
}

impl std::str::FromStr for VirtualBoard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "qemu-x86_64-sd" => Ok(VirtualBoard::Sd),
            "qemu-x86_64-nuc" => Ok(VirtualBoard::Nuc),
            "qemu-imx6-nitrogen6x" => Ok(VirtualBoard::Imx6),
            _ => Err(Error::UnknownBoard { name: s.into() }),
        }
    }
}

impl std::fmt::Display for VirtualBoard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

pub(crate) fn check_tools(board: VirtualBoard) -> Result<()> {
    let qemu = board.qemu();
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(qemu).is_file()))
        .unwrap_or(false);
    if !found {
        return Err(Error::QemuMissing {
            binary: qemu.into(),
        });
    }
    if board == VirtualBoard::Nuc {
        for p in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(p).is_file() {
                return Err(Error::OvmfMissing { path: p.into() });
            }
        }
    }
    Ok(())
}

/// The twin's device tree from the Debian parts cache (Debian's armmp package).
pub(crate) fn imx6_dtb() -> Result<PathBuf> {
    let cache = crate::locate::debian_parts();
    crate::locate::armmp_dtb(&cache, IMX6_DTB).ok_or_else(|| Error::DtbMissing {
        name: IMX6_DTB.into(),
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_by_name() {
        assert_eq!(
            "qemu-x86_64-sd".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Sd
        );
        assert_eq!(
            "qemu-x86_64-nuc".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Nuc
        );
        assert!(matches!(
            "beaglebone".parse::<VirtualBoard>(),
            Err(Error::UnknownBoard { .. })
        ));
    }
}
