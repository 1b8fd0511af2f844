//! (placeholder: to be filled in by the work that owns `storage`)

/// Errors from `storage`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
