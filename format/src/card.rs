//! The card layout both sides agree on: partition names and numbers on the
//! flasher card, the files on its `flash-boot` partition (kernel, command
//! line, and the configuration the init copies onto the target), and the files
//! `mkflasher` puts into the initramfs for `/init` (docs/card-format.md).

/// GPT partition names (partition-table entry names, visible in sysfs as `PARTNAME`).
pub const BOOT_NAME: &str = "flash-boot";
pub const PAYLOAD_NAME: &str = "flasher-payload";
pub const LOG_NAME: &str = "flasher-log";

/// On MBR cards partitions have no names: they are found by number (and the
/// payload by the bundle magic).
pub const BOOT_NUMBER: u32 = 1;
pub const PAYLOAD_NUMBER: u32 = 2;
pub const LOG_NUMBER: u32 = 3;

/// The FAT volume label of `flash-boot`.
pub const BOOT_LABEL: &str = "FLASH-BOOT";

/// Default size of the unit log: 10,000 records of up to 1.5 KiB
/// (`pool::log_size_for(0, 0)`; a card with a per-unit data pool gets more).
pub const DEFAULT_LOG_SIZE: u64 = 15 << 20;

/// Files on `flash-boot` that `/init` reads.
pub const KERNEL_FILE: &str = "vmlinuz";
pub const INITRAMFS_FILE: &str = "initramfs";
pub const CMDLINE_FILE: &str = "cmdline.txt";
/// Configuration on `flash-boot` (written by `mkflasher configure`) that the
/// init copies onto the target's first FAT partition, under the same names
/// (balenaOS boot-partition convention): `config.json`, the host name on one
/// line, and NetworkManager connection profiles in a directory.
pub const CONFIG_JSON: &str = "config.json";
pub const HOSTNAME_FILE: &str = "hostname";
pub const CONNECTIONS_DIR: &str = "system-connections";
/// The per-unit data pool and its files on flash-boot (see `pool`).
pub use crate::pool::{POOL_FILE, UNITS_DIR};

/// Paths inside the initramfs, relative to its root.
pub mod initramfs {
    /// The board the init runs with, as JSON (`boards::to_json`), so `/init`
    /// needs no TOML parser.
    pub const BOARD_FILE: &str = "etc/flasher/board.json";
    /// Trusted signing keys (`*.pub`, from `mkflasher build --trust`). With
    /// any, the init writes only bundles signed by one of them.
    pub const TRUSTED_DIR: &str = "etc/flasher/trusted";
    /// Kernel modules to load: one absolute path per line, dependencies first.
    pub const LOAD_ORDER: &str = "lib/modules/load-order";
    /// Directories the init expects to exist (mount points and its own data).
    pub const DIRS: [&str; 7] = ["dev", "proc", "sys", "run", "mnt", "tmp", "etc/flasher"];
}
