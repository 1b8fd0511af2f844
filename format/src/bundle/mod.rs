//! The bundle format: one streamable, self-delimiting file holding an OS image as
//! a JSON manifest (image map, per-chunk digests, whole-image digest) followed by
//! independently zstd-compressed chunks. See `docs/bundle-format.md`.
//!
//! This module owns the on-disk layout (`Header`), the manifest types and their
//! validation, reading a manifest alone (`read_manifest`, for `mkflasher inspect`
//! and for the writer's pre-flight checks), a streaming chunk reader
//! (`ChunkReader`), the host-side [`BundleWriter`], and [`is_zero`], the zero
//! test both the host's image scan and the board's read-back use.

mod reader;
mod sign;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod writer;

pub use reader::{decode_chunk, ChunkReader, RawChunk};
pub use sign::{
    check_pin, read_public_key, read_secret_key, PinnedFile, PublicKey, SecretKey, SignatureBlock,
    Signer, Trust, SIG_LEN, SIG_MAGIC, UNSIGNED_WARNING,
};
pub use writer::{BundleWriter, WriterOptions};

use crate::io::IoContext;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Read;

/// The first eight bytes of every bundle.
pub const MAGIC: [u8; 8] = *b"FLSHBNDL";
/// The newest container and manifest version, the one written by default:
/// version 2 digests each chunk with BLAKE3, version 1 with SHA-256. This
/// build reads both and writes either ([`WriterOptions::chunk_digest`]).
pub const VERSION: u32 = 2;
/// The oldest version this build still reads.
pub const MIN_VERSION: u32 = 1;
/// Size of the fixed header in bytes.
pub const HEADER_LEN: usize = 80;
/// Default uncompressed chunk size: large enough for big O_DIRECT writes and
/// good zstd ratios, small enough to keep a few in flight per worker.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// Chunk sizes a reader accepts. The upper bound is part of the writer's
/// memory bound (docs/SECURITY.md): a few chunks are in flight, and the
/// chunks holding the image's first and last blocks are kept until the end.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 4 << 20;
/// A manifest larger than this is refused rather than allocated: the bytes
/// and the parsed form both stay in memory during the write. 4 MiB holds the
/// chunk list of a dense 100 GiB image at the default chunk size (a sparse
/// image needs far fewer chunks).
pub const MAX_MANIFEST_LEN: u64 = 4 << 20;
/// Largest signature block accepted (the version-1 block is [`SIG_LEN`] bytes).
pub const MAX_SIGNATURE_LEN: u64 = 4096;
/// Largest image a manifest may describe (256 TiB): keeps every offset
/// computation far from `u64` overflow.
pub const MAX_IMAGE_SIZE: u64 = 1 << 48;
/// Most chunks, extents and pinned files a manifest may list (each also
/// bounded by the manifest size; explicit so the limits are documented).
pub const MAX_CHUNKS: usize = 1 << 20;
pub const MAX_EXTENTS: usize = 1 << 20;
pub const MAX_FILES: usize = 256;
/// Most held-back signature ranges (`hold`) a manifest may list, and their
/// total length: the board keeps their bytes in memory until the end of the
/// write (docs/SECURITY.md's memory bound, docs/fail-closed.md "Held-back
/// signatures").
pub const MAX_HOLD_RANGES: usize = 256;
pub const MAX_HOLD_BYTES: u64 = 1 << 20;
/// Held-back ranges start on, and are whole multiples of, this many bytes
/// (the last one may end at the image's end instead).
pub const HOLD_ALIGN: u64 = 4096;
/// Longest `what` of a held-back range.
pub const MAX_HOLD_WHAT: usize = 256;

/// Errors from reading, validating or writing bundles. All are "payload invalid"
/// (blink class 2) except plain I/O on the output while bundling.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a flasher bundle: first bytes are {found:02x?}, expected {expected:?}; make one with `mkflasher bundle`")]
    BadMagic {
        found: Vec<u8>,
        expected: &'static str,
    },
    #[error("bundle format version {found} is not supported (this flasher reads versions {MIN_VERSION} to {supported}); rebuild the bundle with a matching mkflasher (`mkflasher bundle --manifest-version 1` for older flashers) or update the flasher")]
    UnknownVersion { found: u32, supported: u32 },
    #[error("bundle is truncated in {what}: expected {expected} bytes, got {got}; the payload was cut short (copy it again)")]
    Truncated {
        what: String,
        expected: u64,
        got: u64,
    },
    #[error("bundle manifest is corrupt: its SHA-256 is {actual}, the header says {expected}")]
    ManifestDigest { expected: String, actual: String },
    #[error("bundle manifest is not valid JSON for versions {MIN_VERSION} to {VERSION}: {0}")]
    ManifestParse(#[source] serde_json::Error),
    #[error("bundle manifest is inconsistent: {0}")]
    InvalidManifest(String),
    #[error("bundle manifest version {version} names chunk digest {found:?}, but version {version} requires {required:?}; the manifest was relabelled or written by a foreign tool, rebuild it with `mkflasher bundle`")]
    DigestMismatch {
        version: u32,
        found: String,
        required: &'static str,
    },
    #[error("bundle manifest names chunk digest {found:?}, which this flasher does not know (it knows \"sha256\" and \"blake3\"); rebuild the bundle with `mkflasher bundle`")]
    UnknownDigest { found: String },
    #[error("chunk {index} (image bytes {offset}..{}) is corrupt: {reason}", offset + length)]
    ChunkCorrupt {
        index: usize,
        offset: u64,
        length: u64,
        reason: String,
    },
    #[error("chunk {index} (image bytes {offset}..{}) has {algorithm} {actual}, manifest says {expected}; the bundle is corrupt", offset + length)]
    ChunkDigest {
        algorithm: &'static str,
        index: usize,
        offset: u64,
        length: u64,
        expected: String,
        actual: String,
    },
    #[error("chunk {index} (image bytes {offset}..{}) decompresses to more than its {length} bytes (its frame declares {declared}): a zstd bomb or a corrupt manifest; refusing it", offset + length)]
    ChunkOverflow {
        index: usize,
        offset: u64,
        length: u64,
        declared: u64,
    },
    #[error("image SHA-256 is {actual}, manifest says {expected}")]
    ImageDigest { expected: String, actual: String },
    #[error("cannot allocate {bytes} bytes for {what}: out of memory")]
    OutOfMemory { what: String, bytes: u64 },
    #[error("the bundle is unsigned, and this flasher trusts only bundles signed by {trusted}; sign it with `mkflasher bundle --sign KEY`")]
    Unsigned { trusted: String },
    #[error("the bundle's signature block is malformed: {reason}; rebuild the bundle with `mkflasher bundle --sign KEY`")]
    MalformedSignature { reason: String },
    #[error("the manifest was altered after it was signed by {signer}: signed SHA-256 {signed}, stored manifest {actual}; do not use this card")]
    ManifestAltered {
        signer: String,
        signed: String,
        actual: String,
    },
    #[error("the bundle is signed by {signer}, which is not a trusted key (trusted: {trusted}); sign it with a trusted key or add the signer with --trust")]
    UntrustedSigner { signer: String, trusted: String },
    #[error("the bundle's signature does not verify for key {signer}: the signature or the manifest was tampered with; do not use this card")]
    BadSignature { signer: String },
    #[error("{what} file is invalid: {reason}")]
    KeyFile { what: String, reason: String },
    #[error("card file {name} ({size} bytes, SHA-256 {actual}) does not match the manifest's pin ({pinned_size} bytes, SHA-256 {pinned}); the card was altered or built from other files")]
    FileMismatch {
        name: String,
        size: u64,
        pinned_size: u64,
        actual: String,
        pinned: String,
    },
    #[error(
        "card file {name} is not pinned by the signed manifest, so it is not written; {}",
        pin_hint(name)
    )]
    UnpinnedFile { name: String },
    #[error("bundle manifest's held-back range {index} (image bytes {offset}..{}, {length} bytes) is refused: {reason}", offset.saturating_add(*length))]
    HoldRange {
        index: usize,
        offset: u64,
        length: u64,
        reason: String,
    },
    #[error("bundle writer misuse: {0}")]
    Writer(String),
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
}

impl Error {
    /// Every bundle error means the payload is invalid.
    pub fn class(&self) -> crate::ErrorClass {
        crate::ErrorClass::PayloadInvalid
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the image holds in a byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExtentKind {
    /// Bytes carried in the chunks.
    Data,
    /// Must read back as zeros on the target (zeroed explicitly, never trusted to discard).
    MustBeZero,
    /// Unused by the image (e.g. blocks a bmap leaves unmapped): left untouched.
    DontCare,
}

/// A byte range of the image with one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub kind: ExtentKind,
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// The per-chunk digest, fixed by the manifest version (1: SHA-256,
/// 2: BLAKE3) and named in the manifest (`chunk_digest`), so the signature
/// covers the choice. Both are 256-bit cryptographic hashes: either stands
/// for the signed bytes (docs/SECURITY.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChunkDigest {
    Sha256,
    #[default]
    Blake3,
}

impl ChunkDigest {
    /// The name in the manifest (`chunk_digest` and the chunks' key).
    pub fn name(self) -> &'static str {
        match self {
            ChunkDigest::Sha256 => "sha256",
            ChunkDigest::Blake3 => "blake3",
        }
    }
    /// The manifest version that carries this digest.
    pub fn version(self) -> u32 {
        match self {
            ChunkDigest::Sha256 => 1,
            ChunkDigest::Blake3 => 2,
        }
    }
    /// For error messages ("chunk 3 has BLAKE3 ...").
    pub fn label(self) -> &'static str {
        match self {
            ChunkDigest::Sha256 => "SHA-256",
            ChunkDigest::Blake3 => "BLAKE3",
        }
    }
    pub fn parse(name: &str) -> Result<ChunkDigest> {
        match name {
            "sha256" => Ok(ChunkDigest::Sha256),
            "blake3" => Ok(ChunkDigest::Blake3),
            _ => Err(Error::UnknownDigest { found: name.into() }),
        }
    }
    /// The 32-byte digest of `data`.
    pub fn digest(self, data: &[u8]) -> [u8; 32] {
        match self {
            ChunkDigest::Sha256 => Sha256::digest(data).into(),
            ChunkDigest::Blake3 => *blake3::hash(data).as_bytes(),
        }
    }
    pub fn hex(self, data: &[u8]) -> String {
        hex::encode(self.digest(data))
    }
}

/// One compressed chunk: `length` uncompressed bytes at image `offset`.
/// Exactly one digest key is present, the manifest's `chunk_digest`: `sha256`
/// in version 1 (as version-1 readers expect), `blake3` in version 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub offset: u64,
    pub length: u64,
    pub compressed_size: u64,
    /// SHA-256 of the uncompressed bytes, lowercase hex (version 1).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// BLAKE3 of the uncompressed bytes, lowercase hex (version 2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3: String,
    /// XXH3-128 of the uncompressed bytes, lowercase hex (32 digits), when the
    /// manifest's `readback_digest` is "xxh3-128": what the read-back of the
    /// written chunk is compared with. Not a security digest; it is pinned by
    /// the signature with the rest of the manifest.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub xxh3: String,
}

impl Chunk {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
    /// A chunk carrying `digest` (hex) under `alg`'s key.
    pub fn new(
        offset: u64,
        length: u64,
        compressed_size: u64,
        alg: ChunkDigest,
        digest: String,
    ) -> Chunk {
        let (sha256, blake3) = match alg {
            ChunkDigest::Sha256 => (digest, String::new()),
            ChunkDigest::Blake3 => (String::new(), digest),
        };
        Chunk {
            offset,
            length,
            compressed_size,
            sha256,
            blake3,
            xxh3: String::new(),
        }
    }
    /// The hex digest under `alg`'s key (empty if absent).
    pub fn digest(&self, alg: ChunkDigest) -> &str {
        match alg {
            ChunkDigest::Sha256 => &self.sha256,
            ChunkDigest::Blake3 => &self.blake3,
        }
    }
}

fn is_sha256(name: &str) -> bool {
    name == "sha256"
}
fn sha256_name() -> String {
    "sha256".into()
}

/// A byte range of the image that makes it recognisable (a superblock, a
/// filesystem, swap or LUKS signature, found by `mkflasher bundle` with
/// libblkid). The board holds its bytes back and writes them only after
/// everything else is written and read back, and zeroes them again if the
/// run fails later (docs/fail-closed.md, "Held-back signatures").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRange {
    pub offset: u64,
    pub length: u64,
    /// What is there, for messages ("ext4 superblock in partition 2").
    #[serde(default)]
    pub what: String,
}

impl HoldRange {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }
}

/// The ranges a writer puts in a manifest: each rounded out to
/// [`HOLD_ALIGN`] (the last clipped at `image_size`), sorted, overlapping or
/// touching ones merged (their `what` joined). Refuses (`Writer`) more than
/// [`MAX_HOLD_RANGES`] ranges or [`MAX_HOLD_BYTES`] bytes after merging, and
/// ranges that start at or past the image's end.
pub fn normalize_hold(ranges: &[HoldRange], image_size: u64) -> Result<Vec<HoldRange>> {
    let mut v: Vec<HoldRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        if r.length == 0 || r.offset >= image_size {
            return Err(Error::Writer(format!(
                "held-back range {}..{} ({}) is empty or starts past the image's {image_size} bytes",
                r.offset,
                r.end(),
                r.what
            )));
        }
        let a = r.offset / HOLD_ALIGN * HOLD_ALIGN;
        let b = r
            .end()
            .div_ceil(HOLD_ALIGN)
            .saturating_mul(HOLD_ALIGN)
            .min(image_size);
        let what = clip_what(&r.what);
        v.push(HoldRange {
            offset: a,
            length: b - a,
            what,
        });
    }
    v.sort_by_key(|r| r.offset);
    let mut out: Vec<HoldRange> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(p) if r.offset <= p.end() => {
                let end = p.end().max(r.end());
                p.length = end - p.offset;
                if !r.what.is_empty() && !p.what.contains(&r.what) {
                    p.what = clip_what(&format!("{}; {}", p.what, r.what));
                }
            }
            _ => out.push(r),
        }
    }
    let total: u64 = out.iter().map(|r| r.length).sum();
    if out.len() > MAX_HOLD_RANGES || total > MAX_HOLD_BYTES {
        return Err(Error::Writer(format!(
            "{} held-back ranges of {total} bytes in all, at most {MAX_HOLD_RANGES} ranges and {MAX_HOLD_BYTES} bytes are accepted",
            out.len()
        )));
    }
    Ok(out)
}

/// `s` cut to at most [`MAX_HOLD_WHAT`] bytes, on a character boundary.
fn clip_what(s: &str) -> String {
    let mut n = s.len().min(MAX_HOLD_WHAT);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    s[..n].to_owned()
}

/// Where the image came from; informational only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmap: Option<String>,
}

/// The bundle manifest (JSON). Field order is the serialization order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest schema version; equals the header version.
    pub version: u32,
    /// Exact image size in bytes (need not be a multiple of any block size).
    pub image_size: u64,
    /// Uncompressed chunk size; chunk boundaries sit at multiples of it.
    pub chunk_size: u64,
    /// Always "zstd" in versions 1 and 2.
    pub compression: String,
    /// The per-chunk digest ([`ChunkDigest`]): absent (meaning "sha256") in
    /// version 1, "blake3" in version 2. Signed with the rest, and tied to
    /// the version, so relabelling one as the other is refused.
    #[serde(default = "sha256_name", skip_serializing_if = "is_sha256")]
    pub chunk_digest: String,
    /// SHA-256 of the logical image (in every version; it is the image's
    /// identity outside the bundle, e.g. the unit record's `image_digest`): `image_size` bytes where data extents hold
    /// their chunk bytes and must-be-zero and dont-care extents read as zeros.
    /// For an image without dont-care extents this equals `sha256sum IMAGE`.
    pub image_sha256: String,
    /// Sorted, contiguous extents covering `0..image_size` exactly.
    pub extents: Vec<Extent>,
    /// Sorted chunks covering the data extents exactly, in stream order.
    pub chunks: Vec<Chunk>,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub source: SourceInfo,
    /// Files the board copies from the card (bootloader, config), pinned by
    /// digest so the signature covers them. Absent in older bundles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PinnedFile>,
    /// The digest the read-back is compared with: absent (the chunk digest)
    /// or [`READBACK_XXH3`] (every chunk then carries `xxh3`). Optional in
    /// version 2, so flashers that predate it still read the bundle and
    /// read back with the chunk digest (docs/bundle-format.md).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub readback_digest: String,
    /// Held-back signature ranges ([`HoldRange`]): sorted, disjoint, 4 KiB
    /// aligned, inside the image, at most [`MAX_HOLD_RANGES`] and
    /// [`MAX_HOLD_BYTES`] in all. Absent in older bundles, which keep the
    /// held-back head and tail only. A flasher that predates the field
    /// ignores it (serde skips unknown fields) and writes those bytes while
    /// streaming, as before: the signature covers the list, but only a
    /// flasher that knows it honours it (docs/bundle-format.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hold: Vec<HoldRange>,
}

/// How to pin an unpinned card file: the unit pool is pinned by
/// `--unit-data`, which checks and encodes it; everything else by `--pin`.
fn pin_hint(name: &str) -> &'static str {
    if name.eq_ignore_ascii_case(crate::pool::POOL_FILE) {
        "pin the unit pool with `mkflasher bundle --unit-data FILE.csv` (and the same --unit-files) when signing"
    } else {
        "pin it with `mkflasher bundle --pin FILE` when signing"
    }
}

/// `readback_digest` naming XXH3-128.
pub const READBACK_XXH3: &str = "xxh3-128";

/// XXH3-128 of `data`, as the manifest's lowercase hex.
pub fn xxh3_hex(data: &[u8]) -> String {
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(data))
}

impl Manifest {
    /// Total bytes of the chunk stream that follows the manifest.
    pub fn data_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.compressed_size).sum()
    }
    /// Bytes of each kind.
    pub fn bytes_of(&self, kind: ExtentKind) -> u64 {
        self.extents
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.length)
            .sum()
    }

    /// Lowercase every hex digest. Hex is case-insensitive, but the writer
    /// compares digests as strings against `sha256_hex` (lowercase): a manifest
    /// written by another tool with uppercase hex would otherwise fail every
    /// chunk with a false mismatch. Done once at parse time ([`read_manifest`])
    /// so every later comparison sees one spelling. The header's manifest digest
    /// covers the bytes as read, so this does not affect it.
    pub fn normalize_digests(&mut self) {
        self.image_sha256.make_ascii_lowercase();
        for c in &mut self.chunks {
            c.sha256.make_ascii_lowercase();
            c.blake3.make_ascii_lowercase();
            c.xxh3.make_ascii_lowercase();
        }
        for f in &mut self.files {
            f.sha256.make_ascii_lowercase();
        }
    }

    /// The per-chunk digest algorithm. Only meaningful on a validated
    /// manifest; an unknown name reads as BLAKE3, which then matches nothing.
    pub fn digest_alg(&self) -> ChunkDigest {
        ChunkDigest::parse(&self.chunk_digest).unwrap_or_default()
    }

    /// Whether `data` (chunk `i`'s bytes) has the digest the manifest lists.
    /// Compares bytes, so the hex spelling does not matter.
    pub fn chunk_matches(&self, i: usize, data: &[u8]) -> bool {
        let alg = self.digest_alg();
        self.chunks
            .get(i)
            .and_then(|c| hex_digest(c.digest(alg)))
            .is_some_and(|want| want == alg.digest(data))
    }

    /// Whether `data`, read back from where chunk `i` was written, is that
    /// chunk: by its XXH3-128 where the manifest carries it, else by the
    /// chunk digest. (The chunk digest was checked on the bytes written; the
    /// read-back guards against the medium, not an attacker.)
    pub fn readback_matches(&self, i: usize, data: &[u8]) -> bool {
        if self.readback_digest != READBACK_XXH3 {
            return self.chunk_matches(i, data);
        }
        // `validate` checked the spelling and `normalize_digests` lowercased
        // it, so the hex compares as written.
        self.chunks.get(i).is_some_and(|c| c.xxh3 == xxh3_hex(data))
    }

    /// Check every invariant the writer relies on, so a malformed manifest is
    /// refused before the first write.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidManifest(m));
        if !(MIN_VERSION..=VERSION).contains(&self.version) {
            return Err(Error::UnknownVersion {
                found: self.version,
                supported: VERSION,
            });
        }
        // The version fixes the chunk digest: a version-1 manifest relabelled
        // as 2 (or back) is refused, not checked with the other algorithm.
        let alg = ChunkDigest::parse(&self.chunk_digest)?;
        if alg.version() != self.version {
            let required = if self.version == 1 {
                "sha256"
            } else {
                "blake3"
            };
            return Err(Error::DigestMismatch {
                version: self.version,
                found: self.chunk_digest.clone(),
                required,
            });
        }
        if self.compression != "zstd" {
            return bad(format!(
                "compression {:?} is not supported (only \"zstd\")",
                self.compression
            ));
        }
        if self.image_size == 0 || self.image_size > MAX_IMAGE_SIZE {
            return bad(format!(
                "image size {} bytes is outside 1..={MAX_IMAGE_SIZE}",
                self.image_size
            ));
        }
        for (what, n, max) in [
            ("chunks", self.chunks.len(), MAX_CHUNKS),
            ("extents", self.extents.len(), MAX_EXTENTS),
            ("pinned files", self.files.len(), MAX_FILES),
        ] {
            if n > max {
                return bad(format!("{n} {what} listed, at most {max} are accepted"));
            }
        }
        for (i, f) in self.files.iter().enumerate() {
            if f.name.trim_start_matches('/').is_empty() || hex_digest(&f.sha256).is_none() {
                return bad(format!(
                    "pinned file {i} ({:?}) has an empty name or a digest that is not 64 hex digits",
                    f.name
                ));
            }
            if self.files[..i]
                .iter()
                .any(|g| g.name.eq_ignore_ascii_case(&f.name))
            {
                return bad(format!("file {:?} is pinned twice", f.name));
            }
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
            || self.chunk_size % 4096 != 0
        {
            return bad(format!(
                "chunk size {} bytes is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} or not a multiple of 4096",
                self.chunk_size
            ));
        }
        if hex_digest(&self.image_sha256).is_none() {
            return bad(format!(
                "image_sha256 {:?} is not 64 hex digits",
                self.image_sha256
            ));
        }
        let mut pos = 0u64;
        for (i, e) in self.extents.iter().enumerate() {
            if e.offset != pos || e.length == 0 {
                return bad(format!("extent {i} starts at {} with length {}, expected start {pos} and a non-zero length", e.offset, e.length));
            }
            pos = e
                .offset
                .checked_add(e.length)
                .ok_or_else(|| Error::InvalidManifest(format!("extent {i} overflows")))?;
        }
        if pos != self.image_size {
            return bad(format!(
                "extents cover {pos} bytes, image size is {}",
                self.image_size
            ));
        }
        // Chunks must tile the data extents in order, never crossing a chunk-size boundary.
        let mut ci = 0usize;
        for e in self.extents.iter().filter(|e| e.kind == ExtentKind::Data) {
            let mut off = e.offset;
            while off < e.end() {
                let expect_end = ((off / self.chunk_size + 1) * self.chunk_size).min(e.end());
                let Some(c) = self.chunks.get(ci) else {
                    return bad(format!("data at image offset {off} has no chunk"));
                };
                if c.offset != off || c.length != expect_end - off {
                    return bad(format!(
                        "chunk {ci} covers {} bytes at {}, expected {off}..{expect_end}",
                        c.length, c.offset
                    ));
                }
                let other = match alg {
                    ChunkDigest::Sha256 => &c.blake3,
                    ChunkDigest::Blake3 => &c.sha256,
                };
                if hex_digest(c.digest(alg)).is_none() || !other.is_empty() {
                    return bad(format!(
                        "chunk {ci} {} {:?} is not 64 hex digits, or the chunk carries another digest too",
                        alg.name(),
                        c.digest(alg)
                    ));
                }
                if c.compressed_size == 0 || c.compressed_size > zstd_bound(c.length) {
                    return bad(format!(
                        "chunk {ci} compressed size {} is impossible for {} bytes",
                        c.compressed_size, c.length
                    ));
                }
                off = expect_end;
                ci += 1;
            }
        }
        if ci != self.chunks.len() {
            return bad(format!(
                "{} chunks listed, the data extents need {ci}",
                self.chunks.len()
            ));
        }
        self.validate_hold()?;
        match self.readback_digest.as_str() {
            "" => {}
            READBACK_XXH3 if self.version >= 2 => {
                if let Some((i, c)) = self.chunks.iter().enumerate().find(|(_, c)| {
                    c.xxh3.len() != 32 || !c.xxh3.bytes().all(|b| b.is_ascii_hexdigit())
                }) {
                    return bad(format!(
                        "readback_digest is {READBACK_XXH3:?} but chunk {i} has xxh3 {:?}, not 32 hex digits",
                        c.xxh3
                    ));
                }
            }
            other => {
                return bad(format!(
                    "readback_digest {other:?} is not supported in version {} (only {READBACK_XXH3:?}, version 2)",
                    self.version
                ))
            }
        }
        Ok(())
    }
}

impl Manifest {
    /// The `hold` list's rules (see the field).
    fn validate_hold(&self) -> Result<()> {
        if self.hold.len() > MAX_HOLD_RANGES {
            let (o, l) = self.hold.last().map_or((0, 0), |r| (r.offset, r.length));
            return Err(Error::HoldRange {
                index: self.hold.len() - 1,
                offset: o,
                length: l,
                reason: format!(
                    "{} ranges are listed, at most {MAX_HOLD_RANGES} are accepted",
                    self.hold.len()
                ),
            });
        }
        let mut total = 0u64;
        let mut prev_end = 0u64;
        for (index, r) in self.hold.iter().enumerate() {
            let refuse = |reason: String| {
                Err(Error::HoldRange {
                    index,
                    offset: r.offset,
                    length: r.length,
                    reason,
                })
            };
            let Some(end) = r.offset.checked_add(r.length) else {
                return refuse("its end overflows".into());
            };
            if r.length == 0 {
                return refuse("it is empty".into());
            }
            if end > self.image_size {
                return refuse(format!(
                    "it ends past the image's {} bytes",
                    self.image_size
                ));
            }
            if r.offset % HOLD_ALIGN != 0 || (r.length % HOLD_ALIGN != 0 && end != self.image_size)
            {
                return refuse(format!(
                    "it is not {HOLD_ALIGN}-byte aligned (offset and length; the last may end at the image's end)"
                ));
            }
            if index > 0 && r.offset < prev_end {
                return refuse(format!(
                    "it starts before the previous range ends at {prev_end}: ranges must be sorted and disjoint"
                ));
            }
            if r.what.len() > MAX_HOLD_WHAT {
                return refuse(format!(
                    "its description is {} bytes, at most {MAX_HOLD_WHAT} are accepted",
                    r.what.len()
                ));
            }
            total += r.length;
            if total > MAX_HOLD_BYTES {
                return refuse(format!(
                    "the ranges up to this one hold {total} bytes, at most {MAX_HOLD_BYTES} are accepted"
                ));
            }
            prev_end = end;
        }
        Ok(())
    }
}

/// Upper bound of a zstd frame for `len` input bytes (ZSTD_compressBound plus a
/// frame-header allowance).
fn zstd_bound(len: u64) -> u64 {
    len + (len >> 8) + 1024
}

pub(crate) fn hex_digest(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The fixed-size header at the start of a bundle (all integers little-endian):
///
/// | bytes | field |
/// |---|---|
/// | 0..8 | magic `FLSHBNDL` |
/// | 8..12 | version (u32) |
/// | 12..16 | header length (u32, 80) |
/// | 16..24 | manifest length (u64) |
/// | 24..32 | signature length (u64, 0 = unsigned) |
/// | 32..40 | chunk stream length (u64) |
/// | 40..72 | SHA-256 of the manifest bytes |
/// | 72..80 | reserved, zero |
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub manifest_len: u64,
    pub signature_len: u64,
    pub data_len: u64,
    pub manifest_sha256: [u8; 32],
}

impl Header {
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.signature_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.data_len.to_le_bytes());
        b[40..72].copy_from_slice(&self.manifest_sha256);
        b
    }

    /// Parse and check magic and version. The version is checked before anything
    /// else so a newer bundle gets `UnknownVersion`, not a confusing parse error.
    pub fn parse(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..8] != MAGIC {
            return Err(Error::BadMagic {
                found: b[0..8].to_vec(),
                expected: "FLSHBNDL",
            });
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(a)
        };
        let version = u32_at(8);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(Error::UnknownVersion {
                found: version,
                supported: VERSION,
            });
        }
        let header_len = u32_at(12);
        if header_len as usize != HEADER_LEN {
            return Err(Error::InvalidManifest(format!(
                "header length {header_len}, expected {HEADER_LEN}"
            )));
        }
        let mut manifest_sha256 = [0u8; 32];
        manifest_sha256.copy_from_slice(&b[40..72]);
        let h = Header {
            version,
            manifest_len: u64_at(16),
            signature_len: u64_at(24),
            data_len: u64_at(32),
            manifest_sha256,
        };
        if h.manifest_len == 0 || h.manifest_len > MAX_MANIFEST_LEN {
            return Err(Error::InvalidManifest(format!(
                "manifest length {} bytes is out of range",
                h.manifest_len
            )));
        }
        if h.data_len > 2 * MAX_IMAGE_SIZE {
            return Err(Error::InvalidManifest(format!(
                "chunk stream length {} bytes is out of range",
                h.data_len
            )));
        }
        if h.signature_len > MAX_SIGNATURE_LEN {
            return Err(Error::InvalidManifest(format!(
                "signature length {} bytes is out of range",
                h.signature_len
            )));
        }
        Ok(h)
    }

    /// Total bundle length: where it ends inside a larger partition.
    pub fn bundle_len(&self) -> u64 {
        HEADER_LEN as u64 + self.manifest_len + self.signature_len + self.data_len
    }
}

/// A bundle's header, manifest and signature, read from its start.
#[derive(Debug, Clone)]
pub struct Opened {
    pub header: Header,
    pub manifest: Manifest,
    /// The manifest exactly as stored (what a signature covers).
    pub manifest_bytes: Vec<u8>,
    /// The signature block over `manifest_bytes`, if any. Its format belongs
    /// to the signing work; version 1 bundles are written unsigned.
    pub signature: Option<Vec<u8>>,
}

/// Whether every byte of `b` is zero: how the host finds must-be-zero runs in
/// an image (`mkflasher`'s classifier) and how the writer checks them on the
/// target (read-back, `--skip-equal`). Compares 16 bytes at a time.
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY: every bit pattern is a valid u128.
    let (p, mid, s) = unsafe { b.align_to::<u128>() };
    p.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && s.iter().all(|&x| x == 0)
}

/// A zeroed buffer of `len` bytes, or `OutOfMemory` instead of an abort: a
/// failed allocation must not take PID 1 down.
pub fn alloc_zeroed(len: u64, what: &str) -> Result<Vec<u8>> {
    let oom = || Error::OutOfMemory {
        what: what.into(),
        bytes: len,
    };
    let n = usize::try_from(len).map_err(|_| oom())?;
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| oom())?;
    v.resize(n, 0);
    Ok(v)
}

/// Read exactly `buf.len()` bytes or report how many were there.
pub(crate) fn read_full(
    r: &mut impl Read,
    buf: &mut [u8],
    what: impl FnOnce() -> String,
) -> Result<()> {
    let mut got = 0usize;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::Truncated {
                    what: what(),
                    expected: buf.len() as u64,
                    got: got as u64,
                });
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::Io(crate::io::IoError::new(
                    format!("read {}", what()),
                    e,
                )))
            }
        }
    }
    Ok(())
}

/// Read and check the header, manifest and signature; leaves `r` at the first
/// chunk. The manifest's digests are lowercased
/// ([`Manifest::normalize_digests`]), it is validated (`Manifest::validate`) and
/// its length accounting checked against the header.
pub fn read_manifest(r: &mut impl Read) -> Result<Opened> {
    let mut hb = [0u8; HEADER_LEN];
    read_full(r, &mut hb, || "header".into())?;
    let header = Header::parse(&hb)?;
    let mut manifest_bytes = alloc_zeroed(header.manifest_len, "the bundle manifest")?;
    read_full(r, &mut manifest_bytes, || "manifest".into())?;
    let actual: [u8; 32] = Sha256::digest(&manifest_bytes).into();
    if actual != header.manifest_sha256 {
        return Err(Error::ManifestDigest {
            expected: hex::encode(header.manifest_sha256),
            actual: hex::encode(actual),
        });
    }
    // Check the version inside the JSON before the full schema, so a future
    // manifest gets UnknownVersion rather than a parse error.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let v: VersionOnly = serde_json::from_slice(&manifest_bytes).map_err(Error::ManifestParse)?;
    if !(MIN_VERSION..=VERSION).contains(&v.version) {
        return Err(Error::UnknownVersion {
            found: v.version,
            supported: VERSION,
        });
    }
    if v.version != header.version {
        return Err(Error::InvalidManifest(format!(
            "the manifest is version {}, the header says {}",
            v.version, header.version
        )));
    }
    let mut manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(Error::ManifestParse)?;
    manifest.normalize_digests();
    manifest.validate()?;
    if manifest.data_len() != header.data_len {
        return Err(Error::InvalidManifest(format!(
            "chunks add up to {} compressed bytes, the header says {}",
            manifest.data_len(),
            header.data_len
        )));
    }
    let signature = if header.signature_len > 0 {
        let mut s = alloc_zeroed(header.signature_len, "the bundle signature")?;
        read_full(r, &mut s, || "signature".into())?;
        Some(s)
    } else {
        None
    };
    Ok(Opened {
        header,
        manifest,
        manifest_bytes,
        signature,
    })
}

/// Read the manifest of a bundle file (for `mkflasher inspect`).
pub fn read_manifest_file(path: &std::path::Path) -> Result<Opened> {
    let f = std::fs::File::open(path).with_context(|| format!("open bundle {}", path.display()))?;
    read_manifest(&mut std::io::BufReader::new(f))
}

#[cfg(test)]
mod tests;
