//! (placeholder: to be filled in by the work that owns `pipeline`)

/// Errors from `pipeline`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
