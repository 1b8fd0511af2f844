//! The crate's error type: each area owns a detailed enum, wrapped here.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Flasher(#[from] flasher::Error),
    #[error(transparent)]
    Board(#[from] boards::Error),
    #[error(transparent)]
    Qemu(#[from] flasher_qemu::Error),
    #[error(transparent)]
    Demo(#[from] crate::demo::Error),
    #[error(transparent)]
    Disk(#[from] crate::disk::Error),
    #[error(transparent)]
    Cpio(#[from] crate::cpio::Error),
    #[error(transparent)]
    Card(#[from] crate::card::Error),
    #[error(transparent)]
    Configure(#[from] crate::cmd::configure::Error),
    #[error(transparent)]
    Initramfs(#[from] crate::cmd::initramfs::Error),
    #[error(transparent)]
    Fat(#[from] crate::fat::Error),
    #[error(transparent)]
    Modules(#[from] crate::modules::Error),
    #[error(transparent)]
    Source(#[from] crate::source::Error),
    #[error(transparent)]
    Records(#[from] crate::records::Error),
    #[error(transparent)]
    Pool(#[from] crate::pool::Error),
    #[error(transparent)]
    Matrix(#[from] crate::qemu_matrix::Error),
    /// Boxed: it carries a target path next to a whole `flasher::Error`.
    #[error(transparent)]
    Write(Box<crate::hostwrite::Error>),
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
    #[error("{0}")]
    Usage(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {}

impl From<crate::hostwrite::Error> for Error {
    fn from(e: crate::hostwrite::Error) -> Self {
        Error::Write(Box::new(e))
    }
}
