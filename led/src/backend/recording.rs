//! An in-memory [`Leds`] that records every call, for tests here and in the crates
//! that drive the animator (they check which phases and patterns were shown).

use super::{Announcement, Leds};
use crate::Result;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One recorded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Recording {
    Set {
        idx: usize,
        brightness: f32,
    },
    Hw {
        idx: usize,
        cycle: Vec<(f32, Duration)>,
    },
    Announce(Announcement),
    Restore,
}

/// `count` fake LEDs that record what they are told. Clones share the log, so a
/// test keeps one clone while the animator owns another.
#[derive(Debug, Clone)]
pub struct RecordingLeds {
    count: usize,
    hardware: bool,
    log: Arc<Mutex<Vec<Recording>>>,
}

impl RecordingLeds {
    pub fn new(count: usize) -> RecordingLeds {
        RecordingLeds {
            count,
            hardware: false,
            log: Arc::default(),
        }
    }

    /// Fake LEDs that accept kernel (hardware) patterns.
    pub fn with_hardware(count: usize) -> RecordingLeds {
        RecordingLeds {
            hardware: true,
            ..RecordingLeds::new(count)
        }
    }

    fn push(&self, r: Recording) {
        // Poisoned only if a test thread panicked; keep recording.
        self.log.lock().unwrap_or_else(|e| e.into_inner()).push(r);
    }

    /// Everything recorded so far.
    pub fn log(&self) -> Vec<Recording> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Take (and clear) everything recorded so far.
    pub fn take(&self) -> Vec<Recording> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The announcements only.
    pub fn announcements(&self) -> Vec<Announcement> {
        self.log()
            .into_iter()
            .filter_map(|r| match r {
                Recording::Announce(a) => Some(a),
                _ => None,
            })
            .collect()
    }
}

impl Leds for RecordingLeds {
    fn count(&self) -> usize {
        self.count
    }
    fn set(&mut self, idx: usize, brightness: f32) -> Result<()> {
        self.push(Recording::Set { idx, brightness });
        Ok(())
    }
    fn set_hw_pattern(&mut self, idx: usize, cycle: &[(f32, Duration)]) -> Result<bool> {
        if self.hardware {
            self.push(Recording::Hw {
                idx,
                cycle: cycle.to_vec(),
            });
        }
        Ok(self.hardware)
    }
    fn announce(&mut self, what: &Announcement) -> Result<()> {
        self.push(Recording::Announce(what.clone()));
        Ok(())
    }
    fn restore(&mut self) -> Result<()> {
        self.push(Recording::Restore);
        Ok(())
    }
}
