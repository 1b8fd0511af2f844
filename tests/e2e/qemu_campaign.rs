//! The randomized fail-closed campaign on real kernels (issue 22 item 2,
//! docs/fail-closed.md "The campaign"): each run picks a twin (`qemu-x86_64-sd`,
//! `qemu-x86_64-nuc` or the i.MX6 twin `qemu-imx6-nitrogen6x`), a prior
//! target content (zeros, noise, the image itself), and a fault (none; a write error or a read error at a random
//! sector of the image; a power cut at a random point of the writing phase),
//! flashes the twin's image (the demo OS on x86; on the i.MX6 twin, whose card
//! is a slow USB stick, a 16 MiB FAT + ext4 GPT image) through its card, and
//! checks the invariant on the target file:
//!
//! - success: the target equals the image outside the fix-up sectors;
//! - otherwise: no partition table that `sfdisk` or `blkid` recognises and no
//!   filesystem `blkid` finds on the whole target, or
//!   (a power cut) the target equals the image or its prior content.
//!
//! `FLASHER_QEMU_CAMPAIGN_RUNS` (default 2, what CI runs) and
//! `FLASHER_QEMU_CAMPAIGN_SEED` (default: from the clock, printed) choose the
//! runs; each run prints one line, and a failure names the seed and run to
//! replay.

mod qemu_common;

use flasher_qemu::{Fault, VirtualBoard};
use qemu_common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// xorshift64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Whether `sfdisk` or `blkid -p` finds a partition table on `path`, or
/// `blkid -p` a filesystem or other signature on the whole of it.
fn recognisable(path: &Path) -> bool {
    let sfdisk = Command::new("sfdisk")
        .arg("--dump")
        .arg(path)
        .output()
        .unwrap();
    let blkid = Command::new("blkid")
        .args(["-p", "-o", "export"])
        .arg(path)
        .output()
        .unwrap();
    (sfdisk.status.success() && String::from_utf8_lossy(&sfdisk.stdout).contains("start="))
        || String::from_utf8_lossy(&blkid.stdout)
            .lines()
            .any(|l| l.starts_with("PTTYPE=") || l.starts_with("TYPE="))
}

/// The first byte where the target differs from the image outside the GPT
/// fix-up sectors (LBA 0-1, the image's last 33 sectors), if any.
fn differs_from_image(target: &[u8], img: &[u8]) -> Option<usize> {
    (2 * 512..img.len() - 33 * 512).find(|&i| img[i] != target[i])
}

#[test]
fn randomized_fault_campaign_on_the_three_twins() {
    let runs: u64 = std::env::var("FLASHER_QEMU_CAMPAIGN_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let seed: u64 = std::env::var("FLASHER_QEMU_CAMPAIGN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
        | 1;
    eprintln!("QEMU campaign: {runs} runs, FLASHER_QEMU_CAMPAIGN_SEED={seed}");
    let f = fixture();
    let x86_img = std::fs::read(&f.os).unwrap();
    let mut imx6_img = None;
    let mut rng = Rng(seed);
    let mut tally = std::collections::BTreeMap::<String, u32>::new();
    for run_no in 0..runs {
        let board =
            [VirtualBoard::Sd, VirtualBoard::Nuc, VirtualBoard::Imx6][rng.below(3) as usize];
        let (img, card, target_size): (&[u8], PathBuf, u64) = if board == VirtualBoard::Imx6 {
            let i = imx6_fixture();
            let img = imx6_img.get_or_insert_with(|| std::fs::read(&i.os).unwrap());
            (img, i.card.clone(), IMX6_TARGET_SIZE)
        } else {
            (&x86_img, f.card(board), 64 << 20)
        };
        let prior_kind = rng.below(3);
        let mut prior = match prior_kind {
            0 => vec![0u8; target_size as usize],
            _ => flasher_format::testing::noise(target_size as usize, rng.next()),
        };
        if prior_kind == 2 {
            prior[..img.len()].copy_from_slice(img);
        } else {
            // Noise must not look like an MBR by chance.
            prior[510] = 0;
        }
        let fault = match rng.below(4) {
            0 => None,
            1 => Some(Fault::IoError {
                offset: rng.below(img.len() as u64) / 512 * 512,
            }),
            2 => Some(Fault::ReadError {
                offset: rng.below(img.len() as u64) / 512 * 512,
            }),
            _ => Some(Fault::PowerCutAt {
                percent: (1 + rng.below(98)) as f64,
            }),
        };
        let what = format!(
            "run {run_no} (seed {seed}): {board}, prior {}, fault {fault:?}",
            ["zeros", "noise", "the image"][prior_kind as usize]
        );
        let target = f.path(&format!("campaign-{run_no}.img"));
        std::fs::write(&target, &prior).unwrap();
        let mut o = options(board, &card, Some(target.clone()));
        o.faults = fault.iter().cloned().collect();
        let out = run(&o);
        let got = std::fs::read(&target).unwrap();
        let verdict = if out.succeeded() {
            if let Some(i) = differs_from_image(&got, img) {
                panic!("{what}: success, but the target differs from the image at byte {i}");
            }
            "success, equal"
        } else {
            assert!(
                fault.is_some(),
                "{what}: failed without a fault: {:?}",
                out.failure_message()
            );
            // A refusal, or a failure of the wipe's read-back, leaves the
            // target as it was but for the wipe's zeros at its two ends.
            let end = got.len() - (1 << 20);
            let as_before = got
                .iter()
                .zip(&prior)
                .enumerate()
                .all(|(i, (a, b))| a == b || (*a == 0 && (i < 1 << 20 || i >= end)));
            if as_before {
                "failed, target as before"
            } else if recognisable(&target) {
                // (A target left as before was accepted above.)
                let equal_image = differs_from_image(&got, img).is_none();
                let cut = matches!(fault, Some(Fault::PowerCutAt { .. }));
                assert!(
                    cut && equal_image,
                    "{what}: failed ({:?}), and a partition table or filesystem is recognisable on the target",
                    out.failure_message()
                );
                "cut, complete"
            } else {
                "failed, nothing recognisable"
            }
        };
        eprintln!("{what}: {verdict}");
        *tally.entry(verdict.to_string()).or_default() += 1;
        let _ = std::fs::remove_file(&target);
    }
    eprintln!("QEMU campaign (seed {seed}): {tally:?}");
}
