//! The `flasher` subcommands. Each module owns its `Args` (parsed by clap in the
//! thin binary) and a `run(args) -> Result<()>` that tests drive end to end.

pub mod boards;
pub mod detect;
pub mod leds;
pub mod write;
