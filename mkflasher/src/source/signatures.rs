//! Finding what makes an image recognisable (issue 22 finding 5): every
//! superblock, filesystem, swap, LUKS or RAID signature and every partition
//! table libblkid knows, on the whole image and in each partition, as byte
//! ranges the manifest lists for the board to hold back (`Manifest::hold`,
//! docs/fail-closed.md "Held-back signatures"). The only FFI of the host tool
//! is here; `blkid-sys` links `-lblkid` (Debian's `libblkid-dev`), and only
//! `mkflasher` depends on it, never the board's binary.

use flasher_format::bundle::HoldRange;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// A libblkid probe, freed on every path.
struct Probe(blkid_sys::blkid_probe);

impl Probe {
    /// A probe over `[off, off+size)` of `f`.
    fn new(f: &File, off: u64, size: u64) -> std::io::Result<Probe> {
        // SAFETY: blkid_new_probe takes no arguments and returns an owned
        // probe or null.
        let p = unsafe { blkid_sys::blkid_new_probe() };
        if p.is_null() {
            return Err(std::io::Error::other("libblkid: cannot allocate a probe"));
        }
        let probe = Probe(p);
        let (o, s) = (i64::try_from(off), i64::try_from(size));
        let (Ok(o), Ok(s)) = (o, s) else {
            return Err(std::io::Error::other("libblkid: range out of bounds"));
        };
        // SAFETY: the probe is valid; the fd stays open for the probe's life
        // (the probe borrows `f` only inside `signatures`, which outlives it).
        let rc = unsafe { blkid_sys::blkid_probe_set_device(probe.0, f.as_raw_fd(), o, s) };
        if rc != 0 {
            return Err(std::io::Error::other(format!(
                "libblkid: cannot probe bytes {off}..{}",
                off + size
            )));
        }
        Ok(probe)
    }

    /// A probe over `[off, off+size)` of `f` with the superblock chain on,
    /// reporting each match's magic and type.
    fn superblocks(f: &File, off: u64, size: u64) -> std::io::Result<Probe> {
        let p = Probe::new(f, off, size)?;
        // SAFETY: valid probe; the flags are libblkid's own constants.
        unsafe {
            blkid_sys::blkid_probe_enable_superblocks(p.0, 1);
            blkid_sys::blkid_probe_set_superblocks_flags(
                p.0,
                (blkid_sys::BLKID_SUBLKS_MAGIC | blkid_sys::BLKID_SUBLKS_TYPE) as i32,
            );
        }
        Ok(p)
    }

    /// A probe over the first `size` bytes of `f` with the partition chain
    /// on (and the superblock chain as `superblocks` says), reporting the
    /// table's magic.
    fn partitions(f: &File, size: u64, superblocks: bool) -> std::io::Result<Probe> {
        let p = if superblocks {
            Probe::superblocks(f, 0, size)?
        } else {
            Probe::new(f, 0, size)?
        };
        // SAFETY: valid probe; libblkid's constants.
        unsafe {
            blkid_sys::blkid_probe_enable_superblocks(p.0, i32::from(superblocks));
            blkid_sys::blkid_probe_enable_partitions(p.0, 1);
            blkid_sys::blkid_probe_set_partitions_flags(p.0, blkid_sys::BLKID_PARTS_MAGIC as i32);
        }
        Ok(p)
    }

    /// The value `name` of the last match, as text.
    fn value(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        let mut data: *const std::os::raw::c_char = std::ptr::null();
        let mut len = 0usize;
        // SAFETY: valid probe and NUL-terminated name; libblkid sets `data`
        // to a NUL-terminated string it owns until the next probe call.
        let rc = unsafe {
            blkid_sys::blkid_probe_lookup_value(self.0, name.as_ptr(), &mut data, &mut len)
        };
        if rc != 0 || data.is_null() {
            return None;
        }
        // SAFETY: non-null, NUL-terminated, valid until the next call on the
        // probe; copied out at once.
        Some(
            unsafe { CStr::from_ptr(data) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Every match of the enabled chains: (type, magic offset, magic length).
    fn all_magics(
        &self,
        offset_key: &str,
        magic_key: &str,
        type_key: &str,
    ) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        // SAFETY: valid probe; do_probe returns 0 per match, 1 at the end,
        // -1 on error, and is meant to be called in a loop.
        while unsafe { blkid_sys::blkid_do_probe(self.0) } == 0 {
            let off = self.value(offset_key).and_then(|v| v.parse::<u64>().ok());
            // The magic is raw bytes; its length is all that is needed.
            let len = self.value(magic_key).map_or(1, |m| m.len().max(1) as u64);
            if let Some(off) = off {
                let t = self.value(type_key).unwrap_or_else(|| "signature".into());
                out.push((t, off, len));
            }
        }
        out
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // SAFETY: the probe was allocated by blkid_new_probe and is freed once.
        unsafe { blkid_sys::blkid_free_probe(self.0) }
    }
}

/// The ranges holding every signature of the image file `path` (raw,
/// `size` bytes) and of each partition libblkid finds in it, with what each
/// is. Not yet rounded to 4 KiB: `normalize_hold` does that.
pub fn probe(path: &Path, size: u64) -> std::io::Result<Vec<HoldRange>> {
    probe_file(&File::open(path)?, size)
}

/// [`probe`] on an open file (the unlinked copy of a decompressed image).
pub fn probe_file(f: &File, size: u64) -> std::io::Result<Vec<HoldRange>> {
    let mut out = Vec::new();
    let whole = Probe::partitions(f, size, true)?;
    for (t, off, len) in whole.all_magics("SBMAGIC_OFFSET", "SBMAGIC", "TYPE") {
        out.push(HoldRange {
            offset: off,
            length: len,
            what: format!("{t} signature"),
        });
    }
    // The partition table's own magic (PTMAGIC), from a fresh probe so the
    // superblock chain's state does not hide it.
    let pt = Probe::partitions(f, size, false)?;
    for (t, off, len) in pt.all_magics("PTMAGIC_OFFSET", "PTMAGIC", "PTTYPE") {
        out.push(HoldRange {
            offset: off,
            length: len,
            what: format!("{t} partition table"),
        });
    }
    // Each partition, probed on its own range.
    let parts = Probe::new(f, 0, size)?;
    // SAFETY: valid probe; the partition list belongs to the probe and is
    // read before the probe is dropped.
    let spans: Vec<(i32, u64, u64)> = unsafe {
        blkid_sys::blkid_probe_enable_partitions(parts.0, 1);
        let ls = blkid_sys::blkid_probe_get_partitions(parts.0);
        if ls.is_null() {
            Vec::new()
        } else {
            (0..blkid_sys::blkid_partlist_numof_partitions(ls))
                .filter_map(|i| {
                    let p = blkid_sys::blkid_partlist_get_partition(ls, i);
                    if p.is_null() || blkid_sys::blkid_partition_is_extended(p) != 0 {
                        return None;
                    }
                    let start = u64::try_from(blkid_sys::blkid_partition_get_start(p)).ok()?;
                    let len = u64::try_from(blkid_sys::blkid_partition_get_size(p)).ok()?;
                    Some((
                        blkid_sys::blkid_partition_get_partno(p),
                        start * 512,
                        len * 512,
                    ))
                })
                .collect()
        }
    };
    drop(parts);
    for (n, start, len) in spans {
        let len = len.min(size.saturating_sub(start));
        if len == 0 {
            continue;
        }
        let p = Probe::superblocks(f, start, len)?;
        for (t, off, l) in p.all_magics("SBMAGIC_OFFSET", "SBMAGIC", "TYPE") {
            out.push(HoldRange {
                offset: start + off,
                length: l,
                what: format!("{t} signature in partition {n}"),
            });
        }
    }
    out.retain(|r| r.offset < size);
    Ok(out)
}

#[cfg(test)]
mod tests;
