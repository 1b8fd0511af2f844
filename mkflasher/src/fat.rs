//! FAT volumes on the host: creating the card's `flash-boot` partition (type,
//! size, label, volume id, reproducible time stamps) and, for `mkflasher
//! configure` and `inspect`, reading, rewriting and listing files in one. The
//! file access itself is `flasher_disk::fat`'s (the one FAT file API); this
//! module adds the host's options and its typed errors. Nothing here mounts
//! anything or calls mtools.
//!
//! Volumes are reproducible: the volume id is derived from the label, and every
//! directory entry carries the DOS epoch (1980-01-01 00:00) instead of the
//! current time, so the same inputs give the same bytes.

use flasher_format::io::IoContext;
use std::io::{Cursor, Read, Seek, Write};

use fatfs::{
    Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider,
};
use flasher_disk::fat as disk_fat;

pub use flasher_disk::fat::Entry;

/// Everything that can go wrong with a FAT volume.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "FAT volume of {size} bytes is too small: at least {min} bytes (8 MiB) are needed; \
         give the flash-boot partition more space"
    )]
    TooSmall { size: u64, min: u64 },
    #[error("FAT volume of {size} bytes is too large: FAT32 holds at most 2 TiB")]
    TooLarge { size: u64 },
    #[error("invalid path {path:?} in a FAT volume: use '/'-separated names without '..'")]
    BadPath { path: String },
    #[error(
        "{files} files of {needed} bytes do not fit a {size}-byte FAT volume; \
         make the flash-boot partition larger"
    )]
    NoSpace {
        size: u64,
        needed: u64,
        files: usize,
    },
    #[error("{path:?} not found in the FAT volume")]
    NotFound { path: String },
    #[error("{path:?} in the FAT volume is a directory, not a file")]
    IsDirectory { path: String },
    #[error("FAT volume: {0}")]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One file to place in a new volume. Parent directories are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    /// '/'-separated path inside the volume, e.g. `EFI/BOOT/BOOTX64.EFI`.
    pub path: String,
    pub data: Vec<u8>,
}

impl FatFile {
    pub fn new(path: impl Into<String>, data: impl Into<Vec<u8>>) -> Self {
        FatFile {
            path: path.into(),
            data: data.into(),
        }
    }
}

/// The smallest volume we create: FAT16 needs 4085 clusters. A boot partition
/// smaller than this is a mistake anyway.
pub const MIN_SIZE: u64 = 8 << 20;

/// Fixed timestamps: the DOS epoch. Real time would make every build differ.
#[derive(Debug)]
struct Epoch;

impl TimeProvider for Epoch {
    fn get_current_date(&self) -> Date {
        Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }
    fn get_current_date_time(&self) -> DateTime {
        DateTime {
            date: self.get_current_date(),
            time: Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static EPOCH: Epoch = Epoch;

fn fs_options() -> FsOptions {
    FsOptions::new()
        .time_provider(&EPOCH)
        .update_accessed_date(false)
}

/// FAT16 from 8 MiB up to 512 MiB (FAT32 needs at least 65525 clusters, which
/// means tiny clusters on small volumes), FAT32 above. UEFI firmware and
/// U-Boot read both.
pub fn fat_type_for(size: u64) -> FatType {
    if size < 512 << 20 {
        FatType::Fat16
    } else {
        FatType::Fat32
    }
}

/// The 11-byte BPB label: upper case, space padded, truncated.
fn label_bytes(label: &str) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (slot, c) in out.iter_mut().zip(
        label
            .bytes()
            .filter(|c| c.is_ascii_graphic() || *c == b' ')
            .map(|c| c.to_ascii_uppercase()),
    ) {
        *slot = c;
    }
    out
}

/// A volume id derived from the label, so two builds agree byte for byte.
fn volume_id(label: &str) -> u32 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(label.as_bytes());
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

/// A `flasher_disk` error as this module's: its typed path errors as ours,
/// anything else as I/O in `context`.
fn from_disk(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| match source
        .get_ref()
        .and_then(|e| e.downcast_ref::<flasher_disk::Error>())
    {
        Some(flasher_disk::Error::BadPath { path }) => Error::BadPath { path: path.clone() },
        Some(flasher_disk::Error::IsDirectory { path }) => {
            Error::IsDirectory { path: path.clone() }
        }
        _ => Error::Io(flasher_format::io::IoError::new(context, source)),
    }
}

/// Format `dev` (positioned at 0, exactly the volume's size) as FAT and fill it.
/// Works on any Read+Write+Seek, e.g. a partition slice of a card image.
pub fn format_into<D: Read + Write + Seek>(
    mut dev: D,
    size: u64,
    label: &str,
    files: &[FatFile],
) -> Result<()> {
    if size < MIN_SIZE {
        return Err(Error::TooSmall {
            size,
            min: MIN_SIZE,
        });
    }
    let sectors = u32::try_from(size / 512).map_err(|_| Error::TooLarge { size })?;
    let opts = FormatVolumeOptions::new()
        .fat_type(fat_type_for(size))
        .total_sectors(sectors)
        .volume_id(volume_id(label))
        .volume_label(label_bytes(label));
    fatfs::format_volume(&mut dev, opts).context("formatting")?;
    dev.rewind().context("rewinding")?;
    let paths = files.iter().map(|f| (f.path.as_str(), f.data.as_slice()));
    disk_fat::write_files(&mut dev, paths, fs_options()).map_err(|e| {
        if is_no_space(&e) {
            Error::NoSpace {
                size,
                needed: files.iter().map(|f| f.data.len() as u64).sum(),
                files: files.len(),
            }
        } else {
            from_disk("filling the new volume")(e)
        }
    })?;
    sync_fsinfo(&mut dev)
}

fn is_no_space(e: &std::io::Error) -> bool {
    // fatfs 0.3 reports a full volume as ErrorKind::Other "No space left on device".
    e.to_string().contains("No space")
}

/// Build a FAT volume of `size` bytes holding `files`, in memory.
/// Deterministic: same inputs, same bytes.
pub fn make_fat(size: u64, label: &str, files: &[FatFile]) -> Result<Vec<u8>> {
    let len = usize::try_from(size).map_err(|_| Error::TooLarge { size })?;
    let mut img = Cursor::new(vec![0u8; len]);
    format_into(&mut img, size, label, files)?;
    Ok(img.into_inner())
}

/// Open a volume; fatfs insists on starting at position 0.
fn open<D: Read + Write + Seek>(img: D) -> Result<FileSystem<D>> {
    Ok(disk_fat::open(img, fs_options()).context("opening the volume (is it FAT?)")?)
}

/// Read one file from a FAT volume (`img` is the volume, not a whole disk;
/// use `disk::PartitionSlice` for a partition of a card image).
pub fn read_file<D: Read + Seek>(img: D, path: &str) -> Result<Vec<u8>> {
    disk_fat::read_file(img, path, u64::MAX)
        .map_err(from_disk(format!("reading {path:?}")))?
        .ok_or_else(|| Error::NotFound {
            path: path.to_string(),
        })
}

/// Create or replace one file in an existing FAT volume, in place, creating
/// its parent directories.
pub fn write_file<D: Read + Write + Seek>(mut img: D, path: &str, data: &[u8]) -> Result<()> {
    disk_fat::write_file(&mut img, path, data, fs_options())
        .map_err(from_disk(format!("writing {path:?}")))?;
    sync_fsinfo(&mut img)
}

/// Every file and directory in the volume, depth first, sorted by name.
pub fn list<D: Read + Seek>(img: D) -> Result<Vec<Entry>> {
    let mut entries = disk_fat::list(img).map_err(from_disk("listing the volume"))?;
    // Component by component: each directory's entries by name, a directory
    // before what is in it.
    entries.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok(entries)
}

/// Volume label and FAT type of a volume, for `inspect`.
pub fn describe<D: Read + Write + Seek>(img: D) -> Result<(String, FatType)> {
    let fs = open(img)?;
    Ok((fs.volume_label().trim_end().to_string(), fs.fat_type()))
}

/// FAT32: the free-cluster count fatfs leaves unset on a volume it formats
/// (`flasher_disk::fat::sync_fsinfo`), so `fsck.vfat -n` is clean.
fn sync_fsinfo<D: Read + Write + Seek>(dev: &mut D) -> Result<()> {
    disk_fat::sync_fsinfo(dev).context("updating the FAT32 FSInfo sector")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<FatFile> {
        vec![
            FatFile::new("EFI/BOOT/BOOTX64.EFI", vec![0xAB; 70_000]),
            FatFile::new("loader/loader.conf", b"timeout 0\n".to_vec()),
            FatFile::new("loader/entries/flasher.conf", b"linux /vmlinuz\n".to_vec()),
            FatFile::new("vmlinuz", vec![1u8; 5000]),
        ]
    }

    #[test]
    fn roundtrip_and_listing() {
        let img = make_fat(16 << 20, "flash-boot", &sample()).unwrap();
        assert_eq!(img.len(), 16 << 20);
        let mut c = Cursor::new(img);
        for f in sample() {
            assert_eq!(read_file(&mut c, &f.path).unwrap(), f.data, "{}", f.path);
        }
        let l = list(&mut c).unwrap();
        let paths: Vec<_> = l.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"EFI/BOOT/BOOTX64.EFI"));
        assert!(paths.contains(&"loader/entries"));
        let (label, ty) = describe(&mut c).unwrap();
        assert_eq!(label, "FLASH-BOOT");
        assert_eq!(ty, FatType::Fat16);
    }

    #[test]
    fn deterministic() {
        let a = make_fat(8 << 20, "x", &sample()).unwrap();
        let b = make_fat(8 << 20, "x", &sample()).unwrap();
        assert!(a == b);
    }

    #[test]
    fn fat32_for_large_volumes() {
        let img = make_fat(600 << 20, "big", &sample()[..1]).unwrap();
        assert_eq!(describe(Cursor::new(img)).unwrap().1, FatType::Fat32);
    }

    #[test]
    fn write_replaces_in_place() {
        let mut c = Cursor::new(make_fat(8 << 20, "x", &sample()).unwrap());
        write_file(&mut c, "vmlinuz", b"short").unwrap();
        write_file(&mut c, "system-connections/wifi", b"[wifi]\n").unwrap();
        assert_eq!(read_file(&mut c, "vmlinuz").unwrap(), b"short");
        assert_eq!(
            read_file(&mut c, "system-connections/wifi").unwrap(),
            b"[wifi]\n"
        );
        assert_eq!(
            read_file(&mut c, "loader/loader.conf").unwrap(),
            b"timeout 0\n"
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(
            make_fat(1 << 20, "x", &[]),
            Err(Error::TooSmall { .. })
        ));
        let mut c = Cursor::new(make_fat(8 << 20, "x", &sample()).unwrap());
        assert!(matches!(
            read_file(&mut c, "nope"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            read_file(&mut c, "loader"),
            Err(Error::IsDirectory { .. })
        ));
        assert!(matches!(
            write_file(&mut c, "../x", b""),
            Err(Error::BadPath { .. })
        ));
        assert!(matches!(
            make_fat(8 << 20, "x", &[FatFile::new("big", vec![0; 9 << 20])]),
            Err(Error::NoSpace { .. })
        ));
    }
}
