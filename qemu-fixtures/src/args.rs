//! The QEMU command line for each virtual board: machine, serial ports,
//! firmware or direct kernel boot, the card's and the target's block devices
//! (optionally behind blkdebug), the target's identity, and the kernel
//! arguments the harness adds when it boots a kernel itself. Pure functions,
//! unit-tested.
//!
//! One target file is one unit. The card keeps its unit log across runs
//! (`card_writes`), and the flasher counts failed attempts per unit (by eMMC
//! CID, else serial; `flasher_format::record::MAX_ATTEMPTS`). The NVMe target
//! gets a serial derived from its file ([`target_serial`]). QEMU's sd-card
//! gives every card the same CID, so on the twins with an SD target the
//! flasher could not tell two target files apart and would refuse the fourth
//! after three failed runs on other files: [`direct_append`] passes
//! `flasher.retry-unit` there (a caller's `flasher.retry-unit=0` comes later
//! and wins).

use crate::board::{EVENTS_TTY, IMX6_EVENTS_TTY, OVMF_CODE};
use crate::VirtualBoard;
use flasher_format::cmdline::{self, After};
use std::path::Path;

/// Escape a path for a QEMU `key=value,...` option (commas double).
fn q(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

/// A block device for the guest: `-blockdev` node `node`, optionally behind blkdebug.
pub(crate) fn blockdev(
    node: &str,
    file: &Path,
    blkdebug: Option<&Path>,
    snapshot: bool,
) -> Vec<String> {
    let mut v = match blkdebug {
        Some(cfg) => vec![
            "-blockdev".into(),
            format!(
                "driver=raw,node-name={node},file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={}",
                q(cfg),
                q(file)
            ),
        ],
        None if snapshot => vec![
            "-drive".into(),
            format!("if=none,id={node},format=raw,snapshot=on,file={}", q(file)),
        ],
        None => vec![
            "-blockdev".into(),
            format!("driver=raw,node-name={node},file.driver=file,file.filename={}", q(file)),
        ],
    };
    v.shrink_to_fit();
    v
}

/// What the guest is given to boot from.
pub(crate) enum Boot<'a> {
    /// `-kernel`/`-initrd`/`-append` (the SD board; U-Boot's job on real boards).
    Direct {
        kernel: &'a Path,
        initrd: Option<&'a Path>,
        append: String,
        /// `-dtb` (the i.MX6 twin).
        dtb: Option<&'a Path>,
    },
    /// OVMF firmware with this writable vars copy.
    Ovmf { vars: &'a Path },
}

/// The NVMe serial of the target in `file`: `fl` and 16 hex digits of the
/// FNV-1a hash of its absolute path (20 characters at most, NVMe's limit).
/// The same file is the same unit in every run, and two files are two units.
pub fn target_serial(file: &Path) -> String {
    let path = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let hash = path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("fl{hash:016x}")
}

/// The QEMU argument list for one machine: `target` is the target's block
/// device arguments and its serial ([`target_serial`], used by NVMe). Pure:
/// unit-tested.
pub(crate) fn machine_args(
    board: VirtualBoard,
    boot: &Boot,
    card: Option<Vec<String>>,
    target: Option<(Vec<String>, String)>,
    events: &Path,
    memory_mib: u32,
) -> Vec<String> {
    let mut a: Vec<String> = [
        "-machine",
        match board {
            VirtualBoard::Sd | VirtualBoard::Nuc => "q35",
            VirtualBoard::Imx6 => "sabrelite",
        },
        "-accel",
        "tcg",
        "-smp",
        "1",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (console, events) = ("stdio".to_string(), format!("file:{}", events.display()));
    // x86: ttyS0 console, ttyS1 events. i.MX6: UART1 (ttymxc0) events, UART2
    // (ttymxc1) the console, as the Nitrogen6x's device tree and U-Boot use it.
    let serials = match board {
        VirtualBoard::Sd | VirtualBoard::Nuc => [console, events],
        VirtualBoard::Imx6 => [events, console],
    };
    for s in serials {
        a.extend(["-serial".into(), s]);
    }
    a.push("-m".into());
    a.push(format!("{memory_mib}M"));
    match boot {
        Boot::Direct {
            kernel,
            initrd,
            append,
            dtb,
        } => {
            a.push("-kernel".into());
            a.push(kernel.display().to_string());
            if let Some(d) = dtb {
                a.push("-dtb".into());
                a.push(d.display().to_string());
            }
            if let Some(i) = initrd {
                a.push("-initrd".into());
                a.push(i.display().to_string());
            }
            a.push("-append".into());
            a.push(append.clone());
        }
        Boot::Ovmf { vars } => {
            a.push("-drive".into());
            a.push(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ));
            a.push("-drive".into());
            a.push(format!("if=pflash,format=raw,unit=1,file={}", q(vars)));
        }
    }
    match board {
        VirtualBoard::Sd => {
            // Order matters: a bus-less sd-card lands on the last sdhci-pci added,
            // so each controller is followed by its card (checked with `info qtree`).
            a.extend(["-device".into(), "sdhci-pci,addr=05.0".into()]);
            if let Some(c) = card {
                a.extend(c);
                a.extend(["-device".into(), "sd-card,drive=card".into()]);
            }
            a.extend(["-device".into(), "sdhci-pci,addr=06.0".into()]);
            if let Some((t, _)) = target {
                a.extend(t);
                a.extend(["-device".into(), "sd-card,drive=t0".into()]);
            }
        }
        VirtualBoard::Nuc => {
            a.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
            if let Some(c) = card {
                a.extend(c);
                // bootindex: OVMF must boot the stick even when the NVMe already
                // holds a bootable OS (the second run after a power cut).
                a.extend([
                    "-device".into(),
                    "usb-storage,bus=xhci.0,drive=card,removable=on,bootindex=0".into(),
                ]);
            }
            if let Some((t, serial)) = target {
                a.extend(t);
                a.extend([
                    "-device".into(),
                    format!("nvme,drive=t0,serial={serial},bootindex=1"),
                ]);
            }
        }
        VirtualBoard::Imx6 => {
            if let Some(c) = card {
                a.extend(c);
                // usb-bus.1 is the i.MX6 USB H1 host (2184200.usb); the OTG
                // port's bus (usb-bus.0) stays free.
                a.extend([
                    "-device".into(),
                    "usb-storage,drive=card,bus=usb-bus.1".into(),
                ]);
            }
            if let Some((t, _)) = target {
                a.extend(t);
                // All four usdhc buses share the name sd-bus: a bus-less
                // sd-card lands on usdhc4, the slot of the real board's eMMC.
                a.extend(["-device".into(), "sd-card,drive=t0".into()]);
            }
        }
    }
    a
}

/// What the flasher does after a failure inside the harness (the board default,
/// `wait`, would keep the VM running until the timeout).
pub(crate) fn on_failure() -> String {
    cmdline::arg(cmdline::key::ON_FAILURE, After::PowerOff)
}

/// Kernel arguments for the boards the harness boots directly: console, board
/// (the sd board only: the i.MX6 twin is found by its device tree), events,
/// `flasher.retry-unit` (both have an sd-card target: see the module doc),
/// then the card's own arguments, then the caller's (later ones win in the
/// flasher's parser).
pub(crate) fn direct_append(board: VirtualBoard, card_cmdline: &str, extra: &[String]) -> String {
    let mut parts = vec![
        // A dead /init should end the run at once, not at the timeout.
        "panic=-1".to_string(),
        // In a VM nobody reads the blink code: end the run once the failure is
        // reported and recorded, rather than at the harness timeout.
        on_failure(),
        // Every sd-card has QEMU's one CID (module doc).
        cmdline::key::RETRY_UNIT.to_string(),
    ];
    match board {
        VirtualBoard::Imx6 => {
            parts.insert(0, "console=ttymxc1,115200".into());
            // QEMU's sabrelite does not emulate the i.MX6 SDMA engine, and the
            // imx UART driver sends through SDMA on every port but the
            // console: the events port would stay silent. Without the SDMA
            // driver the UART falls back to interrupt-driven transmission.
            // (SD and USB use their own DMA.)
            parts.push("initcall_blacklist=sdma_driver_init".into());
            parts.push(cmdline::arg(cmdline::key::EVENTS, IMX6_EVENTS_TTY));
        }
        VirtualBoard::Sd | VirtualBoard::Nuc => {
            parts.insert(0, "console=ttyS0".into());
            parts.insert(2, cmdline::arg(cmdline::key::BOARD, board.name()));
            parts.insert(3, cmdline::arg(cmdline::key::EVENTS, EVENTS_TTY));
        }
    }
    let card_args: Vec<&str> = card_cmdline
        .split_whitespace()
        // The twin's serial wiring is fixed (console UART2, events UART1): a
        // card built for another i.MX6 board names that board's console
        // (HummingBoard: ttymxc0, the twin's events port), so it is dropped.
        .filter(|a| board != VirtualBoard::Imx6 || !a.starts_with("console="))
        .collect();
    if !card_args.is_empty() {
        parts.push(card_args.join(" "));
    }
    parts.extend(extra.iter().cloned());
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sd_machine_pairs_each_controller_with_its_card() {
        let boot = Boot::Direct {
            kernel: Path::new("/k"),
            initrd: Some(Path::new("/i")),
            append: direct_append(VirtualBoard::Sd, "quiet", &["flasher.board=bogus".into()]),
            dtb: None,
        };
        let a = machine_args(
            VirtualBoard::Sd,
            &boot,
            Some(blockdev("card", Path::new("/c,d.img"), None, false)),
            Some((
                blockdev(
                    "t0",
                    Path::new("/t.img"),
                    Some(Path::new("/bd.conf")),
                    false,
                ),
                target_serial(Path::new("/t.img")),
            )),
            Path::new("/ev"),
            512,
        );
        let s = a.join(" ");
        let pos = |needle: &str| {
            s.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing in {s}"))
        };
        assert!(pos("sdhci-pci,addr=05.0") < pos("sd-card,drive=card"));
        assert!(pos("sd-card,drive=card") < pos("sdhci-pci,addr=06.0"));
        assert!(pos("sdhci-pci,addr=06.0") < pos("sd-card,drive=t0"));
        assert!(s.contains("file.filename=/c,,d.img"));
        assert!(s.contains("file.driver=blkdebug,file.config=/bd.conf"));
        assert!(s.contains("-serial stdio -serial file:/ev"));
        assert!(s.contains("-accel tcg"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttyS0 panic=-1 flasher.board=qemu-x86_64-sd flasher.events=/dev/ttyS1 flasher.on-failure=poweroff flasher.retry-unit quiet flasher.board=bogus"
        );
    }

    #[test]
    fn nuc_machine_uses_ovmf_usb_and_nvme() {
        let a = machine_args(
            VirtualBoard::Nuc,
            &Boot::Ovmf {
                vars: Path::new("/v.fd"),
            },
            Some(blockdev("card", Path::new("/c.img"), None, false)),
            Some((
                blockdev("t0", Path::new("/t.img"), None, true),
                "fl0123".into(),
            )),
            Path::new("/ev"),
            512,
        )
        .join(" ");
        assert!(a.contains(&format!("file={OVMF_CODE}")));
        assert!(a.contains("if=pflash,format=raw,unit=1,file=/v.fd"));
        assert!(a.contains("usb-storage,bus=xhci.0,drive=card,removable=on"));
        assert!(a.contains("nvme,drive=t0,serial=fl0123,bootindex=1"));
        assert!(a.contains("snapshot=on,file=/t.img"));
        assert!(!a.contains("-kernel"));
    }

    #[test]
    fn imx6_machine_is_sabrelite_with_the_dtb_a_usb_stick_and_an_sd_target() {
        let boot = Boot::Direct {
            kernel: Path::new("/k"),
            initrd: Some(Path::new("/i")),
            append: direct_append(VirtualBoard::Imx6, "", &[]),
            dtb: Some(Path::new("/n.dtb")),
        };
        let a = machine_args(
            VirtualBoard::Imx6,
            &boot,
            Some(blockdev("card", Path::new("/c.img"), None, false)),
            Some((
                blockdev("t0", Path::new("/t.img"), None, false),
                String::new(),
            )),
            Path::new("/ev"),
            512,
        );
        let s = a.join(" ");
        assert!(s.starts_with("-machine sabrelite -accel tcg"), "{s}");
        assert!(s.contains("-kernel /k -dtb /n.dtb -initrd /i"), "{s}");
        assert!(s.contains("usb-storage,drive=card,bus=usb-bus.1"), "{s}");
        assert!(s.contains("sd-card,drive=t0"), "{s}");
        // UART1 carries the events, UART2 (ttymxc1) is the console.
        assert!(s.contains("-serial file:/ev -serial stdio"), "{s}");
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttymxc1,115200 panic=-1 flasher.on-failure=poweroff flasher.retry-unit \
             initcall_blacklist=sdma_driver_init flasher.events=/dev/ttymxc0"
        );
        // Found by its device tree, never pinned by the harness.
        assert!(!append.contains("flasher.board="));
        assert_eq!(
            "qemu-imx6-nitrogen6x".parse::<VirtualBoard>().unwrap(),
            VirtualBoard::Imx6
        );
    }

    #[test]
    fn one_target_file_is_one_unit() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
        std::fs::write(&a, b"").unwrap();
        let serial = target_serial(&a);
        assert!(
            serial.len() <= 20,
            "NVMe serials hold 20 characters: {serial}"
        );
        assert_eq!(serial, target_serial(&a), "stable across runs");
        // The same file by another spelling of its path is the same unit.
        assert_eq!(serial, target_serial(&dir.path().join(".").join("a.img")));
        assert_ne!(serial, target_serial(&b));
    }
}
