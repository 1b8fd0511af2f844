//! QEMU scenarios on `qemu-x86_64-sd` (card on sdhci-pci 05.0, "eMMC" target on
//! 06.0, kernel and initramfs from the card's flash-boot FAT): the happy path, an
//! I/O error on the target, a target too small, no internal disk at all, and a
//! bad `flasher.board=`; a signed payload accepted and an unsigned one refused
//! by a card whose initramfs trusts a key.

mod qemu_common;

use flasher_format::event::Body;
use flasher_qemu::{Fault, VirtualBoard};
use qemu_common::*;

const SD: VirtualBoard = VirtualBoard::Sd;

#[test]
fn happy_path_flashes_and_verifies() {
    let f = fixture();
    let target = blank_target(f, "sd-happy.img", 64 << 20);
    let o = options(SD, &f.card(SD), Some(target.clone()));
    let out = run(&o);
    out.check(o.timeout, None).unwrap();
    assert_phase_order(&out);
    assert_target_equals_image(&target, &f.os);
    assert_gpt_verifies(&target);
    assert!(
        boots(SD, &target),
        "the flashed target did not print the demo marker"
    );
}

#[test]
fn write_error_fails_naming_the_offset() {
    let f = fixture();
    let target = blank_target(f, "sd-ioerr.img", 64 << 20);
    // 4 MiB into the disk lies inside the demo OS's kernel file: real data that
    // must be written (not a zero range that might go through write-zeroes).
    let offset: u64 = 4 << 20;
    let mut o = options(SD, &f.card(SD), Some(target));
    o.faults = vec![Fault::IoError { offset }];
    let out = run(&o);
    assert!(!out.succeeded());
    let msg = out.failure_message().expect("a failure event");
    // QEMU's sd-card model drops block-layer write errors instead of reporting
    // them to the guest: the write "succeeds" and only the read-back can see the
    // data never landed (class 5). NVMe reports the EIO itself (class 4, see
    // qemu_nuc.rs). Either way the flash must fail and name the range.
    let class = failure_class(&out);
    assert!(
        class == Some(ErrorClass::WriteIo) || class == Some(ErrorClass::VerifyMismatch),
        "a lost write is class 4 (reported) or 5 (caught by verify), got {class:?}: {msg}"
    );
    let forms = [
        offset.to_string(),
        format!("{offset:#x}"),
        (offset / 512).to_string(),
        "4 MiB".to_string(),
        "4.0 MiB".to_string(),
    ];
    assert!(
        forms.iter().any(|f| msg.contains(f.as_str())),
        "offset not named in {msg:?}"
    );
}

#[test]
fn target_too_small_is_refused_before_any_write() {
    let f = fixture();
    // 16 MiB (a power of two: no growing) against a ~26 MiB image.
    let target = blank_target(f, "sd-small.img", 16 << 20);
    let out = run(&options(SD, &f.card(SD), Some(target.clone())));
    assert!(!out.succeeded());
    assert!(out.failure_message().is_some());
    assert_eq!(failure_class(&out), Some(ErrorClass::TargetRefused));
    assert!(out
        .events
        .iter()
        .all(|e| !matches!(e.body, Body::Progress { done, .. } if done > 0)));
    assert!(all_zero(&target), "the refused target was written");
}

#[test]
fn no_internal_disk_is_a_clear_error() {
    let f = fixture();
    let out = run(&options(SD, &f.card(SD), None));
    assert!(!out.succeeded());
    let msg = out.failure_message().expect("a failure event");
    assert!(!msg.is_empty());
    assert_eq!(
        failure_class(&out),
        Some(ErrorClass::NoStorage),
        "no internal storage is class 1: {msg}"
    );
}

#[test]
fn bad_board_option_is_a_clear_error() {
    let f = fixture();
    let target = blank_target(f, "sd-badboard.img", 64 << 20);
    let mut o = options(SD, &f.card(SD), Some(target.clone()));
    o.append = vec!["flasher.board=no-such-board".into()];
    let out = run(&o);
    assert!(!out.succeeded());
    let msg = out.failure_message().expect("a failure event");
    assert!(
        msg.contains("no-such-board"),
        "the message should name the bad board: {msg}"
    );
    assert_eq!(
        failure_class(&out),
        Some(ErrorClass::BoardConfig),
        "board configuration error is class 6"
    );
    assert!(all_zero(&target));
}

/// QEMU's sd-card swallows the write error: the read-back must catch a lost
/// write in the image's last MiB (the first sector of the backup GPT entries,
/// held back to the end) and fail the run closed.
#[test]
fn lost_write_in_the_last_mib_fails_closed() {
    assert_fault_fails_closed(SD, "sd-last-mib.img", 33 * 512, true);
}

/// The same in the first MiB (the primary GPT entries at LBA 2).
#[test]
fn lost_write_in_the_first_mib_fails_closed() {
    assert_fault_fails_closed(SD, "sd-first-mib.img", 2 * 512, false);
}

/// Signed payloads on a real kernel (docs/SECURITY.md): a card whose
/// initramfs trusts a key flashes a bundle signed by it; the same trusted
/// initramfs with an unsigned payload (a card whose payload partition was
/// swapped) refuses before touching the target, class 2.
#[test]
fn signed_payload_flashes_and_unsigned_is_refused_untouched() {
    let f = fixture();
    let key = f.path("line");
    let (secret, public) = (f.path("line.key"), f.path("line.pub"));
    mkflasher(&["keygen", key.to_str().unwrap()]);
    let signed = f.path("signed.bundle");
    mkflasher(&[
        "bundle",
        f.os.to_str().unwrap(),
        "-o",
        signed.to_str().unwrap(),
        "--sign",
        secret.to_str().unwrap(),
    ]);
    let card = f.path("card-signed.img");
    mkflasher(&[
        "build",
        "--board",
        SD.name(),
        "--payload",
        signed.to_str().unwrap(),
        "--trust",
        public.to_str().unwrap(),
        "-o",
        card.to_str().unwrap(),
    ]);
    let target = blank_target(f, "sd-signed.img", 64 << 20);
    let o = options(SD, &card, Some(target.clone()));
    let out = run(&o);
    out.check(o.timeout, None).unwrap();
    assert_target_equals_image(&target, &f.os);
    let unsigned_warning = |out: &flasher_qemu::QemuOutcome| {
        out.events.iter().any(|e| {
            matches!(&e.body, Body::Message { message } if message.contains("bundle is unsigned"))
        })
    };
    assert!(!unsigned_warning(&out), "a signed bundle gives no warning");

    // The trusted initramfs, with the unsigned demo bundle as payload.
    let initramfs = f.path("initramfs-trusted.img");
    mkflasher(&[
        "initramfs",
        "--board",
        SD.name(),
        "--trust",
        public.to_str().unwrap(),
        "-o",
        initramfs.to_str().unwrap(),
    ]);
    let swapped = f.path("card-swapped.img");
    mkflasher(&[
        "build",
        "--board",
        SD.name(),
        "--payload",
        f.bundle.to_str().unwrap(),
        "--initramfs",
        initramfs.to_str().unwrap(),
        "-o",
        swapped.to_str().unwrap(),
    ]);
    let target = blank_target(f, "sd-swapped.img", 64 << 20);
    let out = run(&options(SD, &swapped, Some(target.clone())));
    assert!(!out.succeeded());
    assert_eq!(failure_class(&out), Some(ErrorClass::PayloadInvalid));
    let msg = out.failure_message().unwrap_or_default();
    assert!(msg.contains("unsigned"), "{msg}");
    assert!(all_zero(&target), "the refused target was written");
}

/// Issue 22, finding 1: on a target full of noise, a write the sd-card model
/// swallows in a zero-filled range of the image's last MiB (and first MiB)
/// must never end in a verified success with noise left there.
#[test]
fn swallowed_zero_writes_over_noise_never_verify() {
    let f = fixture();
    let img = std::fs::read(&f.os).unwrap();
    let len = img.len() as u64;
    // Sectors in the held-back regions whose image bytes are zero, away from
    // the table sectors the fix-up rewrites.
    let zero_at = |from: u64, to: u64| {
        (from..to)
            .step_by(512)
            .find(|&o| img[o as usize..o as usize + 512].iter().all(|&b| b == 0))
            .expect("a zero sector")
    };
    for (name, offset) in [
        (
            "sd-noise-tail.img",
            zero_at(len - (1 << 20), len - 64 * 512),
        ),
        ("sd-noise-head.img", zero_at(64 << 10, 1 << 20)),
    ] {
        let target = f.path(name);
        let noise: Vec<u8> = (0..64u64 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8 | 1)
            .collect();
        std::fs::write(&target, &noise).unwrap();
        let mut o = options(SD, &f.card(SD), Some(target.clone()));
        o.faults = vec![Fault::IoError { offset }];
        let out = run(&o);
        let got = std::fs::read(&target).unwrap();
        let sector = offset as usize..offset as usize + 512;
        if out.succeeded() {
            if got[sector.clone()] != img[sector.clone()] {
                std::fs::write("/tmp/swallowed-console.log", &out.console_log).unwrap();
            }
            assert!(
                got[sector.clone()] == img[sector],
                "{name}: success reported with noise at byte {offset} where the image has zeros"
            );
        } else {
            let class = failure_class(&out);
            assert!(
                class == Some(ErrorClass::WriteIo) || class == Some(ErrorClass::VerifyMismatch),
                "{name}: class {class:?}: {:?}",
                out.failure_message()
            );
        }
    }
}
