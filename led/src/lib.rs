//! LED feedback: patterns as timelines of steps for the phases and error
//! classes of `flasher_format`, an animator thread, and the backends that drive
//! real or fake LEDs.
//!
//! This crate knows nothing about boards or pipelines (docs/architecture.md).
//!
//! Typical use on the board:
//! ```no_run
//! use flasher_format::Phase;
//! use led::{Animator, LedConfig};
//! let config = LedConfig::default(); // from the board file's [leds] table
//! let leds = led::open(std::path::Path::new("/"), &config, None);
//! let animator = Animator::start(leds, &config);
//! animator.set_phase(Phase::Writing);
//! animator.set_progress(0.4);
//! animator.fail(5); // verify mismatch: 5 blinks, a pause, forever
//! let _leds = animator.stop(); // the blink code keeps running where the kernel can
//! ```

pub mod animator;
pub mod backend;
pub mod clock;
pub mod config;
pub mod error;
pub mod pattern;

pub use animator::{Animator, Engine};
pub use backend::{open, open_report, Announcement, Led, Leds, Opened, Warning};
pub use clock::{Clock, FakeClock, FakeClockControl, SystemClock};
pub use config::{LedConfig, LedSpec};
pub use error::{Error, Result};
pub use pattern::{Pattern, PatternSpec, Step};

// The vocabulary is the host↔board contract's (`flasher_format`); LED code
// names it through these private imports.
use flasher_format::Phase;
