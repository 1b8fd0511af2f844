//! QEMU scenarios on `qemu-imx6-nitrogen6x`, the i.MX6 twin: QEMU sabrelite
//! booting Debian's armmp kernel with the real `imx6q-nitrogen6x.dtb`, the ARMv7
//! `/init` (scripts/build-init-armv7), the card as a USB stick and the target an
//! SD card on usdhc4. The board is found by its device tree, never by
//! `flasher.board=`.
//!
//! The stick reads at about 1 MB/s, so the payload is a small real GPT image
//! (16 MiB: FAT + ext4, with fresh random bytes so no run flashes an image seen
//! before: `qemu_common::imx6_fixture`) rather than the x86 demo OS.

mod qemu_common;

use flasher_qemu::{Fault, QemuOutcome, VirtualBoard};
use qemu_common::*;

const IMX6: VirtualBoard = VirtualBoard::Imx6;

/// The message `/init` gives when it has chosen the board, and how.
fn board_selection(out: &QemuOutcome) -> String {
    out.events
        .iter()
        .filter_map(|e| e.text())
        .find(|t| t.starts_with("board ") && t.contains("selected by"))
        .unwrap_or_else(|| panic!("no board selection message; phases {}", out.phase_names()))
        .to_string()
}

/// The kernel command line the guest booted with (from its console).
fn kernel_cmdline(out: &QemuOutcome) -> String {
    out.console_log
        .lines()
        .find_map(|l| {
            l.split_once("Kernel command line: ")
                .map(|(_, c)| c.to_string())
        })
        .expect("the kernel prints its command line")
}

/// The acceptance check: a card built from an unseen image for the twin boots
/// the ARM `/init`, which finds the board by its device tree, flashes the SD
/// target and verifies it; the target holds the image bit for bit.
#[test]
fn happy_path_flashes_bit_exact_finding_the_board_by_its_device_tree() {
    let f = imx6_fixture();
    let target = f.blank_target("imx6-happy.img", IMX6_TARGET_SIZE);
    let o = options(IMX6, &f.card, Some(target.clone()));
    let out = run(&o);
    out.check(o.timeout, None).unwrap();
    assert_phase_order(&out);
    assert_eq!(
        board_selection(&out),
        format!(
            "board {} ({}), selected by device-tree compatible \"boundary,imx6q-nitrogen6x\"",
            IMX6.name(),
            boards::find(IMX6.name()).unwrap().description
        )
    );
    assert!(
        !kernel_cmdline(&out).contains("flasher.board="),
        "the board must not be pinned on the command line: {}",
        kernel_cmdline(&out)
    );
    assert!(
        out.console_log
            .contains("Machine model: Boundary Devices i.MX6 Quad Nitrogen6x Board"),
        "the guest did not boot the Nitrogen6x device tree"
    );
    assert_target_equals_image(&target, &f.os);
    assert_gpt_verifies(&target);
    eprintln!("imx6 happy path: {:.1} s", out.elapsed.as_secs_f64());
}

#[test]
fn target_too_small_is_refused_before_any_write() {
    let f = imx6_fixture();
    // 8 MiB against the 16 MiB image.
    let target = f.blank_target("imx6-small.img", 8 << 20);
    let out = run(&options(IMX6, &f.card, Some(target.clone())));
    assert!(!out.succeeded());
    assert_eq!(failure_class(&out), Some(ErrorClass::TargetRefused));
    assert!(!out.has_phase(Phase::Writing), "{}", out.phase_names());
    assert!(all_zero(&target), "the refused target was written");
}

/// A write error on the SD target: QEMU's sd-card drops it, the read-back
/// catches it (class 5), or the kernel reports it (class 4); the run fails
/// closed either way.
#[test]
fn write_error_fails_closed() {
    let f = imx6_fixture();
    let target = f.blank_target("imx6-ioerr.img", IMX6_TARGET_SIZE);
    // 10 MiB: inside the ext4 partition's data, not a zero range.
    let mut o = options(IMX6, &f.card, Some(target.clone()));
    o.faults = vec![Fault::IoError { offset: 10 << 20 }];
    let out = run(&o);
    assert!(!out.succeeded());
    assert!(!out.has_phase(Phase::Success));
    let class = failure_class(&out);
    assert!(
        class == Some(ErrorClass::WriteIo) || class == Some(ErrorClass::VerifyMismatch),
        "class {class:?}: {:?}",
        out.failure_message()
    );
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes[..512].iter().all(|&b| b == 0), "sector 0 was written");
}

/// A card built for another board (a HummingBoard) refuses the twin, whose
/// device tree says Nitrogen6x: class 6, before anything is written.
#[test]
fn card_for_another_board_is_refused_by_the_device_tree() {
    let f = imx6_fixture();
    let cache = flasher_qemu::locate::debian_parts();
    let arch = boards::Arch::Armv7;
    let kernel = flasher_qemu::locate::qemu_kernel_for(&cache, arch).unwrap();
    let modules = flasher_qemu::locate::qemu_modules_dir_for(&cache, arch).unwrap();
    let card = f.path("card-hummingboard.img");
    mkflasher(&[
        "build",
        "--board",
        "hummingboard-i2",
        "--payload",
        f.os.to_str().unwrap(),
        "--kernel",
        kernel.to_str().unwrap(),
        "--kernel-modules",
        modules.to_str().unwrap(),
        "-o",
        card.to_str().unwrap(),
    ]);
    let target = f.blank_target("imx6-wrongboard.img", IMX6_TARGET_SIZE);
    let out = run(&options(IMX6, &card, Some(target.clone())));
    assert!(!out.succeeded());
    assert_eq!(failure_class(&out), Some(ErrorClass::BoardConfig));
    let msg = out.failure_message().unwrap();
    assert!(
        msg.contains("hummingboard-i2") && msg.contains("boundary,imx6q-nitrogen6x"),
        "the refusal names the card's board and the evidence: {msg}"
    );
    assert!(!out.has_phase(Phase::Writing));
    assert!(all_zero(&target), "the target was written");
}

/// Power cut at half the writing, then a second run on the same target: the
/// first leaves no partition table (written last), the second succeeds bit
/// for bit. On a copy of the card: its unit log counts this unit's unfinished
/// attempts, and QEMU gives every sd-card the same CID.
#[test]
fn power_cut_at_half_then_a_second_run_succeeds_bit_exact() {
    let f = imx6_fixture();
    let card = f.path("card-imx6-cut.img");
    std::fs::copy(&f.card, &card).unwrap();
    let target = f.blank_target("imx6-cut.img", IMX6_TARGET_SIZE);
    let mut o = options(IMX6, &card, Some(target.clone()));
    o.faults = vec![Fault::PowerCutAt { percent: 50.0 }];
    let cut = run(&o);
    assert!(cut.power_cut, "the VM was not cut: {}", cut.phase_names());
    assert!(!cut.has_phase(Phase::Success));
    let bytes = std::fs::read(&target).unwrap();
    assert!(
        bytes[..512].iter().all(|&b| b == 0),
        "sector 0 written before the image was complete"
    );

    let again = run(&options(IMX6, &card, Some(target.clone())));
    again.check(TIMEOUT, None).unwrap();
    assert_target_equals_image(&target, &f.os);
    assert_gpt_verifies(&target);
}

/// The real firmware chain: Debian's U-Boot (u-boot-imx `mx6qsabrelite`,
/// 2023.01) boots the twin's card through `extlinux/extlinux.conf` (the
/// kernel, the initramfs and the FDT the card names), and `/init` flashes the
/// target. `uboot.elf` alone prints nothing: it lacks the device tree the
/// build appends (`CONFIG_OF_SEPARATE`), so QEMU loads `u-boot-dtb.imx` raw at
/// its IVT's `self` address and starts the CPU at the IVT's entry, which is
/// what the i.MX6 boot ROM would do (QEMU emulates no boot ROM). U-Boot's
/// console is UART2, the second `-serial`. The card's own command line only
/// (console=ttymxc1): its events go to the console.
#[test]
fn debian_uboot_boots_the_card_through_extlinux() {
    use std::io::BufRead;
    let f = imx6_fixture();
    let imx = flasher_qemu::locate::uboot_file(
        &flasher_qemu::locate::debian_parts(),
        "mx6qsabrelite/u-boot-dtb.imx",
    );
    let bytes = std::fs::read(&imx).unwrap();
    // The i.MX IVT: header, entry, reserved, dcd, boot data, self (docs/qemu.md).
    let word = |i: usize| u32::from_le_bytes(bytes[i * 4..i * 4 + 4].try_into().unwrap());
    assert_eq!(word(0) & 0xff, 0xd1, "{} has no IVT", imx.display());
    let (entry, ivt_self) = (word(1), word(5));
    let card = f.path("card-imx6-uboot.img");
    std::fs::copy(&f.card, &card).unwrap();
    let target = f.blank_target("imx6-uboot.img", IMX6_TARGET_SIZE);
    let _g = vm_lock();
    let mut child = std::process::Command::new("qemu-system-arm")
        .args(["-M", "sabrelite", "-smp", "1", "-m", "1G", "-accel", "tcg"])
        .args(["-display", "none", "-monitor", "none"])
        .args(["-serial", "null", "-serial", "stdio"])
        .arg("-device")
        .arg(format!(
            "loader,file={},addr={ivt_self:#x},force-raw=on",
            imx.display()
        ))
        .arg("-device")
        .arg(format!("loader,addr={entry:#x},cpu-num=0"))
        .arg("-drive")
        .arg(format!(
            "if=none,id=stick,file={},format=raw",
            card.display()
        ))
        .args(["-device", "usb-storage,drive=stick,bus=usb-bus.1"])
        .arg("-drive")
        .arg(format!("if=none,id=t,file={},format=raw", target.display()))
        .args(["-device", "sd-card,drive=t"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-arm (qemu-fixtures/setup installs it)");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .split(b'\n')
            .map_while(Result::ok)
        {
            if tx
                .send(String::from_utf8_lossy(&line).into_owned())
                .is_err()
            {
                break;
            }
        }
    });
    let start = std::time::Instant::now();
    let mut log = String::new();
    let ended = loop {
        let left = TIMEOUT.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log.push_str(&line);
                log.push('\n');
                // The board cannot power QEMU's sabrelite off: the run ends
                // with /init's last phase.
                if line.contains("flasher: [success]") || line.contains("flasher: [failure]") {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    // Our own child, by its handle.
    let _ = child.kill();
    let _ = child.wait();
    let tail: String = log.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert!(
        ended,
        "no success or failure within {TIMEOUT:?}; last lines:\n{tail}"
    );
    for want in [
        "U-Boot 2023.01",
        "Found /extlinux/extlinux.conf",
        "Retrieving file: /dtbs/imx6q-nitrogen6x.dtb",
        "Machine model: Boundary Devices i.MX6 Quad Nitrogen6x Board",
        "selected by device-tree compatible \"boundary,imx6q-nitrogen6x\"",
        "flasher: [success]",
    ] {
        assert!(
            log.contains(want),
            "{want:?} not on the console; last lines:\n{tail}"
        );
    }
    assert_target_equals_image(&target, &f.os);
    assert_gpt_verifies(&target);
    eprintln!(
        "imx6 through Debian's U-Boot: {:.1} s to success",
        start.elapsed().as_secs_f64()
    );
}
