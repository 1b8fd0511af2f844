//! `flasher`: the board's engine run on a host (`write`, `detect`, `leds`,
//! `boards`). Thin: parse, set up tracing, call the library. It never acts as
//! PID 1; the board's `/init` is `flasher-init` (the `initramfs/` crate).

use clap::{Parser, Subcommand};
use mkflasher::flasher_cli as cmd;

#[derive(Parser)]
#[command(
    name = "flasher",
    version,
    about = "Flash a board's internal storage from a bundle, with verification"
)]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a bundle onto a block device or file, then verify it.
    Write(cmd::write::Args),
    /// List the known boards.
    Boards(cmd::boards::Args),
    /// Detect the board and choose the internal target.
    Detect(cmd::detect::Args),
    /// Show a phase's LED pattern on the real or fake LEDs.
    Leds(cmd::leds::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    mkflasher::log::init(cli.verbose);
    let result = match cli.command {
        Command::Write(a) => cmd::write::run(a),
        Command::Boards(a) => cmd::boards::run(a),
        Command::Detect(a) => cmd::detect::run(a),
        Command::Leds(a) => cmd::leds::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flasher::error::report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
