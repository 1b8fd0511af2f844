//! The crate's error type. LED trouble never fails a flash: callers log these as
//! warnings and carry on, but tests match the variants to see exactly what went wrong.

use std::path::PathBuf;

/// Errors from LED configuration and backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// None of an LED's alternative names exists under the LED class directory.
    #[error("no LED named {} under {}; check the board's [leds] names against `ls {}`", names.join(" or "), dir.display(), dir.display())]
    LedMissing { names: Vec<String>, dir: PathBuf },
    /// A sysfs file could not be read or written (the context names the path).
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    /// A sysfs file held something we could not parse (e.g. `max_brightness`).
    #[error("{}: expected {expected}, found {found:?}", path.display())]
    Parse {
        path: PathBuf,
        expected: &'static str,
        found: String,
    },
    /// A GPIO character-device line could not be requested.
    #[error("GPIO line {line} on {}: {message}; check the chip path and that no other driver holds the line", chip.display())]
    Gpio {
        chip: PathBuf,
        line: u32,
        message: String,
    },
    /// A legacy sysfs GPIO could not be exported or driven.
    #[error("sysfs GPIO {number}: {message}; the kernel may lack CONFIG_GPIO_SYSFS")]
    SysfsGpio { number: u64, message: String },
    /// A board file names a pattern this crate does not know.
    #[error("phase {phase}: unknown LED pattern {name:?}; known patterns: {}", crate::pattern::PatternSpec::NAMES.join(", "))]
    UnknownPattern { phase: crate::Phase, name: String },
    /// A board file or LED config is not valid TOML or has the wrong shape.
    #[error("{context}: {message}")]
    Config { context: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
