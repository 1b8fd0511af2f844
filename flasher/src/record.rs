//! (placeholder: to be filled in by the work that owns `record`)

/// Errors from `record`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
