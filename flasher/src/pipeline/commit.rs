//! Fail closed: the partition table goes live last, sector 0 very last.
//!
//! Before the first write, [`plan`] runs the partition-table fix-ups
//! (`fixup::after_write`) on an in-memory model of the target that holds only
//! the image's head (the first MiBs, which carry sector 0, the GPT header and
//! its entry array). That both checks that the fix-ups can be done (a corrupt
//! GPT or an `--expand-data` the layout does not allow is refused before the
//! target is touched) and yields every byte the fix-ups will write. Those bytes
//! are split into
//!
//! * the **table commit**: the sectors that make a table valid (the backup GPT
//!   header at the target's real end, the primary GPT header at LBA 1, sector 0),
//!   in the order they are written, very last;
//! * **fix-up writes**: everything else the fix-ups change (the backup entry
//!   array at the end, a grown primary entry array), written and read back
//!   before the commit.
//!
//! Every earlier phase leaves the commit sectors zero ([`Plan::hold`]): U-Boot,
//! UEFI firmware and Linux ignore a disk whose sector 0 has no (protective)
//! MBR, so an interruption before the commit leaves nothing bootable.
//!
//! The commit also carries the image's held-back **signatures** (the
//! manifest's `hold` ranges: superblocks, filesystem and partition-table
//! magic; docs/fail-closed.md), written and read back first when it is
//! applied. Until then they exist only here: the steps between the image and
//! the commit (bootloader, config) see and change them through
//! [`TableCommit::overlay`], so a failure anywhere before the commit leaves
//! no filesystem from the image recognisable on the target.

use super::readback::{write_parts, write_verified};
use super::{Error, Target};
use crate::fixup::{FixupReport, TableKind};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// What the run will do to the partition table, computed before the first write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The last writes of the run.
    pub commit: TableCommit,
    /// Other bytes the fix-ups change, as (offset, bytes), written before the commit.
    pub fixup_writes: Vec<(u64, Vec<u8>)>,
    /// What the fix-ups will have done once the commit lands.
    pub fixup: FixupReport,
    /// Byte ranges (offset, length) of the image that every write before the
    /// commit leaves zero: the commit sectors and the image's own backup GPT
    /// header (moved to the target's end, or rewritten by the commit).
    pub hold: Vec<(u64, u64)>,
}

/// The final bytes of the sectors that make the table valid, in write order:
/// the GPT headers (backup, then primary), then sector 0.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableCommit {
    pub sector_size: u64,
    /// (offset, bytes, what) in write order; sector 0 last.
    pub sectors: Vec<(u64, Vec<u8>, &'static str)>,
    /// The held-back signature ranges, (offset, bytes, what), disjoint, in
    /// write order (the image's end first), written before the sectors. The
    /// table sectors inside them are zero here: the sectors write those.
    pub signatures: Vec<(u64, Vec<u8>, String)>,
}

/// An in-memory target: the image's head, zeros elsewhere, writes kept per
/// sector. The fix-ups read only sector 0, the GPT header and its entries (all
/// in the head) and the old backup header (zero here: it is held back).
struct Model<'a> {
    head: &'a [u8],
    size: u64,
    ss: u64,
    written: BTreeMap<u64, Vec<u8>>,
    pos: u64,
}

impl Model<'_> {
    fn sector(&self, lba: u64) -> Vec<u8> {
        if let Some(s) = self.written.get(&lba) {
            return s.clone();
        }
        let mut s = vec![0u8; self.ss as usize];
        let a = lba * self.ss;
        if a < self.head.len() as u64 {
            let n = (self.head.len() as u64 - a).min(self.ss) as usize;
            s[..n].copy_from_slice(&self.head[a as usize..a as usize + n]);
        }
        s
    }
}

impl Read for Model<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size.saturating_sub(self.pos)) as usize;
        let mut done = 0;
        while done < n {
            let p = self.pos + done as u64;
            let (lba, within) = (p / self.ss, (p % self.ss) as usize);
            let k = (self.ss as usize - within).min(n - done);
            buf[done..done + k].copy_from_slice(&self.sector(lba)[within..within + k]);
            done += k;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Model<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pos + buf.len() as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fix-up write beyond the target's end",
            ));
        }
        let mut done = 0;
        while done < buf.len() {
            let p = self.pos + done as u64;
            let (lba, within) = (p / self.ss, (p % self.ss) as usize);
            let k = (self.ss as usize - within).min(buf.len() - done);
            let mut s = self.sector(lba);
            s[within..within + k].copy_from_slice(&buf[done..done + k]);
            self.written.insert(lba, s);
            done += k;
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Model<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek"))?;
        Ok(self.pos)
    }
}

/// Plan the table for an image whose first bytes are `head`, on a target of
/// `target_size` bytes with `ss`-byte sectors. Errors are the fix-up's own
/// (corrupt GPT, expand-data unsupported, sector-size mismatch) wrapped in
/// [`Error::Refused`]: nothing has been written when they are reported.
pub fn plan(
    head: &[u8],
    image_size: u64,
    target_size: u64,
    ss: u64,
    expand_data: bool,
) -> crate::Result<Plan> {
    let mut m = Model {
        head,
        size: target_size,
        ss,
        written: BTreeMap::new(),
        pos: 0,
    };
    let fixup = crate::fixup::after_write(&mut m, image_size, target_size, ss, expand_data)
        .map_err(Error::Refused)?;
    let mut commit_lbas: Vec<(u64, &'static str)> = Vec::new();
    let mut hold_lbas: Vec<u64> = vec![0];
    if fixup.table == TableKind::Gpt {
        if let Some((old, new)) = fixup.backup_lba {
            commit_lbas.push((new, "backup GPT header"));
            hold_lbas.push(old);
            hold_lbas.push(new);
        }
        commit_lbas.push((1, "primary GPT header"));
        hold_lbas.push(1);
    }
    commit_lbas.push((0, "sector 0"));
    let sectors = commit_lbas
        .iter()
        .map(|&(lba, what)| (lba * ss, m.sector(lba), what))
        .collect();
    // Everything else the fix-ups wrote, coalesced into runs of sectors.
    let mut fixup_writes: Vec<(u64, Vec<u8>)> = Vec::new();
    for (lba, bytes) in &m.written {
        if commit_lbas.iter().any(|(l, _)| l == lba) {
            continue;
        }
        match fixup_writes.last_mut() {
            Some((off, data)) if *off + data.len() as u64 == lba * ss => data.extend(bytes),
            _ => fixup_writes.push((lba * ss, bytes.clone())),
        }
    }
    hold_lbas.sort_unstable();
    hold_lbas.dedup();
    // `Header::parse` keeps every LBA below u64::MAX / ss; saturating anyway,
    // so a header it ever let through could only push a hold past the image
    // (dropped below), never wrap onto image data.
    let hold = hold_lbas
        .into_iter()
        .map(|l| (l.saturating_mul(ss), ss))
        .filter(|&(o, _)| o < image_size)
        .map(|(o, l)| (o, l.min(image_size - o)))
        .collect();
    Ok(Plan {
        commit: TableCommit {
            sector_size: ss,
            sectors,
            signatures: Vec::new(),
        },
        fixup_writes,
        fixup,
        hold,
    })
}

/// GPT "Microsoft basic data", the type most images give their FAT boot partition.
const BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

/// Refuse a head whose partition table has no partition typed for FAT (MBR
/// FAT types; GPT EFI system or basic data). The partitions' own boot sectors
/// are not in the head, so the type is what can be checked before the write.
pub fn require_fat(head: &[u8]) -> Result<(), Error> {
    let fat = |p: &flasher_disk::Partition| {
        p.part_type.is_fat() || p.part_type.id().eq_ignore_ascii_case(BASIC_DATA)
    };
    let seen = match flasher_disk::Table::from_bytes(head) {
        Ok(t) if t.partitions.iter().any(fat) => return Ok(()),
        Ok(t) => format!(
            "{} partition(s): {}",
            t.partitions.len(),
            t.partitions
                .iter()
                .map(|p| format!("{} type {}", p.number, p.part_type.id()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(e) => format!("no readable table: {e}"),
    };
    Err(Error::NoBootFat { seen })
}

/// Zero the bytes of `data` (which starts at target byte `off`) that fall in `hold`.
pub fn mask(hold: &[(u64, u64)], off: u64, data: &mut [u8]) {
    let end = off + data.len() as u64;
    for &(h, n) in hold {
        let (a, b) = (h.max(off), (h + n).min(end));
        if a < b {
            data[(a - off) as usize..(b - off) as usize].fill(0);
        }
    }
}

impl TableCommit {
    /// Write the signatures, flush, read them back; then the table: the GPT
    /// headers, flush, read back, then sector 0, flush, read back. Everything
    /// before is flushed first (ordering point). On any error the signatures
    /// and the table sectors are zeroed again (best effort) so neither a
    /// half-written table nor a superblock from the image survives, and the
    /// error is returned.
    pub fn apply<T: Target>(&self, t: &mut T) -> Result<(), Error> {
        let r = self.apply_inner(t);
        if r.is_err() {
            self.revoke(t);
        }
        r
    }

    fn apply_inner<T: Target>(&self, t: &mut T) -> Result<(), Error> {
        t.sync().map_err(Error::Sync)?;
        if !self.signatures.is_empty() {
            write_parts(t, &self.signatures, true)?;
        }
        self.sectors
            .iter()
            .try_for_each(|(off, data, what)| write_verified(t, *off, data, what))
    }

    /// Zero the table sectors, sector 0 first, then the signatures, and
    /// flush. Best effort: used on the failure path, where the first error is
    /// the one reported.
    pub fn revoke<T: Target>(&self, t: &mut T) {
        for (off, data, what) in self.sectors.iter().rev() {
            if let Err(e) = t.write_at(*off, &vec![0u8; data.len()]) {
                tracing::warn!("could not zero the {what} at byte {off} again: {e}");
            }
        }
        for (off, data, what) in &self.signatures {
            if let Err(e) = t.zero_range(*off, data.len() as u64) {
                tracing::warn!("could not zero the {what} again after the failure: {e}");
            }
        }
        if let Err(e) = t.sync() {
            tracing::warn!("flush after zeroing the table failed: {e}");
        }
    }

    /// Bytes this commit will write, the signatures and then the table
    /// sectors (which win where they meet), over `buf` read at target byte `pos`.
    fn overlay_onto(&self, pos: u64, buf: &mut [u8]) {
        let end = pos + buf.len() as u64;
        let sigs = self.signatures.iter().map(|(o, d, _)| (*o, d.as_slice()));
        let secs = self.sectors.iter().map(|(o, d, _)| (*o, d.as_slice()));
        for (off, data) in sigs.chain(secs) {
            let (a, b) = (off.max(pos), (off + data.len() as u64).min(end));
            if a < b {
                buf[(a - pos) as usize..(b - pos) as usize]
                    .copy_from_slice(&data[(a - off) as usize..(b - off) as usize]);
            }
        }
    }

    /// The target as it will read once the commit lands: the commit's
    /// signatures and sectors overlaid on `t`. For reading the table before
    /// it is live (config injection finds the target's boot FAT through it).
    pub fn view<'a, R: Read + Seek>(&'a self, t: &'a mut R) -> View<'a, R> {
        View {
            commit: self,
            inner: t,
            pos: 0,
        }
    }

    /// The target for the steps between the image and the commit: reads see
    /// the commit's bytes (as [`Self::view`]); writes into a signature range
    /// change the commit's copy (the commit writes and reads it back), the
    /// rest go to `t`. Writes over a table sector are refused: the commit
    /// would overwrite them.
    pub fn overlay<'a, T: Target>(&'a mut self, t: &'a mut T) -> Overlay<'a, T> {
        Overlay {
            commit: self,
            inner: t,
            pos: 0,
        }
    }
}

/// See [`TableCommit::overlay`].
pub struct Overlay<'a, T> {
    commit: &'a mut TableCommit,
    inner: &'a mut T,
    pos: u64,
}

impl<T: Target> Target for Overlay<'_, T> {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn sector_size(&self) -> u64 {
        self.inner.sector_size()
    }
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if let Some((o, d, what)) = self
            .commit
            .sectors
            .iter()
            .find(|(o, d, _)| *o < end && offset < o + d.len() as u64)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a write to bytes {offset}..{end} overlaps the {what} at bytes {o}..{}, which the table commit writes",
                    o + d.len() as u64
                ),
            ));
        }
        // The parts inside signature ranges go to the commit's copy, the
        // gaps between them to the target.
        let sigs = &mut self.commit.signatures;
        let mut order: Vec<usize> = (0..sigs.len()).collect();
        order.sort_by_key(|&i| sigs[i].0);
        let mut at = offset;
        for i in order {
            let (o, d, _) = &mut sigs[i];
            let (a, b) = ((*o).max(at), (*o + d.len() as u64).min(end));
            if a >= b {
                continue;
            }
            if at < a {
                self.inner
                    .write_at(at, &data[(at - offset) as usize..(a - offset) as usize])?;
            }
            d[(a - *o) as usize..(b - *o) as usize]
                .copy_from_slice(&data[(a - offset) as usize..(b - offset) as usize]);
            at = b;
        }
        if at < end {
            self.inner.write_at(at, &data[(at - offset) as usize..])?;
        }
        Ok(())
    }
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_at(offset, buf)?;
        self.commit.overlay_onto(offset, buf);
        Ok(())
    }
    fn zero_range(&mut self, offset: u64, len: u64) -> io::Result<()> {
        // Small (the steps zero sectors, not disks): through write_at.
        let mut done = 0u64;
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write_at(offset + done, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
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

impl<T: Target> Read for Overlay<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size().saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<T: Target> Write for Overlay<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.sync()
    }
}

impl<T: Target> Seek for Overlay<'_, T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek"))?;
        Ok(self.pos)
    }
}

/// See [`TableCommit::view`]. Read-only.
pub struct View<'a, R> {
    commit: &'a TableCommit,
    inner: &'a mut R,
    pos: u64,
}

impl<R: Read + Seek> Read for View<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.seek(SeekFrom::Start(self.pos))?;
        let n = self.inner.read(buf)?;
        self.commit.overlay_onto(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for View<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.pos = match pos {
            SeekFrom::Start(p) => p,
            other => self.inner.seek(match other {
                SeekFrom::Current(d) => SeekFrom::Start(
                    self.pos
                        .checked_add_signed(d)
                        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek"))?,
                ),
                o => o,
            })?,
        };
        Ok(self.pos)
    }
}
