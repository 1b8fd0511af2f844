//! The bmaptool block-map parser (`mkflasher::source::bmap`): a `.bmap` file
//! comes with a downloaded OS image, as untrusted as the image.

use mkflasher::source::bmap::Bmap;
use std::path::Path;

pub fn bmap(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for skip in [false, true] {
        if let Ok(b) = Bmap::parse(Path::new("fuzz.bmap"), text, skip) {
            check(&b);
        }
    }
}

/// Ranges in order, not overlapping, inside the image, and every byte offset
/// the read plan derives from them fits in a u64.
fn check(b: &Bmap) {
    assert!(b.block_size > 0);
    let blocks = b.image_size.div_ceil(b.block_size);
    let mut next = 0u64;
    for (first, last, _) in &b.ranges {
        assert!(first <= last && *first >= next, "ranges in order");
        assert!(*last < blocks, "range inside the image");
        let end = (last + 1)
            .checked_mul(b.block_size)
            .expect("range end fits u64");
        let start = first * b.block_size;
        assert!(start < b.image_size && start < end);
        next = last + 1;
    }
}
