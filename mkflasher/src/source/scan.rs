//! Classifying image bytes into data and must-be-zero runs at 4 KiB-block
//! granularity, and walking the read plan (file holes, bmap ranges) over a
//! seekable file or a one-pass decompressor.

use super::{Error, Result, Seg};
use flasher_format::bundle::{is_zero, BundleWriter};
use flasher_format::io::IoContext;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

const BLOCK: usize = 4096;
/// Data is handed to the bundle writer in batches of this size.
const BATCH: usize = 4 << 20;

/// Feeds a [`BundleWriter`] from image bytes in order, turning zero runs of at
/// least `min_zero_run` bytes into must-be-zero extents.
pub struct Classifier<'w, S: Read + Write + Seek> {
    w: &'w mut BundleWriter<S>,
    min_zero_run: u64,
    pos: u64,
    pending_zero: u64,
    /// A partial block waiting for the rest of its bytes.
    carry: Vec<u8>,
    data: Vec<u8>,
}

impl<'w, S: Read + Write + Seek> Classifier<'w, S> {
    pub fn new(w: &'w mut BundleWriter<S>, min_zero_run: u64) -> Self {
        Classifier {
            w,
            min_zero_run: min_zero_run.max(BLOCK as u64),
            pos: 0,
            pending_zero: 0,
            carry: Vec::with_capacity(BLOCK),
            data: Vec::with_capacity(BATCH),
        }
    }

    fn block(&mut self, b: &[u8]) -> Result<()> {
        if is_zero(b) {
            self.pending_zero += b.len() as u64;
        } else {
            self.end_zero_run()?;
            self.data.extend_from_slice(b);
            if self.data.len() >= BATCH {
                self.flush_data()?;
            }
        }
        Ok(())
    }

    fn flush_data(&mut self) -> Result<()> {
        self.w.push_data(&self.data)?;
        self.data.clear();
        Ok(())
    }

    fn end_zero_run(&mut self) -> Result<()> {
        let n = self.pending_zero;
        if n == 0 {
            return Ok(());
        }
        self.pending_zero = 0;
        if n >= self.min_zero_run {
            self.flush_data()?;
            self.w.push_zero(n)?;
        } else {
            // Short zero runs stay data: cheaper than an extent, compress to nothing.
            self.data.resize(self.data.len() + n as usize, 0);
            if self.data.len() >= BATCH {
                self.flush_data()?;
            }
        }
        Ok(())
    }

    /// Image bytes at the current position.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.pos += bytes.len() as u64;
        if !self.carry.is_empty() {
            let take = (BLOCK - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < BLOCK {
                return Ok(());
            }
            let c = std::mem::take(&mut self.carry);
            self.block(&c)?;
            self.carry = c;
            self.carry.clear();
        }
        let whole = bytes.len() / BLOCK * BLOCK;
        for b in bytes[..whole].chunks(BLOCK) {
            self.block(b)?;
        }
        self.carry.extend_from_slice(&bytes[whole..]);
        Ok(())
    }

    fn flush_carry(&mut self) -> Result<()> {
        if !self.carry.is_empty() {
            let c = std::mem::take(&mut self.carry);
            self.block(&c)?;
        }
        Ok(())
    }

    /// `len` zero bytes known without reading (a file hole).
    pub fn feed_zeros(&mut self, len: u64) -> Result<()> {
        if !self.carry.is_empty() {
            let take = ((BLOCK - self.carry.len()) as u64).min(len);
            let z = vec![0u8; take as usize];
            self.feed(&z)?;
            return self.feed_zeros(len - take);
        }
        self.pos += len;
        self.pending_zero += len;
        Ok(())
    }

    /// `len` bytes the image does not care about.
    pub fn feed_dont_care(&mut self, len: u64) -> Result<()> {
        self.flush_carry()?;
        self.end_zero_run()?;
        self.flush_data()?;
        self.pos += len;
        self.w.push_dont_care(len)?;
        Ok(())
    }

    /// Flush everything; returns the image size.
    pub fn finish(mut self) -> Result<u64> {
        self.flush_carry()?;
        self.end_zero_run()?;
        self.flush_data()?;
        Ok(self.pos)
    }
}

/// Read a one-pass stream to its end, classifying everything.
pub(super) fn copy_all<S: Read + Write + Seek>(
    r: &mut dyn Read,
    cls: &mut Classifier<'_, S>,
) -> Result<()> {
    let mut buf = vec![0u8; BATCH];
    loop {
        let n = super::read_up_to(r, &mut buf).context("read image")?;
        if n == 0 {
            return Ok(());
        }
        cls.feed(&buf[..n])?;
    }
}

/// Skip `len` bytes: seek a raw file, read and drop from a stream.
fn skip(r: &mut dyn Read, file: Option<&File>, to: u64, len: u64) -> Result<()> {
    match file {
        Some(mut f) => {
            f.seek(SeekFrom::Start(to + len)).context("seek image")?;
        }
        None => {
            let n = std::io::copy(&mut r.take(len), &mut std::io::sink()).context("read image")?;
            if n != len {
                return Err(Error::Io(flasher_format::io::IoError::new(
                    format!("image ends at byte {} inside the bmap's range", to + n),
                    std::io::ErrorKind::UnexpectedEof.into(),
                )));
            }
        }
    }
    Ok(())
}

/// Process one segment of the read plan. `pos` is where the reader stands.
pub(super) fn apply<S: Read + Write + Seek>(
    seg: &Seg,
    pos: &mut u64,
    r: &mut dyn Read,
    file: Option<&File>,
    cls: &mut Classifier<'_, S>,
) -> Result<()> {
    match seg {
        Seg::Hole { off, len } => {
            skip(r, file, *off, *len)?;
            cls.feed_zeros(*len)?;
            *pos = off + len;
        }
        Seg::DontCare { off, len } => {
            skip(r, file, *off, *len)?;
            cls.feed_dont_care(*len)?;
            *pos = off + len;
        }
        Seg::Read { off, len, check } => {
            let mut h = check.as_ref().map(|_| Sha256::new());
            let mut buf = vec![0u8; BATCH.min(*len as usize).max(1)];
            let mut left = *len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = super::read_up_to(r, &mut buf[..want]).context("read image")?;
                if n == 0 {
                    return Err(Error::Io(flasher_format::io::IoError::new(
                        format!(
                            "image ends at byte {} inside a range that reaches byte {}",
                            off + len - left,
                            off + len
                        ),
                        std::io::ErrorKind::UnexpectedEof.into(),
                    )));
                }
                if let Some(h) = h.as_mut() {
                    h.update(&buf[..n]);
                }
                cls.feed(&buf[..n])?;
                left -= n as u64;
            }
            if let (Some(h), Some(c)) = (h, check) {
                let actual = hex::encode(h.finalize());
                if actual != c.sha256 {
                    return Err(Error::RangeChecksum {
                        first: c.first,
                        last: c.last,
                        offset: *off,
                        end: off + len,
                        expected: c.sha256.clone(),
                        actual,
                    });
                }
            }
            *pos = off + len;
        }
    }
    Ok(())
}
