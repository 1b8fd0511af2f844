//! Which drives on a host are safe to write a card to (`mkflasher drives`,
//! and the target check of `mkflasher write`).
//!
//! The disks come from `flasher::storage::scan` (sysfs under a root path);
//! this module only judges them. A drive is a *candidate* when it is a USB
//! disk, an SD card (built-in readers report `removable=0`, so the card type
//! counts, not the flag) or marked removable. It is *unsafe* when it holds the
//! running system (`/`, `/boot`, swap, also through device-mapper or md), holds
//! the input image, is virtual (loop, ram, zram, dm, md: everything the scan
//! does not treat as a disk), is read-only, or is any other non-removable disk.
//! Devices are compared by major:minor, never by name.

use boards::Transport;
use flasher::storage::{self, DevNum, Disk};
use flasher_format::io::IoContext;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Disks larger than this get a warning: few cards or sticks are, many
/// internal and backup disks are (128 GB, as labelled).
pub const LARGE: u64 = 128_000_000_000;

/// Errors while surveying drives are storage errors (reading sysfs, /proc).
pub type Error = storage::Error;
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a drive is not offered as a target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unsafe {
    /// Holds `/`, `/boot` or swap. Never written.
    System { holds: Vec<String> },
    /// Holds the image being written. Never written.
    Input { image: PathBuf },
    /// loop, ram, zram, dm, md, ...: not a physical drive.
    Virtual { what: String },
    /// The kernel reports it read-only.
    ReadOnly,
    /// An internal disk (SATA, NVMe, eMMC, ...).
    NonRemovable,
}

impl Unsafe {
    /// Whether `--allow-non-removable` may override it.
    pub fn overridable(&self) -> bool {
        matches!(self, Unsafe::Virtual { .. } | Unsafe::NonRemovable)
    }

    /// For people: "holds / (nvme0n1p2)".
    pub fn describe(&self) -> String {
        match self {
            Unsafe::System { holds } => format!("system disk: {}", holds.join(", ")),
            Unsafe::Input { image } => format!("holds the input image {}", image.display()),
            Unsafe::Virtual { what } => format!("virtual device ({what})"),
            Unsafe::ReadOnly => "read-only".into(),
            Unsafe::NonRemovable => "not removable".into(),
        }
    }
}

/// One drive and the verdict on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Drive {
    /// Kernel name, e.g. `sdb`.
    pub name: String,
    /// `<root>/dev/<name>`.
    pub path: PathBuf,
    pub dev: DevNum,
    /// `USB`, `SD`, `eMMC`, `NVMe`, `SATA`, `loop`, ...
    pub kind: String,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub size_bytes: u64,
    pub removable: bool,
    /// Mount points of the disk and its partitions.
    pub mounted: Vec<String>,
    /// Over [`LARGE`]: probably not a card; look twice.
    pub large: bool,
    /// `None`: a candidate target.
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<Unsafe>,
}

impl Drive {
    pub fn is_candidate(&self) -> bool {
        self.unsafe_.is_none()
    }

    /// `USB, SanDisk Ultra, serial 4C53..., 32.0 GB`.
    pub fn describe(&self) -> String {
        let mut s = self.kind.clone();
        if let Some(m) = &self.model {
            s.push_str(", ");
            s.push_str(m);
        }
        if let Some(n) = &self.serial {
            s.push_str(", serial ");
            s.push_str(n);
        }
        s.push_str(", ");
        s.push_str(&flasher_format::units::si(self.size_bytes));
        s
    }
}

/// What the survey needs to know besides sysfs.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The input image and the device its filesystem lives on (`st_dev`), or
    /// the device itself when the image is a block device (`st_rdev`).
    pub input: Option<(PathBuf, DevNum)>,
}

impl Context {
    /// The context for writing `image`: which device holds it.
    pub fn for_image(image: &Path) -> Result<Context> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let meta = std::fs::metadata(image).with_context(|| format!("stat {}", image.display()))?;
        let raw = if meta.file_type().is_block_device() {
            meta.rdev()
        } else {
            meta.dev()
        };
        let dev = DevNum {
            major: libc::major(raw),
            minor: libc::minor(raw),
        };
        Ok(Context {
            input: Some((image.to_owned(), dev)),
        })
    }
}

fn under(root: &Path, abs: &str) -> PathBuf {
    root.join(abs.trim_start_matches('/'))
}

fn read_opt(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Every block device name under `<root>/sys/class/block` with its number.
fn block_names(root: &Path) -> HashMap<String, DevNum> {
    let mut out = HashMap::new();
    let dir = under(root, "/sys/class/block");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(dev) = read_opt(&e.path().join("dev")).and_then(|s| s.parse().ok()) {
            out.insert(name, dev);
        }
    }
    out
}

/// `dev` and every device below it through device-mapper or md
/// (`slaves/`), so a root on LVM or LUKS marks the disk under it.
fn with_lower(root: &Path, names: &HashMap<String, DevNum>, dev: DevNum) -> BTreeSet<DevNum> {
    let by_dev: HashMap<DevNum, &str> = names.iter().map(|(n, d)| (*d, n.as_str())).collect();
    let mut out = BTreeSet::new();
    let mut todo = vec![dev];
    while let Some(d) = todo.pop() {
        if !out.insert(d) {
            continue;
        }
        let Some(name) = by_dev.get(&d) else { continue };
        let slaves = under(root, "/sys/class/block").join(name).join("slaves");
        for e in std::fs::read_dir(slaves).into_iter().flatten().flatten() {
            if let Some(lower) = names.get(e.file_name().to_string_lossy().as_ref()) {
                todo.push(*lower);
            }
        }
    }
    out
}

/// Devices holding `/`, `/boot` (and below) or swap, each with what it holds.
fn system_devices(
    root: &Path,
    names: &HashMap<String, DevNum>,
) -> Result<Vec<(BTreeSet<DevNum>, String)>> {
    let path = under(root, "/proc/self/mountinfo");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && root != Path::new("/") => {
            String::new()
        }
        // On the live system, not knowing the system disk is not safe.
        Err(source) => {
            return Err(Error::Io(flasher_format::io::IoError::new(
                format!("read {} (is /proc mounted?)", path.display()),
                source,
            )))
        }
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(mp)) = (f.get(2), f.get(4)) else {
            continue;
        };
        if *mp != "/" && *mp != "/boot" && !mp.starts_with("/boot/") {
            continue;
        }
        if let Ok(dev) = dev.parse::<DevNum>() {
            out.push((with_lower(root, names, dev), (*mp).to_string()));
        }
    }
    let swaps = std::fs::read_to_string(under(root, "/proc/swaps")).unwrap_or_default();
    for l in swaps.lines().skip(1) {
        let Some(dev_name) = l
            .split_whitespace()
            .next()
            .and_then(|p| p.strip_prefix("/dev/"))
        else {
            continue;
        };
        if let Some(dev) = names.get(dev_name) {
            out.push((with_lower(root, names, *dev), "swap".into()));
        }
    }
    Ok(out)
}

/// Mount points per device number.
fn mounts(root: &Path) -> HashMap<DevNum, Vec<String>> {
    let mut out: HashMap<DevNum, Vec<String>> = HashMap::new();
    let text = std::fs::read_to_string(under(root, "/proc/self/mountinfo")).unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(dev), Some(mp)) = (f.get(2).and_then(|d| d.parse().ok()), f.get(4)) {
            out.entry(dev).or_default().push((*mp).to_string());
        }
    }
    out
}

/// Whether a disk is meant to be written as a card: USB, SD (built-in
/// readers say `removable=0`) or removable.
fn is_card_like(d: &Disk) -> bool {
    d.transport == Some(Transport::Usb)
        || (d.transport == Some(Transport::Mmc) && d.mmc_type.as_deref() == Some("SD"))
        || d.removable
}

/// Survey every drive under `root`: candidates and unsafe ones, sorted by name.
/// Empty drives (size 0: a reader without a card, an unattached loop) are left out.
pub fn survey(root: &Path, ctx: &Context) -> Result<Vec<Drive>> {
    let disks = storage::scan(root)?;
    let names = block_names(root);
    let system = system_devices(root, &names)?;
    let mounted = mounts(root);
    let input = ctx
        .input
        .as_ref()
        .map(|(p, d)| (p.clone(), with_lower(root, &names, *d)));
    // The verdicts that no override lifts: the system, the input image.
    let never = |devs: &[DevNum]| -> Option<Unsafe> {
        let holds: Vec<String> = system
            .iter()
            .filter(|(set, _)| devs.iter().any(|x| set.contains(x)))
            .map(|(_, what)| what.clone())
            .collect();
        if !holds.is_empty() {
            return Some(Unsafe::System { holds });
        }
        input
            .as_ref()
            .filter(|(_, set)| devs.iter().any(|x| set.contains(x)))
            .map(|(image, _)| Unsafe::Input {
                image: image.clone(),
            })
    };
    let mut out = Vec::new();
    for d in &disks {
        if d.size_bytes == 0 {
            continue;
        }
        let devs: Vec<DevNum> = std::iter::once(d.dev)
            .chain(d.partitions.iter().map(|p| p.dev))
            .collect();
        let verdict = if let Some(v) = never(&devs) {
            Some(v)
        } else if d.read_only {
            Some(Unsafe::ReadOnly)
        } else if !is_card_like(d) {
            Some(Unsafe::NonRemovable)
        } else {
            None
        };
        out.push(Drive {
            name: d.name.clone(),
            path: d.dev_path.clone(),
            dev: d.dev,
            kind: d.kind(),
            model: d.model.clone(),
            serial: d.serial.clone(),
            size_bytes: d.size_bytes,
            removable: d.removable,
            mounted: devs
                .iter()
                .flat_map(|x| mounted.get(x).into_iter().flatten().cloned())
                .collect(),
            large: d.size_bytes > LARGE,
            unsafe_: verdict,
        });
    }
    // Everything else in /sys/block is a device the scan does not treat as a
    // disk: loop, ram, zram, dm, md, ...
    let known: BTreeSet<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    let sys_block = under(root, "/sys/block");
    let mut others: Vec<String> = std::fs::read_dir(&sys_block)
        .with_context(|| format!("list {}", sys_block.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !known.contains(n.as_str()))
        .collect();
    others.sort_unstable();
    for name in others {
        let dir = sys_block.join(&name);
        let (Some(dev), Some(sectors)) = (
            read_opt(&dir.join("dev")).and_then(|s| s.parse::<DevNum>().ok()),
            read_opt(&dir.join("size")).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if sectors == 0 {
            continue;
        }
        let what = virtual_kind(&name);
        let model = read_opt(&dir.join("loop/backing_file"))
            .or_else(|| read_opt(&dir.join("dm/name")).map(|n| format!("dm {n}")));
        let verdict = never(&[dev]).unwrap_or(Unsafe::Virtual {
            what: what.to_string(),
        });
        out.push(Drive {
            path: under(root, &format!("/dev/{name}")),
            dev,
            kind: what.to_string(),
            model,
            serial: None,
            size_bytes: sectors * 512,
            removable: false,
            mounted: mounted.get(&dev).cloned().unwrap_or_default(),
            large: sectors * 512 > LARGE,
            unsafe_: Some(verdict),
            name,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// `loop`, `ram`, `zram`, `dm`, `md`, or `virtual` for other names.
fn virtual_kind(name: &str) -> &'static str {
    const KINDS: [(&str, &str); 7] = [
        ("loop", "loop"),
        ("zram", "zram"),
        ("ram", "ram"),
        ("dm-", "device-mapper"),
        ("md", "md RAID"),
        ("nbd", "network block device"),
        ("sr", "optical"),
    ];
    KINDS
        .iter()
        .find(|(p, _)| name.starts_with(p))
        .map(|(_, k)| *k)
        .unwrap_or("virtual")
}
