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
