//! The typed schema a board file parses into. Every table rejects unknown keys so
//! a typo in a board file is an error at build time, not a silently ignored rule.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One board, as described by `boards/data/<name>.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Board {
    /// The board's id, also its file name and the value of `flasher.board=`.
    pub name: String,
    /// One line for humans.
    pub description: String,
    pub status: Status,
    pub arch: Arch,
    /// How to recognise the board at run time. Empty: only `flasher.board=` selects it.
    #[serde(default)]
    pub identity: Identity,
    /// Kernel modules the initramfs must carry and load, in load order.
    /// Modules built into the kernel are skipped by the initramfs builder.
    #[serde(default)]
    pub modules: Vec<String>,
    /// How to recognise the internal storage.
    pub target: TargetRules,
    /// Where the flasher card is expected to sit (used in messages and checks).
    #[serde(default)]
    pub boot_medium: BootMediumHints,
    /// Bootloader pieces written outside the OS image's user area.
    #[serde(default)]
    pub bootloader: Vec<Placement>,
    /// What a U-Boot board's flasher card carries besides the kernel and the
    /// initramfs: device trees, console, Debian's U-Boot and where it goes.
    /// Only `mkflasher build` uses it: without the `toml` feature (the
    /// on-board /init) it is accepted, dropped and always empty, which keeps
    /// its parser out of the board binary (15 KB).
    #[serde(default)]
    #[cfg_attr(feature = "toml", serde(skip_serializing_if = "CardLayout::is_empty"))]
    #[cfg_attr(
        not(feature = "toml"),
        serde(skip_serializing, deserialize_with = "skip_card")
    )]
    pub card: CardLayout,
    /// The user LEDs and per-phase pattern overrides (the `led` crate's schema).
    #[serde(default)]
    pub leds: led::LedConfig,
    #[serde(default)]
    pub power_off: PowerOff,
    /// A watchdog device to feed while flashing and disarm before power-off.
    #[serde(default)]
    pub watchdog: Option<String>,
    /// Seconds without progress (bytes written or verified, a phase change, a
    /// step's message) after which the flasher stops feeding the watchdog so a
    /// hung I/O resets the board. Unset: [`DEFAULT_WATCHDOG_STALL_S`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_stall_s: Option<u32>,
    /// eMMC settings: the health gate's limit and the hardware partition to
    /// boot from. Unset: the defaults of [`Emmc`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emmc: Option<Emmc>,
}

/// The stall interval when a board file does not set `watchdog_stall_s`: well
/// above the longest gap between progress events of a healthy run (one chunk
/// on a slow SD card, a few seconds) and short enough that a hung board resets
/// within about a minute.
pub const DEFAULT_WATCHDOG_STALL_S: u32 = 60;

impl Board {
    /// The stall interval (`watchdog_stall_s` or the default).
    pub fn watchdog_stall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(
            self.watchdog_stall_s
                .unwrap_or(DEFAULT_WATCHDOG_STALL_S)
                .into(),
        )
    }
}

/// The health gate's limit when a board file does not set
/// `emmc.life_time_limit_percent`: an estimate in the 90-100 % band (or past
/// it) refuses the target.
pub const DEFAULT_LIFE_TIME_LIMIT_PERCENT: u8 = 90;

impl Board {
    /// The health gate's life-time limit in percent (docs/factory.md).
    pub fn life_time_limit_percent(&self) -> u8 {
        self.emmc
            .and_then(|e| e.life_time_limit_percent)
            .unwrap_or(DEFAULT_LIFE_TIME_LIMIT_PERCENT)
    }
}

/// `[emmc]`: what the flasher does with an eMMC target beyond writing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Emmc {
    /// Refuse the target when either JEDEC life-time estimate (type A or B, in
    /// 10 % bands) says at least this much of the device's life is used: the
    /// band starting at this value and every band above it refuse. A multiple
    /// of 10 from 10 to 100 (100: only "exceeded" refuses). Unset:
    /// [`DEFAULT_LIFE_TIME_LIMIT_PERCENT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub life_time_limit_percent: Option<u8>,
    /// After the bootloader is written, make the eMMC boot from this hardware
    /// partition (EXT_CSD PARTITION_CONFIG, BOOT_PARTITION_ENABLE). Unset: the
    /// register is left as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_enable: Option<BootEnable>,
    /// With `boot_enable`: whether the eMMC sends the boot acknowledge
    /// (PARTITION_CONFIG bit 6, BOOT_ACK), as the SoC's boot ROM expects.
    /// Unset: the bit keeps its current value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_ack: Option<bool>,
}

/// Which partition the eMMC boots from (EXT_CSD PARTITION_CONFIG bits 5:3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootEnable {
    Boot0,
    Boot1,
    /// The user area (BOOT_PARTITION_ENABLE = 7).
    User,
}

impl BootEnable {
    /// The BOOT_PARTITION_ENABLE field value (JEDEC JESD84-B51, EXT_CSD[179]).
    pub fn field(self) -> u8 {
        match self {
            BootEnable::Boot0 => 1,
            BootEnable::Boot1 => 2,
            BootEnable::User => 7,
        }
    }

    /// The hardware boot partition this names, if it is one.
    pub fn partition(self) -> Option<BootPartition> {
        match self {
            BootEnable::Boot0 => Some(BootPartition::Boot0),
            BootEnable::Boot1 => Some(BootPartition::Boot1),
            BootEnable::User => None,
        }
    }
}

impl fmt::Display for BootEnable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootEnable::Boot0 => "boot0",
            BootEnable::Boot1 => "boot1",
            BootEnable::User => "the user area",
        })
    }
}

/// How far the board's description has been verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Exercised end to end by the project's own tests (the QEMU boards).
    Supported,
    /// Facts collected from device trees and BSPs, not yet run on the hardware.
    Experimental,
    /// Kept for reference; new flasher images should not use it.
    Deprecated,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Supported => "supported",
            Status::Experimental => "experimental",
            Status::Deprecated => "deprecated",
        })
    }
}

/// The CPU architecture the flasher binary and kernel are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    /// 32-bit x86 userspace (Intel Edison's original BSP).
    X86,
    Armv7,
    Aarch64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::X86 => "x86",
            Arch::Armv7 => "armv7",
            Arch::Aarch64 => "aarch64",
        })
    }
}

/// Device-tree and DMI identity. A trailing `*` in any value matches a prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    /// Board-specific `compatible` strings (never SoC-generic ones like `fsl,imx6q`).
    #[serde(default)]
    pub compatible: Vec<String>,
    /// DMI matches; one entry matches when every field it names matches.
    #[serde(default)]
    pub dmi: Vec<DmiMatch>,
}

/// Fields from `/sys/class/dmi/id/`. Absent fields are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmiMatch {
    #[serde(default)]
    pub sys_vendor: Option<String>,
    #[serde(default)]
    pub product_name: Option<String>,
    #[serde(default)]
    pub board_vendor: Option<String>,
    #[serde(default)]
    pub board_name: Option<String>,
}

impl DmiMatch {
    /// The (file name, expected value) pairs this entry checks.
    pub fn fields(&self) -> Vec<(&'static str, &str)> {
        let mut v = Vec::new();
        for (k, val) in [
            ("sys_vendor", &self.sys_vendor),
            ("product_name", &self.product_name),
            ("board_vendor", &self.board_vendor),
            ("board_name", &self.board_name),
        ] {
            if let Some(val) = val {
                v.push((k, val.as_str()));
            }
        }
        v
    }
}

/// How a disk is attached, derived from its resolved sysfs device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    Mmc,
    Nvme,
    Sata,
    Usb,
    Virtio,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Mmc => "mmc",
            Transport::Nvme => "nvme",
            Transport::Sata => "sata",
            Transport::Usb => "usb",
            Transport::Virtio => "virtio",
        })
    }
}

/// The MMC card type as the kernel reports it in `device/type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmcType {
    /// eMMC (or an MMC card).
    #[serde(rename = "MMC")]
    Mmc,
    #[serde(rename = "SD")]
    Sd,
}

impl MmcType {
    /// The exact string in `/sys/block/mmcblkN/device/type`.
    pub fn sysfs_name(self) -> &'static str {
        match self {
            MmcType::Mmc => "MMC",
            MmcType::Sd => "SD",
        }
    }
}

/// Rules that pick the internal storage among the disks the kernel shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetRules {
    /// Allowed transports, most preferred first. The first transport with any
    /// matching disk decides; two matching disks on it are an ambiguity error.
    pub transports: Vec<Transport>,
    /// Controllers the target must hang off: a platform node (`481d8000.mmc`) or a
    /// PCI address (`0000:00:06.0`), matched against the components of the disk's
    /// resolved device path. Empty: any controller.
    #[serde(default)]
    pub controllers: Vec<String>,
    /// For mmc disks: the card type that must be reported.
    #[serde(default)]
    pub mmc_type: Option<MmcType>,
    /// The disk must show `bootN` hardware boot partitions (eMMC only).
    #[serde(default)]
    pub require_boot_partitions: bool,
    /// Smallest acceptable size in bytes (rules out e.g. tiny SPI/NOR shims).
    #[serde(default)]
    pub min_size: Option<u64>,
    /// Accept disks whose `removable` flag is 1. Off by default: internal storage
    /// is not removable (mmc always reports 0, so this only matters for SCSI/USB).
    #[serde(default)]
    pub allow_removable: bool,
}

impl TargetRules {
    /// One line saying what the board expects, for error messages, e.g.
    /// `eMMC (card type MMC) with boot0/boot1 partitions on 481d8000.mmc`.
    pub fn describe(&self) -> String {
        let mut mmc = match self.mmc_type {
            Some(MmcType::Mmc) => "eMMC (card type MMC)".to_string(),
            Some(MmcType::Sd) => "an SD card (card type SD)".to_string(),
            None => "an MMC/SD card".to_string(),
        };
        if self.require_boot_partitions {
            mmc.push_str(" with boot0/boot1 partitions");
        }
        let only_mmc = self.transports == [Transport::Mmc];
        let mut s = if only_mmc {
            mmc.clone()
        } else {
            let t: Vec<String> = self.transports.iter().map(|t| t.to_string()).collect();
            format!("a disk via {} (in that order of preference)", t.join(" > "))
        };
        if !self.controllers.is_empty() {
            s.push_str(" on ");
            s.push_str(&self.controllers.join(" or "));
        }
        let mmc_constrained = self.mmc_type.is_some() || self.require_boot_partitions;
        if !only_mmc && mmc_constrained && self.transports.contains(&Transport::Mmc) {
            s.push_str(&format!("; an mmc disk must be {mmc}"));
        }
        if !self.allow_removable {
            s.push_str(", not removable");
        }
        if let Some(min) = self.min_size {
            // Integer tenths: the board binary formats no floats (size budget).
            let t = (u128::from(min) + 50_000_000) / 100_000_000;
            s.push_str(&format!(", at least {}.{} GB", t / 10, t % 10));
        }
        s
    }
}

/// Where the flasher card itself is expected. The boot medium is found by its
/// `flasher-payload` partition; these hints make messages and sanity checks precise.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootMediumHints {
    #[serde(default)]
    pub transports: Vec<Transport>,
    #[serde(default)]
    pub controllers: Vec<String>,
}

/// Which eMMC hardware boot partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPartition {
    Boot0,
    Boot1,
}

impl BootPartition {
    /// The kernel name's suffix, e.g. `boot0` in `mmcblk1boot0`.
    pub fn suffix(self) -> &'static str {
        match self {
            BootPartition::Boot0 => "boot0",
            BootPartition::Boot1 => "boot1",
        }
    }
}

/// One bootloader piece and where it goes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "kebab-case",
    deny_unknown_fields,
    try_from = "RawPlacement"
)]
pub enum Placement {
    /// Into an eMMC hardware boot partition (`force_ro` is cleared around the write).
    EmmcBoot {
        partition: BootPartition,
        #[serde(default)]
        offset: u64,
        /// File name inside the bundle's bootloader set.
        file: String,
    },
    /// Raw into the target's user area at a byte offset, after the image.
    Raw { offset: u64, file: String },
}

/// A `[[bootloader]]` entry as read: one flat struct checked per kind in
/// `TryFrom`; the same format as the tagged enum, without serde's buffering of
/// internally tagged enums (several KiB of the board binary per such type).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    kind: String,
    partition: Option<BootPartition>,
    offset: Option<u64>,
    file: Option<String>,
}

impl TryFrom<RawPlacement> for Placement {
    type Error = String;
    fn try_from(r: RawPlacement) -> Result<Self, String> {
        let missing = |field: &str| format!("missing field `{field}` for kind \"{}\"", r.kind);
        match r.kind.as_str() {
            "emmc-boot" => Ok(Placement::EmmcBoot {
                partition: r.partition.ok_or_else(|| missing("partition"))?,
                offset: r.offset.unwrap_or(0),
                file: r.file.clone().ok_or_else(|| missing("file"))?,
            }),
            "raw" => {
                if r.partition.is_some() {
                    return Err(
                        "unknown field `partition` for kind \"raw\", expected `offset` or `file`"
                            .into(),
                    );
                }
                Ok(Placement::Raw {
                    offset: r.offset.ok_or_else(|| missing("offset"))?,
                    file: r.file.clone().ok_or_else(|| missing("file"))?,
                })
            }
            other => Err(format!(
                "unknown variant `{other}`, expected `emmc-boot` or `raw`"
            )),
        }
    }
}

/// The first partition of a card starts here (docs/card-format.md): raw
/// bootloader pieces on the card must end before it.
pub const CARD_FIRST_PARTITION: u64 = 1 << 20;

/// The MBR (boot code, disk signature, partition table) is the card's first
/// sector: raw bootloader pieces must start after it.
pub const CARD_MBR_SIZE: u64 = 512;

/// How `mkflasher build` makes a U-Boot board's card from Debian's parts
/// (docs/boards.md, "What a U-Boot card carries").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardLayout {
    /// Device trees from Debian's armmp kernel package, copied to `/dtbs/`.
    #[serde(default)]
    pub dtbs: Vec<String>,
    /// The one of `dtbs` that extlinux names (`FDT /dtbs/<fdt>`). Unset:
    /// `FDTDIR /dtbs`, and U-Boot picks `${fdtfile}` (boards with SoC variants).
    #[serde(default)]
    pub fdt: Option<String>,
    /// The kernel's serial console, e.g. `ttymxc1,115200` (`console=` on APPEND).
    #[serde(default)]
    pub console: Option<String>,
    /// Debian's U-Boot pieces and where the board's boot ROM looks for them.
    #[serde(default)]
    pub uboot: Vec<CardPart>,
    /// First stages Debian does not ship (what the board needs, one line):
    /// `--bootloader-files DIR` is then required.
    #[serde(default)]
    pub needs: Option<String>,
}

/// `[card]` in a build without the `toml` feature: skipped (see `Board::card`).
#[cfg(not(feature = "toml"))]
fn skip_card<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CardLayout, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| CardLayout::default())
}

impl CardLayout {
    pub fn is_empty(&self) -> bool {
        *self == CardLayout::default()
    }
}

/// One of Debian's U-Boot files on the card: a FAT file or raw bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardPart {
    /// Path under `/usr/lib/u-boot/` of Debian's U-Boot packages
    /// (`u-boot-omap`, `u-boot-imx`), e.g. `mx6cuboxi/SPL`.
    pub debian: String,
    /// Put into flash-boot's root under this name (`MLO`).
    #[serde(default)]
    pub fat: Option<String>,
    /// Or written raw at this byte offset of the card, between the MBR and the
    /// first partition.
    #[serde(default)]
    pub offset: Option<u64>,
}

/// What to do once the flash has succeeded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerOffMethod {
    /// `reboot(RB_POWER_OFF)`: the board goes dark (the factory-line signal).
    #[default]
    Poweroff,
    /// `reboot(RB_AUTOBOOT)`: for boards that cannot cut their own power.
    Reboot,
    /// `reboot(RB_HALT_SYSTEM)`: stop the CPU, leave power and LEDs on.
    Halt,
}

/// Power-off behaviour after success.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOff {
    #[serde(default)]
    pub method: PowerOffMethod,
    /// Seconds to show the success pattern before powering off (None: the
    /// default of the LED language, a few seconds).
    #[serde(default)]
    pub hold_secs: Option<u32>,
}
