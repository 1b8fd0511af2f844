//! Tampering with a finished bundle, for the tests that show each refusal
//! (here and in the writer's and the board's tests). Built with the `testing`
//! feature.

use super::{Header, HEADER_LEN};
use sha2::{Digest, Sha256};

fn header(b: &[u8]) -> Header {
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&b[..HEADER_LEN]);
    Header::parse(&hb).expect("a bundle made by the tests")
}

/// Change one byte of the manifest (inside `created_by`, so the JSON stays
/// valid and means the same) and fix the header's manifest digest, as an
/// attacker who edits a manifest would.
pub fn alter_manifest(bundle: &[u8]) -> Vec<u8> {
    let h = header(bundle);
    let mut b = bundle.to_vec();
    let m = HEADER_LEN..HEADER_LEN + h.manifest_len as usize;
    let at = b[m.clone()]
        .windows(8)
        .position(|w| w == b"flasher ")
        .expect("created_by names the flasher")
        + m.start;
    b[at + 6] = b'x';
    let digest: [u8; 32] = Sha256::digest(&b[m]).into();
    b[40..72].copy_from_slice(&digest);
    b
}

/// Flip one bit of the signature itself (the last byte of the block).
pub fn alter_signature(bundle: &[u8]) -> Vec<u8> {
    let h = header(bundle);
    assert!(h.signature_len > 0, "the bundle is signed");
    let mut b = bundle.to_vec();
    let end = HEADER_LEN + (h.manifest_len + h.signature_len) as usize;
    b[end - 1] ^= 1;
    b
}

/// Remove the signature block (header says unsigned again).
pub fn strip_signature(bundle: &[u8]) -> Vec<u8> {
    let mut h = header(bundle);
    let start = HEADER_LEN + h.manifest_len as usize;
    let mut b = bundle[..start].to_vec();
    b.extend_from_slice(&bundle[start + h.signature_len as usize..]);
    h.signature_len = 0;
    b[..HEADER_LEN].copy_from_slice(&h.to_bytes());
    b
}

/// Replace the manifest JSON (and the header's manifest length and digest,
/// and its version if `header_version` is given) as an attacker who edits the
/// manifest would; the chunks, and a signature block if any, stay.
pub fn reseal(
    bundle: &[u8],
    header_version: Option<u32>,
    edit: impl FnOnce(&mut serde_json::Value),
) -> Vec<u8> {
    let h = header(bundle);
    let ml = h.manifest_len as usize;
    let mut m: serde_json::Value =
        serde_json::from_slice(&bundle[HEADER_LEN..HEADER_LEN + ml]).expect("manifest JSON");
    edit(&mut m);
    let json = serde_json::to_vec(&m).expect("JSON value");
    let h2 = Header {
        version: header_version.unwrap_or(h.version),
        manifest_len: json.len() as u64,
        manifest_sha256: Sha256::digest(&json).into(),
        ..h
    };
    let mut b = h2.to_bytes().to_vec();
    b.extend(&json);
    b.extend(&bundle[HEADER_LEN + ml..]);
    b
}

/// Rewrite a version 2 manifest as a well-formed version 1 one: version 1,
/// no `chunk_digest` or `readback_digest`, each chunk's BLAKE3 digest moved
/// under `sha256` and its XXH3 dropped (for `reseal`, with header version 1).
pub fn relabel_as_version_1(m: &mut serde_json::Value) {
    m["version"] = 1.into();
    let o = m.as_object_mut().expect("a manifest object");
    o.remove("chunk_digest");
    o.remove("readback_digest");
    for c in m["chunks"].as_array_mut().expect("chunks") {
        let c = c.as_object_mut().expect("a chunk object");
        let d = c.remove("blake3").expect("a version 2 chunk");
        c.remove("xxh3");
        c.insert("sha256".into(), d);
    }
}
