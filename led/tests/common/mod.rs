//! Fake kernel-shaped LED class trees for tests: each LED lives under
//! `sys/devices/platform/leds/leds/NAME` with `sys/class/leds/NAME` a symlink to it,
//! as on a real kernel.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub const BBB_MAINLINE: [&str; 4] = [
    "beaglebone:green:heartbeat",
    "beaglebone:green:mmc0",
    "beaglebone:green:usr2",
    "beaglebone:green:usr3",
];
pub const BBB_VENDOR: [&str; 4] = [
    "beaglebone:green:usr0",
    "beaglebone:green:usr1",
    "beaglebone:green:usr2",
    "beaglebone:green:usr3",
];

/// The beaglebone-black `[leds]` table: 4 LEDs, each with its mainline and vendor name.
pub const BBB_LEDS_TOML: &str = r#"
[leds]
leds = [
  { kind = "class", names = ["beaglebone:green:heartbeat", "beaglebone:green:usr0"] },
  { kind = "class", names = ["beaglebone:green:mmc0", "beaglebone:green:usr1"] },
  { kind = "class", names = ["beaglebone:green:usr2"] },
  { kind = "class", names = ["beaglebone:green:usr3"] },
]
"#;

pub fn bbb_config() -> led::LedConfig {
    led::LedConfig::from_board_toml(BBB_LEDS_TOML).unwrap()
}

/// Add LED `name` with `max_brightness` = `max`, the given `trigger` file text and
/// brightness 0. Returns its directory (through the class symlink).
pub fn add_led(root: &Path, name: &str, max: u32, trigger: &str) -> PathBuf {
    let real = root.join("sys/devices/platform/leds/leds").join(name);
    std::fs::create_dir_all(real.join("power")).unwrap();
    std::fs::write(real.join("max_brightness"), format!("{max}\n")).unwrap();
    std::fs::write(real.join("brightness"), "0\n").unwrap();
    std::fs::write(real.join("trigger"), format!("{trigger}\n")).unwrap();
    std::fs::write(real.join("uevent"), "").unwrap();
    let class = root.join("sys/class/leds");
    std::fs::create_dir_all(&class).unwrap();
    std::os::unix::fs::symlink(
        Path::new("../../devices/platform/leds/leds").join(name),
        class.join(name),
    )
    .unwrap();
    class.join(name)
}

/// A trigger list like a BeagleBone kernel's, with `current` in brackets and
/// optionally the timer/pattern triggers.
pub fn triggers(current: &str, timer: bool, pattern: bool) -> String {
    let mut all = vec![
        "none",
        "kbd-scrolllock",
        "mmc0",
        "mmc1",
        "heartbeat",
        "cpu",
        "default-on",
    ];
    if timer {
        all.push("timer");
    }
    if pattern {
        all.push("pattern");
    }
    all.iter()
        .map(|t| {
            if *t == current {
                format!("[{t}]")
            } else {
                t.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn read(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path).unwrap()
}
