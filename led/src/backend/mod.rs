//! LED backends behind two small traits: [`Led`] (one physical LED) and [`Leds`]
//! (what the animator drives: a set of LEDs plus announcements). One module per
//! backend; [`open`] builds a board's set from its [`LedConfig`] and never fails:
//! an LED that cannot be opened is skipped with a [`Warning`].

pub mod cdev;
pub mod class;
pub mod events;
pub mod null;
pub mod recording;
pub mod sysfs_gpio;

use crate::{LedConfig, LedSpec, Phase, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cdev::CdevLed;
pub use class::{ClassLed, Triggers};
pub use events::EventSink;
pub use null::NullLeds;
pub use recording::{Recording, RecordingLeds};
pub use sysfs_gpio::SysfsGpioLed;

/// One physical LED.
pub trait Led: Send {
    /// Show `brightness` (0.0 off ..= 1.0 full) under user-space control.
    fn set(&mut self, brightness: f32) -> Result<()>;
    /// Let the kernel loop through `cycle` ((brightness, duration) pairs) by
    /// itself, so it keeps going if user space stops. `Ok(false)`: not supported
    /// here; the caller animates in user space instead.
    fn set_hw_pattern(&mut self, _cycle: &[(f32, Duration)]) -> Result<bool> {
        Ok(false)
    }
    /// Put back whatever the LED did before we touched it.
    fn restore(&mut self) -> Result<()> {
        Ok(())
    }
    /// How operators and logs name this LED (sysfs name, chip:line, gpioN).
    fn label(&self) -> String;
}

/// A phase or pattern change, as the event sink writes it (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Announcement {
    pub phase: Phase,
    pub pattern: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<u8>,
}

/// What the animator drives: `count()` LEDs addressed by index, plus listeners
/// for phase and pattern changes.
pub trait Leds: Send {
    fn count(&self) -> usize;
    fn set(&mut self, idx: usize, brightness: f32) -> Result<()>;
    /// See [`Led::set_hw_pattern`].
    fn set_hw_pattern(&mut self, _idx: usize, _cycle: &[(f32, Duration)]) -> Result<bool> {
        Ok(false)
    }
    /// A phase or pattern change (the event sink writes it out).
    fn announce(&mut self, _what: &Announcement) -> Result<()> {
        Ok(())
    }
    /// Put the LEDs back as they were before we took over (original triggers).
    fn restore(&mut self) -> Result<()> {
        Ok(())
    }
    /// Names of the LEDs, in index order.
    fn labels(&self) -> Vec<String> {
        (0..self.count()).map(|i| format!("led{i}")).collect()
    }
}

/// A board's LEDs: the physical ones that were found, in board-file order, and any
/// event sinks.
#[derive(Default)]
pub struct LedSet {
    pub leds: Vec<Box<dyn Led>>,
    pub sinks: Vec<EventSink>,
}

impl Leds for LedSet {
    fn count(&self) -> usize {
        self.leds.len()
    }

    fn set(&mut self, idx: usize, brightness: f32) -> Result<()> {
        match self.leds.get_mut(idx) {
            Some(led) => led.set(brightness),
            None => Ok(()),
        }
    }

    fn set_hw_pattern(&mut self, idx: usize, cycle: &[(f32, Duration)]) -> Result<bool> {
        match self.leds.get_mut(idx) {
            Some(led) => led.set_hw_pattern(cycle),
            None => Ok(false),
        }
    }

    fn announce(&mut self, what: &Announcement) -> Result<()> {
        // Every sink gets the line even if an earlier one failed.
        let mut first_err = None;
        for sink in &mut self.sinks {
            if let Err(e) = sink.write(what) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn restore(&mut self) -> Result<()> {
        let mut first_err = None;
        for led in &mut self.leds {
            if let Err(e) = led.restore() {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn labels(&self) -> Vec<String> {
        self.leds.iter().map(|l| l.label()).collect()
    }
}

/// Something [`open`] could not set up. The flash goes on without it.
#[derive(Debug)]
pub enum Warning {
    /// An LED from the board file could not be opened, and was skipped.
    LedSkipped { spec: LedSpec, error: crate::Error },
    /// The event sink could not be opened.
    EventSink { path: PathBuf, error: crate::Error },
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warning::LedSkipped { error, .. } => write!(f, "LED skipped: {error}"),
            Warning::EventSink { path, error } => {
                write!(f, "event sink {} not opened: {error}", path.display())
            }
        }
    }
}

/// The result of [`open_report`]: the LEDs, and what was skipped.
pub struct Opened {
    pub leds: LedSet,
    pub warnings: Vec<Warning>,
}

/// Open one LED from its board-file description, under `root`.
pub fn open_led(root: &Path, spec: &LedSpec) -> Result<Box<dyn Led>> {
    Ok(match spec {
        LedSpec::Class { names } => Box::new(ClassLed::open(root, names)?),
        LedSpec::Gpio {
            chip,
            line,
            active_low,
        } => Box::new(CdevLed::open(root, chip, *line, *active_low)?),
        LedSpec::SysfsGpio { number, active_low } => {
            Box::new(SysfsGpioLed::open(root, *number, *active_low)?)
        }
    })
}

/// Build a board's LEDs under `root` (`/` on a board, a fake tree in tests), plus
/// an event sink writing to `events` (a file or tty path, taken as given, not
/// under `root`). Never fails: what cannot be opened is reported in `warnings`.
pub fn open_report(root: &Path, config: &LedConfig, events: Option<&Path>) -> Opened {
    let mut set = LedSet::default();
    let mut warnings = Vec::new();
    for spec in &config.leds {
        match open_led(root, spec) {
            Ok(led) => set.leds.push(led),
            Err(error) => warnings.push(Warning::LedSkipped {
                spec: spec.clone(),
                error,
            }),
        }
    }
    if let Some(path) = events {
        match EventSink::open(path) {
            Ok(sink) => set.sinks.push(sink),
            Err(error) => warnings.push(Warning::EventSink {
                path: path.to_path_buf(),
                error,
            }),
        }
    }
    Opened {
        leds: set,
        warnings,
    }
}

/// [`open_report`], with each warning logged (the flash goes on regardless).
pub fn open(root: &Path, config: &LedConfig, events: Option<&Path>) -> Box<dyn Leds> {
    let opened = open_report(root, config, events);
    for w in &opened.warnings {
        tracing::warn!("{w}");
    }
    Box::new(opened.leds)
}
