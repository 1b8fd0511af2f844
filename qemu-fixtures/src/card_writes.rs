//! The card behaves like a physical card: what the board writes to it during
//! a run (its `flasher-log` partition: unit records, unit-pool claims;
//! docs/architecture.md rule 10) is on the user's card file afterwards, for
//! every virtual board and boot route (docs/qemu.md, "The card is written
//! like a physical card").
//!
//! QEMU cannot always boot the card file itself: the sd-card model refuses a
//! size that is not a power of two (the `qemu-x86_64-sd` twin then boots a
//! zero-padded copy), and the NUC twin boots through OVMF and systemd-boot,
//! so the harness's kernel arguments go into the loader entries of a copy.
//! After such a run, [`BootCard::finish`] copies back every byte the board
//! changed on the copy, and nothing else: not the padding, and not the
//! harness's own patch of the loader entries (the pages it changed are kept
//! as they were before the boot, and only bytes that differ from those are
//! the board's). When QEMU can boot the card file itself (a power-of-two card
//! on the sd twin, the i.MX6 twin's USB stick, a NUC card that needs no extra
//! argument), it does, and the writes land directly.
//!
//! Before the VM starts, [`BootCard::open`] takes an exclusive lock on the
//! card (one card boots one board at a time: two runs on copies of one card
//! would hand out the same pool row) and, unless the caller chose
//! [`CardWrites::Discard`], opens it for writing, so a run that could not
//! keep the board's writes (a read-only file or file system) is refused
//! before it starts instead of losing them silently.

use crate::{Error, Result};
use flasher_format::io::IoContext;
use flasher_format::units::iec;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What happens to what the board writes to the card during a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardWrites {
    /// As with a physical card: the board's writes end up on the card file
    /// (booted in place, or copied back from the booted copy).
    #[default]
    Persist,
    /// Boot a throwaway copy and never open the card file for writing
    /// (`mkflasher qemu --discard-card-writes`): the run's records and pool
    /// claims are lost, and the harness says so before the VM starts.
    Discard,
}

/// Where the board's writes to the card went in one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardWriteBack {
    pub mode: CardWrites,
    /// QEMU booted the card file itself: the board's writes landed there
    /// directly (`copied_back` is then empty).
    pub in_place: bool,
    /// Each range the board changed on the booted copy, copied back to the
    /// card: `(offset, length)` in bytes, whole 512-byte sectors, coalesced.
    pub copied_back: Vec<(u64, u64)>,
}

impl CardWriteBack {
    /// Bytes copied back to the card.
    pub fn bytes_copied_back(&self) -> u64 {
        self.copied_back.iter().map(|(_, n)| n).sum()
    }
}

/// The unit in which changes are found and reported (a sector).
const SECTOR: usize = 512;
/// How much of the card is compared at once.
const BLOCK: usize = 1 << 20;
/// The granularity at which the harness's own changes to a copy are kept.
const PAGE: usize = 4096;

/// The card of one run: the file QEMU boots, and how the board's writes get
/// back to the user's card.
pub(crate) struct BootCard {
    card: PathBuf,
    /// The file QEMU boots: the card itself, or a copy in the work directory.
    booted: PathBuf,
    /// The card's size: what lies beyond it on a padded copy is padding.
    len: u64,
    mode: CardWrites,
    /// Pages of the copy the harness changed before the boot (the loader
    /// entries' patch), as they were then, by offset.
    harness_pages: BTreeMap<u64, Vec<u8>>,
    /// The VM was started on `booted` (see [`Self::starting`]).
    started: bool,
    finished: bool,
    /// Holds the card's lock until the run ends (closing the file drops it).
    _lock: File,
}

impl BootCard {
    /// Lock `card` for the run and, unless `mode` discards the board's
    /// writes, check that they can be kept (the file opens for writing).
    /// The card is booted in place until [`Self::use_copy`].
    pub(crate) fn open(card: &Path, mode: CardWrites) -> Result<Self> {
        let file = match mode {
            CardWrites::Persist => OpenOptions::new()
                .read(true)
                .write(true)
                .open(card)
                .map_err(|e| Error::CardNotWritable {
                    path: card.to_path_buf(),
                    reason: e.to_string(),
                })?,
            CardWrites::Discard => {
                File::open(card).with_context(|| format!("opening {}", card.display()))?
            }
        };
        lock(&file, card)?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {}", card.display()))?
            .len();
        if mode == CardWrites::Discard {
            tracing::warn!(
                "card writes are discarded: the VM boots a throwaway copy of {}, so the unit \
                 record and any unit-pool claim of this run will not be on the card",
                card.display()
            );
        }
        Ok(BootCard {
            card: card.to_path_buf(),
            booted: card.to_path_buf(),
            len,
            mode,
            harness_pages: BTreeMap::new(),
            started: false,
            finished: false,
            _lock: file,
        })
    }

    pub(crate) fn discards(&self) -> bool {
        self.mode == CardWrites::Discard
    }

    /// What becomes of the board's writes to a booted copy, for messages.
    pub(crate) fn fate(&self) -> &'static str {
        match self.mode {
            CardWrites::Persist => "copied back to the card after the run",
            CardWrites::Discard => "discarded (--discard-card-writes)",
        }
    }

    /// The file to give QEMU.
    pub(crate) fn booted(&self) -> &Path {
        &self.booted
    }

    /// The VM is about to start on [`Self::booted`]: from now on, not
    /// reaching [`Self::finish`] loses the board's writes, and is reported.
    pub(crate) fn starting(&mut self) {
        self.started = true;
    }

    /// Boot a copy at `copy` instead of the card, zero-padded (sparse) to
    /// `pad_to` bytes when given.
    pub(crate) fn use_copy(&mut self, copy: PathBuf, pad_to: Option<u64>) -> Result<()> {
        // Copying a file onto itself truncates it: a work directory holding
        // the card under the copy's name would destroy the card.
        if copy.exists()
            && std::fs::canonicalize(&copy).ok() == std::fs::canonicalize(&self.card).ok()
        {
            return Err(Error::Card {
                path: self.card.clone(),
                reason: format!(
                    "the run's copy of the card would be {}, the card itself; give --work-dir \
                     (QemuOptions::work_dir) another directory, or rename the card",
                    copy.display()
                ),
            });
        }
        crate::work::copy(&self.card, &copy)?;
        if let Some(size) = pad_to {
            crate::work::grow(&copy, size)?;
        }
        self.booted = copy;
        Ok(())
    }

    /// Boot a copy at `copy` that `patch` changes for the harness's own
    /// needs (kernel arguments in the loader entries). What the patch changes
    /// is remembered, so that it never goes back to the card.
    pub(crate) fn use_patched_copy(
        &mut self,
        copy: PathBuf,
        patch: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        self.use_copy(copy, None)?;
        patch(&self.booted)?;
        let mut pages = BTreeMap::new();
        differing_blocks(&self.card, &self.booted, self.len, |at, card, copy| {
            for ((i, a), b) in card.chunks(PAGE).enumerate().zip(copy.chunks(PAGE)) {
                if a != b {
                    pages.insert(at + (i * PAGE) as u64, b.to_vec());
                }
            }
            Ok(())
        })?;
        self.harness_pages = pages;
        Ok(())
    }

    /// After the VM stopped: copy the board's writes on the booted copy back
    /// to the card (nothing to do when it was booted in place, or when its
    /// writes are discarded), and report where they went.
    pub(crate) fn finish(mut self) -> Result<CardWriteBack> {
        self.finished = true;
        let mut report = CardWriteBack {
            mode: self.mode,
            in_place: self.booted == self.card,
            copied_back: Vec::new(),
        };
        if report.in_place || self.discards() {
            return Ok(report);
        }
        let mut out = OpenOptions::new()
            .write(true)
            .open(&self.card)
            .with_context(|| {
                format!(
                    "opening {} to copy the board's writes back",
                    self.card.display()
                )
            })?;
        differing_blocks(&self.card, &self.booted, self.len, |at, card, copy| {
            let merged = self.board_writes(at, card, copy);
            for (off, len) in changed_sectors(card, &merged) {
                let (from, to) = (off as usize, (off + len) as usize);
                out.seek(SeekFrom::Start(at + off))
                    .and_then(|_| out.write_all(&merged[from..to]))
                    .with_context(|| {
                        format!(
                            "copying {len} bytes the board wrote at byte {} back to {}",
                            at + off,
                            self.card.display()
                        )
                    })?;
                push_range(&mut report.copied_back, at + off, len);
            }
            Ok(())
        })?;
        if let Some((first, _)) = report.copied_back.first() {
            out.sync_all()
                .with_context(|| format!("flushing {}", self.card.display()))?;
            tracing::info!(
                "copied {} the board wrote to the card back to {} ({} range(s), the first at byte {first})",
                iec(report.bytes_copied_back()),
                self.card.display(),
                report.copied_back.len(),
            );
        }
        let past_end = nonzero_after(&self.booted, self.len)?;
        if past_end > 0 {
            tracing::warn!(
                "the board wrote {past_end} non-zero byte(s) past the end of {} ({}), into the \
                 padding QEMU's sd-card needs; they are not kept (the card has no room for them)",
                self.card.display(),
                iec(self.len)
            );
        }
        Ok(report)
    }

    /// The block at `at` as the card should hold it after the run: the
    /// card's bytes `o`, with every byte the board changed on the copy `b`.
    /// Where the harness patched the copy, the board changed a byte only if
    /// it differs from the patched page as it was before the boot.
    fn board_writes(&self, at: u64, o: &[u8], b: &[u8]) -> Vec<u8> {
        let mut before = o.to_vec();
        for (&off, page) in self.harness_pages.range(at..at + o.len() as u64) {
            let from = (off - at) as usize;
            before[from..from + page.len()].copy_from_slice(page);
        }
        o.iter()
            .zip(b)
            .zip(&before)
            .map(|((&o, &b), &p)| if b != p { b } else { o })
            .collect()
    }
}

impl Drop for BootCard {
    fn drop(&mut self) {
        // `finish` not reached: the run ended in an error before the VM
        // stopped. Say so rather than lose the board's writes silently.
        if self.started && !self.finished && self.booted != self.card && !self.discards() {
            tracing::error!(
                "what the board wrote to the copy of {} in this run was not copied back (the run \
                 ended in an error before the VM stopped)",
                self.card.display()
            );
        }
    }
}

/// An exclusive, non-blocking `flock` on the card: a second run on the same
/// card (another `mkflasher qemu`, a test thread) is refused while this one
/// holds it. QEMU's own image locks are byte-range locks and do not conflict.
fn lock(file: &File, card: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `file` is an open descriptor for the duration of the call;
    // flock takes no pointers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(Error::CardBusy {
            path: card.to_path_buf(),
        });
    }
    Err(Error::Io(flasher_format::io::IoError::new(
        format!("locking {}", card.display()),
        e,
    )))
}

/// Call `each(offset, card_bytes, copy_bytes)` for every block of the first
/// `len` bytes where `card` and `copy` differ.
fn differing_blocks(
    card: &Path,
    copy: &Path,
    len: u64,
    mut each: impl FnMut(u64, &[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let open = |p: &Path| File::open(p).with_context(|| format!("opening {}", p.display()));
    let mut files = [(card, open(card)?), (copy, open(copy)?)];
    let mut bufs = [vec![0u8; BLOCK], vec![0u8; BLOCK]];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(BLOCK as u64) as usize;
        for ((path, f), buf) in files.iter_mut().zip(bufs.iter_mut()) {
            f.seek(SeekFrom::Start(at))
                .and_then(|_| f.read_exact(&mut buf[..n]))
                .with_context(|| format!("reading {n} bytes at byte {at} of {}", path.display()))?;
        }
        let [a, b] = &bufs;
        if a[..n] != b[..n] {
            each(at, &a[..n], &b[..n])?;
        }
        at += n as u64;
    }
    Ok(())
}

/// The sectors where `new` differs from `old`, as coalesced `(offset, length)`.
fn changed_sectors(old: &[u8], new: &[u8]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, (a, b)) in old.chunks(SECTOR).zip(new.chunks(SECTOR)).enumerate() {
        if a != b {
            push_range(&mut out, (i * SECTOR) as u64, a.len() as u64);
        }
    }
    out
}

/// Append a range, merging it with the last one when they touch.
fn push_range(ranges: &mut Vec<(u64, u64)>, off: u64, len: u64) {
    match ranges.last_mut() {
        Some((o, n)) if *o + *n == off => *n += len,
        _ => ranges.push((off, len)),
    }
}

/// Non-zero bytes of the file at `path` from `from` to its end (the padding
/// of a copy).
fn nonzero_after(path: &Path, from: u64) -> Result<u64> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    f.seek(SeekFrom::Start(from))
        .with_context(|| format!("seeking to byte {from} of {}", path.display()))?;
    let mut buf = vec![0u8; BLOCK];
    let mut count = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading the padding of {}", path.display()))?;
        if n == 0 {
            return Ok(count);
        }
        count += buf[..n].iter().filter(|&&b| b != 0).count() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3 MiB "card" of recognisable bytes (not a power of two) in a fresh
    /// directory: the directory, the card's path and its bytes.
    fn card() -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("card.img");
        let bytes: Vec<u8> = (0..3u64 << 20).map(|i| (i % 251) as u8 | 1).collect();
        std::fs::write(&p, &bytes).unwrap();
        (dir, p, bytes)
    }

    fn write(path: &Path, at: u64, data: &[u8]) {
        let mut f = OpenOptions::new().write(true).open(path).unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(data).unwrap();
    }

    #[test]
    fn a_padded_copy_gives_the_board_writes_back_and_drops_the_padding() {
        let (dir, path, before) = card();
        let mut c = BootCard::open(&path, CardWrites::Persist).unwrap();
        c.use_copy(dir.path().join("copy.img"), Some(4 << 20))
            .unwrap();
        assert_ne!(c.booted(), path);
        // The board: a record in the "log" (spanning a block boundary), and
        // stray bytes in the padding.
        write(c.booted(), (1 << 20) - 100, &[0xee; 300]);
        write(c.booted(), (3 << 20) + 5, b"past the end");
        let report = c.finish().unwrap();
        assert!(!report.in_place);
        assert_eq!(
            report.copied_back,
            [((1 << 20) - 512, 1024)],
            "two sectors, coalesced"
        );
        let after = std::fs::read(&path).unwrap();
        assert_eq!(
            after.len(),
            before.len(),
            "the padding never reaches the card"
        );
        let mut want = before.clone();
        want[(1 << 20) - 100..(1 << 20) + 200].fill(0xee);
        assert_eq!(after, want, "the board's bytes, and nothing else, changed");
    }

    #[test]
    fn the_harness_patch_never_reaches_the_card_but_the_board_writes_around_it_do() {
        let (dir, path, before) = card();
        let mut c = BootCard::open(&path, CardWrites::Persist).unwrap();
        // The harness's kernel arguments, inside one page.
        c.use_patched_copy(dir.path().join("copy.img"), |copy| {
            write(copy, 8192 + 10, b"options flasher.events=/dev/ttyS1");
            Ok(())
        })
        .unwrap();
        assert_eq!(c.harness_pages.keys().copied().collect::<Vec<_>>(), [8192]);
        // The board writes in the same page (after the patch) and far away.
        write(c.booted(), 8192 + 1000, b"BOARD");
        write(c.booted(), 2 << 20, b"RECORD");
        let report = c.finish().unwrap();
        let after = std::fs::read(&path).unwrap();
        let mut want = before.clone();
        want[8192 + 1000..8192 + 1005].copy_from_slice(b"BOARD");
        want[(2 << 20)..(2 << 20) + 6].copy_from_slice(b"RECORD");
        assert_eq!(after, want, "the patch stayed on the copy");
        assert_eq!(report.copied_back, [(8192 + 512, 512), (2 << 20, 512)]);
    }

    /// The NUC route on a real FAT: the harness's kernel arguments go into
    /// the copy's loader entry through fatfs, the board writes elsewhere; the
    /// card gets the board's bytes and keeps its own loader entry.
    #[test]
    fn the_loader_entry_patch_stays_on_the_copy() {
        let img = crate::card::tests::image(&[
            ("loader/entries/f.conf", b"linux /k\noptions quiet\n"),
            ("k", b"K"),
        ]);
        let before = std::fs::read(img.path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut c = BootCard::open(img.path(), CardWrites::Persist).unwrap();
        c.use_patched_copy(dir.path().join("copy.img"), |copy| {
            crate::card::append_loader_options(copy, "flasher.events=/dev/ttyS1").map(drop)
        })
        .unwrap();
        assert!(!c.harness_pages.is_empty());
        let booted = crate::card::boot_spec(c.booted()).unwrap();
        assert_eq!(booted.cmdline, "quiet flasher.events=/dev/ttyS1");
        // The board: 600 bytes near the end of the FAT partition.
        let at = 2048 * 512 + (8 << 20) - 4096;
        write(c.booted(), at, &[0x5a; 600]);
        let report = c.finish().unwrap();
        assert_eq!(report.copied_back, [(at, 1024)]);
        let after = std::fs::read(img.path()).unwrap();
        let mut want = before;
        want[at as usize..at as usize + 600].fill(0x5a);
        assert_eq!(after, want);
        assert_eq!(crate::card::boot_spec(img.path()).unwrap().cmdline, "quiet");
    }

    #[test]
    fn in_place_and_discarded_runs_copy_nothing() {
        let (dir, path, before) = card();
        let c = BootCard::open(&path, CardWrites::Persist).unwrap();
        assert_eq!(c.booted(), path);
        let r = c.finish().unwrap();
        assert!(r.in_place && r.copied_back.is_empty());

        let mut c = BootCard::open(&path, CardWrites::Discard).unwrap();
        c.use_copy(dir.path().join("copy.img"), None).unwrap();
        write(c.booted(), 0, b"lost on purpose");
        let r = c.finish().unwrap();
        assert_eq!((r.mode, r.in_place), (CardWrites::Discard, false));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_copy_onto_the_card_itself_is_refused() {
        let (dir, path, before) = card();
        let mut c = BootCard::open(&path, CardWrites::Persist).unwrap();
        let same = dir.path().join(".").join("card.img");
        assert!(matches!(c.use_copy(same, None), Err(Error::Card { .. })));
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn one_card_boots_one_board_at_a_time() {
        let (_dir, path, _) = card();
        let first = BootCard::open(&path, CardWrites::Persist).unwrap();
        match BootCard::open(&path, CardWrites::Discard) {
            Err(e @ Error::CardBusy { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}")
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a second run on a locked card was let through"),
        }
        drop(first);
        BootCard::open(&path, CardWrites::Persist).unwrap();
    }

    #[test]
    fn a_card_that_cannot_be_written_is_refused_before_the_run() {
        // Root may write any file whatever its mode, so the card is a
        // directory: opening it for writing fails for everyone.
        let dir = tempfile::tempdir().unwrap();
        match BootCard::open(dir.path(), CardWrites::Persist) {
            Err(e @ Error::CardNotWritable { .. }) => {
                let text = e.to_string();
                assert!(text.contains("--discard-card-writes"), "{text}");
                assert!(text.contains("unit log"), "{text}");
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened a directory for writing"),
        }
    }
}
