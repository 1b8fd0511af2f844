//! (placeholder: to be filled in by the work that owns `bundle`)

/// Errors from `bundle`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
