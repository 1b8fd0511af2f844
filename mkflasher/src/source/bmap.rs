//! bmaptool block maps (formats 1.0–1.4 and 2.0). Mapped ranges become the
//! image's read plan; unmapped blocks become dont-care. Range checksums are
//! sha256 in 2.0/1.4 as `bmaptool create` writes them; sha1 (1.3) and other
//! types are reported as unsupported unless the caller opts to skip checks.

use super::{Error, Result, Seg};
use flasher_format::io::IoContext;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// A checksum to verify over one mapped range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeCheck {
    pub first: u64,
    pub last: u64,
    pub sha256: String,
}

/// A parsed block map.
#[derive(Debug, Clone)]
pub struct Bmap {
    pub path: PathBuf,
    pub version: String,
    pub image_size: u64,
    pub block_size: u64,
    /// Mapped block ranges (first, last inclusive) with checksum when checked.
    pub ranges: Vec<(u64, u64, Option<String>)>,
}

#[derive(Deserialize)]
struct Xml {
    #[serde(rename = "@version")]
    version: String,
    #[serde(rename = "ImageSize")]
    image_size: String,
    #[serde(rename = "BlockSize")]
    block_size: String,
    #[serde(rename = "BlocksCount")]
    blocks_count: String,
    #[serde(rename = "ChecksumType", default)]
    checksum_type: Option<String>,
    #[serde(rename = "BmapFileChecksum", default)]
    file_checksum: Option<String>,
    #[serde(rename = "BlockMap")]
    block_map: BlockMap,
}

#[derive(Deserialize)]
struct BlockMap {
    #[serde(rename = "Range", default)]
    ranges: Vec<RangeXml>,
}

#[derive(Deserialize)]
struct RangeXml {
    #[serde(rename = "@chksum", default)]
    chksum: Option<String>,
    #[serde(rename = "@sha1", default)]
    sha1: Option<String>,
    #[serde(rename = "$text")]
    text: String,
}

impl Bmap {
    pub fn load(path: &Path, skip_checksums: bool) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read bmap {}", path.display()))?;
        Self::parse(path, &text, skip_checksums)
    }

    pub fn parse(path: &Path, text: &str, skip_checksums: bool) -> Result<Bmap> {
        let bad = |reason: String| Error::Bmap {
            path: path.to_owned(),
            reason,
        };
        let x: Xml =
            quick_xml::de::from_str(text).map_err(|e| bad(format!("not a bmap file: {e}")))?;
        let version = x.version.trim().to_string();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| bad(format!("bad version {version:?}")))?;
        let minor: u32 = version
            .split('.')
            .nth(1)
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major > 2 {
            return Err(bad(format!(
                "format version {version} is newer than the supported 2.0"
            )));
        }
        let num = |s: &str, what: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| bad(format!("{what} {s:?} is not a number")))
        };
        let image_size = num(&x.image_size, "ImageSize")?;
        let block_size = num(&x.block_size, "BlockSize")?;
        let blocks = num(&x.blocks_count, "BlocksCount")?;
        if block_size == 0 || blocks != image_size.div_ceil(block_size) {
            return Err(bad(format!(
                "{blocks} blocks of {block_size} bytes do not make an image of {image_size} bytes"
            )));
        }
        // The read plan computes `(last + 1) * block_size` for a range ending in
        // the last block: it must fit in a u64.
        if blocks.checked_mul(block_size).is_none() {
            return Err(bad(format!(
                "{blocks} blocks of {block_size} bytes overflow a 64-bit byte offset"
            )));
        }
        // Which checksum the ranges carry (bmaptool: 1.0-1.2 none, 1.3 sha1, 1.4/2.0 ChecksumType).
        let cs_type = if major >= 2 || (major == 1 && minor == 4) {
            x.checksum_type
                .as_deref()
                .map(|s| s.trim().to_ascii_lowercase())
        } else if minor == 3 {
            Some("sha1".to_string())
        } else {
            None
        };
        let check = match cs_type.as_deref() {
            Some("sha256") => true,
            None => false,
            Some(other) => {
                if !skip_checksums {
                    return Err(Error::UnsupportedChecksum {
                        path: path.to_owned(),
                        kind: other.to_string(),
                    });
                }
                tracing::warn!(
                    "bmap {}: {other} checksums are not checked (--skip-bmap-checksums)",
                    path.display()
                );
                false
            }
        };
        if check {
            if let Some(expected) = x.file_checksum.as_deref().map(str::trim) {
                // bmaptool hashes the file with its own checksum replaced by zeros.
                let zeroed = text.replacen(expected, &"0".repeat(expected.len()), 1);
                let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
                if actual != expected {
                    return Err(Error::BmapFileChecksum {
                        path: path.to_owned(),
                        expected: expected.to_string(),
                        actual,
                    });
                }
            }
        }
        let mut ranges = Vec::new();
        let mut next_free = 0u64;
        for r in &x.block_map.ranges {
            let t = r.text.trim();
            let (a, b) = match t.split_once('-') {
                Some((a, b)) => (num(a, "range start")?, num(b, "range end")?),
                None => {
                    let a = num(t, "range")?;
                    (a, a)
                }
            };
            if a > b || b >= blocks || a < next_free {
                return Err(bad(format!(
                    "range {t} is out of order or beyond the {blocks} blocks"
                )));
            }
            next_free = b + 1;
            let sum = if check {
                r.chksum
                    .clone()
                    .or_else(|| r.sha1.clone())
                    .map(|s| s.trim().to_ascii_lowercase())
            } else {
                None
            };
            ranges.push((a, b, sum));
        }
        Ok(Bmap {
            path: path.to_owned(),
            version,
            image_size,
            block_size,
            ranges,
        })
    }

    /// The read plan: mapped ranges (with checksums) and dont-care gaps.
    pub(super) fn segments(&self) -> Vec<Seg> {
        let mut v = Vec::new();
        let mut pos = 0u64;
        for (a, b, sum) in &self.ranges {
            let off = a * self.block_size;
            let end = ((b + 1) * self.block_size).min(self.image_size);
            if off > pos {
                v.push(Seg::DontCare {
                    off: pos,
                    len: off - pos,
                });
            }
            let check = sum.as_ref().map(|s| RangeCheck {
                first: *a,
                last: *b,
                sha256: s.clone(),
            });
            v.push(Seg::Read {
                off,
                len: end - off,
                check,
            });
            pos = end;
        }
        if pos < self.image_size {
            v.push(Seg::DontCare {
                off: pos,
                len: self.image_size - pos,
            });
        }
        v
    }
}
