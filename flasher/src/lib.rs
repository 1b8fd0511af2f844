//! The flashing engine. Every front end (the board's `/init` in `flasher-init`,
//! `flasher write` and `mkflasher write` on a host) drives the same pipeline
//! through this API.
//!
//! Layout: `pipeline` (read ▶ decompress ▶ check ▶ write ▶ verify, then the
//! table commit), `blockdev` (ioctls, O_DIRECT), `fixup` (partition tables
//! after the write), `storage` (sysfs discovery and target choice), `emmc`
//! (boot partitions, the health gate, EXT_CSD), `config_inject` (the card's
//! config onto the target), `progress` (observers of the event stream),
//! `error` (the crate's error and its report). The bundle format, the unit
//! record, the event types and the byte formatter are the contract's
//! (`flasher_format`).

pub mod blockdev;
pub mod config_inject;
pub mod emmc;
pub mod error;
pub mod fixup;
pub mod pipeline;
pub mod progress;
pub mod storage;

pub use error::{Error, Result};
