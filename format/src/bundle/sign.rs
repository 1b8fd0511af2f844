//! Bundle signatures: Ed25519 over the stored manifest bytes, the key files
//! `mkflasher keygen` writes, and the trust policy every writer applies before
//! its first write ([`Trust::check`] for the bundle, [`Trust::check_file`] for
//! each file the board copies from the card). docs/SECURITY.md has the threat
//! model; docs/bundle-format.md the byte layout.
//!
//! The manifest pins every chunk digest and the image digest, and (field
//! `files`) the digest of every other file the board writes from the card, so
//! one signature over the manifest covers everything that reaches the target.

use super::{hex_digest, Error, Manifest, Opened, Result};
use crate::io::IoContext;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// First bytes of the signature block.
pub const SIG_MAGIC: [u8; 8] = *b"FLSHSIG1";
/// The signature block: magic, signer's public key, SHA-256 of the manifest
/// bytes that were signed, Ed25519 signature over those bytes.
pub const SIG_LEN: usize = 8 + 32 + 32 + 64;
/// Key file headers (one line: header, 64 hex digits, optional comment).
const PUBLIC_TAG: &str = "flasher-ed25519-public";
const SECRET_TAG: &str = "flasher-ed25519-secret";

/// An Ed25519 public key a writer may trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    pub fn from_bytes(b: &[u8; 32]) -> Result<Self> {
        VerifyingKey::from_bytes(b)
            .map(PublicKey)
            .map_err(|_| Error::KeyFile {
                what: "public key".into(),
                reason: "32 bytes that are not a valid Ed25519 point".into(),
            })
    }
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }
    /// `ed25519:` and the first 16 bytes of the key's SHA-256, in hex: what
    /// `mkflasher inspect`, errors and unit records show.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.to_bytes())
    }
    /// Parse a `.pub` file: `flasher-ed25519-public <64 hex> [comment]`.
    pub fn parse(text: &str) -> Result<Self> {
        let b = parse_key_line(text, PUBLIC_TAG, "public key")?;
        PublicKey::from_bytes(&b)
    }
    /// The `.pub` file text, with an optional comment (the key's name).
    pub fn to_text(&self, comment: &str) -> String {
        key_line(PUBLIC_TAG, &self.to_bytes(), comment)
    }
}

/// The secret half, as `mkflasher keygen` writes it (the 32-byte seed).
pub struct SecretKey(SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the seed.
        write!(f, "SecretKey({})", self.public().fingerprint())
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        SecretKey(self.0.clone())
    }
}

impl SecretKey {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        SecretKey(SigningKey::from_bytes(seed))
    }
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }
    /// Parse a `.key` file: `flasher-ed25519-secret <64 hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        parse_key_line(text, SECRET_TAG, "secret key").map(|b| SecretKey::from_seed(&b))
    }
    pub fn to_text(&self) -> String {
        key_line(SECRET_TAG, &self.0.to_bytes(), "")
    }
    /// Sign stored manifest bytes.
    pub fn sign(&self, manifest_bytes: &[u8]) -> SignatureBlock {
        SignatureBlock {
            key: self.public().to_bytes(),
            manifest_sha256: Sha256::digest(manifest_bytes).into(),
            signature: self.0.sign(manifest_bytes).to_bytes(),
        }
    }
}

fn fingerprint(key: &[u8; 32]) -> String {
    format!("ed25519:{}", hex::encode(&Sha256::digest(key)[..16]))
}

fn key_line(tag: &str, b: &[u8; 32], comment: &str) -> String {
    if comment.is_empty() {
        format!("{tag} {}\n", hex::encode(b))
    } else {
        format!("{tag} {} {comment}\n", hex::encode(b))
    }
}

fn parse_key_line(text: &str, tag: &str, what: &str) -> Result<[u8; 32]> {
    let bad = |reason: String| Error::KeyFile {
        what: what.into(),
        reason,
    };
    let mut words = text.split_whitespace();
    match words.next() {
        Some(t) if t == tag => {}
        Some(t) => {
            return Err(bad(format!(
                "starts with {:?}, expected {tag:?} (a file from `mkflasher keygen`)",
                t.chars().take(40).collect::<String>()
            )))
        }
        None => return Err(bad("the file is empty".into())),
    }
    let hex_key = words.next().unwrap_or("");
    let mut b = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut b).map_err(|_| {
        bad(format!(
            "the key is not 64 hex digits ({} found)",
            hex_key.len()
        ))
    })?;
    Ok(b)
}

/// Read a `.pub` file; errors name the file.
pub fn read_public_key(path: &std::path::Path) -> Result<PublicKey> {
    read_key_file(path, "public key", PublicKey::parse)
}

/// Read a `.key` file; errors name the file.
pub fn read_secret_key(path: &std::path::Path) -> Result<SecretKey> {
    read_key_file(path, "signing key", SecretKey::parse)
}

fn read_key_file<T>(path: &std::path::Path, what: &str, parse: fn(&str) -> Result<T>) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read {what} {}", path.display()))?;
    parse(&text).map_err(|e| match e {
        Error::KeyFile { reason, .. } => Error::KeyFile {
            what: format!("{what} {}", path.display()),
            reason,
        },
        e => e,
    })
}

/// The signature block stored after the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureBlock {
    pub key: [u8; 32],
    pub manifest_sha256: [u8; 32],
    pub signature: [u8; 64],
}

impl SignatureBlock {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SIG_LEN);
        b.extend_from_slice(&SIG_MAGIC);
        b.extend_from_slice(&self.key);
        b.extend_from_slice(&self.manifest_sha256);
        b.extend_from_slice(&self.signature);
        b
    }
    pub fn parse(b: &[u8]) -> Result<Self> {
        let bad = |reason: String| Error::MalformedSignature { reason };
        if b.len() != SIG_LEN {
            return Err(bad(format!(
                "the block is {} bytes, expected {SIG_LEN}",
                b.len()
            )));
        }
        if b[..8] != SIG_MAGIC {
            return Err(bad(format!(
                "it starts with {:02x?}, expected \"FLSHSIG1\"",
                &b[..8]
            )));
        }
        let mut s = SignatureBlock {
            key: [0; 32],
            manifest_sha256: [0; 32],
            signature: [0; 64],
        };
        s.key.copy_from_slice(&b[8..40]);
        s.manifest_sha256.copy_from_slice(&b[40..72]);
        s.signature.copy_from_slice(&b[72..]);
        Ok(s)
    }
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.key)
    }
}

/// What a writer says before writing an unsigned bundle it accepted (no key
/// trusted): an event line on the board, a log warning on the host.
pub const UNSIGNED_WARNING: &str = "warning: the bundle is unsigned and no signing key is trusted; writing it as it is (recorded as \"unsigned\")";

/// Who signed the bundle a writer accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signer {
    /// No signature, accepted because no key is trusted (hobbyist use).
    Unsigned,
    /// A valid signature; the key's fingerprint.
    Key(String),
}

impl std::fmt::Display for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::Unsigned => f.write_str("unsigned"),
            Signer::Key(fp) => f.write_str(fp),
        }
    }
}

/// The keys a writer trusts. Empty: unsigned bundles are accepted (the caller
/// says so in a warning); signed ones must still verify.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    pub keys: Vec<PublicKey>,
}

impl Trust {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Trust { keys }
    }
    /// Read `.pub` files (`flasher write --trust`, `mkflasher build --trust`).
    pub fn from_files(paths: &[std::path::PathBuf]) -> Result<Self> {
        paths
            .iter()
            .map(|p| read_public_key(p))
            .collect::<Result<_>>()
            .map(Trust::new)
    }

    /// Every `*.pub` file in `dir` (the initramfs's `etc/flasher/trusted`),
    /// in name order. No directory: no keys. A key file that cannot be read or
    /// parsed is an error, never skipped: dropping a key must not silently
    /// turn the check off.
    pub fn from_dir(dir: &std::path::Path) -> Result<Self> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Trust::default()),
            Err(e) => {
                return Err(Error::Io(crate::io::IoError::new(
                    format!("read trusted keys in {}", dir.display()),
                    e,
                )))
            }
        };
        let mut paths = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("read trusted keys in {}", dir.display()))?;
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pub") {
                paths.push(p);
            }
        }
        paths.sort_unstable();
        Trust::from_files(&paths)
    }

    pub fn is_enforcing(&self) -> bool {
        !self.keys.is_empty()
    }
    fn trusted_list(&self) -> String {
        self.keys
            .iter()
            .map(PublicKey::fingerprint)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Accept or refuse an opened bundle. Runs before the writer's first
    /// write; every refusal is its own variant.
    pub fn check(&self, opened: &Opened) -> Result<Signer> {
        let Some(block) = &opened.signature else {
            if self.is_enforcing() {
                return Err(Error::Unsigned {
                    trusted: self.trusted_list(),
                });
            }
            return Ok(Signer::Unsigned);
        };
        let block = SignatureBlock::parse(block)?;
        let actual: [u8; 32] = Sha256::digest(&opened.manifest_bytes).into();
        if actual != block.manifest_sha256 {
            return Err(Error::ManifestAltered {
                signer: block.fingerprint(),
                signed: hex::encode(block.manifest_sha256),
                actual: hex::encode(actual),
            });
        }
        if self.is_enforcing() && !self.keys.iter().any(|k| k.to_bytes() == block.key) {
            return Err(Error::UntrustedSigner {
                signer: block.fingerprint(),
                trusted: self.trusted_list(),
            });
        }
        let bad = || Error::BadSignature {
            signer: block.fingerprint(),
        };
        let key = VerifyingKey::from_bytes(&block.key).map_err(|_| bad())?;
        key.verify_strict(
            &opened.manifest_bytes,
            &Signature::from_bytes(&block.signature),
        )
        .map_err(|_| bad())?;
        Ok(Signer::Key(block.fingerprint()))
    }

    /// Check a file the board is about to copy from the card onto the target
    /// (a bootloader, config.json) against the manifest's pins. A pinned file
    /// must match; an unpinned one is refused when keys are trusted (the card
    /// could carry anything), accepted otherwise.
    pub fn check_file(&self, m: &Manifest, name: &str, data: &[u8]) -> Result<()> {
        if !check_pin(m, name, data)? && self.is_enforcing() {
            return Err(Error::UnpinnedFile { name: name.into() });
        }
        Ok(())
    }
}

/// Whether the manifest pins `name` (`Ok(false)`: it does not); a pinned file
/// whose bytes differ is `FileMismatch`.
pub fn check_pin(m: &Manifest, name: &str, data: &[u8]) -> Result<bool> {
    let Some(pin) = m.files.iter().find(|f| f.is_for(name)) else {
        return Ok(false);
    };
    pin.check(data)
        .map_err(|(size, actual)| Error::FileMismatch {
            name: name.into(),
            size,
            pinned_size: pin.size,
            actual,
            pinned: pin.sha256.clone(),
        })
        .map(|()| true)
}

/// A file the board copies from the card, pinned by the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinnedFile {
    /// Path on the card's boot partition, as the board file names it.
    pub name: String,
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

impl PinnedFile {
    pub fn new(name: impl Into<String>, data: &[u8]) -> Self {
        PinnedFile {
            name: name.into(),
            size: data.len() as u64,
            sha256: super::sha256_hex(data),
        }
    }
    /// Whether this pin is for the card file `name`: names compare without a
    /// leading `/` and, as on FAT, ignoring ASCII case.
    pub fn is_for(&self, name: &str) -> bool {
        self.name
            .trim_start_matches('/')
            .eq_ignore_ascii_case(name.trim_start_matches('/'))
    }
    /// Check `data` against the pin; on a difference, what was seen: (size,
    /// SHA-256 hex). Digests compare as bytes, so hex case does not matter.
    pub fn check(&self, data: &[u8]) -> std::result::Result<(), (u64, String)> {
        let actual: [u8; 32] = Sha256::digest(data).into();
        if self.size != data.len() as u64 || hex_digest(&self.sha256) != Some(actual) {
            return Err((data.len() as u64, hex::encode(actual)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
