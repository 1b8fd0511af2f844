//! The flasher core library. Every front end (the on-board `/init`, `flasher write`
//! on a host, `mkflasher write`) drives the same pipeline through this API.
//!
//! Layout: `bundle` (format), `pipeline` (read ▶ decompress ▶ check ▶ write ▶
//! verify), `blockdev` (ioctls, O_DIRECT), `fixup` (partition tables after the
//! write), `storage` (sysfs discovery and target choice), `emmc` (boot partitions,
//! the health gate, EXT_CSD), `record` (the unit log), `config_inject` (config onto
//! the target), `init` (PID 1), `progress` (the event stream), `cmd` (the subcommands the binary dispatches to).

pub mod blockdev;

#[cfg(feature = "cli")]
pub mod cmd;
pub mod config_inject;
pub mod emmc;
pub mod error;
pub mod fixup;
pub mod init;
pub mod pipeline;
pub mod progress;

pub mod storage;
pub mod units;

pub use error::{Error, Result};
