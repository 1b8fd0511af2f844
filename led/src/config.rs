//! The per-board LED description, as it appears in a board file's `[leds]` table.
//! The board crate embeds this type; this crate turns it into backends and patterns.

use crate::{Error, PatternSpec, Phase, Result};
use serde::{Deserialize, Serialize};

/// Which LEDs a board has, and (optionally) which pattern each phase shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedConfig {
    /// The user LEDs, in order (the running light walks this list).
    #[serde(default)]
    pub leds: Vec<LedSpec>,
    /// Per-phase pattern overrides, e.g. `success = "solid"`. Phases not listed
    /// use the defaults of docs/leds.md.
    #[serde(default)]
    pub phases: std::collections::BTreeMap<crate::Phase, String>,
}

/// One LED and how to reach it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "RawLedSpec"
)]
pub enum LedSpec {
    /// The sysfs LED class; the first name that exists under `/sys/class/leds` wins
    /// (e.g. mainline `beaglebone:green:heartbeat` vs vendor `beaglebone:green:usr0`).
    Class { names: Vec<String> },
    /// A line on a GPIO character device (`/dev/gpiochipN`).
    Gpio {
        /// The chip device; `/dev/gpiochip0` if left out.
        #[serde(default = "default_chip")]
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

fn default_chip() -> String {
    "/dev/gpiochip0".to_string()
}

/// What an `[[leds]]` entry may hold, read as one flat struct and checked per
/// kind in `TryFrom`. The same format as the tagged enum, without serde's
/// buffering of internally tagged enums, which costs the board binary several
/// KiB per such type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedSpec {
    kind: String,
    names: Option<Vec<String>>,
    chip: Option<String>,
    line: Option<u32>,
    active_low: Option<bool>,
    number: Option<u64>,
}

impl TryFrom<RawLedSpec> for LedSpec {
    type Error = String;
    fn try_from(r: RawLedSpec) -> std::result::Result<Self, String> {
        let present = [
            ("names", r.names.is_some()),
            ("chip", r.chip.is_some()),
            ("line", r.line.is_some()),
            ("active_low", r.active_low.is_some()),
            ("number", r.number.is_some()),
        ];
        let only = |allowed: &[&str]| -> std::result::Result<(), String> {
            match present
                .iter()
                .find(|(name, set)| *set && !allowed.contains(name))
            {
                Some((name, _)) => Err(format!(
                    "unknown field `{name}` for kind \"{}\", expected one of `{}`",
                    r.kind,
                    allowed.join("`, `")
                )),
                None => Ok(()),
            }
        };
        let missing = |field: &str| format!("missing field `{field}` for kind \"{}\"", r.kind);
        match r.kind.as_str() {
            "class" => {
                only(&["names"])?;
                Ok(LedSpec::Class {
                    names: r.names.ok_or_else(|| missing("names"))?,
                })
            }
            "gpio" => {
                only(&["chip", "line", "active_low"])?;
                Ok(LedSpec::Gpio {
                    chip: r.chip.unwrap_or_else(default_chip),
                    line: r.line.ok_or_else(|| missing("line"))?,
                    active_low: r.active_low.unwrap_or(false),
                })
            }
            "sysfs-gpio" => {
                only(&["number", "active_low"])?;
                Ok(LedSpec::SysfsGpio {
                    number: r.number.ok_or_else(|| missing("number"))?,
                    active_low: r.active_low.unwrap_or(false),
                })
            }
            other => Err(format!(
                "unknown variant `{other}`, expected one of `class`, `gpio`, `sysfs-gpio`"
            )),
        }
    }
}

impl LedConfig {
    /// The pattern a phase shows: the board's override if it names a known
    /// pattern, else the default. An unknown name is an error here (see
    /// [`LedConfig::validate`]); the animator instead logs it and uses the default,
    /// because LEDs must never stop a flash.
    pub fn pattern_for(&self, phase: Phase) -> Result<PatternSpec> {
        match self.phases.get(&phase) {
            None => Ok(PatternSpec::default_for(phase)),
            Some(name) => PatternSpec::parse(name).ok_or_else(|| Error::UnknownPattern {
                phase,
                name: name.clone(),
            }),
        }
    }

    /// Check every phase override names a known pattern (for board-file tests
    /// and `mkflasher` to reject a typo before it reaches a factory).
    pub fn validate(&self) -> Result<()> {
        for phase in self.phases.keys() {
            self.pattern_for(*phase)?;
        }
        Ok(())
    }

    /// Parse the `[leds]` table of a board file (TOML). A file without one gives
    /// the empty config (no LEDs: the event sink and console still report).
    /// Feature `toml` (this crate's tests; the board binary links no TOML parser).
    #[cfg(feature = "toml")]
    pub fn from_board_toml(text: &str) -> Result<LedConfig> {
        #[derive(Deserialize)]
        struct BoardFile {
            #[serde(default)]
            leds: Option<LedConfig>,
        }
        let file: BoardFile = toml::from_str(text).map_err(|e| Error::Config {
            context: "board file [leds] table".into(),
            message: e.to_string(),
        })?;
        let config = file.leds.unwrap_or_default();
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_file_shape_parses() {
        let text = r#"
name = "beaglebone-black"
[identity]
compatible = ["ti,am335x-bone-black"]

[leds]
leds = [
  { kind = "class", names = ["beaglebone:green:heartbeat", "beaglebone:green:usr0"] },
  { kind = "gpio", line = 17, active_low = true },
  { kind = "gpio", chip = "/dev/gpiochip2", line = 3 },
  { kind = "sysfs-gpio", number = 53, active_low = false },
]
phases = { success = "solid", writing = "progress" }
"#;
        let c = LedConfig::from_board_toml(text).unwrap();
        assert_eq!(c.leds.len(), 4);
        assert_eq!(
            c.leds[1],
            LedSpec::Gpio {
                chip: "/dev/gpiochip0".into(),
                line: 17,
                active_low: true
            }
        );
        assert_eq!(
            c.leds[3],
            LedSpec::SysfsGpio {
                number: 53,
                active_low: false
            }
        );
        assert_eq!(
            c.pattern_for(Phase::Writing).unwrap(),
            PatternSpec::Progress
        );
        assert_eq!(
            c.pattern_for(Phase::Failure).unwrap(),
            PatternSpec::BlinkCode
        );
    }

    #[test]
    fn led_entries_take_only_their_kind_s_fields_and_round_trip() {
        for bad in [
            r#"{ kind = "class", names = ["a"], line = 3 }"#,
            r#"{ kind = "gpio", line = 3, number = 4 }"#,
            r#"{ kind = "sysfs-gpio", number = 4, chip = "/dev/gpiochip1" }"#,
            r#"{ kind = "gpio" }"#,
            r#"{ kind = "class" }"#,
            r#"{ kind = "laser", names = ["a"] }"#,
            r#"{ kind = "class", names = ["a"], colour = "red" }"#,
        ] {
            let text = format!("[leds]\nleds = [{bad}]\n");
            assert!(
                matches!(LedConfig::from_board_toml(&text), Err(Error::Config { .. })),
                "{bad}"
            );
        }
        let c = LedConfig {
            leds: vec![
                LedSpec::Class {
                    names: vec!["a".into()],
                },
                LedSpec::Gpio {
                    chip: "/dev/gpiochip1".into(),
                    line: 3,
                    active_low: true,
                },
                LedSpec::SysfsGpio {
                    number: 7,
                    active_low: false,
                },
            ],
            phases: Default::default(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<LedConfig>(&json).unwrap(), c);
    }

    #[test]
    fn unknown_pattern_is_rejected_by_name() {
        let err =
            LedConfig::from_board_toml("[leds]\nphases = { success = \"disco\" }\n").unwrap_err();
        assert!(matches!(
            err,
            Error::UnknownPattern { phase: Phase::Success, ref name } if name == "disco"
        ));
    }

    #[test]
    fn unknown_phase_or_field_is_a_config_error() {
        let err =
            LedConfig::from_board_toml("[leds]\nphases = { flashing = \"solid\" }\n").unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
        let err =
            LedConfig::from_board_toml("[leds]\nleds = [{ kind = \"class\", name = \"x\" }]\n")
                .unwrap_err();
        assert!(matches!(err, Error::Config { .. }));
    }

    #[test]
    fn no_leds_table_means_no_leds() {
        assert_eq!(
            LedConfig::from_board_toml("name = \"nuc\"\n").unwrap(),
            LedConfig::default()
        );
    }
}
