//! The one way to attach context to an I/O error, in every crate: an
//! [`IoError`] says what was being done ("open /dev/mmcblk1", "read 512 bytes
//! at byte 4096 of card.img") and carries the OS error as its source. Each
//! crate's error enum wraps it in an `Io(#[from] IoError)` variant, so `?`
//! converts it:
//!
//! ```
//! use flasher_format::io::{IoContext, IoError};
//!
//! #[derive(Debug, thiserror::Error)]
//! enum Error {
//!     #[error(transparent)]
//!     Io(#[from] IoError),
//! }
//!
//! fn size(path: &std::path::Path) -> Result<u64, Error> {
//!     let meta = std::fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
//!     Ok(meta.len())
//! }
//! assert!(size("/no/such/file".as_ref()).unwrap_err().to_string().starts_with("stat /no/such/file: "));
//! ```

use std::io;

/// An I/O error and what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    /// What was being done, with the path and the byte range where they help.
    pub context: String,
    #[source]
    pub source: io::Error,
}

impl IoError {
    pub fn new(context: impl Into<String>, source: io::Error) -> Self {
        IoError {
            context: context.into(),
            source,
        }
    }

    /// The OS error's kind (`NotFound`, `PermissionDenied`, ...).
    pub fn kind(&self) -> io::ErrorKind {
        self.source.kind()
    }
}

/// `.context("...")` and `.with_context(|| format!(...))` on `io::Result`.
pub trait IoContext<T> {
    /// Attach a fixed context.
    fn context(self, context: impl Into<String>) -> Result<T, IoError>;
    /// Attach a context built only if there is an error (for `format!`).
    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T, IoError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, context: impl Into<String>) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(context, source))
    }

    fn with_context<S: Into<String>>(self, context: impl FnOnce() -> S) -> Result<T, IoError> {
        self.map_err(|source| IoError::new(context(), source))
    }
}

/// For code that lives in `io::Result` (fatfs callbacks, `Read`/`Write`
/// impls): the context stays in the message and the kind is kept.
impl From<IoError> for io::Error {
    fn from(e: IoError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_is_lazy_and_kind_is_kept() {
        let ok: io::Result<u8> = Ok(1);
        let mut built = false;
        assert_eq!(
            ok.with_context(|| {
                built = true;
                "never"
            })
            .unwrap(),
            1
        );
        assert!(!built);
        let err: io::Result<u8> = Err(io::Error::new(io::ErrorKind::NotFound, "gone"));
        let e = err.context("open /x").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "open /x: gone");
        let back: io::Error = e.into();
        assert_eq!(back.kind(), io::ErrorKind::NotFound);
        assert!(back.to_string().contains("open /x"));
    }
}
