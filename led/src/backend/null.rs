//! No LEDs at all: every call succeeds and does nothing. For boards without user
//! LEDs when no event sink is wanted, and for callers that must hold *some* LEDs.

use super::Leds;
use crate::Result;

/// Zero LEDs; ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullLeds;

impl Leds for NullLeds {
    fn count(&self) -> usize {
        0
    }
    fn set(&mut self, _idx: usize, _brightness: f32) -> Result<()> {
        Ok(())
    }
}
