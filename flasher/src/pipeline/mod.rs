//! The verified streaming writer: bundle ▶ decompress (worker threads, order
//! kept) ▶ chunk digest ▶ write (O_DIRECT) ▶ flush ▶ read back ▶ compare ▶ first
//! blocks last ▶ partition-table fix-ups. The engine (`engine`) is generic over a
//! [`Target`], so it runs on a `Cursor` in tests and on a [`blockdev::Device`] on
//! the board; pre-write refusals (size, read-only, mounted) are in `preflight`,
//! the table commit in `commit`, the writes after the image in `post`, and the
//! read-back they all share in `readback`.

#[cfg(test)]
mod campaign_tests;
pub mod commit;
mod engine;
#[cfg(test)]
mod fault_tests;
pub mod post;
pub mod preflight;
mod readback;

pub use engine::{write_opened, write_to};

use crate::blockdev::{self, Device};
use crate::progress::Observer;
use flasher_format::bundle;
use flasher_format::units::iec;
use flasher_format::ErrorClass;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors from the write pipeline (bundle errors are `bundle::Error`, open
/// and ioctl errors `blockdev::Error`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("target {path} is {} ({target} bytes), smaller than the image {} ({image} bytes); use a larger disk", iec(*target), iec(*image))]
    TargetTooSmall {
        path: PathBuf,
        target: u64,
        image: u64,
    },
    #[error("target {path} ({device}) is mounted at {mount_point} (device {mounted}); unmount it first, or choose another target")]
    Mounted {
        path: PathBuf,
        device: String,
        mounted: String,
        mount_point: String,
    },
    #[error("target {path} is held by {holders:?} (LVM, RAID or device-mapper); release it first")]
    Held { path: PathBuf, holders: Vec<String> },
    #[error("cannot read {what}: {source}")]
    Probe {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("write error at target bytes {offset}..{} ({} bytes): {source}", offset + length, length)]
    Write {
        offset: u64,
        length: u64,
        #[source]
        source: io::Error,
    },
    #[error("zeroing target bytes {offset}..{} failed: {source}", offset + length)]
    Zero {
        offset: u64,
        length: u64,
        #[source]
        source: io::Error,
    },
    #[error("read-back of target bytes {offset}..{} failed: {source}", offset + length)]
    Read {
        offset: u64,
        length: u64,
        #[source]
        source: io::Error,
    },
    #[error("flushing the target failed: {0}")]
    Sync(#[source] io::Error),
    #[error("verify failed: target bytes {offset}..{} ({what}) differ from the image after a retry; the medium may be failing", offset + length)]
    VerifyMismatch {
        offset: u64,
        length: u64,
        what: String,
    },
    #[error("the image's partition table has no FAT partition ({seen}), but the card carries config to copy onto one; rebuild the image with a FAT boot partition, or remove the config from the card")]
    NoBootFat { seen: String },
    #[error("refused before the first write (the target is untouched): {0}")]
    Refused(#[source] crate::fixup::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::TargetTooSmall { .. } | Error::Mounted { .. } | Error::Held { .. } => {
                ErrorClass::TargetRefused
            }
            Error::Write { .. } | Error::Zero { .. } | Error::Sync(_) | Error::Probe { .. } => {
                ErrorClass::WriteIo
            }
            Error::Read { .. } | Error::VerifyMismatch { .. } => ErrorClass::VerifyMismatch,
            Error::NoBootFat { .. } => ErrorClass::PayloadInvalid,
            // Nothing was written: the image's table or the target's size is
            // the problem, not a post-write step.
            Error::Refused(e) => {
                use crate::fixup::Error as F;
                match e {
                    F::DeviceSmaller { .. }
                    | F::DeviceTooSmallForGpt { .. }
                    | F::PartitionBeyondEnd { .. }
                    | F::BadSectorSize { .. }
                    | F::SectorSizeMismatch { .. } => ErrorClass::TargetRefused,
                    _ => ErrorClass::PayloadInvalid,
                }
            }
            Error::Internal(_) => ErrorClass::Internal,
        }
    }
}

/// Keep glibc from raising its mmap threshold when a 4 MiB chunk buffer is
/// freed: after that, every later chunk and piece comes from the per-thread
/// heaps, which fragment and are not given back. Measured: `mkflasher write`
/// of a 512 MiB image to four targets, 972 MB peak RSS without this, 144 MB
/// with it; `flasher write` of a 512 MiB image, 70-76 MiB without it
/// (docs/benchmarks.md). For the host binaries; a no-op off glibc.
pub fn fixed_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator tunable; no pointers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Whether to read the device back after writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Read back every written or zeroed byte, bypassing the page cache.
    #[default]
    Full,
    /// Trust the writes (chunk digests are still checked before writing).
    None,
}

/// Options for a write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub verify: Verify,
    /// Grow the last partition to the end of a larger target (GPT and MBR).
    pub expand_data: bool,
    /// Root of /proc and /sys for the mounted-target check ("/" on a real system).
    pub root: PathBuf,
    /// Try O_DIRECT (falls back with a log line where refused).
    pub direct: bool,
    /// Decompression threads.
    pub workers: usize,
    /// Recompute the whole-image SHA-256 while streaming and compare it before
    /// the first blocks are written. Off by default: it hashes the zeros of every
    /// must-be-zero and dont-care range too (measured: 2.2 s of a 3 s write of a
    /// 512 MiB image with 25 % data, worse on boards without SHA instructions),
    /// and it adds no detection power over what always runs: the header pins
    /// the manifest's SHA-256, the manifest pins the extent map and every
    /// chunk's SHA-256, each chunk is checked before its bytes are written, and
    /// the device is read back. It guards only against a bug in our own extent
    /// bookkeeping, which the property tests cover.
    pub image_digest: bool,
    /// Leave the table commit (GPT headers, sector 0) to the caller: the report
    /// carries it in `commit`, and the caller applies it after its own writes
    /// (bootloader, config). Off: the engine commits as its last step.
    pub defer_commit: bool,
    /// Refuse, before the first write, an image whose table has no FAT
    /// partition (config injection needs one).
    pub require_boot_fat: bool,
    /// Read each range of the target before writing it and write only the
    /// blocks that differ (re-flashing a board that holds the same or a
    /// similar image). Every byte is still read from the device and compared:
    /// chunks found equal by that first read (O_DIRECT) are verified by it,
    /// chunks with a rewritten block are read back after the flush
    /// (docs/fail-closed.md).
    pub skip_equal: bool,
    /// Trusted signing keys: with any, only bundles signed by one of them are
    /// written (docs/SECURITY.md). Checked before the first write.
    pub trust: flasher_format::bundle::Trust,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            verify: Verify::Full,
            expand_data: false,
            root: PathBuf::from("/"),
            direct: true,
            workers: usable_cpus().unwrap_or(2).clamp(1, 4),
            image_digest: false,
            defer_commit: false,
            require_boot_fat: false,
            skip_equal: false,
            trust: Default::default(),
        }
    }
}

/// How many CPUs this process may run on (its affinity mask), the base of the
/// default worker count. Not `std::thread::available_parallelism`: that also
/// reads cgroup CPU quotas from `/proc/self/cgroup` and `/sys/fs/cgroup`,
/// about 5 KB of the static `/init` (docs/building.md), and the board's PID 1
/// runs in no cgroup; the host caps the count at 4 anyway.
pub fn usable_cpus() -> Option<usize> {
    // SAFETY: cpu_set_t is plain data, for which all-zero is a valid value
    // (the empty set); sched_getaffinity fills at most size_of::<cpu_set_t>()
    // bytes of it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; the size passed is the set's own size.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if r != 0 {
        return None;
    }
    // SAFETY: `set` was filled by sched_getaffinity above.
    let n = unsafe { libc::CPU_COUNT(&set) };
    usize::try_from(n).ok().filter(|&n| n > 0)
}

/// How long each phase took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PhaseDurations {
    pub preflight: Duration,
    pub write: Duration,
    pub verify: Duration,
    /// Writing and verifying the held-back first/last blocks, then fix-ups.
    pub finish: Duration,
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WriteReport {
    pub image_sha256: String,
    /// Who signed the bundle ("unsigned" or the key's fingerprint).
    pub signer: String,
    pub image_size: u64,
    pub target_size: u64,
    /// Data bytes written (image data, including the held-back blocks).
    pub bytes_written: u64,
    /// Must-be-zero bytes zeroed.
    pub bytes_zeroed: u64,
    /// Of those data and must-be-zero bytes, the ones not written because the
    /// target already held them (`skip_equal`).
    pub bytes_skipped: u64,
    /// Bytes read back and compared (0 with `--verify none`).
    pub bytes_verified: u64,
    /// Image bytes held back and written last (the first and last blocks).
    pub held_back: u64,
    /// Whether the whole-image digest was recomputed and matched.
    pub image_digest_checked: bool,
    /// Whether the target was written with O_DIRECT.
    pub direct_io: bool,
    pub durations: PhaseDurations,
    /// What the partition-table fix-ups did, if they ran.
    pub fixup: Option<crate::fixup::FixupReport>,
    /// The table commit not yet applied (`defer_commit`); the caller's last write.
    #[serde(skip)]
    pub commit: Option<commit::TableCommit>,
}

/// A write destination for the engine: positioned I/O plus zeroing, syncing
/// and cache dropping. `Read + Write + Seek` is for the partition-table fix-ups.
pub trait Target: Read + Write + Seek + Send {
    fn size(&self) -> u64;
    fn sector_size(&self) -> u64 {
        512
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Make the range read as zeros.
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()>;
    fn sync(&mut self) -> io::Result<()>;
    /// Make the next reads come from the medium, not a cache.
    fn drop_cache(&mut self) {}
    fn is_direct(&self) -> bool {
        false
    }
}

impl Target for Device {
    fn size(&self) -> u64 {
        Device::size(self)
    }
    fn sector_size(&self) -> u64 {
        Device::sector_size(self)
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        Device::write_at(self, offset, data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Device::read_at(self, offset, buf)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        Device::zero_range(self, offset, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        Device::sync(self)
    }
    fn drop_cache(&mut self) {
        Device::drop_cache(self)
    }
    fn is_direct(&self) -> bool {
        Device::is_direct(self)
    }
}

/// Any `Read + Write + Seek` (a `Cursor`, a plain `File`) as a [`Target`] of
/// fixed size (its length when wrapped). Zeros are written.
pub struct Plain<T> {
    pub inner: T,
    size: u64,
}

impl<T: Read + Write + Seek + Send> Plain<T> {
    pub fn new(mut inner: T) -> io::Result<Self> {
        let size = inner.seek(SeekFrom::End(0))?;
        inner.seek(SeekFrom::Start(0))?;
        Ok(Plain { inner, size })
    }
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read> Read for Plain<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<T: Write> Write for Plain<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<T: Seek> Seek for Plain<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<T: Read + Write + Seek + Send> Target for Plain<T> {
    fn size(&self) -> u64 {
        self.size
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if offset + data.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "write beyond target end",
            ));
        }
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.write_all(data)
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.read_exact(buf)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        static Z: [u8; 64 << 10] = [0; 64 << 10];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(Z.len() as u64) as usize;
            self.write_at(offset + done, &Z[..n])?;
            done += n as u64;
        }
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write the bundle read from `payload` onto the block device or regular file
/// at `target`: read and validate the manifest, refuse unsuitable targets
/// (too small, read-only, mounted, held), then stream, verify, write the
/// first blocks last and fix up the partition table.
pub fn write(
    payload: impl Read,
    target: &Path,
    opts: &WriteOptions,
    obs: &dyn Observer,
) -> crate::Result<WriteReport> {
    let mut payload = payload;
    let opened = bundle::read_manifest(&mut payload)?;
    write_bundle(&opened, payload, target, opts, obs)
}

/// [`write`] for a bundle whose manifest the caller has read (and checked
/// more against, as the init does with the card's files); `payload` is at
/// its first chunk.
pub fn write_bundle(
    opened: &bundle::Opened,
    payload: impl Read,
    target: &Path,
    opts: &WriteOptions,
    obs: &dyn Observer,
) -> crate::Result<WriteReport> {
    let t0 = std::time::Instant::now();
    let mut dev = open_target(target, opts)?;
    let before = t0.elapsed();
    let mut report = write_opened(opened, payload, &mut dev, opts, obs, target)?;
    report.durations.preflight += before;
    Ok(report)
}

/// Open `target` for [`write_opened`]: refuse a mounted or held disk before
/// even opening it for writing, then open it exclusively (O_EXCL on block
/// devices), with O_DIRECT unless `opts.direct` is off.
pub fn open_target(target: &Path, opts: &WriteOptions) -> crate::Result<Device> {
    preflight::check_not_in_use(target, &opts.root)?;
    Ok(Device::open(
        target,
        blockdev::OpenOptions {
            write: true,
            direct: opts.direct,
            exclusive: true,
        },
    )?)
}

#[cfg(test)]
mod tests {
    /// The affinity count matches the kernel's own account of this process's
    /// allowed CPUs (`Cpus_allowed_list` in /proc/self/status, e.g. "0-3,8").
    #[test]
    fn usable_cpus_counts_the_affinity_mask() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim();
        let mut expected = 0;
        for part in list.split(',') {
            expected += match part.split_once('-') {
                Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
                None => 1,
            };
        }
        assert_eq!(super::usable_cpus(), Some(expected));
    }
}
