//! An LED on a legacy sysfs GPIO (`/sys/class/gpio/gpioN`), for old kernels.
//!
//! The three operations (export, direction, value) are file writes under
//! `ROOT/sys/class/gpio` ([`RootedPin`]), the same on the board (root `/`) and on
//! the fake trees of the tests. (The `sysfs_gpio` crate does the same writes on
//! fixed `/sys` paths, but it pins `nix` 0.23, a second copy of `nix` in the board
//! binary: docs/building.md.) Active-low is handled here (we write the physical
//! level), never through the kernel's `active_low` attribute, so a previous
//! user's setting cannot invert us.

use super::cdev::{is_on, physical_high};
use super::Led;
use crate::{Error, Result};
use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

/// One GPIO under `ROOT/sys/class/gpio`.
pub struct RootedPin {
    base: PathBuf,
    number: u64,
}

impl RootedPin {
    pub fn new(root: &Path, number: u64) -> RootedPin {
        RootedPin {
            base: root.join("sys/class/gpio"),
            number,
        }
    }

    fn dir(&self) -> PathBuf {
        self.base.join(format!("gpio{}", self.number))
    }

    fn write(&self, path: PathBuf, value: &str) -> Result<()> {
        Ok(std::fs::write(&path, value).with_context(|| path.display().to_string())?)
    }

    fn export(&self) -> Result<()> {
        if !self.dir().is_dir() {
            self.write(self.base.join("export"), &self.number.to_string())?;
        }
        if self.dir().is_dir() {
            Ok(())
        } else {
            Err(Error::SysfsGpio {
                number: self.number,
                message: format!("{} did not appear after export", self.dir().display()),
            })
        }
    }
    /// Make the pin an output driving `high` (the kernel's "high"/"low"
    /// directions set the level in the same step, with no glitch).
    fn output(&self, high: bool) -> Result<()> {
        self.write(
            self.dir().join("direction"),
            if high { "high" } else { "low" },
        )
    }
    fn set(&self, high: bool) -> Result<()> {
        self.write(self.dir().join("value"), if high { "1" } else { "0" })
    }
}

/// One LED on a legacy sysfs GPIO.
pub struct SysfsGpioLed {
    number: u64,
    active_low: bool,
    pin: RootedPin,
    last: Option<bool>,
}

impl SysfsGpioLed {
    /// Export GPIO `number` and make it an output, initially off.
    pub fn open(root: &Path, number: u64, active_low: bool) -> Result<SysfsGpioLed> {
        let pin = RootedPin::new(root, number);
        pin.export()?;
        pin.output(physical_high(false, active_low))?;
        Ok(SysfsGpioLed {
            number,
            active_low,
            pin,
            last: Some(false),
        })
    }
}

impl Led for SysfsGpioLed {
    fn set(&mut self, brightness: f32) -> Result<()> {
        let on = is_on(brightness);
        if self.last != Some(on) {
            self.pin.set(physical_high(on, self.active_low))?;
            self.last = Some(on);
        }
        Ok(())
    }

    fn label(&self) -> String {
        format!("gpio{}", self.number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_gpio(root: &Path, n: u64) -> PathBuf {
        let dir = root.join(format!("sys/class/gpio/gpio{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("direction"), "in").unwrap();
        std::fs::write(dir.join("value"), "0").unwrap();
        dir
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn active_high_gpio_writes_physical_levels() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_gpio(root.path(), 53);
        let mut led = SysfsGpioLed::open(root.path(), 53, false).unwrap();
        assert_eq!(read(dir.join("direction")), "low");
        led.set(1.0).unwrap();
        assert_eq!(read(dir.join("value")), "1");
        led.set(0.0).unwrap();
        assert_eq!(read(dir.join("value")), "0");
        assert_eq!(led.label(), "gpio53");
    }

    #[test]
    fn active_low_gpio_is_inverted_in_the_backend() {
        let root = tempfile::tempdir().unwrap();
        let dir = fake_gpio(root.path(), 7);
        let mut led = SysfsGpioLed::open(root.path(), 7, true).unwrap();
        // Off at open: an active-low LED is off when the line is high.
        assert_eq!(read(dir.join("direction")), "high");
        led.set(1.0).unwrap();
        assert_eq!(read(dir.join("value")), "0");
        led.set(0.2).unwrap();
        assert_eq!(read(dir.join("value")), "1");
    }

    #[test]
    fn unexported_gpio_is_exported_and_a_missing_one_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/class/gpio")).unwrap();
        // The fake kernel does not create gpio9 on export, so opening fails, but
        // only after writing the number to `export`.
        let err = SysfsGpioLed::open(root.path(), 9, false).err().unwrap();
        assert!(matches!(err, Error::SysfsGpio { number: 9, .. }));
        assert_eq!(read(root.path().join("sys/class/gpio/export")), "9");
        // No gpio class at all (kernel without CONFIG_GPIO_SYSFS).
        let bare = tempfile::tempdir().unwrap();
        assert!(matches!(
            SysfsGpioLed::open(bare.path(), 9, false),
            Err(Error::Io(_))
        ));
    }
}
