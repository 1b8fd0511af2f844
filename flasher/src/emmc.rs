//! eMMC hardware boot partitions (`mmcblkNboot0/1`).
//!
//! The kernel exposes them read-only (`force_ro` = 1). To write one we clear
//! `/sys/block/<part>/force_ro`, write through `/dev/<part>`, and set `force_ro`
//! back (linux `Documentation/driver-api/mmc/mmc-dev-parts.rst`). The
//! [`ForceRoGuard`] restores the old value on every path, errors and panics
//! included, so a failed flash never leaves a boot partition writable.
//! RPMB and the user area are refused here by name.
//!
//! - [`health`]: the health gate's sysfs reading and verdict (before writing).
//! - [`ext_csd`]: EXT_CSD PARTITION_CONFIG, which partition the eMMC boots from.

pub mod ext_csd;
pub mod health;

use flasher_format::io::IoContext;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Errors from `emmc`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    #[error("{name:?} is not an eMMC boot partition (expected mmcblkNboot0 or mmcblkNboot1)")]
    NotBootPartition { name: String },
    #[error("{path}: unexpected force_ro value {value:?} (expected 0 or 1)")]
    BadForceRo { path: String, value: String },
    #[error("{part}: {len} bytes at offset {offset} do not fit in the {size}-byte boot partition")]
    TooLarge {
        part: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{part}: bytes {offset}..{} ({len} bytes, bootloader) read back different from what was written, after a retry; the eMMC may be failing", offset + len)]
    Mismatch { part: String, offset: u64, len: u64 },
    #[error("{part}: could not restore force_ro to {value:?}: {source}; the boot partition is left writable")]
    Restore {
        part: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing {device} ({identity}): the eMMC is worn out: {worn}; replace this unit's eMMC, or (lab use only) put flasher.health=off on the kernel command line to flash it anyway")]
    Worn {
        device: String,
        identity: String,
        worn: health::Worn,
    },
    #[error("{device}: could not open it or read its EXT_CSD (CMD8 through the MMC_IOC_CMD ioctl): {source}; is the target an eMMC, and the kernel's MMC block driver in use? The partition table was not made live")]
    ExtCsdRead {
        device: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: the eMMC refused to boot from {enable}: CMD6 SWITCH of PARTITION_CONFIG (EXT_CSD[179]) to 0x{value:02x} failed: {source}; check that this eMMC has boot partitions and is not write-protected, or remove emmc.boot_enable from the board file. The partition table was not made live")]
    ExtCsdSwitch {
        device: String,
        enable: boards::BootEnable,
        value: u8,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: after switching PARTITION_CONFIG (EXT_CSD[179]) to 0x{wanted:02x} to boot from {enable}, it reads back 0x{read:02x}; the eMMC did not take it (a locked boot configuration?). The partition table was not made live")]
    ExtCsdNotSet {
        device: String,
        enable: boards::BootEnable,
        wanted: u8,
        read: u8,
    },
}

impl Error {
    /// A worn target is refused (before any write); everything else here is
    /// a post-write step (the bootloader) failing.
    pub fn class(&self) -> flasher_format::ErrorClass {
        match self {
            Error::Worn { .. } => flasher_format::ErrorClass::TargetRefused,
            _ => flasher_format::ErrorClass::PostWrite,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Check that `part` names a hardware boot partition: `mmcblk<N>boot<0|1>`.
pub fn check_boot_partition_name(part: &str) -> Result<()> {
    let ok = part
        .strip_prefix("mmcblk")
        .and_then(|r| r.split_once("boot"))
        .is_some_and(|(n, b)| {
            !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && (b == "0" || b == "1")
        });
    if ok {
        Ok(())
    } else {
        Err(Error::NotBootPartition {
            name: part.to_string(),
        })
    }
}

fn sys_path(root: &Path, part: &str, file: &str) -> PathBuf {
    root.join("sys/block").join(part).join(file)
}

/// Clears `force_ro` on a boot partition while alive; restores the previous value
/// when dropped (or explicitly with [`ForceRoGuard::restore`], which reports errors).
#[derive(Debug)]
pub struct ForceRoGuard {
    part: String,
    path: PathBuf,
    old: String,
    armed: bool,
}

impl ForceRoGuard {
    /// Remember `<root>/sys/block/<part>/force_ro` and write `0` into it.
    pub fn clear(root: &Path, part: &str) -> Result<Self> {
        check_boot_partition_name(part)?;
        let path = sys_path(root, part, "force_ro");
        let old = std::fs::read_to_string(&path)
            .with_context(|| format!("read {}", path.display()))?
            .trim()
            .to_string();
        if old != "0" && old != "1" {
            return Err(Error::BadForceRo {
                path: path.display().to_string(),
                value: old,
            });
        }
        // Armed before the write: if writing "0" half-worked, drop still restores.
        let guard = ForceRoGuard {
            part: part.to_string(),
            path,
            old,
            armed: true,
        };
        std::fs::write(&guard.path, "0")
            .with_context(|| format!("write 0 to {}", guard.path.display()))?;
        Ok(guard)
    }

    /// The value `force_ro` had before, and will get back.
    pub fn previous(&self) -> &str {
        &self.old
    }

    /// Restore now and report failure (drop can only log it).
    pub fn restore(mut self) -> Result<()> {
        self.armed = false;
        self.write_back()
    }

    fn write_back(&self) -> Result<()> {
        std::fs::write(&self.path, &self.old).map_err(|source| Error::Restore {
            part: self.part.clone(),
            value: self.old.clone(),
            source,
        })
    }
}

impl Drop for ForceRoGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.write_back() {
                tracing::error!("{e}");
            }
        }
    }
}

/// Write `data` at byte `offset` of `w`, then flush. Generic so it is tested on
/// an in-memory cursor.
pub fn write_at<W: Write + Seek>(w: &mut W, data: &[u8], offset: u64) -> std::io::Result<()> {
    w.seek(SeekFrom::Start(offset))?;
    w.write_all(data)?;
    w.flush()
}

/// Whether `f` holds `data` at `offset`, read after dropping the cached pages
/// (the device is read, not what we just wrote into the cache).
fn read_back_matches(f: &mut std::fs::File, data: &[u8], offset: u64) -> std::io::Result<bool> {
    // Advice only, but honoured for clean pages of a block device after fsync.
    let _ = nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(f),
        0,
        0,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
    );
    let mut buf = vec![0u8; data.len()];
    f.seek(SeekFrom::Start(offset))?;
    std::io::Read::read_exact(f, &mut buf)?;
    Ok(buf == data)
}

/// Write `data` at `offset` into the boot partition `part` (`mmcblk1boot0`) through
/// `<root>/dev/<part>`, with `force_ro` cleared for the duration and restored after,
/// whatever happens. The size comes from `<root>/sys/block/<part>/size`.
pub fn write_boot_partition(root: &Path, part: &str, data: &[u8], offset: u64) -> Result<()> {
    check_boot_partition_name(part)?;
    let size_path = sys_path(root, part, "size");
    let sectors: u64 = std::fs::read_to_string(&size_path)
        .with_context(|| format!("read {}", size_path.display()))?
        .trim()
        .parse()
        .map_err(|e| {
            Error::Io(flasher_format::io::IoError::new(
                format!("parse {}", size_path.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            ))
        })?;
    let size = sectors * 512;
    let len = data.len() as u64;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::TooLarge {
            part: part.to_string(),
            offset,
            len,
            size,
        });
    }
    let guard = ForceRoGuard::clear(root, part)?;
    let dev = root.join("dev").join(part);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(&dev)
        .with_context(|| format!("open {}", dev.display()))
        .map_err(Error::from)
        .and_then(|mut f| {
            // Written, flushed and read back past the page cache; retried once.
            for attempt in 0..2 {
                write_at(&mut f, data, offset)
                    // Reach the device, not the cache, before force_ro goes back on.
                    .and_then(|()| f.sync_all())
                    .with_context(|| format!(
                            "write {len} bytes at offset {offset} to {}",
                            dev.display()
                        ))?;
                if read_back_matches(&mut f, data, offset).with_context(|| format!("read back {len} bytes at offset {offset} of {}", dev.display()))? {
                    return Ok(());
                }
                if attempt == 0 {
                    tracing::warn!("{part}: bootloader read back wrong at bytes {offset}..{}; writing once more", offset + len);
                }
            }
            Err(Error::Mismatch {
                part: part.to_string(),
                offset,
                len,
            })
        });
    // Restore explicitly so a restore failure is reported; the write error, if
    // any, is the more important one.
    let restored = guard.restore();
    result?;
    restored
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::FakeRoot;
    use std::io::Cursor;

    fn emmc_root() -> (tempfile::TempDir, FakeRoot) {
        let t = tempfile::tempdir().unwrap();
        let mut r = FakeRoot::new(t.path()).unwrap();
        r.mmc("platform/ocp/481d8000.mmc", 1, 1, "MMC", 4 << 30, true)
            .unwrap();
        (t, r)
    }

    fn force_ro(root: &Path, part: &str) -> String {
        std::fs::read_to_string(sys_path(root, part, "force_ro"))
            .unwrap()
            .trim()
            .to_string()
    }

    #[test]
    fn write_lands_and_force_ro_is_restored() {
        let (t, _r) = emmc_root();
        write_boot_partition(t.path(), "mmcblk1boot0", b"tiboot3", 4096).unwrap();
        let dev = std::fs::read(t.path().join("dev/mmcblk1boot0")).unwrap();
        assert_eq!(&dev[4096..4103], b"tiboot3");
        assert_eq!(dev.len(), 4 << 20);
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "1");
    }

    #[test]
    fn guard_clears_while_alive_and_restores_on_drop() {
        let (t, _r) = emmc_root();
        {
            let g = ForceRoGuard::clear(t.path(), "mmcblk1boot1").unwrap();
            assert_eq!(g.previous(), "1");
            assert_eq!(force_ro(t.path(), "mmcblk1boot1"), "0");
        }
        assert_eq!(force_ro(t.path(), "mmcblk1boot1"), "1");
    }

    #[test]
    fn restored_when_the_write_fails() {
        let (t, _r) = emmc_root();
        // The device node is missing: open fails after force_ro was cleared.
        std::fs::remove_file(t.path().join("dev/mmcblk1boot0")).unwrap();
        let err = write_boot_partition(t.path(), "mmcblk1boot0", b"x", 0).unwrap_err();
        assert!(matches!(err, Error::Io(_)), "{err:?}");
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "1");
    }

    #[test]
    fn restored_when_a_writer_errors_or_panics() {
        struct Failing;
        impl Write for Failing {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("EIO"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl Seek for Failing {
            fn seek(&mut self, _: SeekFrom) -> std::io::Result<u64> {
                Ok(0)
            }
        }
        let (t, _r) = emmc_root();
        let outcome = (|| -> Result<()> {
            let _g = ForceRoGuard::clear(t.path(), "mmcblk1boot0")?;
            write_at(&mut Failing, b"data", 0).context("test")?;
            Ok(())
        })();
        assert!(outcome.is_err());
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "1");

        let root = t.path().to_path_buf();
        let panicked = std::panic::catch_unwind(|| {
            let _g = ForceRoGuard::clear(&root, "mmcblk1boot0").unwrap();
            panic!("writer thread died");
        });
        assert!(panicked.is_err());
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "1");
    }

    #[test]
    fn an_already_writable_partition_stays_as_it_was() {
        let (t, _r) = emmc_root();
        std::fs::write(sys_path(t.path(), "mmcblk1boot0", "force_ro"), "0\n").unwrap();
        write_boot_partition(t.path(), "mmcblk1boot0", b"x", 0).unwrap();
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "0");
    }

    #[test]
    fn refuses_what_is_not_a_boot_partition_or_does_not_fit() {
        let (t, _r) = emmc_root();
        for name in [
            "mmcblk1",
            "mmcblk1rpmb",
            "mmcblk1boot2",
            "sda",
            "mmcblkboot0",
            "mmcblk1p1",
        ] {
            assert!(matches!(
                write_boot_partition(t.path(), name, b"x", 0),
                Err(Error::NotBootPartition { .. })
            ));
        }
        let err = write_boot_partition(t.path(), "mmcblk1boot0", b"xy", (4 << 20) - 1).unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err:?}");
        assert!(matches!(
            write_boot_partition(t.path(), "mmcblk1boot0", b"x", u64::MAX),
            Err(Error::TooLarge { .. })
        ));
        // Nothing was touched.
        assert_eq!(force_ro(t.path(), "mmcblk1boot0"), "1");
        std::fs::write(sys_path(t.path(), "mmcblk1boot0", "force_ro"), "maybe").unwrap();
        assert!(matches!(
            ForceRoGuard::clear(t.path(), "mmcblk1boot0"),
            Err(Error::BadForceRo { .. })
        ));
    }

    #[test]
    fn write_at_on_a_cursor() {
        let mut c = Cursor::new(vec![0u8; 16]);
        write_at(&mut c, b"abc", 5).unwrap();
        assert_eq!(&c.get_ref()[4..9], b"\0abc\0");
    }
}
