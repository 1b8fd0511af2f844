//! `success` lights every user LED of beaglebone-black, on the mainline and the
//! vendor kernel's LED names, on kernel-shaped fake trees.

mod common;

use common::*;
use flasher_format::Phase;
use led::{Animator, FakeClock, Leds};
use std::path::Path;

/// Show `phase` on the beaglebone-black LEDs under `root` and stop.
fn show(root: &Path, phase: Phase) -> Vec<String> {
    let config = bbb_config();
    let opened = led::open_report(root, &config, None);
    let labels = opened.leds.labels();
    let (clock, mut ctl) = FakeClock::new();
    let anim = Animator::start_with_clock(Box::new(opened.leds), &config, clock);
    ctl.next_deadline();
    anim.set_phase(phase);
    ctl.interrupted();
    ctl.next_deadline();
    drop(anim.stop());
    labels
}

fn check_all_solid(root: &Path, names: &[&str]) {
    for name in names {
        let dir = root.join("sys/class/leds").join(name);
        assert_eq!(read(dir.join("trigger")), "none", "{name}");
        assert_eq!(read(dir.join("brightness")), "255", "{name}");
    }
}

#[test]
fn success_lights_all_four_leds_with_mainline_names() {
    let root = tempfile::tempdir().unwrap();
    // Mainline device tree: usr0 is "heartbeat", usr1 is "mmc0", each with its
    // default trigger.
    for (name, trig) in BBB_MAINLINE
        .iter()
        .zip(["heartbeat", "mmc0", "cpu", "mmc1"])
    {
        add_led(root.path(), name, 255, &triggers(trig, true, true));
    }
    // Other LEDs a kernel shows must not be touched.
    let other = add_led(root.path(), "mmc1::", 255, &triggers("mmc1", false, false));
    let labels = show(root.path(), Phase::Success);
    assert_eq!(labels, BBB_MAINLINE);
    check_all_solid(root.path(), &BBB_MAINLINE);
    assert_eq!(read(other.join("brightness")), "0\n");
}

#[test]
fn success_lights_all_four_leds_with_vendor_names() {
    let root = tempfile::tempdir().unwrap();
    for (name, trig) in BBB_VENDOR.iter().zip(["heartbeat", "mmc0", "cpu0", "mmc1"]) {
        add_led(root.path(), name, 255, &triggers(trig, false, false));
    }
    let labels = show(root.path(), Phase::Success);
    assert_eq!(labels, BBB_VENDOR);
    check_all_solid(root.path(), &BBB_VENDOR);
}

#[test]
fn writing_runs_across_all_four_in_order() {
    let root = tempfile::tempdir().unwrap();
    for name in BBB_VENDOR {
        add_led(root.path(), name, 255, &triggers("heartbeat", true, true));
    }
    let config = bbb_config();
    let leds = led::open(root.path(), &config, None);
    assert_eq!(leds.count(), 4);
    let (clock, mut ctl) = FakeClock::new();
    let anim = Animator::start_with_clock(leds, &config, clock);
    ctl.next_deadline();
    anim.set_phase(Phase::Writing);
    ctl.interrupted();
    let lit = || -> Vec<&str> {
        BBB_VENDOR
            .iter()
            .copied()
            .filter(|n| {
                read(
                    root.path()
                        .join("sys/class/leds")
                        .join(n)
                        .join("brightness"),
                ) == "255"
            })
            .collect()
    };
    ctl.next_deadline();
    let mut seen = vec![lit()];
    for _ in 0..4 {
        ctl.advance();
        ctl.next_deadline();
        seen.push(lit());
    }
    assert_eq!(
        seen,
        [
            ["beaglebone:green:usr0"],
            ["beaglebone:green:usr1"],
            ["beaglebone:green:usr2"],
            ["beaglebone:green:usr3"],
            ["beaglebone:green:usr2"],
        ]
    );
    drop(anim.stop());
}

#[test]
fn a_board_missing_one_led_still_shows_success_on_the_rest() {
    let root = tempfile::tempdir().unwrap();
    for name in &BBB_VENDOR[..3] {
        add_led(root.path(), name, 255, "[none] timer");
    }
    let opened = led::open_report(root.path(), &bbb_config(), None);
    assert_eq!(opened.warnings.len(), 1);
    assert!(matches!(
        &opened.warnings[0],
        led::Warning::LedSkipped { error: led::Error::LedMissing { names, .. }, .. }
            if names == &["beaglebone:green:usr3"]
    ));
    let labels = show(root.path(), Phase::Success);
    assert_eq!(labels.len(), 3);
    check_all_solid(root.path(), &BBB_VENDOR[..3]);
}

#[test]
fn sync_waits_until_the_leds_show_the_phase() {
    let root = tempfile::tempdir().unwrap();
    for name in BBB_MAINLINE {
        add_led(root.path(), name, 255, &triggers("heartbeat", true, true));
    }
    let config = bbb_config();
    let anim = Animator::start(led::open(root.path(), &config, None), &config);
    anim.set_phase(Phase::Success);
    anim.sync();
    check_all_solid(root.path(), &BBB_MAINLINE);
    drop(anim.stop());
}

#[test]
fn restore_gives_the_leds_back_to_their_kernel_triggers() {
    let root = tempfile::tempdir().unwrap();
    for (name, trig) in BBB_MAINLINE
        .iter()
        .zip(["heartbeat", "mmc0", "cpu", "mmc1"])
    {
        add_led(root.path(), name, 255, &triggers(trig, true, true));
    }
    let config = bbb_config();
    let anim = Animator::start(led::open(root.path(), &config, None), &config);
    anim.set_phase(Phase::Success);
    anim.restore().unwrap();
    for (name, trig) in BBB_MAINLINE
        .iter()
        .zip(["heartbeat", "mmc0", "cpu", "mmc1"])
    {
        assert_eq!(
            read(
                root.path()
                    .join("sys/class/leds")
                    .join(name)
                    .join("trigger")
            ),
            trig
        );
    }
}

/// Every shipped board file's `[leds]` table parses, names only known patterns, and
/// the beaglebone-black one is the 4-LED table the tests above use (docs/leds.md
/// describes these files).
#[test]
fn shipped_board_files_have_valid_led_tables() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/data");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let config = led::LedConfig::from_board_toml(&read(&path))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if path.ends_with("beaglebone-black.toml") {
                assert_eq!(config, bbb_config());
            }
            seen += 1;
        }
    }
    assert!(seen > 0, "no board files under {}", dir.display());
}
