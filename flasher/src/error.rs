//! The crate's error type. Each area owns a detailed enum; this one wraps them so
//! callers can match `Error::Bundle(bundle::Error::UnknownVersion { .. })`.

/// Errors from the flasher library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bundle(#[from] flasher_format::bundle::Error),
    #[error(transparent)]
    Pipeline(#[from] crate::pipeline::Error),
    #[error(transparent)]
    BlockDev(#[from] crate::blockdev::Error),
    #[error(transparent)]
    Fixup(#[from] crate::fixup::Error),
    #[error(transparent)]
    Storage(#[from] crate::storage::Error),
    #[error(transparent)]
    Emmc(#[from] crate::emmc::Error),
    #[error(transparent)]
    Record(#[from] flasher_format::record::Error),
    #[error(transparent)]
    Pool(#[from] flasher_format::pool::Error),
    #[error(transparent)]
    ConfigInject(#[from] crate::config_inject::Error),
    #[error(transparent)]
    Board(#[from] boards::Error),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The blink class of this error when nothing is known about the step it
    /// happened in (the board's init refines it per step: `flasher_init::Step::classify`).
    pub fn class(&self) -> flasher_format::ErrorClass {
        use flasher_format::ErrorClass as C;
        match self {
            Error::Board(e) => e.class(),
            Error::Bundle(e) => e.class(),
            Error::Pipeline(e) => e.class(),
            Error::BlockDev(e) => e.class(),
            Error::Storage(e) => e.class(),
            Error::Emmc(e) => e.class(),
            Error::Record(e) => e.class(),
            Error::Pool(e) => e.class(),
            Error::ConfigInject(e) => e.class(),
            Error::Fixup(_) => C::PostWrite,
            Error::Io(_) | Error::Usage(_) => C::Internal,
        }
    }
}

/// The whole chain of an error as one line, each cause stated once.
///
/// Many messages already include their source (`"{context}: {source}"`), so
/// printing the chain blindly (`{e:#}`) repeats the cause. A source whose text
/// is already in the line is skipped.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        next = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_once() {
        let e = Error::Io(flasher_format::io::IoError::new(
            "open /dev/mmcblk1",
            std::io::Error::other("Input/output error"),
        ));
        assert_eq!(report(&e), "open /dev/mmcblk1: Input/output error");
        // A wrapper whose message does not include its source gets it appended.
        #[derive(Debug, thiserror::Error)]
        #[error("write failed")]
        struct Outer(#[source] Error);
        assert_eq!(
            report(&Outer(e)),
            "write failed: open /dev/mmcblk1: Input/output error"
        );
    }
}
