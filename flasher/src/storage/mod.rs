//! Storage discovery through sysfs and the choice of the internal target.
//!
//! Everything reads under a root directory (`/` on the board, a fake tree in tests):
//! - [`scan`] enumerates `<root>/sys/block` and classifies each disk: transport and
//!   controller from the resolved device path, mmc card type, eMMC boot partitions,
//!   size, `ro`, `removable`, major:minor, partitions with their `PARTNAME`, and
//!   whether anything on it is mounted, swapped on or held (dm/md).
//! - [`find_boot_medium`] finds the disk we booted from: the one holding the
//!   `flasher-payload` partition, or one named explicitly.
//! - [`choose_target`] applies a board's rules and refuses, with a distinct error,
//!   the boot medium, mounted or read-only disks, ties and the case where nothing
//!   matches. Disks are compared by major:minor and selected by controller, card
//!   type and boot partitions, never by kernel index.

/// Fake kernel-shaped roots, for tests here and in other crates (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use boards::{Board, MmcType, Transport};
use serde::Serialize;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use flasher_format::card::{LOG_NAME, PAYLOAD_NAME};

/// What was seen, one line per disk, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen(pub Vec<String>);

impl fmt::Display for Seen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("no disks at all (are the storage modules loaded?)")
        } else {
            f.write_str(&self.0.join("; "))
        }
    }
}

/// Errors from `storage`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    #[error("{path}: {what}")]
    Malformed { path: String, what: String },
    #[error("boot disk {name:?} not found; saw {seen}")]
    BootDiskNotFound { name: String, seen: Seen },
    #[error("a {PAYLOAD_NAME} partition is on more than one disk ({}); remove the extra flasher card or name the boot disk; saw {seen}", disks.join(", "))]
    MultiplePayloads { disks: Vec<String>, seen: Seen },
    #[error("refusing {disk}: it is the boot medium and the only disk matching {board}'s rules; {board} expects {expected}; saw {seen}")]
    OnlyBootMedium {
        board: String,
        disk: String,
        expected: String,
        seen: Seen,
    },
    #[error("refusing {disk}: in use ({}); the target must not be mounted, swapped on or held; saw {seen}", uses.join(", "))]
    Mounted {
        board: String,
        disk: String,
        uses: Vec<String>,
        seen: Seen,
    },
    #[error("refusing {disk}: it is read-only (ro=1; check a write-protect switch); saw {seen}")]
    ReadOnly {
        board: String,
        disk: String,
        seen: Seen,
    },
    #[error("ambiguous target: {} match {board}'s rules equally well ({expected}); refusing to guess, narrow target.controllers in a board file; saw {seen}", disks.join(" and "))]
    Ambiguous {
        board: String,
        disks: Vec<String>,
        expected: String,
        seen: Seen,
    },
    #[error("no internal storage: saw {seen}; {board} expects {expected}")]
    NoMatch {
        board: String,
        expected: String,
        seen: Seen,
    },
}

impl Error {
    pub fn class(&self) -> flasher_format::ErrorClass {
        use flasher_format::ErrorClass as C;
        match self {
            Error::NoMatch { .. } | Error::Ambiguous { .. } | Error::MultiplePayloads { .. } => {
                C::NoStorage
            }
            Error::OnlyBootMedium { .. } | Error::Mounted { .. } | Error::ReadOnly { .. } => {
                C::TargetRefused
            }
            Error::BootDiskNotFound { .. } => C::BoardConfig,
            Error::Io(_) | Error::Malformed { .. } => C::Internal,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A block device number. Serialized as `"major:minor"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl Serialize for DevNum {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for DevNum {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not major:minor"))?;
        let num = |x: &str| x.parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
        Ok(DevNum {
            major: num(a)?,
            minor: num(b)?,
        })
    }
}

/// One partition of a disk.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Partition {
    /// Kernel name, e.g. `mmcblk0p2`.
    pub name: String,
    pub number: u32,
    pub dev: DevNum,
    /// The GPT partition name (`PARTNAME=` in the uevent), if any.
    pub partname: Option<String>,
    pub size_bytes: u64,
    /// `<root>/dev/<name>`.
    pub dev_path: PathBuf,
    /// True when `partname` was not in the uevent but inferred from the content:
    /// MBR cards (U-Boot boards) have no partition names, so the payload is the
    /// partition that starts with the bundle magic and the log is the next one.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub named_by_content: bool,
}

/// One disk as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Disk {
    /// Kernel name, e.g. `mmcblk1`.
    pub name: String,
    pub dev: DevNum,
    /// `<root>/dev/<name>`.
    pub dev_path: PathBuf,
    /// The resolved device path, relative to the root: `/sys/devices/...`.
    pub device_path: String,
    /// Further device paths the disk sits behind (the controllers of a
    /// multipath NVMe namespace).
    pub other_paths: Vec<String>,
    pub transport: Option<Transport>,
    /// `device/type` for mmc disks: `MMC`, `SD`, `SDIO`, `SDcombo`.
    pub mmc_type: Option<String>,
    /// The host controller: platform node (`481d8000.mmc`) or PCI address.
    pub controller: Option<String>,
    /// Hardware boot partitions, e.g. `["mmcblk1boot0", "mmcblk1boot1"]`.
    pub boot_partitions: Vec<String>,
    pub size_bytes: u64,
    pub read_only: bool,
    pub removable: bool,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub cid: Option<String>,
    pub partitions: Vec<Partition>,
    /// Uses of the disk or its partitions: `mmcblk0p2 on /`, `sda2 swap`, `sda1 held by dm-0`.
    pub uses: Vec<String>,
}

impl Disk {
    /// Whether the disk sits behind `controller` (a component of a device path).
    pub fn on_controller(&self, controller: &str) -> bool {
        std::iter::once(&self.device_path)
            .chain(self.other_paths.iter())
            .any(|p| p.split('/').any(|c| c == controller))
    }

    /// The partition with GPT name `partname`.
    pub fn partition_named(&self, partname: &str) -> Option<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.partname.as_deref() == Some(partname))
    }

    /// What kind of disk this is, for humans: `eMMC`, `SD`, `NVMe`, `SATA`, ...
    pub fn kind(&self) -> String {
        match (self.transport, self.mmc_type.as_deref()) {
            (Some(Transport::Mmc), Some("MMC")) => "eMMC".into(),
            (Some(Transport::Mmc), Some(t)) => t.to_string(),
            (Some(Transport::Mmc), None) => "MMC (type unknown)".into(),
            (Some(Transport::Nvme), _) => "NVMe".into(),
            (Some(Transport::Sata), _) => "SATA".into(),
            (Some(Transport::Usb), _) => "USB".into(),
            (Some(Transport::Virtio), _) => "virtio".into(),
            (None, _) => "disk (unknown transport)".into(),
        }
    }

    /// One line: `mmcblk0: SD 15.9 GB on 48060000.mmc (boot medium)`.
    pub fn summary(&self, boot: Option<&BootMedium>) -> String {
        let mut s = format!(
            "{}: {} {}",
            self.name,
            self.kind(),
            flasher_format::units::si(self.size_bytes)
        );
        if let Some(c) = &self.controller {
            s.push_str(" on ");
            s.push_str(c);
        }
        let mut flags = Vec::new();
        if boot.is_some_and(|b| b.dev == self.dev) {
            flags.push("boot medium".to_string());
        }
        if !self.boot_partitions.is_empty() {
            let parts: Vec<&str> = self
                .boot_partitions
                .iter()
                .map(|b| b.strip_prefix(&self.name).unwrap_or(b))
                .collect();
            flags.push(parts.join("+"));
        }
        if self.read_only {
            flags.push("read-only".into());
        }
        if self.removable {
            flags.push("removable".into());
        }
        flags.extend(self.uses.iter().cloned());
        if !flags.is_empty() {
            s.push_str(&format!(" ({})", flags.join(", ")));
        }
        s
    }
}

/// A partition on the boot medium the init program needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartRef {
    pub name: String,
    pub dev: DevNum,
    pub dev_path: PathBuf,
    pub size_bytes: u64,
}

impl From<&Partition> for PartRef {
    fn from(p: &Partition) -> Self {
        PartRef {
            name: p.name.clone(),
            dev: p.dev,
            dev_path: p.dev_path.clone(),
            size_bytes: p.size_bytes,
        }
    }
}

/// The disk we booted from, with its payload and log partitions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BootMedium {
    pub disk: String,
    pub dev: DevNum,
    pub dev_path: PathBuf,
    /// `flasher-payload`; always present when found by partition name.
    pub payload: Option<PartRef>,
    /// `flasher-log`, if the card has one.
    pub log: Option<PartRef>,
}

/// A disk the board's rules did not pick, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub disk: String,
    pub why: String,
}

/// The chosen target and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Choice {
    pub disk: Disk,
    pub reason: String,
    pub rejected: Vec<Rejection>,
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io(flasher_format::io::IoError::new(context, source))
}

fn read_trim(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_err(format!("read {}", path.display())))
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn parse_num<T: std::str::FromStr>(path: &Path) -> Result<T>
where
    T::Err: fmt::Display,
{
    let s = read_trim(path)?;
    s.parse().map_err(|e: T::Err| Error::Malformed {
        path: path.display().to_string(),
        what: format!("{s:?}: {e}"),
    })
}

fn read_dev(path: &Path) -> Result<DevNum> {
    let s = read_trim(path)?;
    s.parse().map_err(|what| Error::Malformed {
        path: path.display().to_string(),
        what,
    })
}

/// A 0/1 attribute; absent counts as 0 (the kernel always has `ro` and
/// `removable`; hand-made trees may leave them out).
fn read_flag_or_false(path: &Path) -> Result<bool> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s.trim() == "1"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(Error::Io(flasher_format::io::IoError::new(
            format!("read {}", path.display()),
            source,
        ))),
    }
}

/// Kernel names that are never whole disks we could flash.
fn skipped(name: &str) -> bool {
    const PREFIXES: [&str; 9] = [
        "loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd", "mtdblock",
    ];
    if PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // eMMC boot and RPMB partitions are shown as disks but belong to their eMMC.
    if let Some(rest) = name.strip_prefix("mmcblk") {
        return rest.contains("boot") || rest.ends_with("rpmb");
    }
    false
}

/// `usb1`, `ata3`, `virtio0`: a name followed only by digits.
fn numbered(component: &str, prefix: &str) -> bool {
    component
        .strip_prefix(prefix)
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

/// Recognises the path component that marks a transport.
type Marker = fn(&str) -> bool;

/// Transport and controller from a resolved device path's components.
fn classify(path: &str) -> (Option<Transport>, Option<String>) {
    let (t, c) = classify_by_markers(path);
    if t.is_some() {
        return (t, c);
    }
    // Fallback for trees without the usual marker directories: the kernel name.
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let name = comps.last().copied().unwrap_or_default();
    let before = |pred: &dyn Fn(&str) -> bool| {
        comps
            .iter()
            .position(|c| pred(c))
            .filter(|i| *i > 0)
            .map(|i| comps[i - 1].to_string())
    };
    if name.starts_with("mmcblk") {
        // `.../<controller>/mmcN/mmcN:RCA/block/mmcblkM`
        return (Some(Transport::Mmc), before(&|c| numbered(c, "mmc")));
    }
    if name.starts_with("nvme") {
        return (Some(Transport::Nvme), None);
    }
    if name.starts_with("vd") {
        return (Some(Transport::Virtio), None);
    }
    (None, None)
}

fn classify_by_markers(path: &str) -> (Option<Transport>, Option<String>) {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let before = |i: usize| (i > 0).then(|| comps[i - 1].to_string());
    // USB first: a card reader or a USB-SATA bridge is still a USB disk.
    let markers: [(Transport, Marker); 5] = [
        (Transport::Usb, |c| numbered(c, "usb")),
        (Transport::Mmc, |c| c == "mmc_host"),
        (Transport::Nvme, |c| c == "nvme"),
        (Transport::Virtio, |c| numbered(c, "virtio")),
        (Transport::Sata, |c| numbered(c, "ata")),
    ];
    for (transport, is_marker) in markers {
        if let Some(i) = comps.iter().position(|c| is_marker(c)) {
            return (Some(transport), before(i));
        }
    }
    if comps.contains(&"nvme-subsystem") {
        // Multipath head: the controllers are found through the subsystem links.
        return (Some(Transport::Nvme), None);
    }
    (None, None)
}

fn relative_to_root(root_real: &Path, real: &Path, shown: &Path) -> Result<String> {
    let rel = real.strip_prefix(root_real).map_err(|_| Error::Malformed {
        path: shown.display().to_string(),
        what: format!("resolves to {} outside the root", real.display()),
    })?;
    Ok(format!("/{}", rel.display()))
}

/// Mount points by device number, and the kernel names used as swap, from
/// `/proc/self/mountinfo` and `/proc/swaps`.
struct Uses {
    mounts: HashMap<DevNum, Vec<String>>,
    swaps: Vec<String>,
}

fn read_uses(root: &Path) -> Result<Uses> {
    let path = under(root, "/proc/self/mountinfo");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // A captured or generated tree without /proc has nothing mounted from it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && root != Path::new("/") => {
            // Once per process: the storage wait polls this many times a second.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!("{} missing; assuming nothing is mounted", path.display())
            });
            String::new()
        }
        // Fail closed on the live system: without mountinfo we cannot tell
        // whether a disk is in use.
        Err(source) => {
            return Err(Error::Io(flasher_format::io::IoError::new(
                format!("read {} (is /proc mounted?)", path.display()),
                source,
            )))
        }
    };
    let mut mounts: HashMap<DevNum, Vec<String>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 5 {
            continue;
        }
        if let Ok(dev) = fields[2].parse::<DevNum>() {
            mounts.entry(dev).or_default().push(fields[4].to_string());
        }
    }
    // /proc/swaps names devices by path; a missing file means no swap support.
    let swaps = std::fs::read_to_string(under(root, "/proc/swaps"))
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| p.strip_prefix("/dev/").map(str::to_string))
        .collect();
    Ok(Uses { mounts, swaps })
}

fn list_dir(path: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))? {
        let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort_unstable();
    Ok(names)
}

fn holders(dir: &Path) -> Vec<String> {
    list_dir(&dir.join("holders")).unwrap_or_default()
}

/// Enumerate and classify every disk under `<root>/sys/block`.
pub fn scan(root: &Path) -> Result<Vec<Disk>> {
    let sys_block = under(root, "/sys/block");
    let root_real =
        std::fs::canonicalize(root).map_err(io_err(format!("resolve {}", root.display())))?;
    let Uses { mounts, swaps } = read_uses(root)?;
    let mut disks = Vec::new();
    for name in list_dir(&sys_block)? {
        if skipped(&name) {
            continue;
        }
        let link = sys_block.join(&name);
        let dir =
            std::fs::canonicalize(&link).map_err(io_err(format!("resolve {}", link.display())))?;
        // Hidden disks (NVMe multipath paths such as nvme0c0n1) have no `dev`
        // node; the kernel exposes I/O only through the head disk (nvme0n1).
        if read_opt(&dir.join("hidden")).as_deref() == Some("1") || !dir.join("dev").exists() {
            continue;
        }
        let device_path = relative_to_root(&root_real, &dir, &link)?;
        let (transport, mut controller) = classify(&device_path);
        let dev = read_dev(&dir.join("dev"))?;
        let sectors: u64 = parse_num(&dir.join("size"))?;
        let device = dir.join("device");
        let mut other_paths = Vec::new();
        let mut model = read_opt(&device.join("model")).or_else(|| read_opt(&device.join("name")));
        let mut serial = read_opt(&device.join("serial")).or_else(|| read_opt(&dir.join("serial")));
        if device_path.contains("/nvme-subsystem/") {
            // Multipath NVMe: the head disk lives under the subsystem, which links
            // to each controller (linux drivers/nvme/host/core.c, nvme_init_subsystem).
            if let Some(subsys) = dir.parent() {
                model = model.or_else(|| read_opt(&subsys.join("model")));
                serial = serial.or_else(|| read_opt(&subsys.join("serial")));
                for entry in list_dir(subsys)? {
                    let p = subsys.join(&entry);
                    if !numbered(&entry, "nvme") || !p.is_symlink() {
                        continue;
                    }
                    let real = std::fs::canonicalize(&p)
                        .map_err(io_err(format!("resolve {}", p.display())))?;
                    let rel = relative_to_root(&root_real, &real, &p)?;
                    if controller.is_none() {
                        controller = classify(&rel).1;
                    }
                    other_paths.push(rel);
                }
            }
        }
        let mmc_type = if transport == Some(Transport::Mmc) {
            read_opt(&device.join("type"))
        } else {
            None
        };
        let boot_partitions = ["boot0", "boot1"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .filter(|b| {
                // Listed in /sys/block, or at least next to the disk under the card.
                name.starts_with("mmcblk")
                    && (sys_block.join(b).exists()
                        || dir.parent().is_some_and(|p| p.join(b).is_dir()))
            })
            .collect();

        let mut uses = Vec::new();
        let mut note_uses = |kname: &str, dev: DevNum, dir: &Path| {
            for m in mounts.get(&dev).into_iter().flatten() {
                uses.push(format!("{kname} mounted on {m}"));
            }
            if swaps.iter().any(|s| s == kname) {
                uses.push(format!("{kname} used as swap"));
            }
            for h in holders(dir) {
                uses.push(format!("{kname} held by {h}"));
            }
        };
        note_uses(&name, dev, &dir);

        let mut partitions = Vec::new();
        for entry in list_dir(&dir)? {
            let pdir = dir.join(&entry);
            let uevent = read_opt(&pdir.join("uevent")).unwrap_or_default();
            let field = |key: &str| {
                uevent
                    .lines()
                    .find_map(|l| l.strip_prefix(key).map(str::to_string))
            };
            // The kernel marks partitions with a `partition` file; accept a
            // `DEVTYPE=partition` uevent too (hand-made trees).
            let has_file = pdir.join("partition").is_file();
            if !has_file && field("DEVTYPE=").as_deref() != Some("partition") {
                continue;
            }
            let number = if has_file {
                parse_num(&pdir.join("partition"))?
            } else {
                field("PARTN=")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| Error::Malformed {
                        path: pdir.display().to_string(),
                        what: "partition without a partition file or PARTN=".into(),
                    })?
            };
            let pdev = read_dev(&pdir.join("dev"))?;
            note_uses(&entry, pdev, &pdir);
            partitions.push(Partition {
                dev_path: under(root, &format!("/dev/{entry}")),
                number,
                size_bytes: parse_num::<u64>(&pdir.join("size"))? * 512,
                dev: pdev,
                partname: field("PARTNAME="),
                name: entry,
                named_by_content: false,
            });
        }
        partitions.sort_unstable_by_key(|p| p.number);
        name_mbr_card_partitions(&mut partitions);

        disks.push(Disk {
            dev_path: under(root, &format!("/dev/{name}")),
            dev,
            device_path,
            other_paths,
            transport,
            mmc_type,
            controller,
            boot_partitions,
            size_bytes: sectors * 512,
            read_only: read_flag_or_false(&dir.join("ro"))?,
            removable: read_flag_or_false(&dir.join("removable"))?,
            model,
            serial,
            cid: read_opt(&device.join("cid")),
            partitions,
            uses,
            name,
        });
    }
    Ok(disks)
}

fn seen(disks: &[Disk], boot: Option<&BootMedium>) -> Seen {
    Seen(disks.iter().map(|d| d.summary(boot)).collect())
}

/// Find the boot medium: the disk named by `explicit` (`mmcblk0` or `/dev/mmcblk0`),
/// else the disk holding a `flasher-payload` partition. `Ok(None)`: no payload
/// anywhere (e.g. `flasher detect` on a host).
pub fn find_boot_medium(disks: &[Disk], explicit: Option<&str>) -> Result<Option<BootMedium>> {
    let medium = |d: &Disk| BootMedium {
        disk: d.name.clone(),
        dev: d.dev,
        dev_path: d.dev_path.clone(),
        payload: d.partition_named(PAYLOAD_NAME).map(PartRef::from),
        log: d.partition_named(LOG_NAME).map(PartRef::from),
    };
    if let Some(name) = explicit {
        let name = name.trim_start_matches("/dev/");
        return match disks.iter().find(|d| d.name == name) {
            Some(d) => Ok(Some(medium(d))),
            None => Err(Error::BootDiskNotFound {
                name: name.to_string(),
                seen: seen(disks, None),
            }),
        };
    }
    let holding: Vec<&Disk> = disks
        .iter()
        .filter(|d| d.partition_named(PAYLOAD_NAME).is_some())
        .collect();
    match holding.as_slice() {
        [] => Ok(None),
        [d] => Ok(Some(medium(d))),
        many => Err(Error::MultiplePayloads {
            disks: many.iter().map(|d| d.name.clone()).collect(),
            seen: seen(disks, None),
        }),
    }
}

/// On a disk with no partition names at all (an MBR card), name the partition
/// that starts with the bundle magic `flasher-payload` and the partition right
/// after it `flasher-log`, as `mkflasher build` lays out MBR cards. Unreadable
/// partitions are skipped: this only adds names, it never fails a scan.
fn name_mbr_card_partitions(partitions: &mut [Partition]) {
    if partitions.iter().any(|p| p.partname.is_some()) {
        return;
    }
    let starts_with_magic = |p: &Partition| {
        let mut magic = [0u8; 8];
        std::fs::File::open(&p.dev_path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && magic == flasher_format::bundle::MAGIC
    };
    let Some(i) = partitions.iter().position(starts_with_magic) else {
        return;
    };
    partitions[i].partname = Some(PAYLOAD_NAME.to_string());
    partitions[i].named_by_content = true;
    let number = partitions[i].number;
    if let Some(next) = partitions.get_mut(i + 1) {
        if next.number == number + 1 {
            next.partname = Some(LOG_NAME.to_string());
            next.named_by_content = true;
        }
    }
}

/// A warning when the boot medium is not where `board` expects its flasher card
/// (another transport or controller): usually a wrong `flasher.board=`.
pub fn boot_medium_note(board: &Board, disk: &Disk) -> Option<String> {
    let hints = &board.boot_medium;
    let transport_ok = hints.transports.is_empty()
        || disk
            .transport
            .is_some_and(|t| hints.transports.contains(&t));
    let controller_ok =
        hints.controllers.is_empty() || hints.controllers.iter().any(|c| disk.on_controller(c));
    if transport_ok && controller_ok {
        return None;
    }
    let mut want = Vec::new();
    if !hints.transports.is_empty() {
        let t: Vec<String> = hints.transports.iter().map(|t| t.to_string()).collect();
        want.push(format!("via {}", t.join(" or ")));
    }
    if !hints.controllers.is_empty() {
        want.push(format!("on {}", hints.controllers.join(" or ")));
    }
    Some(format!(
        "boot medium {} is not where {} expects its flasher card ({}); is the board right?",
        disk.summary(None),
        board.name,
        want.join(" ")
    ))
}

/// Why `disk` is not a target candidate for `board` (None: it matches the rules
/// and is not the boot medium). For reports; [`choose_target`] decides.
pub fn why_not(board: &Board, disk: &Disk, boot: Option<&BootMedium>) -> Option<String> {
    let is_boot = boot.is_some_and(|b| b.dev == disk.dev);
    match (rank(board, disk), is_boot) {
        (Ok(_), true) => Some("boot medium".into()),
        (Err(why), true) => Some(format!("boot medium; {why}")),
        (Err(why), false) => Some(why),
        (Ok(_), false) => None,
    }
}

/// Why `disk` does not match `board`'s target rules, or its preference rank
/// (index into `transports`; lower is better).
fn rank(board: &Board, disk: &Disk) -> Result<usize, String> {
    let rules = &board.target;
    let Some(t) = disk.transport else {
        return Err("transport unknown".into());
    };
    let Some(rank) = rules.transports.iter().position(|x| *x == t) else {
        return Err(format!("transport {t} not allowed"));
    };
    // Defence in depth: even without a payload partition to recognise it by,
    // a disk on the board's boot-medium controller is the card slot, not the target.
    if let Some(c) = board
        .boot_medium
        .controllers
        .iter()
        .find(|c| disk.on_controller(c))
    {
        return Err(format!("on {c}, the board's boot-medium slot"));
    }
    if !rules.controllers.is_empty() && !rules.controllers.iter().any(|c| disk.on_controller(c)) {
        return Err(format!(
            "on {}, not {}",
            disk.controller
                .as_deref()
                .unwrap_or("an unknown controller"),
            rules.controllers.join(" or ")
        ));
    }
    if t == Transport::Mmc {
        if let Some(want) = rules.mmc_type {
            let have = disk.mmc_type.as_deref().unwrap_or("unknown");
            if have != want.sysfs_name() {
                let want = match want {
                    MmcType::Mmc => "MMC (eMMC)",
                    MmcType::Sd => "SD",
                };
                return Err(format!("card type {have}, not {want}"));
            }
        }
        if rules.require_boot_partitions && disk.boot_partitions.is_empty() {
            return Err("no boot0/boot1 partitions".into());
        }
    }
    if disk.removable && !rules.allow_removable {
        return Err("removable".into());
    }
    if disk.size_bytes == 0 {
        return Err("no medium (size 0)".into());
    }
    if let Some(min) = rules.min_size {
        if disk.size_bytes < min {
            return Err(format!(
                "too small: {} < {}",
                flasher_format::units::si(disk.size_bytes),
                flasher_format::units::si(min)
            ));
        }
    }
    Ok(rank)
}

/// Choose the internal target for `board` among `disks`, never the boot medium.
///
/// The rule: drop disks that fail the board's rules (transport, controller, card
/// type, boot partitions, removable, size) and the boot medium; among the rest,
/// the most preferred transport that has any disk decides. Exactly one disk there
/// is the target, unless it is mounted/in use or read-only; two or more is
/// [`Error::Ambiguous`] — even if one of them is in use, since then we cannot be
/// sure the board's storage is the one left.
pub fn choose_target(board: &Board, disks: &[Disk], boot: Option<&BootMedium>) -> Result<Choice> {
    let expected = board.target.describe();
    let mut rejected = Vec::new();
    let mut matching: Vec<(usize, &Disk)> = Vec::new();
    let mut boot_matches = None;
    for d in disks {
        let is_boot = boot.is_some_and(|b| b.dev == d.dev);
        match (rank(board, d), is_boot) {
            (Ok(_), true) => {
                boot_matches = Some(d);
                rejected.push(Rejection {
                    disk: d.name.clone(),
                    why: "boot medium".into(),
                });
            }
            (Err(why), true) => rejected.push(Rejection {
                disk: d.name.clone(),
                why: format!("boot medium; {why}"),
            }),
            (Err(why), false) => rejected.push(Rejection {
                disk: d.name.clone(),
                why,
            }),
            (Ok(r), false) => matching.push((r, d)),
        }
    }
    let seen = || seen(disks, boot);
    let Some(best) = matching.iter().map(|(r, _)| *r).min() else {
        return Err(match boot_matches {
            Some(d) => Error::OnlyBootMedium {
                board: board.name.clone(),
                disk: d.name.clone(),
                expected,
                seen: seen(),
            },
            None => Error::NoMatch {
                board: board.name.clone(),
                expected,
                seen: seen(),
            },
        });
    };
    let preferred = board.target.transports[best];
    let tier: Vec<&Disk> = matching
        .iter()
        .filter(|(r, _)| *r == best)
        .map(|(_, d)| *d)
        .collect();
    for (_, d) in matching.iter().filter(|(r, _)| *r != best) {
        rejected.push(Rejection {
            disk: d.name.clone(),
            why: format!(
                "{preferred} is preferred over {}",
                d.transport.map(|t| t.to_string()).unwrap_or_default()
            ),
        });
    }
    if tier.len() > 1 {
        return Err(Error::Ambiguous {
            board: board.name.clone(),
            disks: tier.iter().map(|d| d.name.clone()).collect(),
            expected,
            seen: seen(),
        });
    }
    let disk = tier[0];
    if !disk.uses.is_empty() {
        return Err(Error::Mounted {
            board: board.name.clone(),
            disk: disk.name.clone(),
            uses: disk.uses.clone(),
            seen: seen(),
        });
    }
    if disk.read_only {
        return Err(Error::ReadOnly {
            board: board.name.clone(),
            disk: disk.name.clone(),
            seen: seen(),
        });
    }
    let reason = format!(
        "the only {preferred} disk matching {}'s rules: {expected}",
        board.name
    );
    Ok(Choice {
        disk: disk.clone(),
        reason,
        rejected,
    })
}
