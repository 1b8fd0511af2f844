//! The per-board LED description, as it appears in a board file's `[leds]` table.
//! The board crate embeds this type; this crate turns it into backends and patterns.

use serde::{Deserialize, Serialize};

/// Which LEDs a board has, and (optionally) which pattern each phase shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedConfig {
    /// The user LEDs, in order (the running light walks this list).
    #[serde(default)]
    pub leds: Vec<LedSpec>,
    /// Per-phase pattern overrides, e.g. `success = "solid"`. Phases not listed
    /// use the defaults from ARCHITECTURE.md's LED language table.
    #[serde(default)]
    pub phases: std::collections::BTreeMap<crate::Phase, String>,
}

/// One LED and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LedSpec {
    /// The sysfs LED class; the first name that exists under `/sys/class/leds` wins
    /// (e.g. mainline `beaglebone:green:heartbeat` vs vendor `beaglebone:green:usr0`).
    Class { names: Vec<String> },
    /// A line on a GPIO character device (`/dev/gpiochipN`).
    Gpio {
        chip: String,
        line: u32,
        #[serde(default)]
        active_low: bool,
    },
    /// A legacy sysfs GPIO number (`/sys/class/gpio/gpioN`).
    SysfsGpio {
        number: u64,
        #[serde(default)]
        active_low: bool,
    },
}
