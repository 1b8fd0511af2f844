//! The crate's error type: each area owns a detailed enum, wrapped here.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Flasher(#[from] flasher::Error),
    #[error(transparent)]
    Board(#[from] boards::Error),
    #[error(transparent)]
    Qemu(#[from] crate::qemu::Error),
    #[error(transparent)]
    Demo(#[from] crate::demo::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
