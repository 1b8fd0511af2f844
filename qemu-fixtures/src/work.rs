//! Scratch space for a run: the work directory (removed afterwards unless the
//! caller gave it) and the file helpers that copy and pad cards and targets.

use crate::Result;
use flasher_format::io::IoContext;
use std::path::{Path, PathBuf};

/// A scratch directory, removed on drop unless the caller supplied it.
pub(crate) struct Work {
    pub(crate) dir: PathBuf,
    pub(crate) owned: bool,
}

impl Work {
    pub(crate) fn new(given: Option<&Path>) -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let (dir, owned) = match given {
            Some(d) => (d.to_path_buf(), false),
            None => {
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (
                    std::env::temp_dir().join(format!("mkflasher-qemu-{}-{n}", std::process::id())),
                    true,
                )
            }
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Work { dir, owned })
    }
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Make `path` at least `size` bytes (sparse).
pub(crate) fn grow(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(f.set_len(size)
        .with_context(|| format!("growing {} to {size} bytes", path.display()))?)
}

pub(crate) fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len())
}

pub(crate) fn copy(from: &Path, to: &Path) -> Result<()> {
    Ok(std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?)
}
