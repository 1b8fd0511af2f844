//! Which drives on a host are safe to write a card to (`mkflasher drives`,
//! and the target check of `mkflasher write`).
//!
//! The disks come from `flasher::storage::scan` (sysfs under a root path);
//! this module only judges them. A drive is a *candidate* when it is a USB
//! disk, an SD card (built-in readers report `removable=0`, so the card type
//! counts, not the flag) or marked removable. It is *unsafe* when it holds the
//! running system (`/`, `/boot`, swap), holds the input image, is virtual
//! (loop, ram, zram, dm, md: everything the scan does not treat as a disk), is
//! read-only, or is any other non-removable disk. Devices are compared by
//! major:minor, never by name.
//!
//! The disks under a filesystem are found from its mount (docs/host-safety.md):
//! the device number mountinfo shows, and below it every `slaves/` entry
//! (device-mapper, md, recursively), a partition's whole disk and a loop
//! device's backing file; for btrfs, whose mounts show an anonymous `0:N`,
//! every member in `/sys/fs/btrfs/<uuid>/devices`; for other `0:N` mounts the
//! `/dev/...` source, ZFS pool members that udev recorded, overlay layers.
//! Where that finds no complete answer (ZFS, FUSE, an overlay whose layers are
//! not visible), the system disk is *unresolved*: every disk that is not a
//! card or stick is refused, also with `--allow-non-removable`.
//!
//! Each drive also carries its [`Identity`] as it was shown, so `mkflasher
//! write` can re-identify it right before opening it.

use boards::Transport;
use flasher::storage::{self, DevNum, Disk};
use flasher_format::io::IoContext;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, HashSet};
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
    /// Not a card, and the system lives on filesystems whose disks cannot be
    /// found (`holds`: e.g. `/ on zfs rpool/ROOT/debian`). Never written.
    SystemUnresolved { holds: Vec<String> },
    /// Not a card, and the image lies on a filesystem whose disks cannot be
    /// found (`on`: e.g. `/tank on zfs tank`). Never written.
    InputUnresolved { image: PathBuf, on: Vec<String> },
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
            Unsafe::SystemUnresolved { holds } => format!(
                "not a card, and the system disk cannot be determined ({})",
                holds.join("; ")
            ),
            Unsafe::InputUnresolved { image, on } => format!(
                "not a card, and the disk holding the image {} cannot be determined ({})",
                image.display(),
                on.join("; ")
            ),
            Unsafe::Virtual { what } => format!("virtual device ({what})"),
            Unsafe::ReadOnly => "read-only".into(),
            Unsafe::NonRemovable => "not removable".into(),
        }
    }
}

/// What identifies a drive, read from `<root>/sys/block/<name>`: recorded
/// when the drive is listed, read again right before `mkflasher write` opens
/// it. Another card in the same slot keeps the name and often the number,
/// but not the `diskseq` (Linux >= 5.15), CID, serial or size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub dev: DevNum,
    /// `diskseq`: a number the kernel never reuses until reboot, new for every
    /// disk and every media change. `None` on kernels before 5.15.
    pub diskseq: Option<u64>,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwid: Option<String>,
    /// An SD card's or eMMC's CID (unique per card).
    pub cid: Option<String>,
}

/// One difference between the identity shown and the one found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `dev`, `diskseq`, `size`, `model`, `serial`, `wwid` or `cid`.
    pub what: &'static str,
    pub before: String,
    pub after: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {}", self.what, self.before, self.after)
    }
}

impl Identity {
    /// The identity of `/sys/block/<name>` under `root`; `None` when the
    /// disk is gone (no readable `dev` or `size`).
    pub fn read(root: &Path, name: &str) -> Option<Identity> {
        let dir = under(root, "/sys/block").join(name);
        let device = dir.join("device");
        let dev = read_opt(&dir.join("dev"))?.parse().ok()?;
        let sectors: u64 = read_opt(&dir.join("size"))?.parse().ok()?;
        Some(Identity {
            dev,
            diskseq: read_opt(&dir.join("diskseq")).and_then(|s| s.parse().ok()),
            size_bytes: sectors.saturating_mul(512),
            model: read_opt(&device.join("model")).or_else(|| read_opt(&device.join("name"))),
            serial: read_opt(&device.join("serial")).or_else(|| read_opt(&dir.join("serial"))),
            wwid: read_opt(&device.join("wwid")).or_else(|| read_opt(&dir.join("wwid"))),
            cid: read_opt(&device.join("cid")),
        })
    }

    /// What differs in `now`, in a fixed order (empty: the same drive).
    pub fn changes(&self, now: &Identity) -> Vec<Change> {
        fn text(v: &Option<String>) -> String {
            v.as_ref()
                .map_or_else(|| "(none)".into(), |s| format!("'{s}'"))
        }
        let num = |v: Option<u64>| v.map_or_else(|| "(none)".into(), |n| n.to_string());
        let mut out = Vec::new();
        let mut diff = |what, before: String, after: String| {
            if before != after {
                out.push(Change {
                    what,
                    before,
                    after,
                });
            }
        };
        diff("dev", self.dev.to_string(), now.dev.to_string());
        diff("diskseq", num(self.diskseq), num(now.diskseq));
        if self.size_bytes != now.size_bytes {
            let (a, b) = (
                flasher_format::units::si(self.size_bytes),
                flasher_format::units::si(now.size_bytes),
            );
            if a == b {
                diff(
                    "size",
                    format!("{} bytes", self.size_bytes),
                    format!("{} bytes", now.size_bytes),
                );
            } else {
                diff("size", a, b);
            }
        }
        diff("model", text(&self.model), text(&now.model));
        diff("serial", text(&self.serial), text(&now.serial));
        diff("wwid", text(&self.wwid), text(&now.wwid));
        diff("cid", text(&self.cid), text(&now.cid));
        out
    }

    /// What a survey records when the disk vanished while it was surveyed:
    /// never equal to a later read, so the drive is refused.
    fn unreadable(dev: DevNum, size_bytes: u64) -> Identity {
        Identity {
            dev,
            diskseq: None,
            size_bytes,
            model: Some("(unreadable when listed)".into()),
            serial: None,
            wwid: None,
            cid: None,
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
    /// Mount points of the disk and its partitions, also through
    /// device-mapper, md and btrfs.
    pub mounted: Vec<String>,
    /// Over [`LARGE`]: probably not a card; look twice.
    pub large: bool,
    /// `None`: a candidate target.
    #[serde(rename = "unsafe")]
    pub unsafe_: Option<Unsafe>,
    /// The drive as it was listed, for the check right before the open.
    #[serde(skip)]
    pub identity: Identity,
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
    /// the device itself when the image is a block device (`st_rdev`). The
    /// path is also looked up among the mount points: a btrfs subvolume's
    /// `st_dev` is a number no mount shows.
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
        // Absolute and without symlinks, to find the mount that holds it.
        let path = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_owned());
        Ok(Context {
            input: Some((path, dev)),
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

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone)]
struct Mount {
    dev: DevNum,
    mount_point: String,
    fstype: String,
    source: String,
    options: String,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(mp)) = (f.get(2).and_then(|d| d.parse().ok()), f.get(4)) else {
            continue;
        };
        // Optional fields end at a lone "-"; fstype, source, options follow.
        let Some(sep) = f.iter().skip(6).position(|x| *x == "-").map(|p| p + 6) else {
            continue;
        };
        out.push(Mount {
            dev,
            mount_point: unescape(mp),
            fstype: f.get(sep + 1).copied().unwrap_or("").to_string(),
            source: unescape(f.get(sep + 2).copied().unwrap_or("")),
            options: f.get(sep + 3).copied().unwrap_or("").to_string(),
        });
    }
    out
}

/// Filesystems on no local disk: memory, kernel interfaces, network.
const DISKLESS: [&str; 37] = [
    "rootfs",
    "tmpfs",
    "ramfs",
    "devtmpfs",
    "proc",
    "sysfs",
    "devpts",
    "mqueue",
    "hugetlbfs",
    "cgroup",
    "cgroup2",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "efivarfs",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "nsfs",
    "rpc_pipefs",
    "selinuxfs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "virtiofs",
    "ceph",
    "afs",
    "fuse.sshfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
    "fuse.lxcfs",
];

/// The block devices under a filesystem or device, and what could not be traced.
#[derive(Debug, Default, Clone)]
struct Backing {
    devs: BTreeSet<DevNum>,
    /// `/ on zfs rpool/ROOT/debian`: mounts whose disks are not (all) known.
    unknown: Vec<String>,
}

/// The state of one walk from a mount or device down to the disks.
#[derive(Default)]
struct Walk {
    devs: HashSet<DevNum>,
    done: HashSet<usize>,
    /// Mounts being resolved (a layer that leads back to one is a cycle).
    active: Vec<usize>,
    /// Follow a loop device to the filesystem of its backing file.
    loops: bool,
}

/// sysfs and mountinfo under a root, read once per survey.
struct Sys<'a> {
    root: &'a Path,
    names: HashMap<String, DevNum>,
    by_dev: HashMap<DevNum, String>,
    mounts: Vec<Mount>,
}

impl<'a> Sys<'a> {
    fn read(root: &'a Path) -> Result<Sys<'a>> {
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
        let names = block_names(root);
        let by_dev = names.iter().map(|(n, d)| (*d, n.clone())).collect();
        Ok(Sys {
            root,
            names,
            by_dev,
            mounts: parse_mountinfo(&text),
        })
    }

    /// `dev`, every device below it (`slaves/`, recursively), a partition's
    /// whole disk and, with `walk.loops`, a loop device's backing file's disks.
    fn block(&self, dev: DevNum, walk: &mut Walk, out: &mut Backing) {
        if !walk.devs.insert(dev) {
            return;
        }
        out.devs.insert(dev);
        let Some(name) = self.by_dev.get(&dev) else {
            return;
        };
        let dir = under(self.root, "/sys/class/block").join(name);
        for e in std::fs::read_dir(dir.join("slaves"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let lower = self
                .names
                .get(e.file_name().to_string_lossy().as_ref())
                .copied()
                .or_else(|| read_opt(&e.path().join("dev")).and_then(|s| s.parse().ok()));
            match lower {
                Some(l) => self.block(l, walk, out),
                None => out.unknown.push(format!(
                    "{name} sits on {}, which sysfs does not number",
                    e.file_name().to_string_lossy()
                )),
            }
        }
        if dir.join("partition").exists() {
            let disk = std::fs::canonicalize(&dir)
                .ok()
                .and_then(|d| read_opt(&d.parent()?.join("dev")))
                .and_then(|s| s.parse().ok());
            if let Some(disk) = disk {
                self.block(disk, walk, out);
            }
        }
        if walk.loops {
            if let Some(file) = read_opt(&dir.join("loop/backing_file")) {
                let file = file.trim_end_matches(" (deleted)").to_string();
                self.path(&file, &format!("{name}'s backing file"), true, walk, out);
            }
        }
    }

    /// The disks under the filesystem that holds the absolute path `p`: the
    /// longest mount point above it (the later one when mounted over).
    /// `foreign`: the path comes from another process (a loop device's
    /// backing file, an overlay's layers), maybe in another mount namespace;
    /// it counts only if it is visible here.
    fn path(&self, p: &str, what: &str, foreign: bool, walk: &mut Walk, out: &mut Backing) {
        if !p.starts_with('/') || (foreign && !under(self.root, p).exists()) {
            out.unknown.push(format!("{what} {p} (not visible here)"));
            return;
        }
        let holds = |mp: &str| {
            mp == "/" || p == mp || p.strip_prefix(mp).is_some_and(|rest| rest.starts_with('/'))
        };
        let best = self
            .mounts
            .iter()
            .enumerate()
            .filter(|(_, m)| holds(&m.mount_point))
            .max_by_key(|(i, m)| (m.mount_point.len(), *i))
            .map(|(i, _)| i);
        match best {
            Some(i) => self.mount(i, walk, out),
            None => out.unknown.push(format!("{what} {p} (on no mount)")),
        }
    }

    /// The disks under mount `i`.
    fn mount(&self, i: usize, walk: &mut Walk, out: &mut Backing) {
        let m = &self.mounts[i];
        let desc = || format!("{} on {} {}", m.mount_point, m.fstype, m.source);
        if walk.active.contains(&i) {
            out.unknown
                .push(format!("{} (its layers lead back to it)", desc()));
            return;
        }
        if !walk.done.insert(i) {
            return;
        }
        walk.active.push(i);
        if m.dev.major != 0 {
            self.block(m.dev, walk, out);
        } else if DISKLESS.contains(&m.fstype.as_str()) {
            // Memory, kernel or network: no local disk.
        } else if m.fstype == "btrfs" {
            self.btrfs(m, walk, out);
        } else if m.fstype == "overlay" {
            self.overlay(m, walk, out);
        } else {
            // FUSE on a disk (ntfs-3g, exfat-fuse) or a multi-device
            // filesystem names its devices as the source.
            let sources: Vec<Option<DevNum>> = m
                .source
                .split(':')
                .filter(|s| s.starts_with("/dev/"))
                .map(|s| self.source(s))
                .collect();
            if !sources.is_empty() && sources.iter().all(Option::is_some) {
                for d in sources.into_iter().flatten() {
                    self.block(d, walk, out);
                }
            } else {
                if m.fstype == "zfs" {
                    // Members udev recorded are the system's; others may exist.
                    let pool = m.source.split('/').next().unwrap_or_default();
                    for d in self.zfs_members(pool) {
                        self.block(d, walk, out);
                    }
                }
                out.unknown.push(desc());
            }
        }
        walk.active.pop();
    }

    /// btrfs: every member of the filesystem the source names, from
    /// `/sys/fs/btrfs/<uuid>/devices`. When the source names no listed
    /// member (`/dev/root`), every mounted btrfs filesystem's members: only
    /// mounted filesystems are listed there, so this one is among them.
    fn btrfs(&self, m: &Mount, walk: &mut Walk, out: &mut Backing) {
        let sources: Vec<DevNum> = m.source.split(':').filter_map(|s| self.source(s)).collect();
        let all = self.btrfs_filesystems();
        let hits: Vec<&BTreeSet<DevNum>> = all
            .iter()
            .filter(|fs| sources.iter().any(|s| fs.contains(s)))
            .collect();
        let chosen: Vec<&BTreeSet<DevNum>> = if hits.is_empty() {
            all.iter().collect()
        } else {
            hits
        };
        if chosen.is_empty() {
            out.unknown.push(format!(
                "{} on btrfs {} (no members under /sys/fs/btrfs)",
                m.mount_point, m.source
            ));
        }
        for d in chosen.into_iter().flatten().chain(&sources) {
            self.block(*d, walk, out);
        }
    }

    /// The members of each mounted btrfs filesystem.
    fn btrfs_filesystems(&self) -> Vec<BTreeSet<DevNum>> {
        let mut out = Vec::new();
        let dir = under(self.root, "/sys/fs/btrfs");
        for fs in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let Ok(members) = std::fs::read_dir(fs.path().join("devices")) else {
                continue;
            };
            let set: BTreeSet<DevNum> = members
                .flatten()
                .filter_map(|e| {
                    read_opt(&e.path().join("dev"))
                        .and_then(|s| s.parse().ok())
                        .or_else(|| {
                            self.names
                                .get(e.file_name().to_string_lossy().as_ref())
                                .copied()
                        })
                })
                .collect();
            if !set.is_empty() {
                out.push(set);
            }
        }
        out
    }

    /// overlay: the filesystems of its layers (`lowerdir`, `upperdir`, ...),
    /// when they are visible from here (in a container they are not).
    fn overlay(&self, m: &Mount, walk: &mut Walk, out: &mut Backing) {
        let mut layers = Vec::new();
        for opt in m.options.split(',') {
            let Some((key, value)) = opt.split_once('=') else {
                continue;
            };
            match key {
                "lowerdir" | "lowerdir+" | "datadir+" => {
                    layers.extend(value.split(':').filter(|s| !s.is_empty()))
                }
                "upperdir" | "workdir" => layers.push(value),
                _ => {}
            }
        }
        if layers.is_empty() {
            out.unknown
                .push(format!("{} on overlay (layers not shown)", m.mount_point));
        }
        for l in layers {
            let what = format!("{} on overlay, layer", m.mount_point);
            self.path(&unescape(l), &what, true, walk, out);
        }
    }

    /// Partitions that udev recorded as members of ZFS pool `pool`
    /// (`/run/udev/data/b<major>:<minor>`: `ID_FS_TYPE=zfs_member`, `ID_FS_LABEL`).
    fn zfs_members(&self, pool: &str) -> Vec<DevNum> {
        let dir = under(self.root, "/run/udev/data");
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(dev) = name
                .strip_prefix('b')
                .and_then(|d| d.parse::<DevNum>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let has = |kv: &str| text.lines().any(|l| l.strip_prefix("E:") == Some(kv));
            if has("ID_FS_TYPE=zfs_member") && has(&format!("ID_FS_LABEL={pool}")) {
                out.push(dev);
            }
        }
        out
    }

    /// The block device a mount source or swap entry (`/dev/...`) names:
    /// the node's number on the live system, else the kernel name, a
    /// `/dev/mapper` name or a symlink (`/dev/disk/by-uuid/...`) under the root.
    fn source(&self, src: &str) -> Option<DevNum> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let rest = src.strip_prefix("/dev/")?;
        let node = under(self.root, src);
        if let Ok(m) = std::fs::metadata(&node) {
            if m.file_type().is_block_device() {
                return Some(DevNum {
                    major: libc::major(m.rdev()),
                    minor: libc::minor(m.rdev()),
                });
            }
        }
        if let Some(d) = self.names.get(rest) {
            return Some(*d);
        }
        if let Some(dm) = rest.strip_prefix("mapper/") {
            let class = under(self.root, "/sys/class/block");
            if let Some(d) = self.names.iter().find_map(|(n, d)| {
                (read_opt(&class.join(n).join("dm/name")).as_deref() == Some(dm)).then_some(*d)
            }) {
                return Some(d);
            }
        }
        let mut cur = node;
        for _ in 0..8 {
            let Ok(t) = std::fs::read_link(&cur) else {
                break;
            };
            cur = if t.is_absolute() {
                under(self.root, &t.to_string_lossy())
            } else {
                cur.parent()?.join(t)
            };
            let name = cur.file_name()?.to_string_lossy().into_owned();
            if let Some(d) = self.names.get(&name) {
                return Some(*d);
            }
        }
        None
    }

    /// What mount `i` rests on, followed through loop devices.
    fn mount_backing(&self, i: usize, loops: bool) -> Backing {
        let mut out = Backing::default();
        let mut walk = Walk {
            loops,
            ..Default::default()
        };
        self.mount(i, &mut walk, &mut out);
        out
    }
}

/// What holds `/`, `/boot` (and below) and swap, each with its name.
fn system_backing(sys: &Sys) -> Vec<(Backing, String)> {
    let mut out = Vec::new();
    for (i, m) in sys.mounts.iter().enumerate() {
        let mp = m.mount_point.as_str();
        if mp == "/" || mp == "/boot" || mp.starts_with("/boot/") {
            out.push((sys.mount_backing(i, true), mp.to_string()));
        }
    }
    let swaps = std::fs::read_to_string(under(sys.root, "/proc/swaps")).unwrap_or_default();
    for l in swaps.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        let Some(name) = f.first().map(|n| unescape(n)) else {
            continue;
        };
        let mut b = Backing::default();
        let mut walk = Walk {
            loops: true,
            ..Default::default()
        };
        match sys.source(&name) {
            Some(d) => sys.block(d, &mut walk, &mut b),
            // A swap file: the disk of the filesystem it lies on.
            None if f.get(1) == Some(&"file") => {
                sys.path(&name, "swap file", false, &mut walk, &mut b)
            }
            None => b.unknown.push(format!("swap on {name}")),
        }
        out.push((b, "swap".into()));
    }
    out
}

/// What holds the image: its device (and below), or the filesystem that
/// mountinfo shows with its `0:N` number, or the mount above its path.
fn input_backing(sys: &Sys, image: &Path, dev: DevNum) -> Backing {
    let mut out = Backing::default();
    let mut walk = Walk {
        loops: true,
        ..Default::default()
    };
    if dev.major != 0 {
        sys.block(dev, &mut walk, &mut out);
        return out;
    }
    let same: Vec<usize> = (0..sys.mounts.len())
        .filter(|i| sys.mounts[*i].dev == dev)
        .collect();
    if same.is_empty() {
        sys.path(
            &image.to_string_lossy(),
            "the image",
            false,
            &mut walk,
            &mut out,
        );
    }
    for i in same {
        sys.mount(i, &mut walk, &mut out);
    }
    out
}

/// Why the system disk cannot be determined under `root` (`/ on zfs
/// rpool/ROOT/debian`, ...), empty when every system mount was traced to its
/// disks (or lies on none). While it is not empty, [`survey`] refuses every
/// drive that is not a card ([`Unsafe::SystemUnresolved`]).
pub fn system_unresolved(root: &Path) -> Result<Vec<String>> {
    let sys = Sys::read(root)?;
    Ok(unknowns(&system_backing(&sys)))
}

fn unknowns(system: &[(Backing, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in system.iter().flat_map(|(b, _)| &b.unknown) {
        if !out.contains(u) {
            out.push(u.clone());
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
    let sys = Sys::read(root)?;
    let system = system_backing(&sys);
    let input = ctx
        .input
        .as_ref()
        .map(|(p, d)| (p.clone(), input_backing(&sys, p, *d)));
    // Mount points per device below them (not through loop files: a loop
    // mount is shown on the loop device, not on the disk of its file).
    let mounted: Vec<(BTreeSet<DevNum>, String)> = (0..sys.mounts.len())
        .map(|i| {
            (
                sys.mount_backing(i, false).devs,
                sys.mounts[i].mount_point.clone(),
            )
        })
        .collect();
    let mounted_on = |devs: &[DevNum]| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for (set, mp) in &mounted {
            if devs.iter().any(|x| set.contains(x)) && !v.contains(mp) {
                v.push(mp.clone());
            }
        }
        v
    };
    // Untraceable system or image filesystems: every non-card disk refused.
    let system_unknown = unknowns(&system);
    let unresolved = || -> Option<Unsafe> {
        if !system_unknown.is_empty() {
            return Some(Unsafe::SystemUnresolved {
                holds: system_unknown.clone(),
            });
        }
        input
            .as_ref()
            .filter(|(_, b)| !b.unknown.is_empty())
            .map(|(image, b)| Unsafe::InputUnresolved {
                image: image.clone(),
                on: b.unknown.clone(),
            })
    };
    // The verdicts that no override lifts: the system, the input image.
    let never = |devs: &[DevNum]| -> Option<Unsafe> {
        let mut holds: Vec<String> = Vec::new();
        for (b, what) in &system {
            if devs.iter().any(|x| b.devs.contains(x)) && !holds.contains(what) {
                holds.push(what.clone());
            }
        }
        if !holds.is_empty() {
            return Some(Unsafe::System { holds });
        }
        input
            .as_ref()
            .filter(|(_, b)| devs.iter().any(|x| b.devs.contains(x)))
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
            Some(unresolved().unwrap_or(Unsafe::NonRemovable))
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
            mounted: mounted_on(&devs),
            large: d.size_bytes > LARGE,
            unsafe_: verdict,
            identity: Identity::read(root, &d.name)
                .unwrap_or_else(|| Identity::unreadable(d.dev, d.size_bytes)),
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
        // dm and md may sit on the untraceable system's disks; loop, ram,
        // zram and the rest hold no disk of their own.
        let stacked = name.starts_with("dm-") || name.starts_with("md");
        let verdict = never(&[dev])
            .or_else(|| stacked.then(unresolved).flatten())
            .unwrap_or(Unsafe::Virtual {
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
            mounted: mounted_on(&[dev]),
            large: sectors * 512 > LARGE,
            unsafe_: Some(verdict),
            identity: Identity::read(root, &name)
                .unwrap_or_else(|| Identity::unreadable(dev, sectors * 512)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_after_the_optional_ones_and_escapes() {
        let m = parse_mountinfo(
            "36 35 0:41 /@ /media/me/My\\040Card rw,nosuid shared:7 master:1 - btrfs /dev/sdb1 rw,subvol=/@\n\
             bad line\n\
             37 1 8:2 / / rw - ext4 /dev/sda2 rw\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, "/media/me/My Card");
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("btrfs", "/dev/sdb1")
        );
        assert_eq!(m[0].options, "rw,subvol=/@");
        assert_eq!(
            m[0].dev,
            DevNum {
                major: 0,
                minor: 41
            }
        );
        assert_eq!(m[1].dev, DevNum { major: 8, minor: 2 });
        assert_eq!(unescape("a\\011b\\134c\\0"), "a\tb\\c\\0");
    }

    #[test]
    fn identity_changes_name_each_field_in_order() {
        let a = Identity {
            dev: DevNum {
                major: 8,
                minor: 16,
            },
            diskseq: Some(12),
            size_bytes: 15_931_539_456,
            model: Some("SD Card".into()),
            serial: None,
            wwid: None,
            cid: Some("035344534331364780".into()),
        };
        assert!(a.changes(&a.clone()).is_empty());
        let b = Identity {
            diskseq: None,
            size_bytes: 15_931_539_456 + 512,
            serial: Some("X1".into()),
            ..a.clone()
        };
        let got: Vec<String> = a.changes(&b).iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            [
                "diskseq 12 -> (none)",
                "size 15931539456 bytes -> 15931539968 bytes",
                "serial (none) -> 'X1'",
            ]
        );
    }
}
