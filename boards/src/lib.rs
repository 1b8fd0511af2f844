//! Boards as data: one TOML file per board under `boards/data/`, compiled into the
//! binary, the typed schema they parse into, and board detection from the device
//! tree, DMI and the kernel command line.

/// Errors from parsing board files and detecting the board.
#[derive(Debug, thiserror::Error)]
pub enum Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
