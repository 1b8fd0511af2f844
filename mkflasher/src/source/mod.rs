//! Reading OS images for bundling: compression detected by magic bytes (gzip,
//! xz, zstd, raw), zero ranges found by content and by file holes
//! (SEEK_DATA/SEEK_HOLE), and bmaptool block maps (`bmap`) whose unmapped
//! blocks become dont-care and whose range checksums are checked while reading.
//! The bundle format itself is `flasher_format::bundle`; this module only feeds its
//! [`BundleWriter`].

pub mod bmap;
mod scan;
pub mod signatures;
mod sparse_copy;

pub use scan::Classifier;

use flasher_format::bundle::{BundleWriter, Manifest, SourceInfo, WriterOptions};
use flasher_format::io::IoContext;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Errors while reading an image or its bmap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {name}-compressed images are not supported; decompress it first or use gzip, xz or zstd")]
    UnsupportedCompression { path: PathBuf, name: &'static str },
    #[error("bmap {path}: {reason}")]
    Bmap { path: PathBuf, reason: String },
    #[error("bmap {path} uses {kind} checksums, which this tool cannot check (only sha256); recreate the bmap with `bmaptool create` (format 2.0) or pass --skip-bmap-checksums")]
    UnsupportedChecksum { path: PathBuf, kind: String },
    #[error("bmap {path} is corrupt: its own checksum is {actual}, it says {expected}")]
    BmapFileChecksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("image does not match its bmap: blocks {first}-{last} (bytes {offset}..{end}) have sha256 {actual}, the bmap says {expected}")]
    RangeChecksum {
        first: u64,
        last: u64,
        offset: u64,
        end: u64,
        expected: String,
        actual: String,
    },
    #[error(
        "image is {image} bytes but its bmap says {bmap} bytes; use the bmap made for this image"
    )]
    SizeMismatch { image: u64, bmap: u64 },
    #[error("image is empty")]
    Empty,
    #[error(transparent)]
    Bundle(#[from] flasher_format::bundle::Error),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an image file is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "raw",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

/// Detect compression by magic bytes (never by file name).
pub fn detect(path: &Path, magic: &[u8]) -> Result<Compression> {
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if magic.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Compression::Xz
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if magic.starts_with(b"BZh") {
        return Err(Error::UnsupportedCompression {
            path: path.to_owned(),
            name: "bzip2",
        });
    } else if magic.starts_with(&[0x04, 0x22, 0x4d, 0x18]) {
        return Err(Error::UnsupportedCompression {
            path: path.to_owned(),
            name: "lz4",
        });
    } else if magic.starts_with(b"PK\x03\x04") {
        return Err(Error::UnsupportedCompression {
            path: path.to_owned(),
            name: "zip",
        });
    } else {
        Compression::None
    })
}

/// Options for [`bundle_image`].
#[derive(Debug, Clone)]
pub struct BundleOptions {
    pub writer: WriterOptions,
    /// Zero runs shorter than this stay inside data (they compress to
    /// nothing); longer ones become must-be-zero extents.
    pub min_zero_run: u64,
    pub bmap: Option<PathBuf>,
    /// Import a bmap whose checksums cannot be checked (sha1/md5) anyway.
    pub skip_bmap_checksums: bool,
}

impl Default for BundleOptions {
    fn default() -> Self {
        BundleOptions {
            writer: WriterOptions::default(),
            min_zero_run: 64 << 10,
            bmap: None,
            skip_bmap_checksums: false,
        }
    }
}

/// One piece of the image in read order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    /// Read and classify by content; `check` is a bmap range checksum.
    Read {
        off: u64,
        len: u64,
        check: Option<bmap::RangeCheck>,
    },
    /// A file hole: zeros without reading.
    Hole { off: u64, len: u64 },
    /// Unmapped in the bmap.
    DontCare { off: u64, len: u64 },
}

/// Data ranges of a regular file via SEEK_DATA/SEEK_HOLE; `None` where the
/// filesystem does not support it.
fn data_ranges(f: &File, size: u64) -> Option<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match lseek(fd, off as i64, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(_) => return None,
        };
        let hole = match lseek(fd, data as i64, Whence::SeekHole) {
            Ok(h) => (h as u64).min(size),
            Err(_) => return None,
        };
        if hole > data {
            out.push((data, hole - data));
        }
        off = hole.max(data + 1);
    }
    Some(out)
}

/// Turn an image (raw or compressed, with or without a bmap) into a bundle at
/// `out`. Returns the manifest.
pub fn bundle_image(image: &Path, out: &Path, opts: &BundleOptions) -> Result<Manifest> {
    let mut f = File::open(image).with_context(|| format!("open image {}", image.display()))?;
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut f, &mut magic).with_context(|| format!("read {}", image.display()))?;
    f.seek(SeekFrom::Start(0)).context("rewind image")?;
    let compression = detect(image, &magic[..n])?;
    let bmap = match &opts.bmap {
        Some(p) => Some(bmap::Bmap::load(p, opts.skip_bmap_checksums)?),
        None => None,
    };
    let mut wopts = opts.writer.clone();
    wopts.source = SourceInfo {
        name: image.file_name().map(|n| n.to_string_lossy().into_owned()),
        compression: Some(compression.name().into()),
        bmap: opts
            .bmap
            .as_ref()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
    };
    // The signatures the board holds back to the end (docs/fail-closed.md,
    // "Held-back signatures"). libblkid needs a seekable file: a raw image is
    // probed as it is, a compressed one through a sparse copy of what is
    // decompressed below, in the same pass.
    let probe_copy = if compression == Compression::None {
        let size = f.metadata().context("stat image")?.len();
        wopts
            .hold
            .extend(probed(signatures::probe(image, size), image)?);
        None
    } else {
        let p = side_path(out, "probe");
        Some(
            sparse_copy::unlinked(&p)
                .with_context(|| format!("create the probe copy {}", p.display()))?,
        )
    };
    let spool_path = side_path(out, "chunks");
    // The spool is only needed while this runs; unlinked at once so it cannot be left behind.
    let spool = sparse_copy::unlinked(&spool_path)
        .with_context(|| format!("create spool {}", spool_path.display()))?;
    let mut writer = BundleWriter::new(wopts, spool)?;
    let raw_size = f.metadata().context("stat image")?.len();
    if let (Some(b), Compression::None) = (&bmap, compression) {
        if raw_size != b.image_size {
            return Err(Error::SizeMismatch {
                image: raw_size,
                bmap: b.image_size,
            });
        }
    }
    let segs: Option<Vec<Seg>> = match (&bmap, compression) {
        (Some(b), _) => Some(b.segments()),
        (None, Compression::None) => Some(match data_ranges(&f, raw_size) {
            Some(ranges) => {
                let mut v = Vec::new();
                let mut pos = 0;
                for (off, len) in ranges {
                    if off > pos {
                        v.push(Seg::Hole {
                            off: pos,
                            len: off - pos,
                        });
                    }
                    v.push(Seg::Read {
                        off,
                        len,
                        check: None,
                    });
                    pos = off + len;
                }
                if pos < raw_size {
                    v.push(Seg::Hole {
                        off: pos,
                        len: raw_size - pos,
                    });
                }
                v
            }
            None => vec![Seg::Read {
                off: 0,
                len: raw_size,
                check: None,
            }],
        }),
        (None, _) => None,
    };
    // SEEK_DATA/SEEK_HOLE moved the file position.
    f.seek(SeekFrom::Start(0)).context("rewind image")?;
    let size = {
        let mut cls = Classifier::new(&mut writer, opts.min_zero_run);
        let mut reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(&f),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                BufReader::with_capacity(1 << 20, &f),
            )),
            Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(
                BufReader::with_capacity(1 << 20, &f),
            )),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::new(&f).context("start zstd decoder")?)
            }
        };
        if let Some(copy) = &probe_copy {
            reader = Box::new(sparse_copy::Tee::new(reader, copy));
        }
        let seekable = compression == Compression::None;
        match segs {
            None => {
                scan::copy_all(&mut reader, &mut cls)?;
            }
            Some(segs) => {
                let mut pos = 0u64;
                for s in &segs {
                    scan::apply(s, &mut pos, &mut reader, seekable.then_some(&f), &mut cls)?;
                }
                // Whatever follows the map must not exist (image larger than the bmap says).
                if let Some(b) = &bmap {
                    let mut probe = [0u8; 1];
                    if !seekable && read_up_to(&mut reader, &mut probe).context("read image")? > 0 {
                        return Err(Error::SizeMismatch {
                            image: b.image_size + 1,
                            bmap: b.image_size,
                        });
                    }
                }
            }
        }
        cls.finish()?
    };
    if size == 0 {
        return Err(Error::Empty);
    }
    if let Some(copy) = &probe_copy {
        copy.set_len(size).context("size the probe copy")?;
        writer.hold(probed(signatures::probe_file(copy, size), image)?);
    }
    drop(probe_copy);
    if let Some(b) = &bmap {
        let image_len = if compression == Compression::None {
            raw_size
        } else {
            size
        };
        if image_len != b.image_size {
            return Err(Error::SizeMismatch {
                image: image_len,
                bmap: b.image_size,
            });
        }
    }
    let tmp_out = out.with_extension("partial");
    let mut o = std::io::BufWriter::with_capacity(
        1 << 20,
        File::create(&tmp_out).with_context(|| format!("create {}", tmp_out.display()))?,
    );
    let manifest = writer.finish(&mut o)?;
    let file = o.into_inner().map_err(|e| {
        Error::Io(flasher_format::io::IoError::new(
            "flush bundle",
            e.into_error(),
        ))
    })?;
    file.sync_all().context("sync bundle")?;
    std::fs::rename(&tmp_out, out)
        .with_context(|| format!("rename {} to {}", tmp_out.display(), out.display()))?;
    Ok(manifest)
}

/// A working file beside `out`: `OUT.WHAT-PID.tmp`.
fn side_path(out: &Path, what: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(format!(".{what}-{}.tmp", std::process::id()));
    PathBuf::from(s)
}

/// What libblkid found, for the ranges the board holds back; a probe that
/// failed fails the bundle step, naming the image.
fn probed(
    found: std::io::Result<Vec<flasher_format::bundle::HoldRange>>,
    image: &Path,
) -> Result<Vec<flasher_format::bundle::HoldRange>> {
    let found =
        found.with_context(|| format!("probe {} for signatures with libblkid", image.display()))?;
    for r in &found {
        tracing::debug!("holding back {} at image byte {}", r.what, r.offset);
    }
    Ok(found)
}

pub(crate) fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests;
