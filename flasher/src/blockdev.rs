//! (placeholder: to be filled in by the work that owns `blockdev`)

/// Errors from `blockdev`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
