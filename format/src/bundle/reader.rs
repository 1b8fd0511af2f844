//! Streaming the chunks that follow a manifest, and decoding one chunk with its
//! digest check. The reader reads exactly the bundle's own bytes and never past
//! its end, so whatever follows it in a raw partition is ignored.

use super::{read_full, Chunk, ChunkDigest, Error, Manifest, Result};
use std::io::Read;

/// One chunk's compressed bytes as read from the stream.
#[derive(Debug)]
pub struct RawChunk {
    pub index: usize,
    pub chunk: Chunk,
    /// The manifest's chunk digest, which `decode_chunk` checks.
    pub digest: ChunkDigest,
    pub compressed: Vec<u8>,
}

/// Iterates the compressed chunks of a bundle in order. Create it right after
/// `read_manifest` with the same reader.
pub struct ChunkReader<'m, R: Read> {
    inner: R,
    manifest: &'m Manifest,
    next: usize,
    /// A consumed chunk's buffer, reused for the next one ([`Self::give_back`]).
    spare: Option<Vec<u8>>,
}

impl<'m, R: Read> ChunkReader<'m, R> {
    pub fn new(inner: R, manifest: &'m Manifest) -> Self {
        ChunkReader {
            inner,
            manifest,
            next: 0,
            spare: None,
        }
    }
    /// Hand back a [`RawChunk::compressed`] buffer that is no longer needed:
    /// the next chunk that fits is read into it instead of a fresh allocation
    /// (whose first touch costs a page fault per 4 KiB).
    pub fn give_back(&mut self, buf: Vec<u8>) {
        if self
            .spare
            .as_ref()
            .is_none_or(|s| s.capacity() < buf.capacity())
        {
            self.spare = Some(buf);
        }
    }
    fn buffer(&mut self, len: u64, index: usize) -> Result<Vec<u8>> {
        match self.spare.take() {
            Some(mut v) if (v.capacity() as u64) >= len => {
                v.clear();
                // Fits: `len` is at most the capacity, so no allocation.
                v.resize(len as usize, 0);
                Ok(v)
            }
            _ => super::alloc_zeroed(len, &format!("compressed chunk {index}")),
        }
    }
}

impl<R: Read> Iterator for ChunkReader<'_, R> {
    type Item = Result<RawChunk>;
    fn next(&mut self) -> Option<Self::Item> {
        let chunk = self.manifest.chunks.get(self.next)?.clone();
        let index = self.next;
        self.next += 1;
        let mut compressed = match self.buffer(chunk.compressed_size, index) {
            Ok(v) => v,
            Err(e) => {
                self.next = self.manifest.chunks.len();
                return Some(Err(e));
            }
        };
        if let Err(e) = read_full(&mut self.inner, &mut compressed, || {
            format!(
                "chunk {index} (image bytes {}..{})",
                chunk.offset,
                chunk.end()
            )
        }) {
            // Stop after the first error: the stream position is lost.
            self.next = self.manifest.chunks.len();
            return Some(Err(e));
        }
        Some(Ok(RawChunk {
            index,
            chunk,
            digest: self.manifest.digest_alg(),
            compressed,
        }))
    }
}

/// Decompress `raw` into `out` (exactly `chunk.length` bytes) and check its
/// digest (the manifest's `chunk_digest`) against the manifest. Errors name the chunk and its image range.
pub fn decode_chunk(raw: &RawChunk, out: &mut [u8]) -> Result<()> {
    let (c, alg) = (&raw.chunk, raw.digest);
    let corrupt = |reason: String| Error::ChunkCorrupt {
        index: raw.index,
        offset: c.offset,
        length: c.length,
        reason,
    };
    if out.len() as u64 != c.length {
        return Err(corrupt(format!("output buffer is {} bytes", out.len())));
    }
    // A frame that declares more than `length` bytes is refused by name; one
    // that does not declare its size but decodes to more fails in zstd with
    // "destination buffer too small". Either way nothing beyond `out` is
    // allocated.
    if let Ok(Some(declared)) = zstd::zstd_safe::get_frame_content_size(&raw.compressed) {
        if declared > c.length {
            return Err(Error::ChunkOverflow {
                index: raw.index,
                offset: c.offset,
                length: c.length,
                declared,
            });
        }
    }
    let n = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(&raw.compressed, out))
        .map_err(|e| corrupt(format!("zstd: {e}")))?;
    if n as u64 != c.length {
        return Err(corrupt(format!(
            "decompressed to {n} bytes, manifest says {}",
            c.length
        )));
    }
    let actual = alg.digest(out);
    let expected = super::hex_digest(c.digest(alg)).unwrap_or([0; 32]);
    if actual != expected {
        return Err(Error::ChunkDigest {
            algorithm: alg.label(),
            index: raw.index,
            offset: c.offset,
            length: c.length,
            expected: c.digest(alg).to_string(),
            actual: hex::encode(actual),
        });
    }
    Ok(())
}
