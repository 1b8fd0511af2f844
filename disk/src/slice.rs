//! A window onto one partition of a larger device or image: what fatfs (or anything
//! else wanting a `Read + Write + Seek`) sees as a whole volume, with nothing outside
//! the window reachable.

use std::io::{self, Read, Seek, SeekFrom, Write};

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

impl<D> PartitionSlice<D> {
    /// The window onto `p` of `dev`.
    pub fn of(dev: D, p: &crate::Partition) -> Self {
        PartitionSlice::new(dev, p.offset, p.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

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
}
