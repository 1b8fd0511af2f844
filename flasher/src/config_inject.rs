//! Configuration injection: after the image is written and verified, copy the
//! operator's configuration from the card's `flash-boot` FAT partition onto the
//! target's boot FAT partition, entirely in user space with the `fatfs` crate (no vfat
//! module, no mount: the init binary is the whole userspace).
//!
//! What is copied (balenaOS boot-partition layout):
//! * `config.json`, with its top-level `installer` section removed: that section
//!   configures the flasher itself and must not follow the OS onto the device;
//! * every file in `system-connections/` (NetworkManager connection profiles), into
//!   `system-connections/` on the target, created if missing; same-named files on the
//!   target are replaced, others are kept;
//! * `hostname`, if present.
//!
//! The card side is opened through a wrapper that refuses every write, so the card stays
//! pristine (ARCHITECTURE rule 10) even if the FAT library ever decided to touch it.
//!
//! [`PartitionSlice`] lets callers hand one partition of a whole device (or image file)
//! to this module, or to anything else that wants a `Read + Write + Seek` view of it.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// The largest `config.json` we parse. Real ones are a few KiB; the bound keeps a
/// corrupt directory entry from making PID 1 allocate gigabytes.
pub const MAX_CONFIG_JSON: u64 = 1 << 20;
/// Top-level key removed from `config.json` on the way to the target.
pub const INSTALLER_KEY: &str = "installer";
/// Directory of NetworkManager connection files on both boot partitions.
pub const CONNECTIONS_DIR: &str = "system-connections";

/// Which FAT a problem is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The card's `flash-boot` partition.
    Card,
    /// The target's boot partition.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Card => "the card's flash-boot partition",
            Side::Target => "the target's boot partition",
        })
    }
}

/// Errors from `config_inject`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{side} is not a FAT filesystem ({source}); check the image's partition layout")]
    NotFat {
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("config.json on the card is not valid JSON ({source}); rewrite it with `mkflasher configure`")]
    ConfigJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json on the card is a JSON {found}, expected an object; rewrite it with `mkflasher configure`")]
    ConfigNotObject { found: &'static str },
    #[error("{path} on the card is {size} bytes, over the {max}-byte limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigReport {
    /// Each file written on the target, with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// `config.json` had an `installer` section, which was dropped.
    pub installer_removed: bool,
    /// Card entries not copied, with the reason (e.g. a sub-directory).
    pub skipped: Vec<String>,
}

impl ConfigReport {
    pub fn bytes_written(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }
}

/// Copy configuration from `card_boot` (the card's `flash-boot` FAT) to `target_boot`
/// (the target's boot FAT). Each argument is a whole FAT filesystem, e.g. a
/// [`PartitionSlice`] of a device; pass `&mut x` to keep using it afterwards. The card
/// is never written.
pub fn copy_config<S: Read + Write + Seek, T: Read + Write + Seek>(
    card_boot: S,
    target_boot: T,
) -> Result<ConfigReport> {
    let mut target_boot = target_boot;
    let card = open_fat(ReadOnly(card_boot), Side::Card)?;
    let target = open_fat(&mut target_boot, Side::Target)?;
    let mut created_dir = false;
    let (src, dst) = (card.root_dir(), target.root_dir());
    let mut report = ConfigReport::default();

    if let Some(raw) = read_small(&src, "config.json", MAX_CONFIG_JSON)? {
        let mut json: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|source| Error::ConfigJson { source })?;
        let found = json_kind(&json);
        let obj = json
            .as_object_mut()
            .ok_or(Error::ConfigNotObject { found })?;
        report.installer_removed = obj.remove(INSTALLER_KEY).is_some();
        let out = serde_json::to_vec(&json).map_err(|source| Error::ConfigJson { source })?;
        write_file(&dst, "config.json", &mut out.as_slice(), &mut report)?;
    }

    match src.open_dir(CONNECTIONS_DIR) {
        Ok(conns) => {
            let dst_dir = match dst.open_dir(CONNECTIONS_DIR) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    created_dir = true;
                    dst.create_dir(CONNECTIONS_DIR).map_err(io_ctx(format!(
                        "create {CONNECTIONS_DIR}/ on {}",
                        Side::Target
                    )))?
                }
                Err(e) => {
                    return Err(io_ctx(format!(
                        "open {CONNECTIONS_DIR}/ on {}",
                        Side::Target
                    ))(e))
                }
            };
            for entry in conns.iter() {
                let entry =
                    entry.map_err(io_ctx(format!("list {CONNECTIONS_DIR}/ on {}", Side::Card)))?;
                let name = entry.file_name();
                if name == "." || name == ".." {
                    continue;
                }
                let path = format!("{CONNECTIONS_DIR}/{name}");
                if !entry.is_file() {
                    report.skipped.push(format!("{path}: not a regular file"));
                    continue;
                }
                let mut file = entry.to_file();
                write_file(&dst_dir, &name, &mut file, &mut report)?;
                // Report the path from the boot partition's root.
                if let Some(last) = report.files.last_mut() {
                    last.0 = path;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_ctx(format!("open {CONNECTIONS_DIR}/ on {}", Side::Card))(e)),
    }

    match src.open_file("hostname") {
        Ok(mut f) => write_file(&dst, "hostname", &mut f, &mut report)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_ctx(format!("open hostname on {}", Side::Card))(e)),
    }

    drop((src, dst));
    target
        .unmount()
        .map_err(io_ctx(format!("flush {}", Side::Target)))?;
    if created_dir {
        repair_fatfs_dot_entries(&mut target_boot)
            .map_err(io_ctx(format!("repair new directory on {}", Side::Target)))?;
    }
    target_boot
        .flush()
        .map_err(io_ctx(format!("flush {}", Side::Target)))?;
    Ok(report)
}

fn open_fat<D: Read + Write + Seek>(mut disk: D, side: Side) -> Result<fatfs::FileSystem<D>> {
    // fatfs expects the stream at its start.
    disk.seek(SeekFrom::Start(0))
        .map_err(|source| Error::NotFat { side, source })?;
    fatfs::FileSystem::new(disk, fatfs::FsOptions::new())
        .map_err(|source| Error::NotFat { side, source })
}

/// Read a file from the card's root if it exists, refusing anything over `max` bytes.
fn read_small<D: Read + Write + Seek>(
    dir: &fatfs::Dir<'_, D>,
    name: &str,
    max: u64,
) -> Result<Option<Vec<u8>>> {
    let file = match dir.open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_ctx(format!("open {name} on {}", Side::Card))(e)),
    };
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io_ctx(format!("read {name} on {}", Side::Card)))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge {
            path: name.into(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(Some(buf))
}

/// Create or replace `name` in `dir` on the target with the bytes of `src`.
fn write_file<D: Read + Write + Seek>(
    dir: &fatfs::Dir<'_, D>,
    name: &str,
    src: &mut dyn Read,
    report: &mut ConfigReport,
) -> Result<()> {
    let ctx = || format!("write {name} to {}", Side::Target);
    let mut f = dir.create_file(name).map_err(io_ctx(ctx()))?;
    // create_file opens an existing file without truncating: cut it first so a shorter
    // new file leaves no old tail behind.
    f.truncate().map_err(io_ctx(ctx()))?;
    let n = io::copy(src, &mut f).map_err(io_ctx(ctx()))?;
    f.flush().map_err(io_ctx(ctx()))?;
    report.files.push((name.to_string(), n));
    Ok(())
}

fn io_ctx(context: String) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "boolean",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
}

/// Repair directories created by `fatfs` 0.3, returning how many were fixed.
///
/// `fatfs` 0.3.6 (the newest release) writes a long-file-name entry in front of the `.`
/// and `..` entries of every directory it creates, so `.` is not in slot 0 and `..` not
/// in slot 1. Readers that look names up cope, but `fsck.vfat` reports the directory
/// as damaged (and would "repair" it). This walks the whole directory tree and, in any
/// directory that starts `LFN, ".", LFN, ".."`, moves `.` and `..` to slots 0 and 1 and
/// marks the two freed slots deleted. On FAT32 it also sets `..` of directories in the
/// root to cluster 0 as the specification requires (fatfs writes the root's cluster).
/// Nothing else is touched. Anyone creating FAT directories with `fatfs` (the card
/// builder too) should call this after unmounting.
pub fn repair_fatfs_dot_entries<D: Read + Write + Seek>(dev: &mut D) -> io::Result<usize> {
    let geo = FatGeometry::read(dev)?;
    let fat = geo.read_fat(dev)?;
    let mut fixed = 0;
    let mut seen = std::collections::HashSet::new();
    // Iterative DFS over (directory's byte regions, where it sits).
    let mut stack = vec![(geo.root_regions(&fat)?, Parent::None)];
    while let Some((regions, parent)) = stack.pop() {
        let mut data = Vec::new();
        for &(off, len) in &regions {
            let mut buf = vec![0u8; len as usize];
            dev.seek(SeekFrom::Start(off))?;
            dev.read_exact(&mut buf)?;
            data.extend_from_slice(&buf);
        }
        let n = data.len() / 32;
        if n >= 4
            && dir_slot(&data, 0)[11] == 0x0F
            && &dir_slot(&data, 1)[..11] == b".          "
            && dir_slot(&data, 2)[11] == 0x0F
            && &dir_slot(&data, 3)[..11] == b"..         "
        {
            let mut head = Vec::with_capacity(128);
            head.extend_from_slice(dir_slot(&data, 1));
            head.extend_from_slice(dir_slot(&data, 3));
            head.extend_from_slice(dir_slot(&data, 2));
            head.extend_from_slice(dir_slot(&data, 2));
            head[64] = 0xE5;
            head[96] = 0xE5;
            // The first four slots always lie in the directory's first cluster.
            dev.seek(SeekFrom::Start(regions[0].0))?;
            dev.write_all(&head)?;
            data[..128].copy_from_slice(&head);
            fixed += 1;
        }
        // `..` of a directory in the root must point at cluster 0, also on FAT32 where
        // the root has a real cluster (fatfs writes the root's cluster there).
        if parent == Parent::Root && geo.fat_bits == 32 && data.len() >= 64 {
            let dd = &mut data[32..64];
            let cl = u32::from(u16::from_le_bytes([dd[20], dd[21]])) << 16
                | u32::from(u16::from_le_bytes([dd[26], dd[27]]));
            if &dd[..11] == b"..         " && cl != 0 && cl == geo.root_cluster {
                dd[20..22].fill(0);
                dd[26..28].fill(0);
                dev.seek(SeekFrom::Start(regions[0].0 + 32))?;
                dev.write_all(dd)?;
                fixed += 1;
            }
        }
        for i in 0..n {
            let e = dir_slot(&data, i);
            if e[0] == 0 {
                break; // end of directory
            }
            let attr = e[11];
            if e[0] == 0xE5 || e[0] == b'.' || attr == 0x0F || attr & 0x08 != 0 || attr & 0x10 == 0
            {
                continue; // deleted, dot, LFN, volume label or not a directory
            }
            let hi = if geo.fat_bits == 32 {
                u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
            } else {
                0
            };
            let cluster = hi | u32::from(u16::from_le_bytes([e[26], e[27]]));
            // `seen` bounds the walk on a corrupt (looping) tree.
            if cluster >= 2 && seen.insert(cluster) {
                let p = if parent == Parent::None {
                    Parent::Root
                } else {
                    Parent::Other
                };
                stack.push((geo.chain_regions(&fat, cluster)?, p));
            }
        }
    }
    dev.flush()?;
    Ok(fixed)
}

/// Where a directory being walked sits: `None` is the root itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    None,
    Root,
    Other,
}

fn dir_slot(data: &[u8], i: usize) -> &[u8] {
    &data[i * 32..(i + 1) * 32]
}

/// Just enough of a FAT BPB to walk directories.
struct FatGeometry {
    cluster_bytes: u64,
    fat_offset: u64,
    fat_bytes: u64,
    root_offset: u64,
    root_bytes: u64,
    data_offset: u64,
    clusters: u32,
    fat_bits: u8,
    root_cluster: u32,
}

impl FatGeometry {
    fn read<D: Read + Seek>(dev: &mut D) -> io::Result<Self> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("FAT boot sector: {what}"),
            )
        };
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut b)?;
        let u16at = |i: usize| u64::from(u16::from_le_bytes([b[i], b[i + 1]]));
        let u32at = |i: usize| u64::from(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
        let bps = u16at(11);
        let spc = u64::from(b[13]);
        if !(512..=4096).contains(&bps)
            || !bps.is_power_of_two()
            || spc == 0
            || !spc.is_power_of_two()
        {
            return Err(bad("bad sector or cluster size"));
        }
        let reserved = u16at(14);
        let nfats = u64::from(b[16]);
        let root_entries = u16at(17);
        let total = if u16at(19) != 0 { u16at(19) } else { u32at(32) };
        let fat_sectors = if u16at(22) != 0 { u16at(22) } else { u32at(36) };
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + nfats * fat_sectors + root_sectors;
        if nfats == 0 || fat_sectors == 0 || total <= data_start {
            return Err(bad("inconsistent layout"));
        }
        let clusters = (total - data_start) / spc;
        let fat_bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        Ok(FatGeometry {
            cluster_bytes: bps * spc,
            fat_offset: reserved * bps,
            fat_bytes: fat_sectors * bps,
            root_offset: (reserved + nfats * fat_sectors) * bps,
            root_bytes: root_sectors * bps,
            data_offset: data_start * bps,
            clusters: u32::try_from(clusters).map_err(|_| bad("too many clusters"))?,
            fat_bits,
            root_cluster: u32at(44) as u32,
        })
    }

    fn read_fat<D: Read + Seek>(&self, dev: &mut D) -> io::Result<Vec<u8>> {
        // Bounded by the boot sector's FAT size (u32 sectors of <= 4 KiB); real FATs
        // for boot partitions are well under a few MiB.
        let mut fat = vec![0u8; self.fat_bytes as usize];
        dev.seek(SeekFrom::Start(self.fat_offset))?;
        dev.read_exact(&mut fat)?;
        Ok(fat)
    }

    fn next(&self, fat: &[u8], c: u32) -> Option<u32> {
        let c = c as usize;
        let v = match self.fat_bits {
            12 => {
                let i = c + c / 2;
                let w = u16::from_le_bytes([*fat.get(i)?, *fat.get(i + 1)?]);
                u32::from(if c % 2 == 0 { w & 0x0FFF } else { w >> 4 })
            }
            16 => u32::from(u16::from_le_bytes([*fat.get(2 * c)?, *fat.get(2 * c + 1)?])),
            _ => {
                u32::from_le_bytes([
                    *fat.get(4 * c)?,
                    *fat.get(4 * c + 1)?,
                    *fat.get(4 * c + 2)?,
                    *fat.get(4 * c + 3)?,
                ]) & 0x0FFF_FFFF
            }
        };
        (v >= 2 && v < self.clusters + 2).then_some(v)
    }

    /// Byte regions (offset, len) of a cluster chain, bounded against loops.
    fn chain_regions(&self, fat: &[u8], first: u32) -> io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut c = Some(first);
        while let Some(cl) = c {
            if cl < 2 || cl >= self.clusters + 2 || out.len() > self.clusters as usize {
                break;
            }
            out.push((
                self.data_offset + u64::from(cl - 2) * self.cluster_bytes,
                self.cluster_bytes,
            ));
            c = self.next(fat, cl);
        }
        if out.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("directory cluster {first} is out of range"),
            ));
        }
        Ok(out)
    }

    fn root_regions(&self, fat: &[u8]) -> io::Result<Vec<(u64, u64)>> {
        if self.fat_bits == 32 {
            self.chain_regions(fat, self.root_cluster)
        } else {
            Ok(vec![(self.root_offset, self.root_bytes)])
        }
    }
}

/// Passes reads and seeks through and refuses every write, so the card's FAT cannot be
/// modified by accident.
struct ReadOnly<S>(S);

impl<S: Read> Read for ReadOnly<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<S> Write for ReadOnly<S> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the card's flash-boot partition is never written",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<S: Seek> Seek for ReadOnly<S> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

/// A `Read + Write + Seek` window onto bytes `[offset, offset + len)` of `inner`, e.g.
/// one partition of a block device. Position 0 is `offset`; reads stop at `len`,
/// writes past `len` fail, so nothing outside the partition is ever touched.
#[derive(Debug)]
pub struct PartitionSlice<D> {
    inner: D,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<D> PartitionSlice<D> {
    pub fn new(inner: D, offset: u64, len: u64) -> Self {
        PartitionSlice {
            inner,
            offset,
            len,
            pos: 0,
        }
    }

    /// Length of the window in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte offset of the window in the inner device.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: Read + Seek> Read for PartitionSlice<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        // Seek every time: the inner device may be shared with other views.
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<D: Write + Seek> Write for PartitionSlice<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "write at byte {} is past the end of the {}-byte partition",
                    self.pos, self.len
                ),
            ));
        }
        let n = (buf.len() as u64).min(self.len - self.pos) as usize;
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
        let put = self.inner.write(&buf[..n])?;
        self.pos += put as u64;
        Ok(put)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<D> Seek for PartitionSlice<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("seek to {pos:?} is before the start of the partition"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: usize = 1 << 20;

    fn fat(size: usize) -> Cursor<Vec<u8>> {
        let mut c = Cursor::new(vec![0u8; size]);
        fatfs::format_volume(&mut c, fatfs::FormatVolumeOptions::new()).unwrap();
        c.set_position(0);
        c
    }

    /// Put files (path, contents) into a FAT image; directories are created as needed.
    fn put(dev: &mut Cursor<Vec<u8>>, files: &[(&str, &[u8])]) {
        dev.set_position(0);
        let fs = fatfs::FileSystem::new(&mut *dev, fatfs::FsOptions::new()).unwrap();
        for (path, data) in files {
            let root = fs.root_dir();
            if let Some((d, _)) = path.rsplit_once('/') {
                let mut at = String::new();
                for part in d.split('/') {
                    at = if at.is_empty() {
                        part.to_string()
                    } else {
                        format!("{at}/{part}")
                    };
                    if root.open_dir(&at).is_err() {
                        root.create_dir(&at).unwrap();
                    }
                }
            }
            let mut f = root.create_file(path).unwrap();
            f.truncate().unwrap();
            f.write_all(data).unwrap();
        }
        fs.unmount().unwrap();
        dev.set_position(0);
    }

    fn get<D: Read + Write + Seek>(dev: D, path: &str) -> Option<Vec<u8>> {
        let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file(path).ok()?;
        let mut v = vec![];
        f.read_to_end(&mut v).unwrap();
        Some(v)
    }

    fn list<D: Read + Write + Seek>(dev: D, dir: &str) -> Vec<String> {
        let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new()).unwrap();
        let mut v: Vec<String> = fs
            .root_dir()
            .open_dir(dir)
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v
    }

    const CONFIG: &str = r#"{"applicationId":1234,"deviceType":"beaglebone-black",
        "installer":{"secureboot":true,"migrate":{"force":false}},
        "persistentLogging":true,"hostname":"unit"}"#;
    const WIFI: &[u8] = b"[connection]\nid=My Home WiFi\ntype=wifi\n\n[wifi]\nssid=factory\n";

    fn card() -> Cursor<Vec<u8>> {
        let mut c = fat(8 * MIB);
        put(
            &mut c,
            &[
                ("config.json", CONFIG.as_bytes()),
                ("system-connections/My Home WiFi.nmconnection", WIFI),
                ("system-connections/eth0", b"[connection]\ntype=ethernet\n"),
                ("hostname", b"line-7-unit\n"),
                ("bzImage", &[0x4Du8; 3000]),
            ],
        );
        c
    }

    #[test]
    fn copies_config_without_installer_and_leaves_card_untouched() {
        let mut card = card();
        let card_before = card.get_ref().clone();
        let mut target = fat(16 * MIB);
        // The OS image ships its own, longer config.json and an unrelated connection.
        let long = format!("{{\"old\":\"{}\"}}", "z".repeat(5000));
        put(
            &mut target,
            &[
                ("config.json", long.as_bytes()),
                ("system-connections/keep-me", b"x"),
            ],
        );

        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(card.get_ref(), &card_before, "card FAT must not change");
        assert!(r.installer_removed);
        let mut names: Vec<&str> = r.files.iter().map(|(p, _)| p.as_str()).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "config.json",
                "hostname",
                "system-connections/My Home WiFi.nmconnection",
                "system-connections/eth0"
            ]
        );

        target.set_position(0);
        let cfg: serde_json::Value =
            serde_json::from_slice(&get(&mut target, "config.json").unwrap()).unwrap();
        let mut want: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
        want.as_object_mut().unwrap().remove("installer");
        assert_eq!(cfg, want);
        assert!(cfg.get("installer").is_none());
        target.set_position(0);
        assert_eq!(
            get(&mut target, "system-connections/My Home WiFi.nmconnection").unwrap(),
            WIFI
        );
        target.set_position(0);
        assert_eq!(get(&mut target, "hostname").unwrap(), b"line-7-unit\n");
        target.set_position(0);
        assert_eq!(
            list(&mut target, "system-connections"),
            ["My Home WiFi.nmconnection", "eth0", "keep-me"]
        );
        target.set_position(0);
        assert!(
            get(&mut target, "bzImage").is_none(),
            "only config is copied"
        );
        assert_eq!(r.bytes_written(), r.files.iter().map(|f| f.1).sum::<u64>());
    }

    #[test]
    fn card_without_config_copies_nothing_and_changes_nothing() {
        let mut card = fat(4 * MIB);
        put(&mut card, &[("bzImage", b"kernel")]);
        let mut target = fat(4 * MIB);
        let before = target.get_ref().clone();
        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(r, ConfigReport::default());
        assert_eq!(target.get_ref(), &before);
    }

    #[test]
    fn config_without_installer_is_copied_as_is() {
        let mut card = fat(4 * MIB);
        put(
            &mut card,
            &[("config.json", br#"{"a":[1,2],"b":{"installer":1}}"#)],
        );
        let mut target = fat(4 * MIB);
        let r = copy_config(&mut card, &mut target).unwrap();
        assert!(!r.installer_removed);
        target.set_position(0);
        let v: serde_json::Value =
            serde_json::from_slice(&get(&mut target, "config.json").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,2],"b":{"installer":1}}));
    }

    #[test]
    fn subdirectories_in_connections_are_skipped_and_reported() {
        let mut card = fat(4 * MIB);
        put(&mut card, &[("system-connections/wired", b"w")]);
        card.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut card, fatfs::FsOptions::new()).unwrap();
            fs.root_dir()
                .create_dir("system-connections/nested")
                .unwrap();
            fs.unmount().unwrap();
        }
        let mut target = fat(4 * MIB);
        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(r.files, vec![("system-connections/wired".to_string(), 1)]);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].contains("nested"));
    }

    #[test]
    fn invalid_config_json_is_refused() {
        let mut target = fat(4 * MIB);
        let mut card = fat(4 * MIB);
        put(&mut card, &[("config.json", b"{not json")]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(matches!(e, Error::ConfigJson { .. }), "{e}");

        let mut card = fat(4 * MIB);
        put(&mut card, &[("config.json", b"[1,2]")]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(e, Error::ConfigNotObject { found: "array" }),
            "{e}"
        );

        let mut card = fat(8 * MIB);
        let big = vec![b' '; MAX_CONFIG_JSON as usize + 10];
        put(&mut card, &[("config.json", &big)]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { size, .. } if size == MAX_CONFIG_JSON + 1),
            "{e}"
        );
    }

    #[test]
    fn not_a_fat_names_the_side() {
        let mut card = card();
        let e = copy_config(Cursor::new(vec![0u8; MIB]), fat(MIB)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotFat {
                    side: Side::Card,
                    ..
                }
            ),
            "{e}"
        );
        let e = copy_config(&mut card, Cursor::new(vec![0u8; MIB])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotFat {
                    side: Side::Target,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn full_target_is_an_io_error() {
        let mut card = fat(8 * MIB);
        put(&mut card, &[("hostname", &vec![b'h'; 3 * MIB])]);
        let mut target = fat(MIB);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(&e, Error::Io { context, .. } if context.contains("hostname")),
            "{e}"
        );
    }

    #[test]
    fn read_only_wrapper_refuses_writes() {
        let mut ro = ReadOnly(Cursor::new(vec![1u8; 8]));
        assert_eq!(
            ro.write(b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let mut b = [0u8; 4];
        ro.read_exact(&mut b).unwrap();
        assert_eq!(b, [1; 4]);
    }

    #[test]
    fn partition_slice_stays_inside_its_window() {
        let mut disk = Cursor::new((0..=255u8).cycle().take(4096).collect::<Vec<u8>>());
        let mut s = PartitionSlice::new(&mut disk, 1000, 100);
        assert_eq!(s.len(), 100);
        let mut all = vec![];
        s.read_to_end(&mut all).unwrap();
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], (1000 % 256) as u8);
        assert_eq!(s.seek(SeekFrom::End(-10)).unwrap(), 90);
        s.write_all(&[0xEE; 10]).unwrap();
        // Partial write at the end, then a clear error.
        s.seek(SeekFrom::Start(95)).unwrap();
        assert_eq!(s.write(&[0xDD; 20]).unwrap(), 5);
        assert_eq!(
            s.write(&[0xDD; 1]).unwrap_err().kind(),
            io::ErrorKind::WriteZero
        );
        assert!(s.seek(SeekFrom::Current(-1000)).is_err());
        assert_eq!(s.seek(SeekFrom::Start(200)).unwrap(), 200);
        assert_eq!(s.read(&mut [0u8; 8]).unwrap(), 0);
        let d = disk.get_ref();
        assert_eq!(&d[1090..1095], &[0xEE; 5]);
        assert_eq!(&d[1095..1100], &[0xDD; 5]);
        assert_eq!(
            d[1100],
            (1100 % 256) as u8,
            "byte after the window untouched"
        );
        assert_eq!(
            d[999],
            (999 % 256) as u8,
            "byte before the window untouched"
        );
    }

    /// The real tools: target FAT made by mkfs.vfat inside a disk file at a partition
    /// offset, written through PartitionSlice, then checked by `fsck.vfat -n`.
    #[test]
    fn fsck_vfat_accepts_the_target_after_the_copy() {
        for fat_bits in ["16", "32"] {
            let dir = tempfile::tempdir().unwrap();
            let part = dir.path().join("part.img");
            let size = 64 * MIB as u64;
            std::fs::File::create(&part).unwrap().set_len(size).unwrap();
            let out = Command::new("mkfs.vfat")
                .args(["-F", fat_bits, "-n", "RESIN-BOOT"])
                .arg(&part)
                .output()
                .expect(
                    "mkfs.vfat not found: run scripts/setup-host (apt-get install -y dosfstools)",
                );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Embed it at 1 MiB in a "disk", as a partition would be.
            let fs_bytes = std::fs::read(&part).unwrap();
            let mut disk = vec![0x5Au8; MIB];
            disk.extend_from_slice(&fs_bytes);
            disk.extend_from_slice(&[0x5A; 4096]);
            let mut disk = Cursor::new(disk);

            let mut card = card();
            let r =
                copy_config(&mut card, PartitionSlice::new(&mut disk, MIB as u64, size)).unwrap();
            assert_eq!(r.files.len(), 4);
            let d = disk.get_ref();
            assert!(d[..MIB].iter().all(|&b| b == 0x5A));
            assert!(d[MIB + size as usize..].iter().all(|&b| b == 0x5A));

            std::fs::write(&part, &d[MIB..MIB + size as usize]).unwrap();
            let out = Command::new("fsck.vfat")
                .arg("-n")
                .arg(&part)
                .output()
                .expect(
                    "fsck.vfat not found: run scripts/setup-host (apt-get install -y dosfstools)",
                );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "FAT{fat_bits}: {text}");
            let mut slice = PartitionSlice::new(&mut disk, MIB as u64, size);
            assert_eq!(get(&mut slice, "hostname").unwrap(), b"line-7-unit\n");
        }
    }

    fn fsck(path: &std::path::Path) -> (bool, String) {
        let out = Command::new("fsck.vfat")
            .arg("-n")
            .arg(path)
            .output()
            .expect("fsck.vfat not found: run scripts/setup-host (apt-get install -y dosfstools)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// fatfs-created nested directories on FAT12, FAT16 and FAT32: fsck rejects them as
    /// fatfs leaves them (the negative control) and accepts them after the repair.
    #[test]
    fn repair_makes_fatfs_directories_fsck_clean_on_every_fat_type() {
        for (size, fat_type) in [
            (2 * MIB, fatfs::FatType::Fat12),
            (16 * MIB, fatfs::FatType::Fat16),
            (40 * MIB, fatfs::FatType::Fat32),
        ] {
            let mut dev = Cursor::new(vec![0u8; size]);
            fatfs::format_volume(
                &mut dev,
                fatfs::FormatVolumeOptions::new().fat_type(fat_type),
            )
            .unwrap();
            put(
                &mut dev,
                &[
                    ("loader/entries/flasher.conf", b"title flasher\n"),
                    ("EFI/BOOT/BOOTX64.EFI", &[0x4D; 5000]),
                    ("top.txt", b"t"),
                ],
            );
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("fat.img");
            std::fs::write(&img, dev.get_ref()).unwrap();
            let (ok, text) = fsck(&img);
            assert!(
                !ok,
                "{fat_type:?}: expected fsck to reject fatfs's directories: {text}"
            );

            let fixed = repair_fatfs_dot_entries(&mut dev).unwrap();
            assert!(fixed >= 4, "{fat_type:?}: fixed {fixed}");
            std::fs::write(&img, dev.get_ref()).unwrap();
            let (ok, text) = fsck(&img);
            assert!(ok, "{fat_type:?}: {text}");
            // Still readable by fatfs, and a second pass finds nothing to do.
            dev.set_position(0);
            assert_eq!(
                get(&mut dev, "loader/entries/flasher.conf").unwrap(),
                b"title flasher\n"
            );
            assert_eq!(repair_fatfs_dot_entries(&mut dev).unwrap(), 0);
        }
    }
}
