//! Block-device and target-file access: opening with O_DIRECT (and O_EXCL on
//! block devices), the ioctls (BLKGETSIZE64, BLKSSZGET, BLKROGET, BLKZEROOUT,
//! BLKFLSBUF), aligned buffers, and positioned I/O that keeps O_DIRECT's
//! alignment rules (read-modify-write for unaligned edges). Everything
//! device-specific lives here; the pipeline sees a [`Device`].

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Memory alignment of every buffer handed to O_DIRECT I/O. 4096 satisfies
/// every logical block size up to 4 KiB and every page size in use.
pub const ALIGN: usize = 4096;
/// Buffers of at least this size are aligned to it and backed by transparent
/// huge pages where the kernel offers them ([`AlignedBuf::try_zeroed`]).
const HUGE: usize = 2 << 20;
/// Bounce-buffer size for unaligned I/O and written zeros.
const BOUNCE: usize = 1 << 20;

/// Errors from opening or querying a target.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("target {path} is read-only ({reason}); clear the write protection (e.g. `blockdev --setrw`) or choose another target")]
    ReadOnly { path: PathBuf, reason: String },
    #[error("target {path} is in use by the kernel (opening it exclusively failed with EBUSY): a filesystem on it is mounted or it is part of a RAID/LVM/dm device; unmount it first")]
    Busy { path: PathBuf },
    #[error("target {path} is neither a block device nor a regular file")]
    NotBlockOrFile { path: PathBuf },
    #[error("{name} on {path} failed: {source}")]
    Ioctl {
        path: PathBuf,
        name: &'static str,
        #[source]
        source: io::Error,
    },
}

impl Error {
    pub fn class(&self) -> flasher_format::ErrorClass {
        match self {
            Error::ReadOnly { .. } | Error::Busy { .. } | Error::NotBlockOrFile { .. } => {
                flasher_format::ErrorClass::TargetRefused
            }
            Error::Open { .. } | Error::Ioctl { .. } => flasher_format::ErrorClass::WriteIo,
        }
    }
}

/// A heap buffer aligned to [`ALIGN`], for O_DIRECT. Its capacity is rounded
/// up to a multiple of `ALIGN`; `len` is what the slice shows.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zero-filled buffer of `len` bytes.
    /// A small fixed-size buffer; aborts if even that cannot be allocated.
    /// Buffers sized from input use [`AlignedBuf::try_zeroed`].
    pub fn zeroed(len: usize) -> Self {
        Self::try_zeroed(len).unwrap_or_else(|| {
            let cap = len.div_ceil(ALIGN).max(1) * ALIGN;
            std::alloc::handle_alloc_error(
                Layout::from_size_align(cap, ALIGN).unwrap_or(Layout::new::<u8>()),
            )
        })
    }

    /// `None` when the allocation fails (or the size is absurd), so a large
    /// buffer is an error for the caller to report, never an abort of PID 1.
    pub fn try_zeroed(len: usize) -> Option<Self> {
        let cap = len.checked_next_multiple_of(ALIGN)?.max(ALIGN);
        if cap >= HUGE {
            return Self::try_zeroed_huge(len, cap.checked_next_multiple_of(HUGE)?);
        }
        let layout = Layout::from_size_align(cap, ALIGN).ok()?;
        // SAFETY: layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        Some(AlignedBuf { ptr, len, cap })
    }

    /// Chunk-sized buffers: aligned to and rounded up to [`HUGE`], and marked
    /// for transparent huge pages before their first touch, so zeroing one
    /// takes a page fault per 2 MiB instead of per 4 KiB (a verified write's
    /// ~20,000 faults of its buffers were a tenth of its run time on a small
    /// image, docs/benchmarks.md). Where THP is off or absent (the ARM boards'
    /// kernels) the advice is refused and ordinary pages are used.
    fn try_zeroed_huge(len: usize, cap: usize) -> Option<Self> {
        let layout = Layout::from_size_align(cap, HUGE).ok()?;
        // SAFETY: layout has non-zero size.
        let ptr = NonNull::new(unsafe { alloc(layout) })?;
        // SAFETY: advice on memory we own (`cap` bytes at `ptr`); its result
        // only changes the page size. Then every byte is written before any
        // is read, so the buffer is initialised as `alloc_zeroed`'s would be.
        unsafe {
            libc::madvise(ptr.as_ptr().cast(), cap, libc::MADV_HUGEPAGE);
            std::ptr::write_bytes(ptr.as_ptr(), 0, cap);
        }
        Some(AlignedBuf { ptr, len, cap })
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Change the visible length (at most the capacity); new bytes are whatever was there.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len beyond capacity");
        self.len = len;
    }
    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let align = if self.cap >= HUGE { HUGE } else { ALIGN };
        // SAFETY: allocated in `try_zeroed` with exactly this layout (the
        // capacity decides the alignment there too).
        unsafe {
            dealloc(
                self.ptr.as_ptr(),
                Layout::from_size_align_unchecked(self.cap, align),
            )
        }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialized (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}
impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we have &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}
impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

/// What a target path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Block,
    File,
}

/// How to open a target.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    pub write: bool,
    /// Try O_DIRECT (falls back with a log line where refused).
    pub direct: bool,
    /// O_EXCL on block devices: the kernel refuses if mounted or held.
    pub exclusive: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            write: true,
            direct: true,
            exclusive: true,
        }
    }
}

/// The `open(2)` flags for a target: O_EXCL on block devices whenever
/// `exclusive` is asked, with or without O_DIRECT, so the buffered fallback
/// keeps the exclusive claim.
fn open_flags(kind: Kind, exclusive: bool, direct: bool) -> libc::c_int {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if kind == Kind::Block && exclusive {
        flags |= libc::O_EXCL;
    }
    flags
}

/// Turn O_DIRECT off on an open descriptor, keeping every other flag.
fn clear_direct(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no pointers involved.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open target: a block device or a regular file, with positioned I/O that
/// honours O_DIRECT alignment. Also `Read + Write + Seek` (for the partition-table
/// fix-ups), bounded by the target's size.
pub struct Device {
    file: File,
    /// Regular files only: a buffered descriptor for the last partial block,
    /// which O_DIRECT cannot write without growing the file.
    buffered: Option<File>,
    path: PathBuf,
    kind: Kind,
    direct: bool,
    /// O_DIRECT I/O granularity: logical sector size on block devices, 4096 on files.
    granularity: u64,
    sector_size: u64,
    size: u64,
    rdev: Option<(u32, u32)>,
    pos: u64,
    bounce: AlignedBuf,
    zeros: AlignedBuf,
    warned_zeroout: bool,
}

// The casts are no-ops where the ioctl request type is u64 (glibc) but not on
// musl (c_int), so they stay.
#[allow(clippy::unnecessary_cast)]
mod ioc {
    // Values from <linux/fs.h>. BLKGETSIZE64 is declared with size_t but the
    // kernel always writes a u64; the request number uses sizeof(size_t).
    pub const BLKROGET: u64 = nix::request_code_none!(0x12, 94) as u64;
    pub const BLKFLSBUF: u64 = nix::request_code_none!(0x12, 97) as u64;
    pub const BLKSSZGET: u64 = nix::request_code_none!(0x12, 104) as u64;
    pub const BLKGETSIZE64: u64 =
        nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()) as u64;
    pub const BLKZEROOUT: u64 = nix::request_code_none!(0x12, 127) as u64;
}

fn ioctl_ptr<T>(file: &File, req: u64, arg: *mut T) -> io::Result<()> {
    // SAFETY: every call site passes a pointer to a value of the type the
    // request expects (int, u64 or [u64; 2]) that lives across the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn round_down(x: u64, g: u64) -> u64 {
    x / g * g
}
fn round_up(x: u64, g: u64) -> u64 {
    x.div_ceil(g) * g
}

/// The descriptor the device's I/O goes through (the host tool checks that
/// it is open on the drive it showed: `fstat`, `BLKGETDISKSEQ`).
impl std::os::fd::AsFd for Device {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Device {
    /// Open `path` (block device or regular file).
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Device, Error> {
        let open_err = |source: io::Error| Error::Open {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        let kind = if meta.file_type().is_block_device() {
            Kind::Block
        } else if meta.is_file() {
            Kind::File
        } else {
            return Err(Error::NotBlockOrFile {
                path: path.to_owned(),
            });
        };
        let rdev = (kind == Kind::Block).then(|| {
            let r = meta.rdev();
            (libc::major(r), libc::minor(r))
        });
        let open = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.read(true).write(opts.write);
            o.custom_flags(open_flags(kind, opts.exclusive, direct))
                .open(path)
        };
        let classify = |e: io::Error| match e.raw_os_error() {
            Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM) if opts.write => {
                Error::ReadOnly {
                    path: path.to_owned(),
                    reason: e.to_string(),
                }
            }
            Some(libc::EBUSY) => Error::Busy {
                path: path.to_owned(),
            },
            _ => Error::Open {
                path: path.to_owned(),
                source: e,
            },
        };
        let (file, direct) = match open(opts.direct) {
            Ok(f) => (f, opts.direct),
            Err(e) if opts.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(
                    "O_DIRECT refused on {} (EINVAL, e.g. tmpfs); using buffered I/O and dropping the page cache before verifying",
                    path.display()
                );
                (open(false).map_err(classify)?, false)
            }
            Err(e) => return Err(classify(e)),
        };
        let (size, sector_size) = match kind {
            Kind::Block => {
                let mut ro: libc::c_int = 0;
                ioctl_ptr(&file, ioc::BLKROGET, &mut ro).map_err(|source| Error::Ioctl {
                    path: path.to_owned(),
                    name: "BLKROGET",
                    source,
                })?;
                if ro != 0 && opts.write {
                    return Err(Error::ReadOnly {
                        path: path.to_owned(),
                        reason: "the kernel reports the block device read-only (BLKROGET)".into(),
                    });
                }
                let mut size: u64 = 0;
                ioctl_ptr(&file, ioc::BLKGETSIZE64, &mut size).map_err(|source| Error::Ioctl {
                    path: path.to_owned(),
                    name: "BLKGETSIZE64",
                    source,
                })?;
                let mut ssz: libc::c_int = 0;
                ioctl_ptr(&file, ioc::BLKSSZGET, &mut ssz).map_err(|source| Error::Ioctl {
                    path: path.to_owned(),
                    name: "BLKSSZGET",
                    source,
                })?;
                (size, (ssz as u64).max(512))
            }
            Kind::File => (meta.len(), 512),
        };
        let buffered = if kind == Kind::File && direct && opts.write {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(classify)?,
            )
        } else {
            None
        };
        let granularity = match kind {
            Kind::Block => sector_size,
            Kind::File => 4096,
        };
        Ok(Device {
            file,
            buffered,
            path: path.to_owned(),
            kind,
            direct,
            granularity,
            sector_size,
            size,
            rdev,
            pos: 0,
            bounce: AlignedBuf::zeroed(BOUNCE.max(granularity as usize)),
            zeros: AlignedBuf::zeroed(BOUNCE),
            warned_zeroout: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Logical sector size (512 for regular files).
    pub fn sector_size(&self) -> u64 {
        self.sector_size
    }
    /// Whether I/O bypasses the page cache.
    pub fn is_direct(&self) -> bool {
        self.direct
    }
    /// major:minor of a block device.
    pub fn rdev(&self) -> Option<(u32, u32)> {
        self.rdev
    }

    /// Some filesystems accept O_DIRECT at open but refuse the I/O (EINVAL):
    /// reopen buffered, once, and say so.
    fn fall_back_to_buffered(&mut self, err: &io::Error) -> io::Result<()> {
        tracing::warn!(
            "O_DIRECT I/O refused on {} ({err}); continuing with buffered I/O and cache drops before verifying",
            self.path.display()
        );
        // Clear O_DIRECT on the open descriptor (F_SETFL may change it) rather
        // than reopening: a reopen would drop the O_EXCL claim on a block device
        // (and could not take it again while this descriptor holds it), leaving
        // a window where a mount or another writer gets the target.
        clear_direct(&self.file)?;
        self.direct = false;
        self.buffered = None;
        Ok(())
    }

    fn aligned(&self, off: u64, data: &[u8]) -> bool {
        off % self.granularity == 0
            && (data.len() as u64) % self.granularity == 0
            && (data.as_ptr() as usize) % ALIGN == 0
    }

    /// Write all of `data` at byte `off`.
    pub fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        loop {
            match self.write_at_once(off, data) {
                // Interrupted here means "switched to buffered I/O, redo".
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn write_at_once(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if off + data.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "write {}..{} beyond target end {}",
                    off,
                    off + data.len() as u64,
                    self.size
                ),
            ));
        }
        if !self.direct {
            return self.file.write_all_at(data, off);
        }
        if self.aligned(off, data) {
            let r = self.file.write_all_at(data, off);
            return self.direct_result(r);
        }
        // Write the aligned middle straight from the caller's buffer when its
        // memory is aligned there too; only the unaligned edges are bounced.
        let g = self.granularity;
        let end = off + data.len() as u64;
        let (a, b) = (round_up(off, g), round_down(end, g));
        if a < b && b <= self.size && (data.as_ptr() as usize + (a - off) as usize) % ALIGN == 0 {
            if a > off {
                self.write_bounced(off, &data[..(a - off) as usize])?;
            }
            let r = self
                .file
                .write_all_at(&data[(a - off) as usize..(b - off) as usize], a);
            self.direct_result(r)?;
            if end > b {
                self.write_bounced(b, &data[(b - off) as usize..])?;
            }
            return Ok(());
        }
        self.write_bounced(off, data)
    }

    /// Unaligned write through the bounce buffer, reading partial edge blocks first.
    fn write_bounced(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let g = self.granularity;
        let end = off + data.len() as u64;
        let mut cur = off;
        while cur < end {
            let ws = round_down(cur, g);
            let we = round_up(end, g).min(ws + BOUNCE as u64);
            let piece_end = end.min(we);
            let src = &data[(cur - off) as usize..(piece_end - off) as usize];
            if we > self.size {
                // The last partial block of a regular file: O_DIRECT would have
                // to write past EOF, so write these bytes buffered.
                match &self.buffered {
                    Some(b) => b.write_all_at(src, cur)?,
                    None => self.file.write_all_at(src, cur)?,
                }
                cur = piece_end;
                continue;
            }
            let n = (we - ws) as usize;
            self.bounce.set_len(n);
            if ws < cur {
                let r = self.file.read_exact_at(&mut self.bounce[..g as usize], ws);
                self.direct_result(r)?;
            }
            if piece_end < we {
                let r = self
                    .file
                    .read_exact_at(&mut self.bounce[n - g as usize..n], we - g);
                self.direct_result(r)?;
            }
            self.bounce[(cur - ws) as usize..(piece_end - ws) as usize].copy_from_slice(src);
            let r = self.file.write_all_at(&self.bounce[..n], ws);
            self.direct_result(r)?;
            cur = piece_end;
        }
        Ok(())
    }

    fn direct_result(&mut self, r: io::Result<()>) -> io::Result<()> {
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && self.direct => {
                // Switch, then report Interrupted so the public entry point
                // redoes the whole operation on the buffered descriptor.
                self.fall_back_to_buffered(&e)?;
                Err(io::Error::new(
                    io::ErrorKind::Interrupted,
                    "switched to buffered I/O",
                ))
            }
            r => r,
        }
    }

    /// Fill `buf` from byte `off`.
    pub fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        loop {
            match self.read_at_once(off, buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    fn read_at_once(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        if off + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read {}..{} beyond target end {}",
                    off,
                    off + buf.len() as u64,
                    self.size
                ),
            ));
        }
        if !self.direct {
            return self.file.read_exact_at(buf, off);
        }
        if self.aligned(off, buf) {
            let r = self.file.read_exact_at(buf, off);
            return self.direct_result(r);
        }
        let g = self.granularity;
        let end = off + buf.len() as u64;
        let (a, b) = (round_up(off, g), round_down(end, g));
        if a < b && (buf.as_ptr() as usize + (a - off) as usize) % ALIGN == 0 {
            // Aligned middle straight into the caller's buffer, edges bounced.
            let (head, rest) = buf.split_at_mut((a - off) as usize);
            let (mid, tail) = rest.split_at_mut((b - a) as usize);
            self.read_bounced(off, head)?;
            let r = self.file.read_exact_at(mid, a);
            self.direct_result(r)?;
            return self.read_bounced(b, tail);
        }
        self.read_bounced(off, buf)
    }

    fn read_bounced(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let g = self.granularity;
        let end = off + buf.len() as u64;
        let mut cur = off;
        while cur < end {
            let ws = round_down(cur, g);
            let we = round_up(end, g).min(ws + BOUNCE as u64);
            let piece_end = end.min(we);
            let n = (we - ws) as usize;
            self.bounce.set_len(n);
            // Near the end of a regular file the aligned read is short; the
            // bytes we need (below `size`) are still all there.
            let want = (piece_end - ws) as usize;
            let mut got = 0usize;
            while got < want {
                let r = self.file.read_at(&mut self.bounce[got..n], ws + got as u64);
                match r {
                    Ok(0) => {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short read"))
                    }
                    Ok(k) => got += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.direct_result(Err(e)),
                }
            }
            buf[(cur - off) as usize..(piece_end - off) as usize]
                .copy_from_slice(&self.bounce[(cur - ws) as usize..want]);
            cur = piece_end;
        }
        Ok(())
    }

    /// Make `off..off+len` read as zeros: BLKZEROOUT on block devices,
    /// hole punching on regular files, written zeros where neither works.
    pub fn zero_range(&mut self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let end = off + len;
        match self.kind {
            Kind::Block => {
                let g = self.sector_size;
                let (a, b) = (round_up(off, g), round_down(end, g));
                if a < b {
                    let mut range = [a, b - a];
                    match ioctl_ptr(&self.file, ioc::BLKZEROOUT, &mut range) {
                        Ok(()) => {
                            self.write_zeros(off, a - off)?;
                            return self.write_zeros(b, end - b);
                        }
                        Err(e) => {
                            if !self.warned_zeroout {
                                tracing::warn!(
                                    "BLKZEROOUT refused on {} ({e}); writing zeros instead",
                                    self.path.display()
                                );
                                self.warned_zeroout = true;
                            }
                        }
                    }
                }
                self.write_zeros(off, len)
            }
            Kind::File => {
                let fits = i64::try_from(end).is_ok() && std::mem::size_of::<libc::off_t>() == 8;
                if fits {
                    // SAFETY: plain syscall on an owned descriptor.
                    let r = unsafe {
                        libc::fallocate(
                            self.file.as_raw_fd(),
                            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                            off as libc::off_t,
                            len as libc::off_t,
                        )
                    };
                    if r == 0 {
                        return Ok(());
                    }
                    if !self.warned_zeroout {
                        tracing::warn!(
                            "hole punching refused on {} ({}); writing zeros instead",
                            self.path.display(),
                            io::Error::last_os_error()
                        );
                        self.warned_zeroout = true;
                    }
                }
                self.write_zeros(off, len)
            }
        }
    }

    fn write_zeros(&mut self, off: u64, len: u64) -> io::Result<()> {
        let zeros = std::mem::replace(&mut self.zeros, AlignedBuf::zeroed(0));
        let mut done = 0;
        let mut r = Ok(());
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            r = self.write_at(off + done, &zeros[..n]);
            if r.is_err() {
                break;
            }
            done += n as u64;
        }
        self.zeros = zeros;
        r
    }

    /// Flush everything written to stable storage.
    pub fn sync(&mut self) -> io::Result<()> {
        // One flush: fsync acts on the inode, so it covers the `buffered`
        // descriptor's writes too (same file), and fdatasync is enough as the
        // target's size never changes (a second fsync cost ~6 ms per call on
        // ext4, the metadata flush another).
        self.file.sync_data()
    }

    /// Drop cached pages so the next reads come from the device. A no-op for
    /// correctness under O_DIRECT; needed on the buffered fallback.
    pub fn drop_cache(&mut self) {
        match self.kind {
            Kind::Block => {
                if let Err(e) =
                    ioctl_ptr::<libc::c_int>(&self.file, ioc::BLKFLSBUF, std::ptr::null_mut())
                {
                    if !self.direct {
                        tracing::warn!("BLKFLSBUF on {} failed ({e}); the read-back may come from the page cache", self.path.display());
                    }
                }
            }
            Kind::File => {
                for f in std::iter::once(&self.file).chain(self.buffered.as_ref()) {
                    // SAFETY: plain syscall on an owned descriptor.
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                }
            }
        }
    }
}

impl Read for Device {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Device {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write at the end of the target",
            ));
        }
        self.write_at(self.pos, &buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync()
    }
}

impl Seek for Device {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Small buffers keep 4 KiB alignment; chunk-sized ones are 2 MiB aligned
    /// and rounded (huge pages); both start zeroed, and recycle through
    /// `set_len` within their capacity.
    #[test]
    fn aligned_buffers_small_and_huge() {
        for (len, align, cap) in [
            (9000, ALIGN, 12288),
            (3 << 20, HUGE, 4 << 20),
            (4 << 20, HUGE, 4 << 20),
        ] {
            let mut b = AlignedBuf::try_zeroed(len).unwrap();
            assert_eq!((b.len(), b.capacity()), (len, cap));
            assert_eq!(b.as_ptr() as usize % align, 0, "{len}");
            assert!(b.iter().all(|&x| x == 0));
            b.set_len(cap);
            assert!(b.iter().all(|&x| x == 0), "zeroed to its capacity");
            b[cap - 1] = 7;
        }
    }

    #[test]
    fn unaligned_io_on_a_file_keeps_neighbours() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        let size = 3 * 4096 + 1234;
        std::fs::write(&p, vec![0x11u8; size]).unwrap();
        let mut d = Device::open(&p, OpenOptions::default()).unwrap();
        assert_eq!(d.size(), size as u64);
        d.write_at(100, &[0xaa; 5000]).unwrap();
        d.write_at(size as u64 - 10, &[0xbb; 10]).unwrap();
        d.zero_range(9000, 3000).unwrap();
        d.sync().unwrap();
        let mut want = vec![0x11u8; size];
        want[100..5100].fill(0xaa);
        want[size - 10..].fill(0xbb);
        want[9000..12000].fill(0);
        let mut got = vec![0u8; size];
        d.read_at(0, &mut got).unwrap();
        assert_eq!(got, want);
        assert_eq!(std::fs::read(&p).unwrap(), want);
        assert!(d.write_at(size as u64 - 1, &[1, 2]).is_err());

        // Aligned start, odd length: direct middle plus a bounced tail, both ways.
        let mut big = AlignedBuf::zeroed(9000);
        big.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 97) as u8 + 1);
        d.write_at(4096, &big).unwrap();
        let mut back = AlignedBuf::zeroed(9000);
        d.read_at(4096, &mut back).unwrap();
        assert_eq!(&back[..], &big[..]);
        want[4096..13096].copy_from_slice(&big);
        d.sync().unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), want);
    }

    /// tmpfs refuses O_DIRECT on older kernels (EINVAL at open) and accepts it
    /// on newer ones; either way the device works and reads back what was written.
    #[test]
    fn tmpfs_target_works_with_or_without_o_direct() {
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        let p = dir.path().join("t");
        std::fs::write(&p, vec![0x22u8; 3 * 4096 + 7]).unwrap();
        let mut d = Device::open(&p, OpenOptions::default()).unwrap();
        d.write_at(1, &[9u8; 12_000]).unwrap();
        d.zero_range(5000, 10).unwrap();
        d.sync().unwrap();
        d.drop_cache();
        let mut got = vec![0u8; 3 * 4096 + 7];
        d.read_at(0, &mut got).unwrap();
        let mut want = vec![0x22u8; 3 * 4096 + 7];
        want[1..12_001].fill(9);
        want[5000..5010].fill(0);
        assert_eq!(got, want);
    }

    /// Issue 10 item 7: O_EXCL stays on a block device's flags whether or not
    /// O_DIRECT is asked for (the open-time fallback calls this with `false`).
    #[test]
    fn fallback_flags_keep_o_excl() {
        for direct in [true, false] {
            let f = open_flags(Kind::Block, true, direct);
            assert_ne!(f & libc::O_EXCL, 0, "direct={direct}");
            assert_eq!(f & libc::O_DIRECT != 0, direct);
        }
        assert_eq!(open_flags(Kind::File, true, false) & libc::O_EXCL, 0);
        assert_eq!(open_flags(Kind::Block, false, true) & libc::O_EXCL, 0);
    }

    /// The I/O-time fallback keeps the same descriptor (so the O_EXCL claim on a
    /// block device stays) and only clears O_DIRECT on it.
    #[test]
    fn io_fallback_keeps_the_descriptor_and_drops_only_o_direct() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mut d = Device::open(&p, OpenOptions::default()).unwrap();
        let fd = d.file.as_raw_fd();
        // SAFETY: F_GETFL on the device's own descriptor.
        let before = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        d.fall_back_to_buffered(&io::Error::from_raw_os_error(libc::EINVAL))
            .unwrap();
        assert_eq!(d.file.as_raw_fd(), fd, "same descriptor, no reopen");
        // SAFETY: as above.
        let after = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        assert_eq!(after & libc::O_DIRECT, 0);
        assert_eq!(after | libc::O_DIRECT, before | libc::O_DIRECT);
        assert!(!d.is_direct());
        d.write_at(1, b"abc").unwrap();
        d.sync().unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"\0abc");
    }

    #[test]
    fn aligned_buf_is_aligned() {
        let b = AlignedBuf::zeroed(10);
        assert_eq!(b.as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.capacity(), ALIGN);
        assert!(b.iter().all(|&x| x == 0));
    }
}
