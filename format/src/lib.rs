//! The contract between the host (`mkflasher`) and the board (`/init`): one
//! definition of everything both sides must agree on. The host renders these
//! formats; the board parses them.
//!
//! - [`bundle`]: the payload format (header, manifest, compressed chunks).
//! - [`record`]: the unit log's records on the card's `flasher-log` partition.
//! - [`card`]: partition names and numbers, and the initramfs paths `/init` reads.
//! - [`pool`]: the per-unit data pool (`units.json`) and how runs claim rows.
//! - [`cmdline`]: the `flasher.*` kernel command-line options.
//! - [`event`]: the event stream's JSON lines (docs/events.md).
//! - [`io`]: the one way to attach context to an I/O error (`IoError`).
//! - [`units`]: byte counts for people (the one formatter; integer arithmetic).
//! - [`phase`] and [`class`]: the shared vocabulary: the phases of a flash and
//!   the error classes the LEDs blink (docs/leds.md).

pub mod bundle;
pub mod card;
pub mod class;
pub mod cmdline;
pub mod event;
pub mod io;
pub mod phase;
pub mod pool;
pub mod record;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod units;

pub use class::ErrorClass;
pub use phase::Phase;
