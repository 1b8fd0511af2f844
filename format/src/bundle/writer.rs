//! The host-side bundle writer. The caller pushes the image in order as data,
//! must-be-zero and dont-care ranges; the writer cuts data into aligned chunks,
//! compresses them on worker threads (results kept in order), spools the
//! compressed stream, and on `finish` writes header, manifest and chunks.
//!
//! The spool exists because the manifest (with every chunk's compressed size)
//! must precede the chunks so the board can stream, while the input may itself
//! be a one-pass stream (a `.xz` image).

use super::{
    Chunk, ChunkDigest, Error, Extent, ExtentKind, Header, Manifest, PinnedFile, Result, SecretKey,
    SourceInfo, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
};
use crate::io::IoContext;
use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom, Write};
use std::thread::JoinHandle;

/// Tunables for [`BundleWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Uncompressed chunk size (multiple of 4096, 64 KiB..=4 MiB).
    pub chunk_size: u64,
    /// zstd level (1..=19; 3 is zstd's default).
    pub level: i32,
    /// Compression threads.
    pub workers: usize,
    pub source: SourceInfo,
    /// Sign the manifest with this key (docs/SECURITY.md).
    pub sign: Option<SecretKey>,
    /// Files the board will copy from the card, pinned in the manifest.
    pub files: Vec<PinnedFile>,
    /// The per-chunk digest, which fixes the version written: BLAKE3
    /// (version 2, the default) or SHA-256 (version 1, for flashers that
    /// read only version 1).
    pub chunk_digest: ChunkDigest,
    /// Add an XXH3-128 per chunk for the read-back (`readback_digest`). On by
    /// default; version 2 only (version 1 stays what version-1 readers parse).
    pub readback_digest: bool,
    /// Signature ranges the board holds back to the end of the write
    /// (`Manifest::hold`); rounded out and merged by [`super::normalize_hold`]
    /// when the manifest is written.
    pub hold: Vec<super::HoldRange>,
}

impl WriterOptions {
    fn readback_xxh3(&self) -> bool {
        self.readback_digest && self.chunk_digest == ChunkDigest::Blake3
    }
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            level: 3,
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(1, 8),
            source: SourceInfo::default(),
            sign: None,
            files: Vec::new(),
            chunk_digest: ChunkDigest::default(),
            readback_digest: true,
            hold: Vec::new(),
        }
    }
}

/// A compressed chunk and the digest (hex) of its uncompressed bytes.
/// (compressed bytes, chunk digest, XXH3-128 or empty).
type Compressed = std::io::Result<(Vec<u8>, String, String)>;
type Job = (Vec<u8>, Sender<Compressed>);

/// Builds a bundle from pushed image ranges. `S` is the spool for compressed
/// chunks (a temporary file on the host, a `Cursor` in tests).
pub struct BundleWriter<S: Read + Write + Seek> {
    opts: WriterOptions,
    spool: S,
    pos: u64,
    extents: Vec<Extent>,
    chunks: Vec<Chunk>,
    /// Current (incomplete) chunk: start offset and bytes.
    cur: Option<(u64, Vec<u8>)>,
    image_hash: Sha256,
    jobs: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    /// Compression results in chunk order: (offset, length, result).
    pending: VecDeque<(u64, u64, Receiver<Compressed>)>,
}

static ZEROS: [u8; 64 << 10] = [0u8; 64 << 10];

impl<S: Read + Write + Seek> BundleWriter<S> {
    pub fn new(opts: WriterOptions, mut spool: S) -> Result<Self> {
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&opts.chunk_size)
            || opts.chunk_size % 4096 != 0
        {
            return Err(Error::Writer(format!(
                "chunk size {} bytes is not a multiple of 4096 in {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}",
                opts.chunk_size
            )));
        }
        spool.seek(SeekFrom::Start(0)).context("rewind spool")?;
        let (tx, rx) = bounded::<Job>(opts.workers.max(1) * 2);
        let workers = (0..opts.workers.max(1))
            .map(|_| {
                let rx = rx.clone();
                let (level, alg, xxh3) = (opts.level, opts.chunk_digest, opts.readback_xxh3());
                std::thread::spawn(move || {
                    for (data, reply) in rx.iter() {
                        let digest = alg.hex(&data);
                        let rb = if xxh3 {
                            super::xxh3_hex(&data)
                        } else {
                            String::new()
                        };
                        let r = zstd::bulk::compress(&data, level).map(|c| (c, digest, rb));
                        // The receiver is gone only if the writer was dropped mid-way.
                        let _ = reply.send(r);
                    }
                })
            })
            .collect();
        Ok(BundleWriter {
            opts,
            spool,
            pos: 0,
            extents: Vec::new(),
            chunks: Vec::new(),
            cur: None,
            image_hash: Sha256::new(),
            jobs: Some(tx),
            workers,
            pending: VecDeque::new(),
        })
    }

    /// Image bytes pushed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn add_extent(&mut self, kind: ExtentKind, len: u64) {
        match self.extents.last_mut() {
            Some(e) if e.kind == kind && e.end() == self.pos => e.length += len,
            _ => self.extents.push(Extent {
                kind,
                offset: self.pos,
                length: len,
            }),
        }
        self.pos += len;
    }

    /// Append image data at the current position.
    pub fn push_data(&mut self, mut data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.image_hash.update(data);
        self.add_extent(ExtentKind::Data, data.len() as u64);
        let mut off = self.pos - data.len() as u64;
        let cs = self.opts.chunk_size;
        while !data.is_empty() {
            let (start, buf) = self
                .cur
                .get_or_insert_with(|| (off, Vec::with_capacity(cs as usize)));
            let boundary = (*start / cs + 1) * cs;
            let take = ((boundary - off) as usize).min(data.len());
            buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            off += take as u64;
            if off == boundary {
                self.close_chunk()?;
            }
        }
        Ok(())
    }

    /// Append a range that must read back as zeros.
    pub fn push_zero(&mut self, len: u64) -> Result<()> {
        self.push_nondata(ExtentKind::MustBeZero, len)
    }

    /// Append a range the image does not care about.
    pub fn push_dont_care(&mut self, len: u64) -> Result<()> {
        self.push_nondata(ExtentKind::DontCare, len)
    }

    fn push_nondata(&mut self, kind: ExtentKind, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.close_chunk()?;
        let mut left = len;
        while left > 0 {
            let n = left.min(ZEROS.len() as u64) as usize;
            self.image_hash.update(&ZEROS[..n]);
            left -= n as u64;
        }
        self.add_extent(kind, len);
        Ok(())
    }

    fn close_chunk(&mut self) -> Result<()> {
        let Some((start, buf)) = self.cur.take() else {
            return Ok(());
        };
        let len = buf.len() as u64;
        let (tx, rx) = bounded(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| Error::Writer("push after finish".into()))?;
        jobs.send((buf, tx))
            .map_err(|_| Error::Writer("compression worker died".into()))?;
        self.pending.push_back((start, len, rx));
        while self.pending.len() > self.opts.workers.max(1) * 2 {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> Result<()> {
        let Some((offset, length, rx)) = self.pending.pop_front() else {
            return Ok(());
        };
        let (compressed, digest, xxh3) = rx
            .recv()
            .map_err(|_| Error::Writer("compression worker died".into()))?
            .with_context(|| format!("compress chunk at image offset {offset}"))?;
        self.spool
            .write_all(&compressed)
            .context("write chunk spool")?;
        self.chunks.push(Chunk {
            xxh3,
            ..Chunk::new(
                offset,
                length,
                compressed.len() as u64,
                self.opts.chunk_digest,
                digest,
            )
        });
        Ok(())
    }

    /// More ranges for the manifest's `hold` list, known only once the image
    /// has been read (a compressed image's signatures, probed on its
    /// decompressed copy). Normalized with the others in [`Self::finish`].
    pub fn hold(&mut self, ranges: impl IntoIterator<Item = super::HoldRange>) {
        self.opts.hold.extend(ranges);
    }

    /// Finish the image and write the whole bundle to `out`. Returns the manifest.
    pub fn finish(mut self, out: &mut impl Write) -> Result<Manifest> {
        self.close_chunk()?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let alg = self.opts.chunk_digest;
        let manifest = Manifest {
            version: alg.version(),
            image_size: self.pos,
            chunk_size: self.opts.chunk_size,
            compression: "zstd".into(),
            chunk_digest: alg.name().into(),
            image_sha256: hex::encode(self.image_hash.clone().finalize()),
            extents: std::mem::take(&mut self.extents),
            chunks: std::mem::take(&mut self.chunks),
            created_by: format!("flasher {}", env!("CARGO_PKG_VERSION")),
            source: self.opts.source.clone(),
            files: self.opts.files.clone(),
            readback_digest: if self.opts.readback_xxh3() {
                super::READBACK_XXH3.into()
            } else {
                String::new()
            },
            hold: super::normalize_hold(&self.opts.hold, self.pos)?,
        };
        manifest
            .validate()
            .map_err(|e| Error::Writer(format!("produced an invalid manifest: {e}")))?;
        let json = serde_json::to_vec_pretty(&manifest).map_err(Error::ManifestParse)?;
        if json.len() as u64 > super::MAX_MANIFEST_LEN {
            return Err(Error::Writer(format!(
                "the manifest is {} bytes, over the {}-byte limit readers accept; use a larger --chunk-size",
                json.len(),
                super::MAX_MANIFEST_LEN
            )));
        }
        let signature = self
            .opts
            .sign
            .as_ref()
            .map(|k| k.sign(&json).to_bytes())
            .unwrap_or_default();
        let header = Header {
            version: alg.version(),
            manifest_len: json.len() as u64,
            signature_len: signature.len() as u64,
            data_len: manifest.data_len(),
            manifest_sha256: Sha256::digest(&json).into(),
        };
        out.write_all(&header.to_bytes())
            .context("write bundle header")?;
        out.write_all(&json).context("write bundle manifest")?;
        out.write_all(&signature)
            .context("write bundle signature")?;
        self.spool
            .seek(SeekFrom::Start(0))
            .context("rewind spool")?;
        let copied = std::io::copy(&mut (&mut self.spool).take(header.data_len), out)
            .context("copy chunks into bundle")?;
        if copied != header.data_len {
            return Err(Error::Writer(format!(
                "spool held {copied} bytes, expected {}",
                header.data_len
            )));
        }
        out.flush().context("flush bundle")?;
        Ok(manifest)
    }
}

impl<S: Read + Write + Seek> Drop for BundleWriter<S> {
    fn drop(&mut self) {
        self.jobs = None;
        self.pending.clear();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
