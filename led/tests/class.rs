//! The sysfs LED-class backend on fake trees: exact values written, triggers,
//! restore, name alternatives, missing LEDs.

mod common;

use common::*;
use led::backend::{ClassLed, Triggers};
use led::{Led, LedConfig, LedSpec, Leds, Warning};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn brightness_is_scaled_to_max_brightness_after_trigger_none() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, &triggers("heartbeat", false, false));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    assert_eq!(led.max_brightness(), 255);
    assert_eq!(led.triggers().current.as_deref(), Some("heartbeat"));

    led.set(1.0).unwrap();
    assert_eq!(read(dir.join("trigger")), "none");
    assert_eq!(read(dir.join("brightness")), "255");
    led.set(0.5).unwrap();
    assert_eq!(read(dir.join("brightness")), "128");
    led.set(0.0).unwrap();
    assert_eq!(read(dir.join("brightness")), "0");
    // The smallest non-zero brightness is still visible.
    led.set(0.001).unwrap();
    assert_eq!(read(dir.join("brightness")), "1");
    // Out-of-range input is clamped.
    led.set(3.0).unwrap();
    assert_eq!(read(dir.join("brightness")), "255");
}

#[test]
fn on_off_leds_with_max_brightness_one() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "gpio-led", 1, "[none] timer");
    let mut led = ClassLed::open(root.path(), &["gpio-led".into()]).unwrap();
    led.set(0.3).unwrap();
    assert_eq!(read(dir.join("brightness")), "1");
    led.set(0.0).unwrap();
    assert_eq!(read(dir.join("brightness")), "0");
}

#[test]
fn trigger_file_parsing() {
    let t = Triggers::parse("none rc-feedback [mmc0] timer pattern\n");
    assert_eq!(t.current.as_deref(), Some("mmc0"));
    assert_eq!(
        t.available,
        ["none", "rc-feedback", "mmc0", "timer", "pattern"]
    );
    assert!(t.has("timer") && t.has("mmc0") && !t.has("heartbeat"));
    assert_eq!(Triggers::parse("").current, None);
}

#[test]
fn simple_blink_uses_the_timer_trigger() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, &triggers("heartbeat", true, true));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    assert!(led
        .set_hw_pattern(&[(1.0, ms(500)), (0.0, ms(500))])
        .unwrap());
    assert_eq!(read(dir.join("trigger")), "timer");
    assert_eq!(read(dir.join("delay_on")), "500");
    assert_eq!(read(dir.join("delay_off")), "500");
    // Going back to manual control switches the trigger off first.
    led.set(1.0).unwrap();
    assert_eq!(read(dir.join("trigger")), "none");
    assert_eq!(read(dir.join("brightness")), "255");
}

#[test]
fn blink_code_uses_the_pattern_trigger_as_a_square_wave() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, &triggers("heartbeat", true, true));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    let code = led::pattern::blink_code_cycle(2);
    assert!(led.set_hw_pattern(&code).unwrap());
    assert_eq!(read(dir.join("trigger")), "pattern");
    assert_eq!(
        read(dir.join("pattern")),
        "255 250 255 0 0 350 0 0 255 250 255 0 0 1500 0 0"
    );
    assert_eq!(read(dir.join("repeat")), "-1");
}

#[test]
fn no_kernel_triggers_means_no_hardware_pattern() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, &triggers("heartbeat", false, false));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    assert!(!led
        .set_hw_pattern(&[(1.0, ms(500)), (0.0, ms(500))])
        .unwrap());
    assert!(!led
        .set_hw_pattern(&led::pattern::blink_code_cycle(3))
        .unwrap());
    // Nothing was touched.
    assert_eq!(
        read(dir.join("trigger")),
        triggers("heartbeat", false, false) + "\n"
    );
}

#[test]
fn timer_only_led_cannot_show_a_blink_code_in_hardware() {
    let root = tempfile::tempdir().unwrap();
    add_led(root.path(), "a", 255, &triggers("none", true, false));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    assert!(!led
        .set_hw_pattern(&led::pattern::blink_code_cycle(3))
        .unwrap());
}

#[test]
fn restore_puts_back_the_original_trigger() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, &triggers("mmc0", true, true));
    let mut led = ClassLed::open(root.path(), &["a".into()]).unwrap();
    led.set(1.0).unwrap();
    led.restore().unwrap();
    assert_eq!(read(dir.join("trigger")), "mmc0");

    // An LED that had no trigger gets its brightness back too.
    let dir = add_led(root.path(), "b", 255, "[none] timer");
    std::fs::write(dir.join("brightness"), "17\n").unwrap();
    let mut led = ClassLed::open(root.path(), &["b".into()]).unwrap();
    led.set(1.0).unwrap();
    assert_eq!(read(dir.join("brightness")), "255");
    led.restore().unwrap();
    assert_eq!(read(dir.join("trigger")), "none");
    assert_eq!(read(dir.join("brightness")), "17");
}

#[test]
fn the_first_existing_alternative_name_wins() {
    let root = tempfile::tempdir().unwrap();
    add_led(root.path(), "beaglebone:green:usr0", 255, "none");
    let names = vec![
        "beaglebone:green:heartbeat".to_string(),
        "beaglebone:green:usr0".to_string(),
    ];
    let led = ClassLed::open(root.path(), &names).unwrap();
    assert_eq!(led.name(), "beaglebone:green:usr0");
    // With both present, the earlier alternative wins.
    add_led(root.path(), "beaglebone:green:heartbeat", 255, "none");
    let led = ClassLed::open(root.path(), &names).unwrap();
    assert_eq!(led.name(), "beaglebone:green:heartbeat");
}

#[test]
fn missing_led_is_skipped_with_a_warning() {
    let root = tempfile::tempdir().unwrap();
    let a = add_led(root.path(), "a", 255, "none");
    let c = add_led(root.path(), "c", 255, "none");
    let config = LedConfig {
        leds: vec![
            LedSpec::Class {
                names: vec!["a".into()],
            },
            LedSpec::Class {
                names: vec!["b".into(), "b-vendor".into()],
            },
            LedSpec::Class {
                names: vec!["c".into()],
            },
        ],
        ..LedConfig::default()
    };
    let opened = led::open_report(root.path(), &config, None);
    assert_eq!(opened.leds.count(), 2);
    assert_eq!(opened.leds.labels(), ["a", "c"]);
    assert_eq!(opened.warnings.len(), 1);
    match &opened.warnings[0] {
        Warning::LedSkipped {
            spec,
            error: led::Error::LedMissing { names, dir },
        } => {
            assert_eq!(spec, &config.leds[1]);
            assert_eq!(names, &["b", "b-vendor"]);
            assert_eq!(dir, &root.path().join("sys/class/leds"));
        }
        other => panic!("unexpected warning {other:?}"),
    }
    // The LEDs that exist still work, at their new indices.
    let mut leds = opened.leds;
    leds.set(1, 1.0).unwrap();
    assert_eq!(read(c.join("brightness")), "255");
    assert_eq!(read(a.join("brightness")), "0\n");
}

#[test]
fn bad_max_brightness_is_a_parse_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = add_led(root.path(), "a", 255, "none");
    std::fs::write(dir.join("max_brightness"), "lots\n").unwrap();
    assert!(matches!(
        ClassLed::open(root.path(), &["a".into()]),
        Err(led::Error::Parse {
            expected: "a positive integer",
            ..
        })
    ));
}

#[test]
fn no_led_class_at_all_gives_no_leds_and_a_warning_per_led() {
    let root = tempfile::tempdir().unwrap();
    let opened = led::open_report(root.path(), &bbb_config(), None);
    assert_eq!(opened.leds.count(), 0);
    assert_eq!(opened.warnings.len(), 4);
}
