//! Target I/O with the pipeline's typed errors (each names the byte range),
//! and the read-back every writer in the pipeline shares: compare a range of
//! the target with what it should hold, rewrite it once on a mismatch
//! ([`check_range`]); write, flush and read back ([`write_verified`]). Used by
//! the engine, the table commit (`commit`) and the post-write steps (`post`),
//! none of which imports another for it.

use super::{Error, Target};
use crate::blockdev::AlignedBuf;
use flasher_format::bundle;

/// Zero `len` bytes at `off`.
pub(super) fn zero<T: Target>(t: &mut T, off: u64, len: u64) -> Result<(), Error> {
    t.zero_range(off, len).map_err(|source| Error::Zero {
        offset: off,
        length: len,
        source,
    })
}

/// Write `data` at `off`.
pub(super) fn write<T: Target>(t: &mut T, off: u64, data: &[u8]) -> Result<(), Error> {
    t.write_at(off, data).map_err(|source| Error::Write {
        offset: off,
        length: data.len() as u64,
        source,
    })
}

/// Read `buf.len()` bytes at `off`.
pub(super) fn read<T: Target>(t: &mut T, off: u64, buf: &mut [u8]) -> Result<(), Error> {
    t.read_at(off, buf).map_err(|source| Error::Read {
        offset: off,
        length: buf.len() as u64,
        source,
    })
}

/// Compare `off..off+len` of the target with `want` (None: zeros), reading in
/// pieces of `buf`'s capacity. On a mismatch the range is written again (from
/// `want`, or zeroed), flushed, and read once more; a second mismatch fails
/// naming the range and `what`.
pub(super) fn check_range<T: Target>(
    t: &mut T,
    off: u64,
    want: Option<&[u8]>,
    len: u64,
    buf: &mut AlignedBuf,
    what: &str,
) -> Result<(), Error> {
    let ok = |t: &mut T, buf: &mut AlignedBuf| -> Result<bool, Error> {
        let mut o = 0u64;
        while o < len {
            let n = (len - o).min(buf.capacity() as u64) as usize;
            buf.set_len(n);
            read(t, off + o, &mut buf[..])?;
            let good = match want {
                Some(w) => buf[..] == w[o as usize..o as usize + n],
                None => bundle::is_zero(&buf[..]),
            };
            if !good {
                return Ok(false);
            }
            o += n as u64;
        }
        Ok(true)
    };
    if ok(t, buf)? {
        return Ok(());
    }
    tracing::warn!(
        "verify mismatch at target bytes {off}..{} ({what}); rewriting and reading once more",
        off + len
    );
    match want {
        Some(w) => write(t, off, &w[..len as usize])?,
        None => zero(t, off, len)?,
    }
    t.sync().map_err(Error::Sync)?;
    t.drop_cache();
    if ok(t, buf)? {
        return Ok(());
    }
    Err(Error::VerifyMismatch {
        offset: off,
        length: len,
        what: what.to_string(),
    })
}

/// Write `data` at `off`, flush, read back bypassing the cache; on a mismatch
/// rewrite once, then fail naming the range and `what`.
pub(super) fn write_verified<T: Target>(
    t: &mut T,
    off: u64,
    data: &[u8],
    what: &str,
) -> Result<(), Error> {
    write(t, off, data)?;
    t.sync().map_err(Error::Sync)?;
    t.drop_cache();
    let mut buf = AlignedBuf::zeroed(data.len().clamp(4096, 1 << 20));
    check_range(t, off, Some(data), data.len() as u64, &mut buf, what)
}

/// Write each `(offset, bytes, what)` part, flush, and, with `verify`, read
/// every one back bypassing the cache (a mismatch rewritten once, then named
/// by its `what`). Returns the bytes read back. The held-back head and tail
/// (the engine) and the held-back signatures (the table commit) go through
/// here.
pub(super) fn write_parts<T: Target>(
    t: &mut T,
    parts: &[(u64, Vec<u8>, String)],
    verify: bool,
) -> Result<u64, Error> {
    for (off, data, _) in parts {
        write(t, *off, data)?;
    }
    t.sync().map_err(Error::Sync)?;
    if !verify {
        return Ok(0);
    }
    t.drop_cache();
    let mut buf = AlignedBuf::zeroed(1 << 20);
    let mut n = 0;
    for (off, data, what) in parts {
        check_range(t, *off, Some(data), data.len() as u64, &mut buf, what)?;
        n += data.len() as u64;
    }
    Ok(n)
}
