//! The sysfs LED class: `ROOT/sys/class/leds/NAME/{brightness,max_brightness,trigger}`.
//!
//! Manual control first writes `none` to `trigger` (otherwise the kernel's
//! heartbeat/mmc trigger keeps overwriting our brightness). Steady blinking is
//! handed to the kernel's `timer` or `pattern` trigger when the LED offers them,
//! so the last pattern (the failure blink code above all) keeps running even if
//! user space stops. The trigger and brightness found at open time are restored on
//! request.

use super::Led;
use crate::{Error, Result};
use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The LED class directory under a root.
pub fn class_dir(root: &Path) -> PathBuf {
    root.join("sys/class/leds")
}

/// A parsed `trigger` file: `none rc-feedback [heartbeat] timer pattern`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Triggers {
    pub available: Vec<String>,
    /// The active trigger (the one in brackets).
    pub current: Option<String>,
}

impl Triggers {
    pub fn parse(text: &str) -> Triggers {
        let mut t = Triggers::default();
        for word in text.split_whitespace() {
            match word.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                Some(active) => {
                    t.current = Some(active.to_string());
                    t.available.push(active.to_string());
                }
                None => t.available.push(word.to_string()),
            }
        }
        t
    }

    pub fn has(&self, name: &str) -> bool {
        self.available.iter().any(|t| t == name)
    }
}

/// One LED of the sysfs LED class.
#[derive(Debug)]
pub struct ClassLed {
    name: String,
    dir: PathBuf,
    max: u32,
    triggers: Triggers,
    original_brightness: Option<u32>,
    /// We wrote `none` to `trigger` and own `brightness`.
    manual: bool,
    /// What we last wrote to `brightness` under manual control.
    last: Option<u32>,
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .with_context(|| path.display().to_string())?)
}

impl ClassLed {
    /// Open the first of `names` that exists under `ROOT/sys/class/leds`
    /// (mainline and vendor kernels name the same LED differently).
    pub fn open(root: &Path, names: &[String]) -> Result<ClassLed> {
        let base = class_dir(root);
        let Some(name) = names.iter().find(|n| base.join(n).is_dir()) else {
            return Err(Error::LedMissing {
                names: names.to_vec(),
                dir: base,
            });
        };
        let dir = base.join(name);
        let max_path = dir.join("max_brightness");
        let max_text = read_trimmed(&max_path)?;
        let max = match max_text.parse::<u32>() {
            Ok(m) if m > 0 => m,
            _ => {
                return Err(Error::Parse {
                    path: max_path,
                    expected: "a positive integer",
                    found: max_text,
                })
            }
        };
        // A missing or unreadable trigger file only means no kernel blinking.
        let triggers = read_trimmed(&dir.join("trigger"))
            .map(|t| Triggers::parse(&t))
            .unwrap_or_default();
        let original_brightness = read_trimmed(&dir.join("brightness"))
            .ok()
            .and_then(|b| b.parse().ok());
        Ok(ClassLed {
            name: name.clone(),
            dir,
            max,
            triggers,
            original_brightness,
            manual: false,
            last: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn max_brightness(&self) -> u32 {
        self.max
    }

    pub fn triggers(&self) -> &Triggers {
        &self.triggers
    }

    /// 0.0..=1.0 → 0..=max_brightness, rounded; any non-zero brightness stays
    /// visible (at least 1).
    pub fn scale(&self, brightness: f32) -> u32 {
        let b = if brightness.is_nan() {
            0.0
        } else {
            brightness.clamp(0.0, 1.0)
        };
        let v = (b * self.max as f32).round() as u32;
        if b > 0.0 {
            v.clamp(1, self.max)
        } else {
            0
        }
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        Ok(std::fs::write(&path, value).with_context(|| path.display().to_string())?)
    }

    fn take_manual_control(&mut self) -> Result<()> {
        if !self.manual {
            self.write("trigger", "none")?;
            self.manual = true;
            self.last = None;
        }
        Ok(())
    }

    /// The `pattern` trigger's text for a cycle. The kernel dims gradually between
    /// consecutive entries of different brightness; a square wave needs each level
    /// twice, the second with duration 0 ("255 250 255 0 0 350 0 0 ..."), per the
    /// kernel's Documentation/devicetree/bindings/leds/leds-trigger-pattern.txt.
    pub fn pattern_text(&self, cycle: &[(f32, Duration)]) -> String {
        cycle
            .iter()
            .map(|&(b, d)| {
                let v = self.scale(b);
                format!("{v} {} {v} 0", d.as_millis())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Led for ClassLed {
    fn set(&mut self, brightness: f32) -> Result<()> {
        self.take_manual_control()?;
        let v = self.scale(brightness);
        if self.last != Some(v) {
            self.write("brightness", &v.to_string())?;
            self.last = Some(v);
        }
        Ok(())
    }

    fn set_hw_pattern(&mut self, cycle: &[(f32, Duration)]) -> Result<bool> {
        let full = |b: f32| self.scale(b) == self.max;
        let simple_blink = matches!(cycle, [(on, _), (off, _)] if full(*on) && *off == 0.0);
        if simple_blink && self.triggers.has("timer") {
            self.manual = false;
            self.write("trigger", "timer")?;
            // The kernel creates delay_on/delay_off when the trigger is set.
            self.write("delay_on", &cycle[0].1.as_millis().to_string())?;
            self.write("delay_off", &cycle[1].1.as_millis().to_string())?;
            return Ok(true);
        }
        if self.triggers.has("pattern") {
            self.manual = false;
            self.write("trigger", "pattern")?;
            self.write("pattern", &self.pattern_text(cycle))?;
            // -1: repeat forever. That is already the default when the trigger is
            // activated, so a kernel refusing the write is not worth losing the
            // pattern over.
            if let Err(e) = self.write("repeat", "-1") {
                tracing::debug!("{}: {e}", self.name);
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn restore(&mut self) -> Result<()> {
        let trigger = self
            .triggers
            .current
            .clone()
            .unwrap_or_else(|| "none".into());
        self.write("trigger", &trigger)?;
        self.manual = trigger == "none";
        self.last = None;
        if trigger == "none" {
            if let Some(b) = self.original_brightness {
                self.write("brightness", &b.to_string())?;
                self.last = Some(b);
            }
        }
        Ok(())
    }

    fn label(&self) -> String {
        self.name.clone()
    }
}
