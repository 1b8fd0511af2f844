//! (placeholder: to be filled in by the work that owns `emmc`)

/// Errors from `emmc`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
