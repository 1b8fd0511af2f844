//! A pass-through [`Target`] that can change the target behind the writer's
//! back: on its first read after the faulted byte was written with data (the
//! start of the read-back; the wipe's own read-back comes before), it
//! flips that byte through a separate descriptor and syncs it to the medium. This is the fault
//! injection (`mkflasher write --fault-tamper`) with which tests prove that
//! the validation reads the device and reports a changed card as failed.

use flasher::pipeline::Target;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// `inner`, plus the pending fault: the path to reopen and the byte offset.
pub struct Tamper<T> {
    inner: T,
    fault: Option<(PathBuf, u64)>,
    /// The faulted byte has been written: the next read flips it.
    armed: bool,
}

impl<T> Tamper<T> {
    pub fn new(inner: T, fault: Option<(PathBuf, u64)>) -> Self {
        Tamper {
            inner,
            fault,
            armed: false,
        }
    }

    /// Arm the fault once a write covers its byte.
    fn arm(&mut self, offset: u64, len: u64) {
        if let Some((_, at)) = &self.fault {
            if offset <= *at && *at < offset.saturating_add(len) {
                self.armed = true;
            }
        }
    }
}

fn flip(path: &PathBuf, offset: u64) -> io::Result<()> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)?;
    b[0] ^= 0xff;
    f.write_all_at(&b, offset)?;
    f.sync_all()
}

impl<T: Read> Read for Tamper<T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<T: Write> Write for Tamper<T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<T: Seek> Seek for Tamper<T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<T: Target> Target for Tamper<T> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn sector_size(&self) -> u64 {
        self.inner.sector_size()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, data)?;
        self.arm(offset, data.len() as u64);
        Ok(())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if let Some((path, at)) = self.fault.take_if(|_| self.armed) {
            tracing::warn!(
                "fault injection: flipping the byte at {at} of {} before the read-back",
                path.display()
            );
            flip(&path, at)?;
        }
        self.inner.read_at(offset, buf)
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // Not armed by zeroing: the wipe of the first and last MiB zeroes
        // before any image data, and its read-back would take the flip.
        self.inner.zero_range(offset, len)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
    fn drop_cache(&mut self) {
        self.inner.drop_cache()
    }
    fn is_direct(&self) -> bool {
        self.inner.is_direct()
    }
}
