//! The initramfs archive: a newc ("070701") cpio writer and its compression.
//!
//! [`CpioSink`] is what the initramfs builder writes to. [`Archive`] collects
//! entries in memory and emits them reproducibly: sorted by path (parents before
//! children), inode numbers 1..n in that order, mtime 0, uid/gid 0, and the
//! `TRAILER!!!` record. [`NewcWriter`] streams records to any `Write` in call
//! order. The kernel unpacks either; `cpio -t` lists them.

use std::collections::BTreeMap;
use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid path {path:?} in the archive: use '/'-separated names without '..'")]
    BadPath { path: String },
    #[error("{path:?} is {size} bytes; newc entries hold at most 4 GiB")]
    TooLarge { path: String, size: u64 },
    #[error("writing the archive: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;

/// Where archive records go. `mode` is the permission bits (e.g. 0o755); the
/// file-type bits are added by each method.
pub trait CpioSink {
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()>;
    fn dir(&mut self, path: &str, mode: u32) -> Result<()>;
    fn symlink(&mut self, path: &str, target: &str) -> Result<()>;
    /// A character (`block == false`) or block device node.
    fn dev_node(
        &mut self,
        path: &str,
        mode: u32,
        block: bool,
        major: u32,
        minor: u32,
    ) -> Result<()>;
}

/// Normalise an archive path: no leading '/', no empty, '.' or '..' parts.
pub fn clean_path(path: &str) -> Result<String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return Err(Error::BadPath {
            path: path.to_string(),
        });
    }
    Ok(parts.join("/"))
}

/// One record's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    pub mode: u32,
    pub nlink: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

fn pad4(w: &mut impl Write, len: usize) -> io::Result<()> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])
}

/// Write one newc record (header, name, padding, data, padding).
pub fn write_record(w: &mut impl Write, name: &str, h: &Header, data: &[u8]) -> Result<()> {
    let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
        path: name.to_string(),
        size: data.len() as u64,
    })?;
    let namesize = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0, // uid
        0, // gid
        h.nlink,
        0, // mtime: fixed for reproducibility
        size,
        0, // dev major
        0, // dev minor
        h.rdev_major,
        h.rdev_minor,
        namesize as u32,
        0, // check (only for 070702)
    ];
    let mut hdr = String::with_capacity(110);
    hdr.push_str("070701");
    for f in fields {
        hdr.push_str(&format!("{f:08X}"));
    }
    w.write_all(hdr.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, 110 + namesize)?;
    w.write_all(data)?;
    pad4(w, data.len())?;
    Ok(())
}

/// Write the `TRAILER!!!` record that ends an archive.
pub fn write_trailer(w: &mut impl Write) -> Result<()> {
    write_record(
        w,
        "TRAILER!!!",
        &Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            rdev_major: 0,
            rdev_minor: 0,
        },
        &[],
    )
}

/// Streams records in call order; inode numbers count up from 1.
pub struct NewcWriter<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> NewcWriter<W> {
    pub fn new(out: W) -> Self {
        NewcWriter { out, next_ino: 1 }
    }
    fn emit(&mut self, path: &str, mode: u32, dev: (u32, u32), data: &[u8]) -> Result<()> {
        let name = clean_path(path)?;
        let h = Header {
            ino: self.next_ino,
            mode,
            nlink: if mode & 0o170000 == S_IFDIR { 2 } else { 1 },
            rdev_major: dev.0,
            rdev_minor: dev.1,
        };
        self.next_ino += 1;
        write_record(&mut self.out, &name, &h, data)
    }
    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> Result<W> {
        write_trailer(&mut self.out)?;
        Ok(self.out)
    }
}

impl<W: Write> CpioSink for NewcWriter<W> {
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.emit(path, S_IFREG | (mode & 0o7777), (0, 0), data)
    }
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.emit(path, S_IFDIR | (mode & 0o7777), (0, 0), &[])
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.emit(path, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }
    fn dev_node(
        &mut self,
        path: &str,
        mode: u32,
        block: bool,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let kind = if block { S_IFBLK } else { S_IFCHR };
        self.emit(path, kind | (mode & 0o7777), (major, minor), &[])
    }
}

/// An entry held by [`Archive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub rdev: (u32, u32),
    pub data: Vec<u8>,
}

/// An in-memory archive: collect entries in any order, emit them sorted.
/// Adding a path twice replaces the earlier entry. Parent directories of
/// files are added (mode 0755) when missing, so the kernel never has to guess.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    fn add(&mut self, path: &str, e: Entry) -> Result<()> {
        let name = clean_path(path)?;
        // Parents first; `or_insert` keeps an explicitly added directory's mode.
        let mut parent = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for p in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(p);
            self.entries.entry(parent.clone()).or_insert(Entry {
                mode: S_IFDIR | 0o755,
                rdev: (0, 0),
                data: Vec::new(),
            });
        }
        self.entries.insert(name, e);
        Ok(())
    }

    /// Emit the archive (sorted, inodes 1..n, trailer) to `w`.
    pub fn write_to(&self, w: impl Write) -> Result<()> {
        let mut out = NewcWriter::new(w);
        for (path, e) in &self.entries {
            out.emit(path, e.mode, e.rdev, &e.data)?;
        }
        out.finish()?;
        Ok(())
    }

    /// The uncompressed archive bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        self.write_to(&mut v)?;
        Ok(v)
    }
}

impl CpioSink for Archive {
    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.add(
            path,
            Entry {
                mode: S_IFREG | (mode & 0o7777),
                rdev: (0, 0),
                data: data.to_vec(),
            },
        )
    }
    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.add(
            path,
            Entry {
                mode: S_IFDIR | (mode & 0o7777),
                rdev: (0, 0),
                data: Vec::new(),
            },
        )
    }
    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.add(
            path,
            Entry {
                mode: S_IFLNK | 0o777,
                rdev: (0, 0),
                data: target.as_bytes().to_vec(),
            },
        )
    }
    fn dev_node(
        &mut self,
        path: &str,
        mode: u32,
        block: bool,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let kind = if block { S_IFBLK } else { S_IFCHR };
        self.add(
            path,
            Entry {
                mode: kind | (mode & 0o7777),
                rdev: (major, minor),
                data: Vec::new(),
            },
        )
    }
}

/// How the archive is compressed. The kernel accepts both (Debian enables
/// CONFIG_RD_ZSTD and CONFIG_RD_GZIP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compression {
    #[default]
    Zstd,
    Gzip,
    None,
}

/// Compress deterministically: zstd single-threaded at a fixed level, gzip
/// with mtime 0 and no file name in its header.
pub fn compress(data: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::Zstd => {
            // Level 19: initramfs size matters on small boot partitions, and
            // the window (8 MiB) stays within what the kernel's decoder takes.
            zstd::bulk::compress(data, 19)?
        }
        Compression::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::best());
            e.write_all(data)?;
            e.finish()?
        }
        Compression::None => data.to_vec(),
    })
}

/// A parsed record, for tests and `inspect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub header: Header,
    pub data: Vec<u8>,
}

/// Parse an uncompressed newc archive up to and excluding the trailer.
/// Returns None for data that is not a well-formed newc archive.
pub fn parse(mut b: &[u8]) -> Option<Vec<Record>> {
    let mut out = Vec::new();
    let hex = |s: &[u8]| u32::from_str_radix(std::str::from_utf8(s).ok()?, 16).ok();
    loop {
        if b.len() < 110 || &b[..6] != b"070701" {
            return None;
        }
        let f = |i: usize| hex(&b[6 + 8 * i..14 + 8 * i]);
        let (ino, mode, nlink, size) = (f(0)?, f(1)?, f(4)?, f(6)? as usize);
        let (rmaj, rmin, namesize) = (f(9)?, f(10)?, f(11)? as usize);
        let name_end = 110 + namesize;
        let data_start = name_end.div_ceil(4) * 4;
        let data_end = data_start + size;
        if b.len() < data_end || namesize == 0 {
            return None;
        }
        let name = std::str::from_utf8(&b[110..name_end - 1]).ok()?.to_string();
        if name == "TRAILER!!!" {
            return Some(out);
        }
        out.push(Record {
            name,
            header: Header {
                ino,
                mode,
                nlink,
                rdev_major: rmaj,
                rdev_minor: rmin,
            },
            data: b[data_start..data_end].to_vec(),
        });
        b = &b[(data_end.div_ceil(4) * 4).min(b.len())..];
    }
}

/// Undo [`compress`], detecting the format by its magic.
pub fn decompress(data: &[u8]) -> Result<Vec<u8>> {
    if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(zstd::stream::decode_all(data)?)
    } else if data.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        io::Read::read_to_end(&mut flate2::read::GzDecoder::new(data), &mut out)?;
        Ok(out)
    } else {
        Ok(data.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.file("/lib/modules/b.ko", 0o644, b"bbb").unwrap();
        a.file("init", 0o755, b"\x7fELF....").unwrap();
        a.dev_node("dev/console", 0o600, false, 5, 1).unwrap();
        a.symlink("bin/sh", "/init").unwrap();
        a.dir("proc", 0o555).unwrap();
        a
    }

    #[test]
    fn sorted_padded_and_parsable() {
        let bytes = sample().to_bytes().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let recs = parse(&bytes).unwrap();
        let names: Vec<_> = recs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/b.ko",
                "proc"
            ]
        );
        let inos: Vec<_> = recs.iter().map(|r| r.header.ino).collect();
        assert_eq!(inos, (1..=9).collect::<Vec<_>>());
        let console = &recs[3];
        assert_eq!(console.header.mode, S_IFCHR | 0o600);
        assert_eq!(
            (console.header.rdev_major, console.header.rdev_minor),
            (5, 1)
        );
        assert_eq!(recs[1].data, b"/init");
        assert_eq!(recs[4].data, b"\x7fELF....");
        assert_eq!(recs[8].header.mode, S_IFDIR | 0o555);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn reproducible_and_compressed_roundtrip() {
        for c in [Compression::Zstd, Compression::Gzip, Compression::None] {
            let a = compress(&sample().to_bytes().unwrap(), c).unwrap();
            let b = compress(&sample().to_bytes().unwrap(), c).unwrap();
            assert_eq!(a, b);
            assert_eq!(decompress(&a).unwrap(), sample().to_bytes().unwrap());
        }
    }

    #[test]
    fn streaming_writer_matches_call_order() {
        let mut w = NewcWriter::new(Vec::new());
        w.dir("z", 0o755).unwrap();
        w.file("a", 0o644, b"12345").unwrap();
        let recs = parse(&w.finish().unwrap()).unwrap();
        assert_eq!(recs[0].name, "z");
        assert_eq!(recs[1].header.ino, 2);
        assert_eq!(recs[1].data, b"12345");
    }

    #[test]
    fn bad_paths() {
        let mut a = Archive::new();
        assert!(matches!(
            a.file("../x", 0o644, b""),
            Err(Error::BadPath { .. })
        ));
        assert!(matches!(a.dir("/", 0o755), Err(Error::BadPath { .. })));
    }
}
