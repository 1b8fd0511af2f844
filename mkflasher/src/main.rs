//! The `mkflasher` binary. Thin: parse, set up tracing, call the library.

use clap::{Parser, Subcommand};
use mkflasher::cmd;

#[derive(Parser)]
#[command(
    name = "mkflasher",
    version,
    about = "Build flasher bundles, initramfs and card images; write them to cards; run them in QEMU"
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
    /// Turn an OS image (raw, .gz, .xz, .zst; optional .bmap) into a bundle.
    Bundle(cmd::bundle::Args),
    /// Build the initramfs for a board: static /init, board data, kernel modules.
    Initramfs(cmd::initramfs::Args),
    /// Build the flasher card image for a board.
    // Boxed: its arguments are the largest by far (clippy large_enum_variant).
    Build(Box<cmd::build::Args>),
    /// Write config.json and network settings into a card's flash-boot partition.
    Configure(cmd::configure::Args),
    /// Make an Ed25519 signing key pair: NAME.key (secret) and NAME.pub.
    Keygen(cmd::keygen::Args),
    /// Describe a bundle, a card image or a unit log.
    Inspect(cmd::inspect::Args),
    /// The runs recorded on cards: a table, --json, --csv, or --db station.sqlite.
    Records(cmd::records::Args),
    /// List the drives a card can be written to (USB, SD, removable).
    Drives(cmd::drives::Args),
    /// Write an image or card to one or more drives or files, validated.
    Write(cmd::write::Args),
    /// Boot a card in QEMU against a virtual target disk.
    Qemu(cmd::qemu::Args),
    /// Run the scenarios of a matrix file (TOML) in parallel, with one report.
    QemuMatrix(cmd::qemu_matrix::Args),
    /// The built-in demo: build a demo OS, flash it onto a virtual NVMe, boot it.
    Demo(cmd::demo::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    mkflasher::log::init(cli.verbose);
    let result = match cli.command {
        Command::Bundle(a) => cmd::bundle::run(a),
        Command::Initramfs(a) => cmd::initramfs::run(a),
        Command::Build(a) => cmd::build::run(*a),
        Command::Configure(a) => cmd::configure::run(a),
        Command::Keygen(a) => cmd::keygen::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Records(a) => cmd::records::run(a),
        Command::Drives(a) => cmd::drives::run(a),
        Command::Write(a) => cmd::write::run(a),
        Command::Qemu(a) => cmd::qemu::run(a),
        Command::QemuMatrix(a) => cmd::qemu_matrix::run(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", flasher::error::report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
