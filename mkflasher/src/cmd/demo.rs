//! `mkflasher demo`: build a demo OS, bundle it, build the flasher card for
//! `qemu-x86_64-nuc`, flash a virtual NVMe in QEMU with live progress, then boot
//! the NVMe alone and show the demo OS's marker. See [`crate::demo`].

use crate::demo::{self, DemoOptions};
use flasher_format::io::IoContext;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the demo's files go (demo OS image, bundle, card, NVMe, logs).
    #[arg(long, default_value = "out/demo")]
    pub work: PathBuf,
    /// Size of the virtual NVMe.
    #[arg(long, default_value = "64M")]
    pub nvme_size: String,
    /// Seconds each VM run may take.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Also stream the guest console while flashing.
    #[arg(long)]
    pub console: bool,
    /// Only write the demo OS disk image to this path (GPT, an ESP with
    /// systemd-boot and a kernel whose /init prints the demo marker) and
    /// stop: for test farms that flash it themselves (docs/labgrid.md).
    #[arg(long, value_name = "IMAGE")]
    pub os_only: Option<PathBuf>,
}

pub fn run(args: Args) -> crate::Result<()> {
    if let Some(out) = &args.os_only {
        demo::build_demo_os_from_fixtures(out)?;
        println!("demo OS image: {}", out.display());
        return Ok(());
    }
    let mkflasher = std::env::current_exe().context("locating the mkflasher binary")?;
    let report = demo::run(&DemoOptions {
        work: args.work,
        mkflasher,
        nvme_size: flasher_qemu::parse_size(&args.nvme_size)?,
        timeout: Duration::from_secs(args.timeout),
        console: args.console,
    })?;
    println!(
        "demo: done. The demo OS was flashed onto {} and booted from it.\n  card: {}\n  events: {}",
        report.nvme.display(),
        report.card.display(),
        report.nvme.with_file_name("events.jsonl").display()
    );
    Ok(())
}
