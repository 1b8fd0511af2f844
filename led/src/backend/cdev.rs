//! An LED on a GPIO character-device line (`/dev/gpiochipN`, line L), driven
//! through linux-embedded-hal's `CdevPin`.
//!
//! Active-low is handled here, not by the kernel: the line is requested without
//! the ACTIVE_LOW flag and we compute the physical level ourselves
//! ([`physical_high`]). `CdevPin::set_high` always means "physical high" (it undoes
//! the kernel's own inversion when the line info says active-low), so this stays
//! right whatever the device tree says about the line. A line has no brightness:
//! at or above half brightness it is on.

use super::Led;
use crate::{Error, Result};
use embedded_hal::digital::OutputPin;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;
use std::path::{Path, PathBuf};

/// The consumer name the kernel shows for our lines (`gpioinfo`).
const CONSUMER: &str = "flasher-led";

/// Where `chip` lives under `root`.
pub fn chip_path(root: &Path, chip: &str) -> PathBuf {
    if chip.contains('/') {
        root.join(chip.trim_start_matches('/'))
    } else {
        root.join("dev").join(chip)
    }
}

/// Whether the line must be driven high for the LED to be `on`.
pub fn physical_high(on: bool, active_low: bool) -> bool {
    on != active_low
}

/// Whether a brightness counts as on for a plain on/off line.
pub fn is_on(brightness: f32) -> bool {
    brightness >= 0.5
}

/// One LED on a GPIO character-device line.
pub struct CdevLed {
    chip: PathBuf,
    line: u32,
    active_low: bool,
    pin: CdevPin,
    last: Option<bool>,
}

impl CdevLed {
    /// Request `line` of `chip` as an output, initially off. `chip` is a device
    /// path (`/dev/gpiochip2`) or a bare name (`gpiochip2`, meaning `/dev/gpiochip2`),
    /// taken under `root`.
    pub fn open(root: &Path, chip: &str, line: u32, active_low: bool) -> Result<CdevLed> {
        let chip_path = chip_path(root, chip);
        let err = |message: String| Error::Gpio {
            chip: chip_path.clone(),
            line,
            message,
        };
        if !chip_path.exists() {
            return Err(err("no such GPIO chip".into()));
        }
        let mut dev = Chip::new(&chip_path).map_err(|e| err(e.to_string()))?;
        let handle = dev
            .get_line(line)
            .map_err(|e| err(e.to_string()))?
            .request(
                LineRequestFlags::OUTPUT,
                u8::from(physical_high(false, active_low)),
                CONSUMER,
            )
            .map_err(|e| err(e.to_string()))?;
        let pin = CdevPin::new(handle).map_err(|e| err(e.to_string()))?;
        Ok(CdevLed {
            chip: chip_path,
            line,
            active_low,
            pin,
            last: Some(false),
        })
    }
}

impl Led for CdevLed {
    fn set(&mut self, brightness: f32) -> Result<()> {
        let on = is_on(brightness);
        if self.last == Some(on) {
            return Ok(());
        }
        let result = if physical_high(on, self.active_low) {
            self.pin.set_high()
        } else {
            self.pin.set_low()
        };
        result.map_err(|e| Error::Gpio {
            chip: self.chip.clone(),
            line: self.line,
            message: e.to_string(),
        })?;
        self.last = Some(on);
        Ok(())
    }

    fn label(&self) -> String {
        format!("{}:{}", self.chip.display(), self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_low_inverts_the_physical_level() {
        assert!(physical_high(true, false));
        assert!(!physical_high(false, false));
        assert!(!physical_high(true, true));
        assert!(physical_high(false, true));
    }

    #[test]
    fn half_brightness_and_up_is_on() {
        assert!(is_on(1.0));
        assert!(is_on(0.5));
        assert!(!is_on(0.49));
        assert!(!is_on(0.0));
    }

    #[test]
    fn chip_paths_are_taken_under_the_root() {
        let r = Path::new("/fake");
        assert_eq!(
            chip_path(r, "/dev/gpiochip2"),
            Path::new("/fake/dev/gpiochip2")
        );
        assert_eq!(chip_path(r, "gpiochip2"), Path::new("/fake/dev/gpiochip2"));
    }

    #[test]
    fn missing_chip_is_a_gpio_error_naming_chip_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = CdevLed::open(dir.path(), "/dev/gpiochip0", 17, false)
            .err()
            .unwrap();
        match err {
            Error::Gpio { chip, line, .. } => {
                assert_eq!(chip, dir.path().join("dev/gpiochip0"));
                assert_eq!(line, 17);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_a_chip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/gpiochip0"), "").unwrap();
        assert!(matches!(
            CdevLed::open(dir.path(), "/dev/gpiochip0", 1, true),
            Err(Error::Gpio { line: 1, .. })
        ));
    }
}
