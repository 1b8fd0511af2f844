//! The built-in demo (placeholder until the host helper's FAT/disk/cpio APIs land).

#[derive(Debug, thiserror::Error)]
pub enum Error {}
