//! The boot chain on its own, no flasher involved: the demo OS image (systemd-boot,
//! Debian kernel, demo init) boots as the internal disk of both virtual boards and
//! prints its marker. If this fails, every flash scenario that boots the target
//! would fail for reasons unrelated to the flasher.

mod qemu_common;

use flasher_qemu::VirtualBoard;
use qemu_common::*;

#[test]
fn demo_os_boots_from_nvme_through_ovmf_and_systemd_boot() {
    assert!(boots(VirtualBoard::Nuc, &demo_os_only()));
}

#[test]
fn demo_os_boots_from_the_sd_board_internal_slot() {
    assert!(boots(VirtualBoard::Sd, &demo_os_only()));
}

#[test]
fn a_blank_disk_does_not_boot() {
    let dir = tempfile::tempdir().unwrap();
    let blank = dir.path().join("blank.img");
    std::fs::File::create(&blank)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let _g = vm_lock();
    // OVMF finds nothing to boot and falls back to its shell; the harness stops there.
    let found = flasher_qemu::boot_disk(
        VirtualBoard::Nuc,
        &blank,
        std::time::Duration::from_secs(300),
        flasher_qemu::DEMO_MARKER,
    )
    .unwrap();
    assert!(!found);
}
