//! (placeholder: to be filled in by the work that owns `config_inject`)

/// Errors from `config_inject`.
#[derive(Debug, thiserror::Error)]
pub enum Error {}
