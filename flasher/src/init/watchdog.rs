//! The board's hardware watchdog: opened before the flash, fed while it runs, and
//! disarmed with the "magic close" (write `V`, then close) before the board powers
//! off or parks, so a finished or failed board is never reset into a second flash.
//!
//! Generic over [`Write`] so tests feed a file or a buffer and check the bytes.
//! Note: a kernel built with `CONFIG_WATCHDOG_NOWAYOUT` ignores the magic close;
//! power-off still works there, only `after=wait` would then end in a reset.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};

use super::Error;

/// Something that can be disarmed before the run ends.
pub trait Disarm {
    fn disarm(&mut self) -> io::Result<()>;
}

/// An open watchdog device.
pub struct Watchdog<W: Write> {
    dev: Option<W>,
    path: PathBuf,
}

/// The byte a keep-alive writes. Any write pings the kernel watchdog; it must not be
/// `V`, which would arm the magic close early.
pub const FEED: &[u8] = b"\0";
/// The magic-close byte.
pub const MAGIC_CLOSE: &[u8] = b"V";

impl Watchdog<File> {
    /// Open `root/<path>` (e.g. `/dev/watchdog`). Opening starts the timer.
    pub fn open(root: &Path, path: &Path) -> Result<Self, Error> {
        let full = super::under(root, path);
        let dev = OpenOptions::new()
            .write(true)
            .open(&full)
            .map_err(|source| Error::Watchdog {
                path: full.clone(),
                source,
            })?;
        Ok(Watchdog::new(dev, full))
    }
}

impl<W: Write> Watchdog<W> {
    pub fn new(dev: W, path: PathBuf) -> Self {
        Watchdog {
            dev: Some(dev),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Ping the watchdog. Does nothing once disarmed.
    pub fn feed(&mut self) -> io::Result<()> {
        match &mut self.dev {
            Some(d) => {
                d.write_all(FEED)?;
                d.flush()
            }
            None => Ok(()),
        }
    }

    /// Whether the device is still open (not yet disarmed).
    pub fn is_armed(&self) -> bool {
        self.dev.is_some()
    }
}

impl<W: Write> Disarm for Watchdog<W> {
    /// Write `V` and close the device. Idempotent.
    fn disarm(&mut self) -> io::Result<()> {
        if let Some(mut d) = self.dev.take() {
            d.write_all(MAGIC_CLOSE)?;
            d.flush()?;
            drop(d);
        }
        Ok(())
    }
}

/// A thread that feeds a shared watchdog every `interval` until stopped.
pub struct Feeder<W: Write + Send + 'static> {
    wd: Arc<Mutex<Watchdog<W>>>,
    stop: Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl<W: Write + Send + 'static> Feeder<W> {
    /// Feed once now, then every `interval` (pick well under the watchdog timeout).
    pub fn spawn(wd: Watchdog<W>, interval: Duration) -> Self {
        let wd = Arc::new(Mutex::new(wd));
        let (stop, stopped) = bounded::<()>(1);
        let shared = wd.clone();
        let thread = std::thread::spawn(move || loop {
            {
                let mut w = shared.lock().unwrap_or_else(|e| e.into_inner());
                if let Err(e) = w.feed() {
                    eprintln!("flasher: feeding watchdog {}: {e}", w.path().display());
                }
            }
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                // Stopped, or the Feeder was dropped.
                _ => break,
            }
        });
        Feeder {
            wd,
            stop,
            thread: Some(thread),
        }
    }

    /// Stop feeding (joins the thread) and return the watchdog, still armed.
    fn stop(&mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl<W: Write + Send + 'static> Disarm for Feeder<W> {
    /// Stop the feeding thread, then magic-close the device.
    fn disarm(&mut self) -> io::Result<()> {
        self.stop();
        self.wd.lock().unwrap_or_else(|e| e.into_inner()).disarm()
    }
}

impl<W: Write + Send + 'static> Drop for Feeder<W> {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose bytes the test can read after it is moved away.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn feed_then_magic_close() {
        let buf = Shared::default();
        let mut wd = Watchdog::new(buf.clone(), "/dev/watchdog".into());
        wd.feed().unwrap();
        wd.feed().unwrap();
        assert!(wd.is_armed());
        wd.disarm().unwrap();
        assert!(!wd.is_armed());
        // Feeding and disarming again after the close writes nothing.
        wd.feed().unwrap();
        wd.disarm().unwrap();
        assert_eq!(*buf.0.lock().unwrap(), b"\0\0V");
    }

    #[test]
    fn open_file_in_fake_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        let dev = root.path().join("dev/watchdog");
        std::fs::write(&dev, b"").unwrap();
        let mut wd = Watchdog::open(root.path(), Path::new("/dev/watchdog")).unwrap();
        wd.feed().unwrap();
        wd.disarm().unwrap();
        assert_eq!(std::fs::read(&dev).unwrap(), b"\0V");
        assert!(matches!(
            Watchdog::open(root.path(), Path::new("/dev/watchdog1")),
            Err(Error::Watchdog { .. })
        ));
    }

    #[test]
    fn feeder_feeds_at_start_and_disarms_last() {
        let buf = Shared::default();
        // An hour-long interval: the only feed is the one at start, so no timing.
        let mut f = Feeder::spawn(
            Watchdog::new(buf.clone(), "wd".into()),
            Duration::from_secs(3600),
        );
        // Wait for the first feed without sleeping: the thread takes the lock to feed.
        while buf.0.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        f.disarm().unwrap();
        assert_eq!(*buf.0.lock().unwrap(), b"\0V");
    }
}
