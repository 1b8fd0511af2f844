//! The `flasher` host binary's subcommands (`src/bin/flasher.rs`): the
//! engine on files and block devices. Each module owns its `Args` (parsed by clap in the
//! thin binary) and a `run(args) -> Result<()>` that tests drive end to end.

pub mod boards;
pub mod detect;
pub mod leds;
pub mod write;
