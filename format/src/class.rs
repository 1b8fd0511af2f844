//! The error classes an operator reads from the failure blink code (docs/leds.md).
//! Every error type in the project maps itself to one of these with a `class()`
//! method; nothing else decides how many times the LEDs blink.

use serde::{Deserialize, Serialize};

/// Why a run failed, as the number of blinks in the failure pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
#[repr(u8)]
pub enum ErrorClass {
    /// No internal storage found, or the target is ambiguous.
    NoStorage = 1,
    /// Payload invalid: corrupt chunk, unknown version, truncated, digest or signature.
    PayloadInvalid = 2,
    /// Target refused: too small, read-only, mounted, the boot medium.
    TargetRefused = 3,
    /// Write I/O error.
    WriteIo = 4,
    /// What was read back differs from what was written.
    VerifyMismatch = 5,
    /// Board detection or configuration (bad `flasher.board=`, unknown board).
    BoardConfig = 6,
    /// A post-write step failed (fix-up, bootloader, config copy, record).
    PostWrite = 7,
    /// A bug (a panic, an impossible state).
    Internal = 8,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 8] = [
        ErrorClass::NoStorage,
        ErrorClass::PayloadInvalid,
        ErrorClass::TargetRefused,
        ErrorClass::WriteIo,
        ErrorClass::VerifyMismatch,
        ErrorClass::BoardConfig,
        ErrorClass::PostWrite,
        ErrorClass::Internal,
    ];

    /// How many blinks the failure pattern shows.
    pub fn blinks(self) -> u8 {
        self as u8
    }

    /// What the operator should check, as in docs/leds.md.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorClass::NoStorage => "no internal storage found, or the target is ambiguous",
            ErrorClass::PayloadInvalid => "payload invalid",
            ErrorClass::TargetRefused => "target refused",
            ErrorClass::WriteIo => "write I/O error",
            ErrorClass::VerifyMismatch => "verify mismatch",
            ErrorClass::BoardConfig => "board detection or configuration error",
            ErrorClass::PostWrite => "a post-write step failed",
            ErrorClass::Internal => "internal error",
        }
    }
}

impl From<ErrorClass> for u8 {
    fn from(c: ErrorClass) -> u8 {
        c.blinks()
    }
}

impl TryFrom<u8> for ErrorClass {
    type Error = String;
    fn try_from(n: u8) -> Result<Self, String> {
        ErrorClass::ALL
            .into_iter()
            .find(|c| c.blinks() == n)
            .ok_or_else(|| format!("error class {n} is not one of 1..=8"))
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "class {} ({})", self.blinks(), self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_match_the_docs() {
        let doc = include_str!("../../docs/leds.md");
        for c in ErrorClass::ALL {
            assert_eq!(ErrorClass::try_from(c.blinks()), Ok(c));
            let row = format!("| {} | ", c.blinks());
            assert!(doc.contains(&row), "docs/leds.md has no row for {c}");
            assert_eq!(serde_json::to_string(&c).unwrap(), c.blinks().to_string());
        }
        assert!(ErrorClass::try_from(0).is_err());
        assert!(ErrorClass::try_from(9).is_err());
    }
}
