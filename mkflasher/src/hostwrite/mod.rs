//! `mkflasher write`: one image onto one or more cards (block devices or
//! regular files), each validated by a read-back that bypasses the page cache.
//!
//! Order, so that nothing changes on the system before every check passed and
//! the person said yes:
//! 1. the input becomes a bundle: a bundle is used as it is; a raw or
//!    compressed image (or a card from `mkflasher build`) is read once and
//!    bundled into a temporary spool (`source::bundle_image`, zstd level 1),
//!    because the core pipeline streams bundles;
//! 2. every target is judged (`drives`): the system disk and the disk holding
//!    the input are always refused (found also through btrfs, device-mapper,
//!    md and overlays; where they cannot be found, every internal disk is),
//!    virtual and non-removable drives without `--allow-non-removable`;
//!    partitions, duplicates and too-small drives too;
//! 3. confirmation (model, serial, size) unless `--yes`;
//! 4. each drive is re-identified (`reidentify`: device number, `diskseq`,
//!    size, model, serial, WWID, CID read again from sysfs and compared with
//!    what was shown; another card in the same slot is refused), its mounted
//!    partitions are unmounted, and it is opened (O_EXCL on block devices)
//!    by `open_checked`, which refuses it unless the opened descriptor is the
//!    device shown (`fstat`, BLKGETDISKSEQ) and sysfs still agrees; then its
//!    size is checked (docs/host-safety.md);
//! 5. one thread reads the bundle once and fans its bytes out over bounded
//!    channels to one thread per target, each running the core pipeline
//!    (`flasher::pipeline::write_opened`: aligned direct I/O, zeros written,
//!    first blocks last, read-back). A target that fails drops out; the others
//!    go on. A slow one slows the others to its pace once its buffer is full
//!    (memory stays bounded).

mod display;
mod tamper;

pub use display::Display;
pub use tamper::Tamper;

use crate::drives::{self, Drive, Identity, Unsafe};
use crate::source::{self, BundleOptions};
use crossbeam_channel::{bounded, Receiver, Sender};
use flasher::blockdev::Device;
use flasher::pipeline::{self, Verify, WriteOptions, WriteReport};
use flasher::storage::DevNum;
use flasher_format::bundle::{self, Opened, WriterOptions};
use flasher_format::io::IoContext;
use flasher_format::units;
use serde::Serialize;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes per message from the reader to the target threads.
const PIECE: usize = 1 << 20;
/// Messages buffered per target: how far a target may lag behind the fastest.
const DEPTH: usize = 32;

/// Errors of `mkflasher write` before any target was written, and its summary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path} is the system disk ({holds}); mkflasher never writes it. Choose a card or USB stick (`mkflasher drives` lists them)")]
    SystemDisk { path: PathBuf, holds: String },
    #[error("{path} holds the input image {image}; writing it would destroy the image. Copy the image elsewhere or choose another target")]
    HoldsInput { path: PathBuf, image: PathBuf },
    /// The system lives on filesystems whose disks cannot be traced (ZFS,
    /// FUSE, an overlay whose layers are not visible): no internal disk is
    /// written, whatever the options (docs/host-safety.md).
    #[error("{path} ({desc}) is not a card, and the system disk cannot be determined: {}; mkflasher then never writes an internal disk, also with --allow-non-removable. Choose a card or USB stick (`mkflasher drives`)", .holds.join("; "))]
    SystemUnresolved {
        path: PathBuf,
        desc: String,
        holds: Vec<String>,
    },
    /// The image lies on a filesystem whose disks cannot be traced.
    #[error("{path} ({desc}) is not a card, and the disk holding the image {image} cannot be determined: {}; mkflasher then never writes an internal disk, also with --allow-non-removable. Copy the image to another filesystem (ext4, xfs, btrfs, tmpfs) or choose a card or USB stick", .on.join("; "))]
    InputUnresolved {
        path: PathBuf,
        desc: String,
        image: PathBuf,
        on: Vec<String>,
    },
    /// The drive at `path` is not the one that was listed and confirmed:
    /// another card in the same slot, a resized or replaced disk.
    #[error("{name} ({path}) changed since it was shown: {}; nothing was written. Run `mkflasher drives` again and check that it is the drive you mean", changes_text(.changes))]
    TargetChanged {
        path: PathBuf,
        name: String,
        changes: Vec<drives::Change>,
    },
    /// The drive at `path` was removed since it was listed.
    #[error("{name} ({path}) is gone since it was shown ({sys} is missing); nothing was written. Insert the card again and run `mkflasher drives` again")]
    TargetGone {
        path: PathBuf,
        name: String,
        sys: PathBuf,
    },
    /// What opened at `path` is not block device `expected` (the node was
    /// replaced between the check and the open); `found`: what it is instead,
    /// `None` for something that is not a block device.
    #[error("{path} opened as {}, not as {name} ({expected}) that was shown: the device node changed between the check and the open; nothing was written. Run `mkflasher drives` again", found.map_or_else(|| "something that is not a block device".to_string(), |d| format!("block device {d}")))]
    TargetSwapped {
        path: PathBuf,
        name: String,
        expected: DevNum,
        found: Option<DevNum>,
    },
    #[error("{path} is not removable ({desc}); pass --allow-non-removable if you are sure")]
    NonRemovable { path: PathBuf, desc: String },
    #[error("{path} is a {what} device ({desc}), not a card; pass --allow-non-removable if you are sure")]
    Virtual {
        path: PathBuf,
        what: String,
        desc: String,
    },
    #[error("{path} is read-only ({desc}); check the card's lock switch")]
    ReadOnly { path: PathBuf, desc: String },
    #[error("{path} is a partition of {disk}; write the whole disk ({disk})")]
    Partition { path: PathBuf, disk: PathBuf },
    #[error("{path} is block device {dev}, which {sys} does not list; is it still there? (`mkflasher drives --all`)")]
    UnknownDevice {
        path: PathBuf,
        dev: String,
        sys: PathBuf,
    },
    #[error("{path} is given more than once (as {first})")]
    Duplicate { path: PathBuf, first: PathBuf },
    #[error("no targets given; name one or more drives (`mkflasher drives`) or files")]
    NoTargets,
    #[error("cannot ask for confirmation: standard input is not a terminal; pass --yes to write without asking")]
    NotInteractive,
    #[error("not confirmed; nothing was written")]
    Declined,
    #[error("unmounting {mount_point} (on {path}) failed: {source}; close what uses it or unmount it yourself, then retry")]
    Unmount {
        path: PathBuf,
        mount_point: String,
        #[source]
        source: nix::errno::Errno,
    },
    /// A target refused by the pipeline's own checks before any write (too
    /// small, mounted, busy, read-only); its message names the target.
    #[error("{error}")]
    Target {
        path: PathBuf,
        error: Box<flasher::Error>,
    },
    #[error("{failed} of {total} targets failed: {names}; see the table above")]
    Failed {
        failed: usize,
        total: usize,
        names: String,
    },
    #[error(transparent)]
    Drives(#[from] flasher::storage::Error),
    #[error(transparent)]
    Source(#[from] source::Error),
    #[error(transparent)]
    Flasher(#[from] flasher::Error),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn changes_text(changes: &[drives::Change]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fault to inject for tests: after the write, before the read-back of
/// target `target` (its index), flip the byte at `offset` through a separate
/// descriptor, so the validation must catch a change behind the tool's back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TamperFault {
    pub target: usize,
    pub offset: u64,
}

/// What `mkflasher write` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Root of /proc, /sys (and the drives' /dev paths): "/" on a real system.
    pub root: PathBuf,
    pub yes: bool,
    pub verify: Verify,
    pub allow_non_removable: bool,
    /// Where a raw or compressed image is bundled before writing.
    pub tmp_dir: PathBuf,
    /// O_DIRECT (off only for filesystems that refuse it).
    pub direct: bool,
    pub tamper: Option<TamperFault>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            root: PathBuf::from("/"),
            yes: false,
            verify: Verify::Full,
            allow_non_removable: false,
            // /var/tmp, not /tmp: /tmp is often a RAM-backed tmpfs, and the
            // bundle of a large image needs disk.
            tmp_dir: std::env::var_os("TMPDIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/tmp")),
            direct: true,
            tamper: None,
        }
    }
}

/// A target after the checks: its path and, for a block device, the drive.
#[derive(Debug, Clone)]
pub struct Checked {
    pub path: PathBuf,
    pub drive: Option<Drive>,
}

impl Checked {
    fn label(&self) -> String {
        match &self.drive {
            Some(d) => d.name.clone(),
            None => self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.path.display().to_string()),
        }
    }
}

/// How one target went.
#[derive(Debug)]
pub struct Outcome {
    pub target: Checked,
    pub result: std::result::Result<WriteReport, flasher::Error>,
    pub elapsed: Duration,
}

/// One line of `--json` output.
#[derive(Debug, Serialize)]
pub struct JsonResult<'a> {
    pub target: &'a Path,
    pub ok: bool,
    pub drive: Option<&'a Drive>,
    pub error: Option<String>,
    /// The blink class of the error (the same numbers the board shows).
    pub error_class: Option<u8>,
    pub seconds: f64,
    pub report: Option<&'a WriteReport>,
}

impl Outcome {
    pub fn json(&self) -> JsonResult<'_> {
        JsonResult {
            target: &self.target.path,
            ok: self.result.is_ok(),
            drive: self.target.drive.as_ref(),
            error: self
                .result
                .as_ref()
                .err()
                .map(|e| flasher::error::report(e)),
            error_class: self.result.as_ref().err().map(|e| u8::from(e.class())),
            seconds: self.elapsed.as_secs_f64(),
            report: self.result.as_ref().ok(),
        }
    }
}

/// The per-target result table.
pub fn table(outcomes: &[Outcome]) -> String {
    // The result goes last so a long error does not push the other columns.
    let mut rows = vec![["target", "written", "verified", "time", "result"].map(String::from)];
    for o in outcomes {
        let (written, verified, result) = match &o.result {
            Ok(r) => (
                units::iec(r.bytes_written + r.bytes_zeroed),
                units::iec(r.bytes_verified),
                "ok".to_string(),
            ),
            Err(e) => (
                "-".into(),
                "-".into(),
                format!("FAILED: {}", flasher::error::report(e)),
            ),
        };
        rows.push([
            o.target.path.display().to_string(),
            written,
            verified,
            format!("{:.1} s", o.elapsed.as_secs_f64()),
            result,
        ]);
    }
    columns(&rows, &[false, true, true, true, false])
}

/// Rows as aligned columns (two spaces apart; `right[i]`: right-aligned);
/// the last column is not padded.
pub fn columns<const N: usize>(rows: &[[String; N]], right: &[bool; N]) -> String {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let pad = " ".repeat(if i + 1 == N {
                0
            } else {
                w[i] - c.chars().count()
            });
            if right[i] {
                line.push_str(&pad);
                line.push_str(c);
            } else {
                line.push_str(c);
                line.push_str(&pad);
            }
            if i + 1 < N {
                line.push_str("  ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The input as a bundle on disk: the image itself, or a spool removed on drop.
struct Input {
    path: PathBuf,
    spool: bool,
}

impl Drop for Input {
    fn drop(&mut self) {
        if self.spool {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_bundle(image: &Path) -> Result<bool> {
    let mut f = std::fs::File::open(image).with_context(|| format!("open {}", image.display()))?;
    let mut magic = [0u8; 8];
    let n = source::read_up_to(&mut f, &mut magic)
        .with_context(|| format!("read {}", image.display()))?;
    Ok(n == magic.len() && magic == bundle::MAGIC)
}

/// Turn `image` into a bundle file (one read of the image).
fn prepare(image: &Path, tmp_dir: &Path) -> Result<Input> {
    if is_bundle(image)? {
        return Ok(Input {
            path: image.to_owned(),
            spool: false,
        });
    }
    let path = tmp_dir.join(format!("mkflasher-write-{}.bundle", std::process::id()));
    let input = Input { path, spool: true };
    tracing::info!(
        "reading {} once (decompressing, finding zeros) into {}",
        image.display(),
        input.path.display()
    );
    let opts = BundleOptions {
        // Speed over size: the spool lives only while this runs.
        writer: WriterOptions {
            level: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    source::bundle_image(image, &input.path, &opts)?;
    Ok(input)
}

/// Judge each target path; refuse with the first problem found. `image` is
/// refused as a target of itself.
pub fn check_targets(
    image: &Path,
    targets: &[PathBuf],
    drives: &[Drive],
    root: &Path,
    allow_non_removable: bool,
) -> Result<Vec<Checked>> {
    use std::os::unix::fs::MetadataExt;
    if targets.is_empty() {
        return Err(Error::NoTargets);
    }
    let mut out: Vec<Checked> = Vec::new();
    let mut seen: Vec<(u64, u64, PathBuf)> = Vec::new();
    let img = std::fs::metadata(image).with_context(|| format!("stat {}", image.display()))?;
    for path in targets {
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Error::Io(flasher_format::io::IoError::new(
                    format!("stat {}", path.display()),
                    e,
                )))
            }
        };
        if let Some(m) = &meta {
            let id = if m.file_type().is_block_device() {
                (0, m.rdev())
            } else {
                (m.dev(), m.ino())
            };
            if id == (img.dev(), img.ino()) || (id.0 == 0 && id.1 == img.rdev()) {
                return Err(Error::HoldsInput {
                    path: path.clone(),
                    image: image.to_owned(),
                });
            }
            if let Some((.., first)) = seen.iter().find(|(a, b, _)| (*a, *b) == id) {
                return Err(Error::Duplicate {
                    path: path.clone(),
                    first: first.clone(),
                });
            }
            seen.push((id.0, id.1, path.clone()));
        }
        let Some(m) = meta.filter(|m| m.file_type().is_block_device()) else {
            out.push(Checked {
                path: path.clone(),
                drive: None,
            });
            continue;
        };
        let dev = flasher::storage::DevNum {
            major: libc::major(m.rdev()),
            minor: libc::minor(m.rdev()),
        };
        let Some(drive) = drives.iter().find(|d| d.dev == dev) else {
            // A partition of a listed disk?
            if let Some(disk) =
                partition_of(root, dev).and_then(|n| drives.iter().find(|d| d.name == n))
            {
                return Err(Error::Partition {
                    path: path.clone(),
                    disk: disk.path.clone(),
                });
            }
            return Err(Error::UnknownDevice {
                path: path.clone(),
                dev: dev.to_string(),
                sys: root.join("sys/block"),
            });
        };
        judge(path, drive, allow_non_removable)?;
        if drive.large {
            tracing::warn!(
                "{} is {}, larger than most cards; make sure it is the one you mean",
                path.display(),
                units::si(drive.size_bytes)
            );
        }
        out.push(Checked {
            path: path.clone(),
            drive: Some(drive.clone()),
        });
    }
    Ok(out)
}

/// The disk a partition `dev` belongs to, from `/sys/class/block/<part>/..`.
fn partition_of(root: &Path, dev: flasher::storage::DevNum) -> Option<String> {
    let dir = root.join("sys/class/block");
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let d = std::fs::read_to_string(p.join("dev")).unwrap_or_default();
        if d.trim() == dev.to_string() && p.join("partition").exists() {
            let real = std::fs::canonicalize(&p).ok()?;
            return real
                .parent()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned());
        }
    }
    None
}

/// Refuse `d` as a target at `path` unless it is a candidate, or `allow`
/// (`--allow-non-removable`) lifts its verdict (virtual or internal disks).
pub fn judge(path: &Path, d: &Drive, allow: bool) -> Result<()> {
    let Some(why) = &d.unsafe_ else {
        return Ok(());
    };
    let desc = d.describe();
    let err = match why {
        Unsafe::System { holds } => Error::SystemDisk {
            path: path.to_owned(),
            holds: format!("holds {}", holds.join(", ")),
        },
        Unsafe::Input { image } => Error::HoldsInput {
            path: path.to_owned(),
            image: image.clone(),
        },
        Unsafe::SystemUnresolved { holds } => Error::SystemUnresolved {
            path: path.to_owned(),
            desc,
            holds: holds.clone(),
        },
        Unsafe::InputUnresolved { image, on } => Error::InputUnresolved {
            path: path.to_owned(),
            desc,
            image: image.clone(),
            on: on.clone(),
        },
        Unsafe::ReadOnly => Error::ReadOnly {
            path: path.to_owned(),
            desc,
        },
        _ if allow => {
            tracing::warn!(
                "{} ({desc}) is {}; writing it because --allow-non-removable was given",
                path.display(),
                why.describe()
            );
            return Ok(());
        }
        Unsafe::Virtual { what } => Error::Virtual {
            path: path.to_owned(),
            what: what.clone(),
            desc,
        },
        Unsafe::NonRemovable => Error::NonRemovable {
            path: path.to_owned(),
            desc: format!("internal {desc}"),
        },
    };
    Err(err)
}

/// Ask on the terminal; `Ok(())` only on "yes".
fn confirm(image: &Path, size: u64, targets: &[Checked]) -> Result<()> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::NotInteractive);
    }
    let mut err = std::io::stderr();
    let _ = writeln!(
        err,
        "About to write {} ({}) to:",
        image.display(),
        units::si(size)
    );
    for t in targets {
        match &t.drive {
            Some(d) => {
                let mounted = if d.mounted.is_empty() {
                    String::new()
                } else {
                    format!(" (mounted on {}; will be unmounted)", d.mounted.join(", "))
                };
                let large = if d.large {
                    format!(
                        "; WARNING: over {}, is this really a card?",
                        units::si(drives::LARGE)
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(
                    err,
                    "  {}: {}{mounted}{large}",
                    t.path.display(),
                    d.describe()
                );
            }
            None => {
                let _ = writeln!(err, "  {} (file)", t.path.display());
            }
        }
    }
    let _ = write!(
        err,
        "Everything on these drives will be lost. Type yes to go on: "
    );
    let _ = err.flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("read the answer")?;
    if line.trim().eq_ignore_ascii_case("yes") {
        Ok(())
    } else {
        Err(Error::Declined)
    }
}

/// Unmount every mount point on a target (deepest first). Only on the live
/// system: under a fake root the mount points are not ours to unmount, and
/// the pipeline's preflight then refuses the mounted target.
fn unmount(root: &Path, t: &Checked) -> Result<()> {
    let Some(d) = &t.drive else { return Ok(()) };
    if root != Path::new("/") || d.mounted.is_empty() {
        return Ok(());
    }
    let mut points = d.mounted.clone();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for mp in points {
        tracing::info!("unmounting {mp} ({})", t.path.display());
        nix::mount::umount(mp.as_str()).map_err(|source| Error::Unmount {
            path: t.path.clone(),
            mount_point: mp.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Reads the bundle bytes a channel delivers (one target's view of the one read).
struct ChannelReader {
    rx: Receiver<std::result::Result<Arc<[u8]>, String>>,
    cur: Arc<[u8]>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.cur = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e)),
                // The reader finished: end of the bundle.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Write the bundle's chunk stream `chunks` (positioned after the manifest)
/// onto every opened target at once: this thread reads, one thread per target
/// writes and verifies. Returns one result per target, in order.
pub fn fan_out<R: Read, T: pipeline::Target, O: flasher::progress::Observer>(
    opened: &Opened,
    mut chunks: R,
    targets: Vec<(PathBuf, T)>,
    opts: &WriteOptions,
    observers: &[O],
) -> Vec<(std::result::Result<WriteReport, flasher::Error>, Duration)> {
    std::thread::scope(|s| {
        let mut txs: Vec<Option<Sender<_>>> = Vec::new();
        let mut handles = Vec::new();
        for (i, (path, mut t)) in targets.into_iter().enumerate() {
            let (tx, rx) = bounded(DEPTH);
            txs.push(Some(tx));
            let obs = &observers[i];
            handles.push(s.spawn(move || {
                let t0 = Instant::now();
                let reader = ChannelReader {
                    rx,
                    cur: Arc::from(Vec::new()),
                    pos: 0,
                };
                let r = pipeline::write_opened(opened, reader, &mut t, opts, obs, &path);
                (r, t0.elapsed())
            }));
        }
        let mut remaining = opened.header.data_len;
        while remaining > 0 && txs.iter().any(Option::is_some) {
            let mut buf = vec![0u8; (remaining.min(PIECE as u64)) as usize];
            let msg = match source::read_up_to(&mut chunks, &mut buf) {
                Ok(0) => Err("the bundle ends early (truncated input)".to_string()),
                Ok(n) => {
                    buf.truncate(n);
                    remaining -= n as u64;
                    Ok(Arc::<[u8]>::from(buf))
                }
                Err(e) => Err(format!("reading the input: {e}")),
            };
            let stop = msg.is_err();
            for slot in txs.iter_mut() {
                // A target that stopped (failed) hung up; the others go on.
                if slot
                    .as_ref()
                    .is_some_and(|tx| tx.send(msg.clone()).is_err())
                {
                    *slot = None;
                }
            }
            if stop {
                break;
            }
        }
        drop(txs);
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    (
                        Err(flasher::Error::Usage("a target thread panicked".into())),
                        Duration::ZERO,
                    )
                })
            })
            .collect()
    })
}

/// `mkflasher write`: everything after argument parsing. `Err` for a refusal
/// before any write; otherwise one outcome per target (some may have failed).
pub fn write(
    image: &Path,
    targets: &[PathBuf],
    opts: &Options,
    display: &Display,
) -> Result<Vec<Outcome>> {
    // Judge the targets before the (possibly long) bundling of the input.
    let ctx = drives::Context::for_image(image)?;
    let all = drives::survey(&opts.root, &ctx)?;
    let checked = check_targets(image, targets, &all, &opts.root, opts.allow_non_removable)?;
    let input = prepare(image, &opts.tmp_dir)?;
    let f = std::fs::File::open(&input.path)
        .with_context(|| format!("open {}", input.path.display()))?;
    // Open, the spool needs no name: gone even if the run is interrupted.
    drop(input);
    let mut payload = std::io::BufReader::with_capacity(PIECE, f);
    let opened = bundle::read_manifest(&mut payload).map_err(flasher::Error::from)?;
    let size = opened.manifest.image_size;
    for t in &checked {
        if let Some(d) = &t.drive {
            check_size(&t.path, d.size_bytes, size)?;
        }
    }
    if !opts.yes && checked.iter().any(|t| t.drive.is_some()) {
        confirm(image, size, &checked)?;
    }
    let wopts = WriteOptions {
        verify: opts.verify,
        root: opts.root.clone(),
        direct: opts.direct,
        // Each target decompresses every chunk; share the CPUs.
        workers: (WriteOptions::default().workers / checked.len()).max(1),
        ..Default::default()
    };
    let mut opened_targets = Vec::new();
    for (i, t) in checked.iter().enumerate() {
        // Still the drive that was shown and confirmed? (Before unmounting
        // anything: the mount points are those of the drive shown.)
        reidentify(&opts.root, t)?;
        unmount(&opts.root, t)?;
        if t.drive.is_none() {
            grow_file(&t.path, size)?;
        }
        let dev = open_checked(&opts.root, t, &wopts)?;
        let tamper = opts
            .tamper
            .filter(|f| f.target == i)
            .map(|f| (t.path.clone(), f.offset));
        opened_targets.push((t.path.clone(), Tamper::new(dev, tamper)));
    }
    // Size from the open device (the sysfs size was checked before asking).
    for (path, t) in &opened_targets {
        check_size(path, pipeline::Target::size(t), size)?;
    }
    let observers: Vec<_> = checked.iter().map(|t| display.view(&t.label())).collect();
    let results = fan_out(&opened, payload, opened_targets, &wopts, &observers);
    for (v, (r, _)) in observers.iter().zip(&results) {
        v.finish(r.as_ref().err());
    }
    drop(observers);
    Ok(checked
        .into_iter()
        .zip(results)
        .map(|(target, (result, elapsed))| Outcome {
            target,
            result,
            elapsed,
        })
        .collect())
}

/// Refuse a drive target that is not the drive that was listed: read its
/// [`Identity`] again (under `root`) and compare it with the one recorded
/// when it was shown. Regular-file targets pass.
pub fn reidentify(root: &Path, t: &Checked) -> Result<()> {
    let Some(d) = &t.drive else { return Ok(()) };
    let Some(now) = Identity::read(root, &d.name) else {
        return Err(Error::TargetGone {
            path: t.path.clone(),
            name: d.name.clone(),
            sys: root.join("sys/block").join(&d.name),
        });
    };
    let changes = d.identity.changes(&now);
    if changes.is_empty() {
        return Ok(());
    }
    Err(Error::TargetChanged {
        path: t.path.clone(),
        name: d.name.clone(),
        changes,
    })
}

/// Open target `t` for writing, for a drive only if it is still the drive
/// that was shown: its identity is read again right before the open; after
/// the open, the descriptor the write will use must be block device
/// `drive.dev` (a node replaced between the check and the open is refused),
/// its `diskseq` as the kernel reports it through the descriptor must be
/// the one shown, and sysfs is read once more. Nothing is written here; a
/// refused target is closed again.
pub fn open_checked(root: &Path, t: &Checked, wopts: &WriteOptions) -> Result<Device> {
    let target_err = |e: flasher::Error| Error::Target {
        path: t.path.clone(),
        error: Box::new(e),
    };
    let Some(d) = &t.drive else {
        return pipeline::open_target(&t.path, wopts).map_err(target_err);
    };
    reidentify(root, t)?;
    let dev = pipeline::open_target(&t.path, wopts).map_err(target_err)?;
    // The descriptor the write will use, not the path: what it is open on.
    let fd = dev.as_fd().as_raw_fd();
    let found = fd_kind(fd).flatten();
    if found != Some(d.dev) {
        return Err(Error::TargetSwapped {
            path: t.path.clone(),
            name: d.name.clone(),
            expected: d.dev,
            found,
        });
    }
    if let Some(want) = d.identity.diskseq {
        match fd_diskseq(fd) {
            Some(got) if got != want => {
                return Err(Error::TargetChanged {
                    path: t.path.clone(),
                    name: d.name.clone(),
                    changes: vec![drives::Change {
                        what: "diskseq",
                        before: want.to_string(),
                        after: got.to_string(),
                    }],
                })
            }
            _ => {}
        }
    }
    reidentify(root, t)?;
    Ok(dev)
}

/// `Some(Some(dev))` for a descriptor on a block device, `Some(None)` for
/// any other open file, `None` when `fd` is not open (any more).
fn fd_kind(fd: i32) -> Option<Option<DevNum>> {
    // SAFETY: fstat writes only into `st`; an fd that is not open fails
    // with EBADF and touches nothing.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    Some(
        (st.st_mode & libc::S_IFMT == libc::S_IFBLK).then(|| DevNum {
            major: libc::major(st.st_rdev),
            minor: libc::minor(st.st_rdev),
        }),
    )
}

/// The disk sequence number of the block device open at `fd`
/// (BLKGETDISKSEQ, Linux >= 5.15), `None` where the kernel has none.
fn fd_diskseq(fd: i32) -> Option<u64> {
    // _IOR(0x12, 128, __u64) from <linux/fs.h>.
    #[allow(clippy::unnecessary_cast)]
    const BLKGETDISKSEQ: u64 = nix::request_code_read!(0x12, 128, 8) as u64;
    let mut seq: u64 = 0;
    // SAFETY: the request writes one u64 into `seq`, which outlives the call.
    let r = unsafe { libc::ioctl(fd, BLKGETDISKSEQ as _, &mut seq as *mut u64) };
    (r == 0).then_some(seq)
}

/// Refuse a target smaller than the image (the pipeline's own variant).
fn check_size(path: &Path, target: u64, image: u64) -> Result<()> {
    if target >= image {
        return Ok(());
    }
    Err(Error::Target {
        path: path.to_owned(),
        error: Box::new(
            pipeline::Error::TargetTooSmall {
                path: path.to_owned(),
                target,
                image,
            }
            .into(),
        ),
    })
}

/// A regular-file target is created, or grown, to the image size.
fn grow_file(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("stat {}", path.display()))?
        .len();
    if len < size {
        f.set_len(size)
            .with_context(|| format!("grow {} to {size} bytes", path.display()))?;
    }
    Ok(())
}

/// The summary error when any target failed.
pub fn failures(outcomes: &[Outcome]) -> Result<()> {
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|o| o.result.is_err())
        .map(|o| o.target.path.display().to_string())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(Error::Failed {
        failed: failed.len(),
        total: outcomes.len(),
        names: failed.join(", "),
    })
}
