//! The `mkflasher` subcommands. Each module owns its `Args` and a
//! `run(args) -> Result<()>` that tests drive end to end.

pub mod build;
pub mod bundle;
pub mod configure;
pub mod demo;
pub mod drives;
pub mod initramfs;
pub mod inspect;
pub mod keygen;
pub mod qemu;
pub mod qemu_matrix;
pub mod records;
pub mod write;
