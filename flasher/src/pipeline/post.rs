//! The writes after the image and before the table commit, generic over a
//! [`Target`] so the fault matrix drives them on a wrapper: a raw bootloader
//! placement and config injection onto the target's boot FAT. Each is read
//! back bypassing the cache (retried once, then the range is named), and
//! neither touches the table sectors, which stay zero until the commit. Both
//! go through [`TableCommit::overlay`]: the image's held-back signatures (the
//! FAT's boot sector among them) are not on the target yet, so they are read
//! from and written into the commit, which writes them last.

use super::commit::TableCommit;
use super::readback::{check_range, write_verified};
use super::{Error, Target};
use crate::config_inject::{self, CardConfig, ConfigReport, PartitionSlice, UnitData};
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Place `data` (the board's bootloader file `file`) at byte `offset` and read
/// it back. Refuses a placement over the table sectors: those belong to the
/// commit, and a bootloader written there would be overwritten (or would make
/// a table live early). Bytes inside a held-back signature range change the
/// commit's copy.
pub fn place_raw<T: Target>(
    t: &mut T,
    commit: &mut TableCommit,
    offset: u64,
    data: &[u8],
    file: &str,
) -> crate::Result<()> {
    let end = offset + data.len() as u64;
    if let Some((o, d, what)) = commit
        .sectors
        .iter()
        .find(|(o, d, _)| *o < end && offset < o + d.len() as u64)
    {
        return Err(Error::Internal(format!(
            "bootloader {file} at bytes {offset}..{end} overlaps the {what} at bytes {o}..{}; fix the board's placement offset",
            o + d.len() as u64
        ))
        .into());
    }
    write_verified(
        &mut commit.overlay(t),
        offset,
        data,
        &format!("bootloader {file}"),
    )?;
    Ok(())
}

/// The target's first FAT partition as (offset, length), read from the table
/// as it will be once committed (the disk's own table sectors are still zero).
pub fn target_fat<T: Read + Seek>(
    t: &mut T,
    commit: &TableCommit,
) -> io::Result<Option<(u64, u64)>> {
    flasher_disk::fat::first_fat(&mut commit.view(t))
}

/// Copy the card's config (read once, before the write: the bytes the pins
/// were checked on), and the unit's row from the card's pool if one was
/// claimed, onto the FAT at `span` of the target, then read back every
/// sector written (those in a held-back signature range are the commit's to
/// write and read back).
pub fn inject_config<T: Target>(
    t: &mut T,
    commit: &mut TableCommit,
    span: (u64, u64),
    card: &CardConfig,
    unit: Option<&UnitData>,
) -> crate::Result<ConfigReport> {
    let mut overlay = commit.overlay(t);
    let t = &mut overlay;
    let mut rec = Recorder {
        t: &mut *t,
        pos: 0,
        sectors: BTreeMap::new(),
    };
    let report =
        config_inject::copy_config_with(card, PartitionSlice::new(&mut rec, span.0, span.1), unit)?;
    let sectors = std::mem::take(&mut rec.sectors);
    t.sync().map_err(Error::Sync)?;
    t.drop_cache();
    let mut buf = crate::blockdev::AlignedBuf::zeroed(64 << 10);
    // Runs of adjacent sectors, each compared as one range.
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (s, bytes) in sectors {
        match runs.last_mut() {
            Some((o, d)) if *o + d.len() as u64 == s * SECTOR => d.extend_from_slice(&bytes),
            _ => runs.push((s * SECTOR, bytes.to_vec())),
        }
    }
    for (off, data) in runs {
        check_range(
            t,
            off,
            Some(&data),
            data.len() as u64,
            &mut buf,
            "config on the target's boot FAT",
        )?;
    }
    Ok(report)
}

const SECTOR: u64 = 512;

/// Passes I/O through and keeps the intended content of every 512-byte sector
/// written (read from the target before a partial write), so the read-back
/// compares against what was meant, not against what the device returns.
struct Recorder<'a, T> {
    t: &'a mut T,
    pos: u64,
    sectors: BTreeMap<u64, [u8; SECTOR as usize]>,
}

impl<T: Target> Read for Recorder<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.t.size().saturating_sub(self.pos)) as usize;
        self.t.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<T: Target> Write for Recorder<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            let p = self.pos + done as u64;
            let (s, within) = (p / SECTOR, (p % SECTOR) as usize);
            let k = (SECTOR as usize - within).min(buf.len() - done);
            let mut sector = match self.sectors.get(&s) {
                Some(b) => *b,
                None => {
                    let mut b = [0u8; SECTOR as usize];
                    self.t.read_at(s * SECTOR, &mut b)?;
                    b
                }
            };
            sector[within..within + k].copy_from_slice(&buf[done..done + k]);
            self.sectors.insert(s, sector);
            done += k;
        }
        self.t.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.t.sync()
    }
}

impl<T: Target> Seek for Recorder<'_, T> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.t.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek"))?;
        Ok(self.pos)
    }
}
