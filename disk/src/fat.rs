//! FAT volumes inside a disk image or a device slice: opening one with `fatfs`, the
//! one boot-sector geometry parser, the repairs `fatfs` 0.3.6 needs after it
//! creates directories (dot entries) or a volume (FAT32 FSInfo), so `fsck.vfat -n`
//! is clean, and a read-only wrapper for media that must never be written.
//!
//! The one file API every FAT reader and writer uses: [`read_file`] (with a
//! size bound), [`write_file`] / [`write_files`] (parent directories created,
//! dot entries repaired) and [`list`] / [`list_dir`]. Finding the FAT partition
//! of a disk: [`partitions`], [`first_fat`].

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

use crate::{le16, le32, mbr};

/// Whether `sector` (the first 512 bytes of a partition) is a FAT boot sector.
pub fn looks_like_fat(sector: &[u8]) -> bool {
    sector.len() >= 512
        && mbr::has_signature(sector)
        && (&sector[54..57] == b"FAT" || &sector[82..87] == b"FAT32")
}

/// Open the FAT volume that `dev` holds from its position 0 (a whole volume, e.g. a
/// [`crate::PartitionSlice`]). fatfs insists on starting at position 0.
pub fn open<D: Read + Write + Seek>(
    mut dev: D,
    options: fatfs::FsOptions,
) -> io::Result<fatfs::FileSystem<D>> {
    dev.seek(SeekFrom::Start(0))?;
    fatfs::FileSystem::new(dev, options)
}

/// Open a FAT volume that is only ever read: writes through it fail. The
/// volume's table is checked first ([`check_table`]): `fatfs` 0.3 follows a
/// chain into cluster 0 or 1, or past the last cluster, without a check (its
/// `cluster - 2` overflows; the fuzz target `card` found it, issue 22).
pub fn open_read_only<D: Read + Seek>(
    mut dev: D,
    options: fatfs::FsOptions,
) -> io::Result<fatfs::FileSystem<ReadOnly<D>>> {
    check_table(&mut dev)?;
    open(ReadOnly(dev), options)
}

/// Refuse a FAT volume whose table links a cluster to cluster 1 or past the
/// volume's last cluster, or whose FAT32 root directory starts outside the
/// data clusters: what a hostile or corrupt card can hold, and what `fatfs`
/// would turn into wrapped sector numbers.
pub fn check_table<D: Read + Seek + ?Sized>(dev: &mut D) -> io::Result<()> {
    let mut boot = [0u8; 512];
    dev.seek(SeekFrom::Start(0))?;
    dev.read_exact(&mut boot)?;
    let g = Geometry::parse(&boot)?;
    let fat = g.read_fat(dev)?;
    let end = g.clusters + 2;
    if g.fat_bits == 32 {
        let root = le32(&boot, 44);
        if root < 2 || root >= end {
            return Err(bad(format!(
                "the FAT32 root directory starts at cluster {root}, outside clusters 2..{end}"
            )));
        }
    }
    // Values that are neither free (0), a link to a data cluster, nor one of
    // the reserved, bad and end-of-chain markers at the top of the range.
    let top = match g.fat_bits {
        12 => 0x0FF0,
        16 => 0xFFF0,
        _ => 0x0FFF_FFF0,
    };
    for c in 2..end {
        let v = g.raw(&fat, c).unwrap_or(0);
        if v != 0 && (v == 1 || (v >= end && v < top)) {
            return Err(bad(format!(
                "FAT entry {c} links to cluster {v}, outside clusters 2..{end}"
            )));
        }
    }
    // Every directory entry's first cluster, in every directory reachable
    // from the root (each visited once, so a loop ends).
    let mut seen = HashSet::new();
    let mut stack = vec![g.root_regions(&fat)?];
    let mut entries = 0usize;
    while let Some(regions) = stack.pop() {
        for (off, len) in regions {
            let mut buf = vec![0u8; len as usize];
            dev.seek(SeekFrom::Start(off))?;
            dev.read_exact(&mut buf)?;
            for e in buf.chunks_exact(32) {
                if e[0] == 0 {
                    break;
                }
                entries += 1;
                if entries > 4 * MAX_DIR_ENTRIES {
                    return Err(bad(format!(
                        "over {} directory entries in all",
                        4 * MAX_DIR_ENTRIES
                    )));
                }
                let attr = e[11];
                if e[0] == 0xE5 || attr == 0x0F || attr & 0x08 != 0 {
                    continue; // deleted, long-name slot, volume label
                }
                let hi = if g.fat_bits == 32 {
                    u32::from(le16(e, 20))
                } else {
                    0
                };
                let cl = hi << 16 | u32::from(le16(e, 26));
                if cl != 0 && (cl < 2 || cl >= end) {
                    return Err(bad(format!(
                        "a directory entry starts at cluster {cl}, outside clusters 2..{end}"
                    )));
                }
                if attr & 0x10 != 0 && e[0] != b'.' && cl != 0 && seen.insert(cl) {
                    stack.push(g.chain_regions(&fat, cl)?);
                }
            }
        }
    }
    Ok(())
}

/// Passes reads and seeks through and refuses every write, so a medium that must stay
/// pristine (the flasher card) cannot be modified by accident, even by fatfs.
#[derive(Debug)]
pub struct ReadOnly<D>(pub D);

impl<D: Read> Read for ReadOnly<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<D> Write for ReadOnly<D> {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the flasher card is never written",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<D: Seek> Seek for ReadOnly<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

fn bad(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        crate::Error::BadFat { reason: what },
    )
}

/// The layout of a FAT volume, from its boot sector (BPB): enough to walk
/// directories and the FAT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    pub bytes_per_sector: u64,
    pub cluster_bytes: u64,
    pub fat_offset: u64,
    /// Bytes of one FAT copy.
    pub fat_bytes: u64,
    /// FAT12/16: the fixed root directory region.
    pub root_offset: u64,
    pub root_bytes: u64,
    pub data_offset: u64,
    pub clusters: u32,
    /// 12, 16 or 32, from the cluster count as the specification decides it.
    pub fat_bits: u8,
    /// FAT32: the root directory's first cluster.
    pub root_cluster: u32,
    /// FAT32: byte offset of the FSInfo sector (0 if none).
    pub fsinfo_offset: u64,
}

/// Most clusters a FAT32 volume can have (28-bit entries, the top values reserved).
pub const MAX_CLUSTERS: u32 = 0x0FFF_FFF5;

/// Largest FAT copy read into memory: 16 MiB, a FAT32 of 4 Mi clusters (a
/// 16 GiB volume at 4 KiB clusters, 128 GiB at 32 KiB). The FATs read here
/// are boot partitions, far smaller; a boot sector claiming more (a hostile
/// image) is refused, so it cannot make a 512 MB board allocate a gigabyte
/// (docs/SECURITY.md).
pub const MAX_FAT_BYTES: u64 = 16 << 20;

impl Geometry {
    /// Parse the boot sector at position 0 of `dev`.
    pub fn read<D: Read + Seek + ?Sized>(dev: &mut D) -> io::Result<Geometry> {
        let mut b = [0u8; 512];
        dev.seek(SeekFrom::Start(0))?;
        dev.read_exact(&mut b)?;
        Geometry::parse(&b)
    }

    /// Parse a boot sector.
    pub fn parse(b: &[u8; 512]) -> io::Result<Geometry> {
        let u16at = |i: usize| u64::from(le16(b, i));
        let u32at = |i: usize| u64::from(le32(b, i));
        let bps = u16at(11);
        let spc = u64::from(b[13]);
        if !(512..=4096).contains(&bps)
            || !bps.is_power_of_two()
            || spc == 0
            || !spc.is_power_of_two()
        {
            return Err(bad(format!(
                "boot sector says {bps} bytes per sector and {spc} sectors per cluster; expected a power of two of 512..=4096 bytes and a power of two"
            )));
        }
        let reserved = u16at(14);
        let nfats = u64::from(b[16]);
        let root_entries = u16at(17);
        let total = if u16at(19) != 0 { u16at(19) } else { u32at(32) };
        let fat_sectors = if u16at(22) != 0 { u16at(22) } else { u32at(36) };
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let data_start = reserved + nfats * fat_sectors + root_sectors;
        if nfats == 0 || fat_sectors == 0 || total <= data_start {
            return Err(bad(format!(
                "inconsistent layout: {nfats} FATs of {fat_sectors} sectors, data from sector {data_start} of {total}"
            )));
        }
        let clusters = (total - data_start) / spc;
        let fat_bits = if clusters < 4085 {
            12
        } else if clusters < 65525 {
            16
        } else {
            32
        };
        let fat32 = fat_bits == 32;
        Ok(Geometry {
            bytes_per_sector: bps,
            cluster_bytes: bps * spc,
            fat_offset: reserved * bps,
            fat_bytes: fat_sectors * bps,
            root_offset: (reserved + nfats * fat_sectors) * bps,
            root_bytes: root_sectors * bps,
            data_offset: data_start * bps,
            // Bounded so that cluster numbers (2..clusters + 2) fit in a u32.
            clusters: u32::try_from(clusters)
                .ok()
                .filter(|&c| c <= MAX_CLUSTERS)
                .ok_or_else(|| {
                    bad(format!(
                        "{clusters} clusters are more than FAT can address (at most {MAX_CLUSTERS})"
                    ))
                })?,
            fat_bits,
            root_cluster: if fat32 { le32(b, 44) } else { 0 },
            fsinfo_offset: if fat32 { u16at(48) * bps } else { 0 },
        })
    }

    /// The first FAT copy, bounded by [`MAX_FAT_BYTES`].
    pub fn read_fat<D: Read + Seek + ?Sized>(&self, dev: &mut D) -> io::Result<Vec<u8>> {
        if self.fat_bytes > MAX_FAT_BYTES {
            return Err(bad(format!(
                "a FAT of {} bytes exceeds the {MAX_FAT_BYTES}-byte limit",
                self.fat_bytes
            )));
        }
        let mut fat = Vec::new();
        fat.try_reserve_exact(self.fat_bytes as usize)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!("cannot allocate {} bytes for a FAT", self.fat_bytes),
                )
            })?;
        fat.resize(self.fat_bytes as usize, 0);
        dev.seek(SeekFrom::Start(self.fat_offset))?;
        dev.read_exact(&mut fat)?;
        Ok(fat)
    }

    /// The cluster after `c` in a chain, `None` at its end or on a bad value.
    pub fn next(&self, fat: &[u8], c: u32) -> Option<u32> {
        let v = self.raw(fat, c)?;
        (v >= 2 && v < self.clusters + 2).then_some(v)
    }

    /// FAT entry `c` as stored (28 bits for FAT32), `None` past the table.
    pub fn raw(&self, fat: &[u8], c: u32) -> Option<u32> {
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
        Some(v)
    }

    /// Byte regions (offset, len) of a cluster chain, adjacent clusters
    /// merged. A chain that comes back to a cluster it passed is refused: the
    /// visited set is one bit per cluster the FAT can describe (at most
    /// 1.4 MB for the largest FAT read, `MAX_FAT_BYTES`), where a list of
    /// regions for a looping chain grew to gigabytes (the `disk` fuzz target
    /// found it, issue 22; it would have aborted PID 1).
    pub fn chain_regions(&self, fat: &[u8], first: u32) -> io::Result<Vec<(u64, u64)>> {
        let entries = (fat.len() as u64 * 8 / u64::from(self.fat_bits.max(12)))
            .min(u64::from(self.clusters) + 2) as usize;
        let mut seen = vec![0u64; entries.div_ceil(64)];
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut c = Some(first);
        while let Some(cl) = c {
            if cl < 2 || cl >= self.clusters + 2 {
                break;
            }
            let i = cl as usize;
            if let Some(w) = seen.get_mut(i / 64) {
                if *w & (1 << (i % 64)) != 0 {
                    return Err(bad(format!(
                        "the cluster chain from cluster {first} comes back to cluster {cl}"
                    )));
                }
                *w |= 1 << (i % 64);
            }
            let off = self.data_offset + u64::from(cl - 2) * self.cluster_bytes;
            match out.last_mut() {
                // Merged up to 1 MiB: callers read a region into one buffer.
                Some((o, l)) if *o + *l == off && *l < 1 << 20 => *l += self.cluster_bytes,
                _ => out.push((off, self.cluster_bytes)),
            }
            c = self.next(fat, cl);
        }
        if out.is_empty() {
            return Err(bad(format!(
                "directory cluster {first} is outside clusters 2..{}",
                self.clusters + 2
            )));
        }
        Ok(out)
    }

    /// Byte regions of the root directory.
    pub fn root_regions(&self, fat: &[u8]) -> io::Result<Vec<(u64, u64)>> {
        if self.fat_bits == 32 {
            self.chain_regions(fat, self.root_cluster)
        } else {
            Ok(vec![(self.root_offset, self.root_bytes)])
        }
    }
}

/// Where a directory being walked sits: `None` is the root itself.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Parent {
    None,
    Root,
    Other,
}

fn slot(data: &[u8], i: usize) -> &[u8] {
    &data[i * 32..(i + 1) * 32]
}

/// Repair directories created by `fatfs` 0.3, returning how many entries were fixed.
///
/// `fatfs` 0.3.6 (the newest release) writes a long-file-name entry in front of the `.`
/// and `..` entries of every directory it creates, so `.` is not in slot 0 and `..` not
/// in slot 1. Readers that look names up cope, but `fsck.vfat` reports the directory
/// as damaged (and would "repair" it), and some firmware may trip. This walks the
/// whole tree and, in any directory that starts `LFN, ".", LFN, ".."`, moves `.` and
/// `..` to slots 0 and 1 and keeps the two long-name entries behind them, marked
/// deleted (0xE5), which every reader skips. On FAT32 it also sets `..` of directories
/// in the root to cluster 0 as the specification requires (fatfs writes the root's
/// cluster). Nothing else is touched; idempotent. Call after unmounting.
pub fn repair_dot_entries<D: Read + Write + Seek + ?Sized>(dev: &mut D) -> io::Result<usize> {
    let geo = Geometry::read(dev)?;
    let fat = geo.read_fat(dev)?;
    let mut fixed = 0;
    let mut seen = HashSet::new();
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
        let is_lfn = |e: &[u8]| e[11] == 0x0F && e[0] != 0xE5 && e[0] != 0;
        if parent != Parent::None
            && n >= 4
            && is_lfn(slot(&data, 0))
            && &slot(&data, 1)[..11] == b".          "
            && is_lfn(slot(&data, 2))
            && &slot(&data, 3)[..11] == b"..         "
        {
            let mut head = [0u8; 128];
            head[0..32].copy_from_slice(slot(&data, 1));
            head[32..64].copy_from_slice(slot(&data, 3));
            head[64..96].copy_from_slice(slot(&data, 0));
            head[96..128].copy_from_slice(slot(&data, 2));
            head[64] = 0xE5;
            head[96] = 0xE5;
            // The first four slots always lie in the directory's first cluster
            // (clusters are at least 512 bytes).
            dev.seek(SeekFrom::Start(regions[0].0))?;
            dev.write_all(&head)?;
            data[..128].copy_from_slice(&head);
            fixed += 1;
        }
        if parent == Parent::Root && geo.fat_bits == 32 && data.len() >= 64 {
            let dd = &mut data[32..64];
            let cl = u32::from(le16(dd, 20)) << 16 | u32::from(le16(dd, 26));
            if &dd[..11] == b"..         " && cl != 0 && cl == geo.root_cluster {
                dd[20..22].fill(0);
                dd[26..28].fill(0);
                dev.seek(SeekFrom::Start(regions[0].0 + 32))?;
                dev.write_all(dd)?;
                fixed += 1;
            }
        }
        for i in 0..n {
            let e = slot(&data, i);
            if e[0] == 0 {
                break; // end of directory
            }
            let attr = e[11];
            if e[0] == 0xE5 || e[0] == b'.' || attr == 0x0F || attr & 0x08 != 0 || attr & 0x10 == 0
            {
                continue; // deleted, dot, LFN, volume label or not a directory
            }
            let hi = if geo.fat_bits == 32 {
                u32::from(le16(e, 20)) << 16
            } else {
                0
            };
            let cluster = hi | u32::from(le16(e, 26));
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

/// FAT32: store the real free-cluster count and first free cluster in FSInfo, which
/// fatfs leaves unset ("unknown") on a volume it formats. Returns whether it wrote.
/// FAT12/16 and volumes without an FSInfo sector are left alone.
pub fn sync_fsinfo<D: Read + Write + Seek + ?Sized>(dev: &mut D) -> io::Result<bool> {
    let geo = Geometry::read(dev)?;
    if geo.fat_bits != 32 || geo.fsinfo_offset == 0 {
        return Ok(false);
    }
    let mut sig = [0u8; 4];
    dev.seek(SeekFrom::Start(geo.fsinfo_offset))?;
    dev.read_exact(&mut sig)?;
    if &sig != b"RRaA" {
        return Ok(false);
    }
    let fat = geo.read_fat(dev)?;
    let mut free = 0u32;
    let mut first = None;
    for c in 2..geo.clusters + 2 {
        let at = 4 * c as usize;
        let Some(e) = fat.get(at..at + 4) else { break };
        if le32(e, 0) & 0x0FFF_FFFF == 0 {
            free += 1;
            first.get_or_insert(c);
        }
    }
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&free.to_le_bytes());
    v[4..].copy_from_slice(&first.unwrap_or(0xFFFF_FFFF).to_le_bytes());
    dev.seek(SeekFrom::Start(geo.fsinfo_offset + 488))?;
    dev.write_all(&v)?;
    dev.flush()?;
    Ok(true)
}

// ---- Finding a FAT volume on a disk ----

/// A partition as (byte offset, byte length) on its disk.
pub type Span = (u64, u64);

/// The partitions in the table at the start of `dev`, in table order: GPT (512 or
/// 4096-byte sectors) or MBR primary partitions (extended containers left out).
/// Empty if there is no table; an error if a table is there but damaged.
pub fn partitions<R: Read + Seek>(dev: &mut R) -> io::Result<Vec<Span>> {
    match crate::Table::read(dev) {
        Ok(t) => Ok(t
            .partitions
            .iter()
            .filter(|p| !p.part_type.is_extended())
            .map(|p| (p.offset, p.size))
            .collect()),
        Err(crate::Error::NoTable) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Whether the bytes at `span` start with a FAT boot sector.
pub fn is_fat<R: Read + Seek>(dev: &mut R, span: Span) -> bool {
    let mut b = [0u8; 512];
    dev.seek(io::SeekFrom::Start(span.0))
        .and_then(|_| dev.read_exact(&mut b))
        .is_ok()
        && looks_like_fat(&b)
}

/// The first partition holding a FAT filesystem: the OS image's boot partition.
pub fn first_fat<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Span>> {
    for p in partitions(dev)? {
        if is_fat(dev, p) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

// ---- Files in a FAT volume: the one read, write and list ----
//
// Every reader and writer of FAT files (the init's card and target, the host's
// card builder and `mkflasher configure`, the QEMU harness) goes through these.
// Each call mounts the volume it is given and unmounts it before returning. The
// public functions are generic, their bodies are not: they take the volume as a
// trait object, so a binary carries one copy of `fatfs` for all its volumes.

/// `Read + Seek` as a trait object.
trait Vol: Read + Seek {}
impl<T: Read + Seek + ?Sized> Vol for T {}

/// `Read + Write + Seek` as a trait object.
trait VolMut: Read + Write + Seek {}
impl<T: Read + Write + Seek + ?Sized> VolMut for T {}

/// One file or directory of a volume (see [`list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// '/'-separated, from the volume's root, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    pub is_dir: bool,
    /// Bytes; 0 for a directory.
    pub size: u64,
}

impl Entry {
    /// The last component of [`Entry::path`].
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The components of a path inside a volume: '/'-separated, a leading '/' and
/// `.` ignored; empty paths and `..` are refused ([`crate::Error::BadPath`]).
fn components(path: &str) -> io::Result<Vec<&str>> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(crate::Error::BadPath {
            path: path.to_string(),
        }
        .into());
    }
    Ok(parts)
}

/// Read `path` from the FAT volume `vol` (a whole volume, e.g. a
/// [`crate::PartitionSlice`]); `Ok(None)` if there is no such file. A file
/// over `max` bytes is refused ([`crate::Error::FileTooLarge`]) after reading
/// at most `max + 1` bytes of it; a directory is [`crate::Error::IsDirectory`].
/// The volume is opened read-only: nothing is ever written to it.
pub fn read_file<D: Read + Seek>(mut vol: D, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    read_file_in(&mut vol, path, max)
}

fn read_file_in(vol: &mut dyn Vol, path: &str, max: u64) -> io::Result<Option<Vec<u8>>> {
    let rel = components(path)?.join("/");
    let fs = open_read_only(vol, fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    let file = match root.open_file(&rel) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(_) if root.open_dir(&rel).is_ok() => {
            return Err(crate::Error::IsDirectory {
                path: path.to_string(),
            }
            .into())
        }
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut data)?;
    if data.len() as u64 > max {
        return Err(crate::Error::FileTooLarge {
            path: path.to_string(),
            size: data.len() as u64,
            max,
        }
        .into());
    }
    Ok(Some(data))
}

/// Create or replace `path` in the FAT volume `vol` with `data`, creating its
/// parent directories; see [`write_files`].
pub fn write_file<D: Read + Write + Seek>(
    vol: D,
    path: &str,
    data: &[u8],
    options: fatfs::FsOptions,
) -> io::Result<()> {
    write_files(vol, [(path, data)], options)
}

/// Create or replace each `(path, data)` in the FAT volume `vol`, in order, in
/// one mount, creating parent directories as needed; a path ending in '/'
/// names a directory, created if missing (its data must be empty). Then, if a
/// directory was created, [`repair_dot_entries`], so `fsck.vfat -n` stays
/// clean. `options` carry the time stamps (the host's reproducible cards use a
/// fixed clock).
///
/// Every path is checked before anything is written ([`crate::Error::BadPath`]);
/// replacing a directory is [`crate::Error::IsDirectory`]; other failures name
/// the file ([`crate::Error::FatFile`], with the cause's `ErrorKind`).
pub fn write_files<'a, D: Read + Write + Seek>(
    mut vol: D,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    options: fatfs::FsOptions,
) -> io::Result<()> {
    let files: Vec<(&str, &[u8])> = files.into_iter().collect();
    write_files_in(&mut vol, &files, options)
}

fn write_files_in(
    vol: &mut dyn VolMut,
    files: &[(&str, &[u8])],
    options: fatfs::FsOptions,
) -> io::Result<()> {
    let paths = files
        .iter()
        .map(|&(p, data)| match components(p) {
            Ok(_) if p.ends_with('/') && !data.is_empty() => Err(crate::Error::BadPath {
                path: p.to_string(),
            }
            .into()),
            parts => parts,
        })
        .collect::<io::Result<Vec<_>>>()?;
    let mut created_dir = false;
    {
        let fs = open(&mut *vol, options)?;
        for ((path, data), parts) in files.iter().zip(&paths) {
            let in_file = |source: io::Error| -> io::Error {
                crate::Error::FatFile {
                    path: path.to_string(),
                    source,
                }
                .into()
            };
            let (name, dirs) = match parts.split_last() {
                Some((_, _)) if path.ends_with('/') => (None, &parts[..]),
                Some((name, dirs)) => (Some(name), dirs),
                None => continue, // `components` never returns an empty list
            };
            let mut dir = fs.root_dir();
            for d in dirs {
                dir = match dir.open_dir(d) {
                    Ok(sub) => sub,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        created_dir = true;
                        dir.create_dir(d).map_err(in_file)?
                    }
                    Err(e) => return Err(in_file(e)),
                };
            }
            let Some(name) = name else {
                continue; // a directory: there now
            };
            if dir.open_dir(name).is_ok() {
                return Err(crate::Error::IsDirectory {
                    path: path.to_string(),
                }
                .into());
            }
            let mut f = dir.create_file(name).map_err(in_file)?;
            // create_file opens an existing file without truncating it: cut it
            // first so a shorter file leaves no old tail behind.
            f.truncate().map_err(in_file)?;
            f.write_all(data).map_err(in_file)?;
            f.flush().map_err(in_file)?;
        }
        fs.unmount()?;
    }
    if created_dir {
        repair_dot_entries(&mut *vol)?;
    }
    vol.flush()
}

/// Every file and directory in the FAT volume `vol`, depth first, each
/// directory's entries in the order the directory holds them (`.` and `..`
/// left out). Sort by path components for a stable listing.
pub fn list<D: Read + Seek>(mut vol: D) -> io::Result<Vec<Entry>> {
    Ok(list_in(&mut vol, "", true)?.unwrap_or_default())
}

/// The files and directories directly in `dir` ("" for the root; not below
/// it), in the order the directory holds them, with paths from the volume's
/// root; `Ok(None)` if there is no such directory.
pub fn list_dir<D: Read + Seek>(mut vol: D, dir: &str) -> io::Result<Option<Vec<Entry>>> {
    list_in(&mut vol, dir, false)
}

fn list_in(vol: &mut dyn Vol, dir: &str, recursive: bool) -> io::Result<Option<Vec<Entry>>> {
    let prefix = dir_prefix(dir)?;
    let fs = open_read_only(vol, fatfs::FsOptions::new())?;
    let Some(start) = open_dir_at(&fs, &prefix)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    walk(&start, &prefix, recursive, &mut out)?;
    Ok(Some(out))
}

/// The deepest directory [`list`] descends into (a card's or a boot
/// partition's tree is a few levels deep; a looping directory is not).
pub const MAX_DEPTH: usize = 32;

/// `dir` as a path from the root without leading or trailing '/' ("" for
/// the root itself).
fn dir_prefix(dir: &str) -> io::Result<String> {
    if dir.trim_matches('/').is_empty() {
        Ok(String::new())
    } else {
        Ok(components(dir)?.join("/"))
    }
}

/// The directory at `prefix` (from [`dir_prefix`]), `None` if there is none.
fn open_dir_at<'a, T: fatfs::ReadWriteSeek>(
    fs: &'a fatfs::FileSystem<T>,
    prefix: &str,
) -> io::Result<Option<fatfs::Dir<'a, T>>> {
    if prefix.is_empty() {
        return Ok(Some(fs.root_dir()));
    }
    match fs.root_dir().open_dir(prefix) {
        Ok(d) => Ok(Some(d)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The most entries a FAT directory can hold (the FAT specification's
/// 65,536 32-byte entries, long-name slots included). A directory whose
/// cluster chain yields more loops or is corrupt: reading it stops there
/// instead of growing without bound.
pub const MAX_DIR_ENTRIES: usize = 65_536;

/// The entries of `dir`, refused past [`MAX_DIR_ENTRIES`].
fn entries<'a, T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'a, T>,
    path: &str,
) -> io::Result<Vec<fatfs::DirEntry<'a, T>>> {
    let mut out = Vec::new();
    for e in dir.iter() {
        if out.len() == MAX_DIR_ENTRIES {
            return Err(crate::Error::TooManyEntries {
                path: path.to_string(),
                max: MAX_DIR_ENTRIES,
            }
            .into());
        }
        out.push(e?);
    }
    Ok(out)
}

/// One entry of a directory as the volume holds it (see [`read_dir`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirFile {
    /// The long name, or the short one when the entry has no long name.
    pub name: String,
    /// The 8.3 name, e.g. `CONFIG~1.JSO`; lookups by name match either.
    pub short_name: String,
    pub is_dir: bool,
    /// Bytes as the entry records them; 0 for a directory.
    pub size: u64,
    /// The file's bytes, for the files `want` asked for.
    pub data: Option<Vec<u8>>,
}

/// The entries directly in `dir` ("" for the root), in directory order, with
/// both names of each and, for each file whose name `want` accepts, its bytes
/// read through that entry (not looked up again by name, so a second entry
/// of the same name can never stand in for it); `Ok(None)` without the
/// directory. A wanted file over `max` bytes is
/// [`crate::Error::FileTooLarge`]; a directory past [`MAX_DIR_ENTRIES`]
/// entries is [`crate::Error::TooManyEntries`]. Read-only.
pub fn read_dir<D: Read + Seek>(
    mut vol: D,
    dir: &str,
    max: u64,
    want: &dyn Fn(&str) -> bool,
) -> io::Result<Option<Vec<DirFile>>> {
    let vol: &mut dyn Vol = &mut vol;
    let prefix = dir_prefix(dir)?;
    let fs = open_read_only(vol, fatfs::FsOptions::new())?;
    let Some(start) = open_dir_at(&fs, &prefix)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for e in entries(&start, &prefix)? {
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let is_dir = e.is_dir();
        let data = if !is_dir && want(&name) {
            let mut data = Vec::new();
            e.to_file()
                .take(max.saturating_add(1))
                .read_to_end(&mut data)?;
            if data.len() as u64 > max {
                let path = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                return Err(crate::Error::FileTooLarge {
                    path,
                    size: data.len() as u64,
                    max,
                }
                .into());
            }
            Some(data)
        } else {
            None
        };
        out.push(DirFile {
            short_name: e.short_file_name(),
            name,
            is_dir,
            size: if is_dir { 0 } else { e.len() },
            data,
        });
    }
    Ok(Some(out))
}

fn walk<T: fatfs::ReadWriteSeek>(
    dir: &fatfs::Dir<'_, T>,
    prefix: &str,
    recursive: bool,
    out: &mut Vec<Entry>,
) -> io::Result<()> {
    let entries = entries(dir, prefix)?;
    for e in entries {
        let name = e.file_name();
        if name == "." || name == ".." {
            continue;
        }
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let is_dir = e.is_dir();
        out.push(Entry {
            path: path.clone(),
            is_dir,
            size: if is_dir { 0 } else { e.len() },
        });
        if is_dir && recursive {
            // A directory whose cluster is an ancestor's would recurse
            // forever: bound the depth and the whole listing.
            if path.matches('/').count() >= MAX_DEPTH || out.len() > MAX_DIR_ENTRIES {
                return Err(crate::Error::TooManyEntries {
                    path,
                    max: MAX_DIR_ENTRIES,
                }
                .into());
            }
            walk(&e.to_dir(), &path, recursive, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: usize = 1 << 20;

    /// A directory whose cluster chain points back at itself (a corrupt or
    /// hostile card) is refused after [`MAX_DIR_ENTRIES`] entries instead of
    /// being listed, and held in memory, forever.
    #[test]
    fn a_looping_directory_is_refused_not_followed_forever() {
        let mut dev = Cursor::new(vec![0u8; 32 * MIB]);
        let fmt = fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat16);
        fatfs::format_volume(&mut dev, fmt).unwrap();
        let img = dev.get_ref();
        let u16_at = |o: usize| usize::from(u16::from_le_bytes([img[o], img[o + 1]]));
        let cluster_bytes = u16_at(11) * usize::from(img[13]);
        // Exactly one cluster of entries: no end-of-directory marker in it.
        let names: Vec<String> = (0..cluster_bytes / 32 - 2)
            .map(|i| format!("loop/F{i:05}.TXT"))
            .collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        put(&mut dev, &files);
        let img = dev.get_mut();
        let u16_at = |img: &[u8], o: usize| usize::from(u16::from_le_bytes([img[o], img[o + 1]]));
        let (bps, reserved, fats) = (u16_at(img, 11), u16_at(img, 14), usize::from(img[16]));
        let (root_entries, fat_sectors) = (u16_at(img, 17), u16_at(img, 22));
        let root = (reserved + fats * fat_sectors) * bps;
        let entry = (0..root_entries)
            .map(|i| root + i * 32)
            .find(|&o| &img[o..o + 11] == b"LOOP       ")
            .expect("the directory's entry");
        let cluster = u16_at(img, entry + 26);
        for f in 0..fats {
            let at = (reserved + f * fat_sectors) * bps + 2 * cluster;
            img[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
        }
        // Refused when the volume is opened (`check_table` walks every
        // directory, with a bound on the entries in all) ...
        for e in [
            list_dir(&mut dev, "loop").unwrap_err(),
            list(&mut dev).unwrap_err(),
            read_dir(&mut dev, "loop", 0, &|_| false).unwrap_err(),
        ] {
            assert!(
                matches!(
                    e.get_ref().and_then(|i| i.downcast_ref::<crate::Error>()),
                    Some(crate::Error::BadFat { .. })
                ),
                "{e}"
            );
        }
        // ... and by the listing's own bound, past that check.
        let fs = open(&mut dev, fatfs::FsOptions::new()).unwrap();
        let e = entries(&fs.root_dir().open_dir("loop").unwrap(), "loop").unwrap_err();
        assert!(
            matches!(
                e.get_ref().and_then(|i| i.downcast_ref::<crate::Error>()),
                Some(crate::Error::TooManyEntries { .. })
            ),
            "{e}"
        );
    }

    fn put(dev: &mut Cursor<Vec<u8>>, files: &[(&str, &[u8])]) {
        let fs = open(&mut *dev, fatfs::FsOptions::new()).unwrap();
        for (path, data) in files {
            let mut dir = fs.root_dir();
            let parts: Vec<&str> = path.split('/').collect();
            for d in &parts[..parts.len() - 1] {
                dir = match dir.open_dir(d) {
                    Ok(x) => x,
                    Err(_) => dir.create_dir(d).unwrap(),
                };
            }
            let mut f = dir.create_file(parts[parts.len() - 1]).unwrap();
            f.truncate().unwrap();
            f.write_all(data).unwrap();
        }
        fs.unmount().unwrap();
    }

    fn get(dev: &mut Cursor<Vec<u8>>, path: &str) -> Vec<u8> {
        let fs = open_read_only(&mut *dev, fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file(path).unwrap();
        let mut out = Vec::new();
        f.read_to_end(&mut out).unwrap();
        out
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
        for (size, fat_type, bits) in [
            (2 * MIB, fatfs::FatType::Fat12, 12),
            (16 * MIB, fatfs::FatType::Fat16, 16),
            (40 * MIB, fatfs::FatType::Fat32, 32),
        ] {
            let mut dev = Cursor::new(vec![0u8; size]);
            fatfs::format_volume(
                &mut dev,
                fatfs::FormatVolumeOptions::new().fat_type(fat_type),
            )
            .unwrap();
            assert_eq!(Geometry::read(&mut dev).unwrap().fat_bits, bits);
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

            let fixed = repair_dot_entries(&mut dev).unwrap();
            assert!(fixed >= 4, "{fat_type:?}: fixed {fixed}");
            assert_eq!(sync_fsinfo(&mut dev).unwrap(), bits == 32);
            std::fs::write(&img, dev.get_ref()).unwrap();
            let (ok, text) = fsck(&img);
            assert!(ok, "{fat_type:?}: {text}");
            // Still readable by fatfs, and a second pass finds nothing to do.
            assert_eq!(
                get(&mut dev, "loader/entries/flasher.conf"),
                b"title flasher\n"
            );
            assert_eq!(repair_dot_entries(&mut dev).unwrap(), 0);
        }
    }

    fn disk_error(e: &io::Error) -> Option<&crate::Error> {
        e.get_ref().and_then(|i| i.downcast_ref::<crate::Error>())
    }

    /// `write_files` on FAT12, FAT16 and FAT32: nested directories created in
    /// one mount, the dot entries repaired (fsck clean), the files read back
    /// and listed.
    #[test]
    fn write_files_makes_fsck_clean_volumes_read_back_and_listed() {
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
            let big = vec![0x4D; 5000];
            let files: [(&str, &[u8]); 4] = [
                ("loader/entries/flasher.conf", b"title flasher\n"),
                ("/EFI/BOOT/BOOTX64.EFI", &big),
                ("top.txt", b"t"),
                ("loader/loader.conf", b"timeout 0\n"),
            ];
            write_files(&mut dev, files, fatfs::FsOptions::new()).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let img = dir.path().join("fat.img");
            std::fs::write(&img, dev.get_ref()).unwrap();
            let (ok, text) = fsck(&img);
            assert!(ok, "{fat_type:?}: {text}");
            assert_eq!(repair_dot_entries(&mut dev).unwrap(), 0, "{fat_type:?}");
            for (path, data) in files {
                assert_eq!(read_file(&mut dev, path, u64::MAX).unwrap().unwrap(), data);
            }
            // Replacing with a shorter file leaves no old tail.
            write_file(&mut dev, "top.txt", b"", fatfs::FsOptions::new()).unwrap();
            assert_eq!(read_file(&mut dev, "top.txt", 0).unwrap().unwrap(), b"");
            let mut all: Vec<(String, bool, u64)> = list(&mut dev)
                .unwrap()
                .into_iter()
                .map(|e| (e.path, e.is_dir, e.size))
                .collect();
            all.sort_by(|a, b| a.0.split('/').cmp(b.0.split('/')));
            let want = [
                ("EFI", true, 0),
                ("EFI/BOOT", true, 0),
                ("EFI/BOOT/BOOTX64.EFI", false, 5000),
                ("loader", true, 0),
                ("loader/entries", true, 0),
                ("loader/entries/flasher.conf", false, 14),
                ("loader/loader.conf", false, 10),
                ("top.txt", false, 0),
            ];
            let want: Vec<_> = want
                .iter()
                .map(|(p, d, n)| (p.to_string(), *d, *n))
                .collect();
            assert_eq!(all, want, "{fat_type:?}");
            // A path ending in '/' is a directory, created empty.
            write_file(&mut dev, "loader/empty/", b"", fatfs::FsOptions::new()).unwrap();
            assert_eq!(list_dir(&mut dev, "loader/empty").unwrap().unwrap(), []);
            std::fs::write(&img, dev.get_ref()).unwrap();
            let (ok, text) = fsck(&img);
            assert!(ok, "{fat_type:?}: {text}");
            // Directory order: `empty`, made last, took the two slots the
            // dot-entry repair freed at the directory's start.
            let loader = list_dir(&mut dev, "/loader/").unwrap().unwrap();
            let names: Vec<&str> = loader.iter().map(Entry::name).collect();
            assert_eq!(names, ["empty", "entries", "loader.conf"]);
            assert_eq!(loader[2].path, "loader/loader.conf");
            assert_eq!(list_dir(&mut dev, "nope").unwrap(), None);
            assert_eq!(list_dir(&mut dev, "").unwrap().unwrap().len(), 3);
        }
    }

    /// The size bound: `max` bytes pass, one more is refused after reading
    /// `max + 1` bytes; missing files are `None`; directories and `..` are
    /// typed errors; reading never writes.
    #[test]
    fn read_file_bounds_and_errors() {
        let mut dev = Cursor::new(vec![0u8; 2 * MIB]);
        fatfs::format_volume(&mut dev, fatfs::FormatVolumeOptions::new()).unwrap();
        write_file(&mut dev, "d/f", &[7; 100], fatfs::FsOptions::new()).unwrap();
        let before = dev.get_ref().clone();
        assert_eq!(read_file(&mut dev, "d/f", 100).unwrap().unwrap(), [7; 100]);
        assert_eq!(read_file(&mut dev, "D/F", 100).unwrap().unwrap(), [7; 100]);
        let e = read_file(&mut dev, "d/f", 99).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(
                disk_error(&e),
                Some(crate::Error::FileTooLarge {
                    size: 100,
                    max: 99,
                    ..
                })
            ),
            "{e}"
        );
        assert_eq!(read_file(&mut dev, "d/g", 10).unwrap(), None);
        assert_eq!(read_file(&mut dev, "x/f", 10).unwrap(), None);
        let e = read_file(&mut dev, "d", 10).unwrap_err();
        assert!(
            matches!(disk_error(&e), Some(crate::Error::IsDirectory { .. })),
            "{e}"
        );
        let e = read_file(&mut dev, "d/../f", 10).unwrap_err();
        assert!(
            matches!(disk_error(&e), Some(crate::Error::BadPath { .. })),
            "{e}"
        );
        assert!(dev.get_ref() == &before, "a read changed the volume");
        // A read-only medium is enough.
        let mut ro = ReadOnly(Cursor::new(before));
        assert_eq!(read_file(&mut ro, "d/f", 100).unwrap().unwrap(), [7; 100]);
        assert_eq!(list(&mut ro).unwrap().len(), 2);
    }

    #[test]
    fn write_files_refuses_bad_paths_before_writing_and_names_the_file() {
        let mut dev = Cursor::new(vec![0u8; 2 * MIB]);
        fatfs::format_volume(&mut dev, fatfs::FormatVolumeOptions::new()).unwrap();
        write_file(&mut dev, "d/f", b"x", fatfs::FsOptions::new()).unwrap();
        let before = dev.get_ref().clone();
        let e = write_files(
            &mut dev,
            [("a", &b"1"[..]), ("../b", &b"2"[..])],
            fatfs::FsOptions::new(),
        )
        .unwrap_err();
        assert!(matches!(disk_error(&e), Some(crate::Error::BadPath { path }) if path == "../b"));
        assert!(dev.get_ref() == &before, "nothing is written");
        let e = write_file(&mut dev, "dir/", b"x", fatfs::FsOptions::new()).unwrap_err();
        assert!(
            matches!(disk_error(&e), Some(crate::Error::BadPath { .. })),
            "{e}"
        );
        let e = write_file(&mut dev, "d", b"x", fatfs::FsOptions::new()).unwrap_err();
        assert!(
            matches!(disk_error(&e), Some(crate::Error::IsDirectory { .. })),
            "{e}"
        );
        let e =
            write_file(&mut dev, "big", &vec![1; 3 * MIB], fatfs::FsOptions::new()).unwrap_err();
        assert!(
            matches!(disk_error(&e), Some(crate::Error::FatFile { path, .. }) if path == "big"),
            "{e}"
        );
        assert!(e.to_string().contains("No space"), "{e}");
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
    fn fat_detection_and_bad_boot_sectors() {
        let mut dev = Cursor::new(vec![0u8; 2 * MIB]);
        fatfs::format_volume(&mut dev, fatfs::FormatVolumeOptions::new()).unwrap();
        assert!(looks_like_fat(&dev.get_ref()[..512]));
        assert!(!looks_like_fat(&[0u8; 512]));
        let mut b = [0u8; 512];
        b.copy_from_slice(&dev.get_ref()[..512]);
        b[11..13].fill(0); // bytes per sector 0
        let e = Geometry::parse(&b).unwrap_err();
        assert!(e.to_string().contains("bytes per sector"), "{e}");
        assert!(Geometry::parse(&[0u8; 512]).is_err());
    }

    /// Found while writing the fuzz target `disk` (a 10-minute run did not
    /// reach it; the input is in fuzz/regressions/disk): no reserved sectors
    /// and 2^32 - 1 total sectors gave 2^32 - 2 clusters, and the cluster
    /// bound `clusters + 2` overflowed while walking the FAT32 root.
    #[test]
    fn cluster_count_beyond_fat32_is_refused() {
        let mut b = [0u8; 512];
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1; // sectors per cluster
        b[16] = 1; // FATs
        b[32..36].copy_from_slice(&u32::MAX.to_le_bytes()); // total sectors
        b[36..40].copy_from_slice(&1u32.to_le_bytes()); // sectors per FAT
        b[44..48].copy_from_slice(&2u32.to_le_bytes()); // root cluster
        let e = Geometry::parse(&b).unwrap_err();
        let inner = e.get_ref().and_then(|i| i.downcast_ref::<crate::Error>());
        assert!(
            matches!(inner, Some(crate::Error::BadFat { reason }) if reason.contains("4294967294 clusters")),
            "{e}"
        );
        // The largest FAT32 volume still parses.
        let data_start = 2u64;
        let total = data_start + u64::from(MAX_CLUSTERS);
        b[14..16].copy_from_slice(&1u16.to_le_bytes()); // reserved
        b[32..36].copy_from_slice(&(total as u32).to_le_bytes());
        assert_eq!(Geometry::parse(&b).unwrap().clusters, MAX_CLUSTERS);
    }
}
