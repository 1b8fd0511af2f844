//! LED feedback: the phase vocabulary an operator sees, patterns as timelines of
//! steps, an animator thread, and the backends that drive real or fake LEDs.
//!
//! This crate knows nothing about boards or pipelines (see ARCHITECTURE.md).

pub mod config;
pub mod phase;

pub use config::{LedConfig, LedSpec};
pub use phase::Phase;
