//! The host side of Flasher (`mkflasher`): turning an OS image into a bundle
//! (`source`: input decompression, zero and hole detection, bmap import), the
//! initramfs (`cpio`, `modules`), the flasher card image (`card`, `fat`), card
//! configuration, the per-unit data pool (`pool`), inspection, the unit records
//! of cards (`records`: table, JSON, CSV, the station database), and the QEMU
//! harness (`qemu`, `demo`).
//!
//! The bundle format and the write pipeline live in the `flasher` crate; this crate
//! only drives them.

pub mod card;
pub mod cmd;
pub mod cpio;
pub mod demo;
pub mod disk;
pub mod drives;
pub mod error;
pub mod fat;
pub mod hostwrite;
pub mod locate;
pub mod modules;
pub mod pool;
pub mod qemu;
pub mod records;
pub mod source;

pub use error::{Error, Result};
