//! The host side of Flasher (`mkflasher`): turning an OS image into a bundle
//! (`source`: input decompression, zero and hole detection, bmap import), the
//! initramfs (`cpio`, `modules`), the flasher card image (`card`, `fat`), card
//! configuration, the per-unit data pool (`pool`), inspection, the unit records
//! of cards (`records`: table, JSON, CSV, the station database), the drive list
//! and card writing (`drives`, `hostwrite`), the demo (`demo`, over the
//! `flasher_qemu` harness), the results of `mkflasher qemu` as JSON and JUnit
//! XML (`qemu_report`), scenario matrices run in parallel (`qemu_matrix`), and the `flasher` host binary's subcommands
//! (`flasher_cli`: the engine on files and block devices).
//!
//! The bundle format is `flasher_format`'s and the write pipeline the
//! `flasher` crate's; this crate only drives them.

pub mod card;
pub mod cmd;
pub mod cpio;
pub mod demo;
pub mod disk;
pub mod drives;
pub mod error;
pub mod fat;
pub mod flasher_cli;
pub mod hostwrite;
pub mod log;
pub mod modules;
pub mod pool;
pub mod qemu_matrix;
pub mod qemu_report;
pub mod records;
pub mod source;

pub use error::{Error, Result};
