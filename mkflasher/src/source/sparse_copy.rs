//! The decompressed copy of a compressed image that libblkid probes
//! (docs/fail-closed.md, "Held-back signatures"): libblkid needs a seekable
//! file, a gzip/xz/zstd stream is not one. [`Tee`] writes what the bundler
//! decompresses, in the same pass, into an unlinked file beside the output,
//! skipping all-zero 4 KiB blocks so the copy stays sparse (it costs the
//! image's data, not its size, and is gone when the bundle step ends).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 4096;

/// A reader that also writes every byte read, at its offset, into `copy`.
pub struct Tee<'a, R> {
    inner: R,
    copy: &'a File,
    pos: u64,
}

impl<'a, R: Read> Tee<'a, R> {
    pub fn new(inner: R, copy: &'a File) -> Self {
        Tee {
            inner,
            copy,
            pos: 0,
        }
    }
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut done = 0usize;
        while done < n {
            // Up to the next 4 KiB boundary of the image, so a zero block is
            // skipped whole whatever the reads' sizes.
            let at = self.pos + done as u64;
            let take = ((BLOCK - at % BLOCK) as usize).min(n - done);
            let piece = &buf[done..done + take];
            if piece.iter().any(|&b| b != 0) {
                self.copy.write_all_at(piece, at)?;
            }
            done += take;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// An unlinked read-write file at `path` (created, then removed at once so
/// nothing is left behind on any path).
pub fn unlinked(path: &std::path::Path) -> std::io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    let _ = std::fs::remove_file(path);
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// Reads of odd sizes over zero and data blocks: the copy holds exactly
    /// the bytes read, and its zero blocks were not written.
    #[test]
    fn the_copy_equals_what_was_read_and_stays_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 3 << 20];
        data[5000..9000].fill(0xa5);
        data[(2 << 20) + 1] = 1;
        let copy = unlinked(&dir.path().join("copy")).unwrap();
        struct Odd<'a>(&'a [u8]);
        impl Read for Odd<'_> {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(b.len()).min(7777);
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut t = Tee::new(Odd(&data), &copy);
        let mut seen = Vec::new();
        t.read_to_end(&mut seen).unwrap();
        assert_eq!(seen, data);
        copy.set_len(data.len() as u64).unwrap();
        let mut back = vec![0u8; data.len()];
        copy.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, data);
        // Three data blocks (5000..9000 spans two, one more at 2 MiB): 12 KiB
        // allocated at most, on a filesystem that allocates per 4 KiB block.
        let allocated = copy.metadata().unwrap().blocks() * 512;
        assert!(
            allocated <= 16 << 10,
            "{allocated} bytes allocated for 3 data blocks"
        );
    }
}
