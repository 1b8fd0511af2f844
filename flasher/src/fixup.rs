//! (placeholder: to be filled in by the work that owns `fixup`)

/// Errors from `fixup`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
