//! The board's hardware watchdog: opened before the flash, fed while the run makes
//! progress, and at the end either disarmed with the "magic close" (write `V`, then
//! close) or fed for good while the board signals its result.
//!
//! Progress-aware feeding: a [`Liveness`] observer on the event stream stamps the
//! time of the last progress (bytes written or verified moved on, a phase changed,
//! a step reported something). The [`Feeder`] thread feeds only while that stamp is
//! younger than the board's stall interval (`watchdog_stall_s`), so a hung I/O
//! stops the feeding and the watchdog resets the board. Once the run reports
//! success or failure there is no progress to expect: the feeder then feeds
//! unconditionally until [`power::finish`](super::power::finish) either disarms it
//! (power-off, reboot, halt) or leaves it feeding while the board parks
//! (`wait`: the blink code or the success pattern stays up, even on kernels with
//! `CONFIG_WATCHDOG_NOWAYOUT`, which ignore the magic close).
//!
//! Generic over [`Write`] so tests feed a file or a buffer and check the bytes, and
//! over the time ([`led::Clock`]) so tests move time by hand instead of sleeping.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, RecvTimeoutError, Sender};
use flasher_format::Phase;
use led::Clock;

use super::Error;
use flasher::progress::{Event, Observer};

/// How a watchdog ends with the run: one of the two, never neither.
pub trait Disarm {
    /// Magic close: the watchdog stops (before power-off, reboot, halt).
    fn disarm(&mut self) -> io::Result<()>;
    /// Feed it unconditionally from now on, for as long as the process lives
    /// (the board parks, showing its result).
    fn keep_feeding(&mut self);
}

/// Whether the run is alive: when it last made progress, and whether it has
/// ended (success or failure shown) so the feeder must feed regardless.
/// Written by the event stream (it is an [`Observer`]), read by the [`Feeder`].
pub struct Liveness {
    clock: Box<dyn Clock + Sync>,
    /// [`Clock::now`] at the last progress, in milliseconds.
    last_ms: AtomicU64,
    /// The run shows its result: feed without looking at progress.
    signalling: AtomicBool,
    stall: Duration,
    /// The last flasher-state event's phase and bytes done, to tell progress
    /// from a repeat (a rate update with the same byte count is no progress).
    seen: Mutex<Option<(Phase, Option<u64>)>>,
    /// The stall was reported on the console already (once, not every tick).
    reported: AtomicBool,
}

impl Liveness {
    /// Progress counts from now; no progress for longer than `stall` stops the
    /// feeding.
    pub fn new(clock: Box<dyn Clock + Sync>, stall: Duration) -> Self {
        let now = clock.now().as_millis() as u64;
        Liveness {
            clock,
            last_ms: AtomicU64::new(now),
            signalling: AtomicBool::new(false),
            stall,
            seen: Mutex::new(None),
            reported: AtomicBool::new(false),
        }
    }

    /// The run made progress now.
    pub fn touch(&self) {
        let now = self.clock.now().as_millis() as u64;
        self.last_ms.fetch_max(now, Ordering::SeqCst);
    }

    /// Feed regardless of progress (`true`: the board shows its result), or go
    /// back to feeding on progress only (a run that carries on).
    pub fn set_signalling(&self, on: bool) {
        if on != self.signalling.swap(on, Ordering::SeqCst) && !on {
            // Back to watching progress: count from now, not from before.
            self.touch();
        }
    }

    /// How long since the last progress.
    pub fn idle(&self) -> Duration {
        let now = self.clock.now().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::SeqCst)))
    }

    /// Whether the feeder should feed now.
    pub fn should_feed(&self) -> bool {
        self.signalling.load(Ordering::SeqCst) || self.idle() <= self.stall
    }

    pub fn stall(&self) -> Duration {
        self.stall
    }
}

impl Observer for Liveness {
    fn event(&self, e: &Event) {
        // `led` echoes and `record` events are not the flasher's own progress.
        if !e.is_flasher_state() {
            return;
        }
        self.set_signalling(matches!(e.phase, Phase::Success | Phase::Failure));
        let done = e.bytes().map(|(d, _, _)| d);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let repeat = match (*seen, done) {
            (Some((phase, Some(before))), Some(now)) => phase == e.phase && now == before,
            _ => false,
        };
        let kept = match *seen {
            Some((phase, before)) if phase == e.phase => done.or(before),
            _ => done,
        };
        *seen = Some((e.phase, kept));
        drop(seen);
        if !repeat {
            self.touch();
        }
    }
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

    /// A bare device has no thread to feed it: disarm it instead, the only other
    /// ending that does not reset the board.
    fn keep_feeding(&mut self) {
        if let Err(e) = self.disarm() {
            eprintln!(
                "flasher: watchdog {}: disarm failed: {e}",
                self.path.display()
            );
        }
    }
}

/// What one tick of the feeder did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Fed,
    /// No progress within the stall interval: not fed, so the watchdog resets
    /// the board when its timeout runs out.
    Withheld,
}

/// One tick: feed if the run is alive, else say once why feeding stopped.
pub fn tick<W: Write>(wd: &Mutex<Watchdog<W>>, live: &Liveness) -> Tick {
    if live.should_feed() {
        live.reported.store(false, Ordering::SeqCst);
        let mut w = wd.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.feed() {
            eprintln!("flasher: feeding watchdog {}: {e}", w.path().display());
        }
        Tick::Fed
    } else {
        if !live.reported.swap(true, Ordering::SeqCst) {
            eprintln!(
                "flasher: no progress for {} s (board limit watchdog_stall_s = {} s): no longer feeding the watchdog, the board will reset; the unit log counts this attempt",
                live.idle().as_secs(),
                live.stall().as_secs()
            );
        }
        Tick::Withheld
    }
}

/// A thread that ticks every `interval` (feeding while [`Liveness`] allows)
/// until stopped.
pub struct Feeder<W: Write + Send + 'static> {
    wd: Arc<Mutex<Watchdog<W>>>,
    live: Arc<Liveness>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl<W: Write + Send + 'static> Feeder<W> {
    /// Tick once now, then every `interval` (pick well under the watchdog timeout).
    pub fn spawn(wd: Watchdog<W>, interval: Duration, live: Arc<Liveness>) -> Self {
        let wd = Arc::new(Mutex::new(wd));
        let (stop, stopped) = bounded::<()>(1);
        let (shared, alive) = (wd.clone(), live.clone());
        let thread = std::thread::spawn(move || loop {
            tick(&shared, &alive);
            match stopped.recv_timeout(interval) {
                Err(RecvTimeoutError::Timeout) => continue,
                // Stopped, or the Feeder was dropped.
                _ => break,
            }
        });
        Feeder {
            wd,
            live,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Stop feeding (joins the thread); the watchdog stays as it is.
    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.try_send(());
        }
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

    /// Feed on regardless of progress; the thread outlives this value.
    fn keep_feeding(&mut self) {
        self.live.set_signalling(true);
        // Keep the stop channel open for good: the thread must never see it close.
        if let Some(s) = self.stop.take() {
            std::mem::forget(s);
        }
        self.thread.take();
    }
}

impl<W: Write + Send + 'static> Drop for Feeder<W> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Unwinding out of the run (a panic outside a step): PID 1 parks next,
            // showing the failure; keep the watchdog fed rather than let it reset
            // the board into another flash.
            self.keep_feeding();
        } else {
            self.stop();
        }
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

    /// Time moved by hand.
    #[derive(Clone, Default)]
    struct FakeNow(Arc<AtomicU64>);
    impl FakeNow {
        fn advance(&self, d: Duration) {
            self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        }
    }
    impl Clock for FakeNow {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.load(Ordering::SeqCst))
        }
        fn sleep_until<T: Send>(
            &self,
            _: Option<Duration>,
            _: &crossbeam_channel::Receiver<T>,
        ) -> led::clock::Wake<T> {
            unreachable!("the watchdog only reads the time")
        }
    }

    fn live(stall_s: u64) -> (FakeNow, Liveness) {
        let now = FakeNow::default();
        let l = Liveness::new(Box::new(now.clone()), Duration::from_secs(stall_s));
        (now, l)
    }

    #[test]
    fn stops_feeding_when_progress_stalls() {
        let buf = Shared::default();
        let wd = Mutex::new(Watchdog::new(buf.clone(), "wd".into()));
        let (now, l) = live(60);
        assert_eq!(tick(&wd, &l), Tick::Fed);
        l.event(&Event::phase(Phase::Writing));
        l.event(&Event::progress(Phase::Writing, 1 << 20, 8 << 20, 0));
        now.advance(Duration::from_secs(59));
        l.event(&Event::progress(Phase::Writing, 2 << 20, 8 << 20, 0));
        now.advance(Duration::from_secs(59));
        assert_eq!(tick(&wd, &l), Tick::Fed, "bytes moved 59 s ago");
        // The same byte count again (a hung write re-announced) is no progress.
        l.event(&Event::progress(Phase::Writing, 2 << 20, 8 << 20, 0));
        now.advance(Duration::from_secs(2));
        assert_eq!(tick(&wd, &l), Tick::Withheld, "61 s without progress");
        assert_eq!(tick(&wd, &l), Tick::Withheld);
        // Verifying starts: a phase change is progress, feeding resumes.
        l.event(&Event::progress(Phase::Verifying, 0, 8 << 20, 0));
        assert_eq!(tick(&wd, &l), Tick::Fed);
        // LED echoes are not the run's progress.
        now.advance(Duration::from_secs(61));
        l.event(&Event::led(Phase::Verifying, "x", vec![], None));
        assert_eq!(tick(&wd, &l), Tick::Withheld);
        assert_eq!(*buf.0.lock().unwrap(), b"\0\0\0");
    }

    #[test]
    fn success_and_failure_feed_without_progress_until_the_run_goes_on() {
        let wd = Mutex::new(Watchdog::new(Shared::default(), "wd".into()));
        let (now, l) = live(60);
        l.event(&Event::failure(
            flasher_format::ErrorClass::VerifyMismatch,
            "x",
        ));
        now.advance(Duration::from_secs(3600));
        assert_eq!(tick(&wd, &l), Tick::Fed, "failure: signalling, fed");
        // A panic in another thread reports a failure, but the run carries on:
        // its next event puts the feeder back on progress, counted from then.
        l.event(&Event::phase(Phase::Writing));
        now.advance(Duration::from_secs(61));
        assert_eq!(tick(&wd, &l), Tick::Withheld);
        l.event(&Event::phase(Phase::Success));
        now.advance(Duration::from_secs(3600));
        assert_eq!(tick(&wd, &l), Tick::Fed);
    }

    #[test]
    fn keep_feeding_outlives_the_feeder_and_ignores_progress() {
        let buf = Shared::default();
        let (now, l) = live(60);
        let l = Arc::new(l);
        let mut f = Feeder::spawn(
            Watchdog::new(buf.clone(), "wd".into()),
            Duration::from_millis(1),
            l.clone(),
        );
        now.advance(Duration::from_secs(3600));
        f.keep_feeding();
        drop(f);
        // The detached thread still feeds: wait for a few feeds without sleeping.
        while buf.0.lock().unwrap().len() < 3 {
            std::thread::yield_now();
        }
        assert!(
            buf.0.lock().unwrap().iter().all(|&b| b == 0),
            "never closed"
        );
    }

    #[test]
    fn feeder_feeds_at_start_and_disarms_last() {
        let buf = Shared::default();
        // An hour-long interval: the only feed is the one at start, so no timing.
        let mut f = Feeder::spawn(
            Watchdog::new(buf.clone(), "wd".into()),
            Duration::from_secs(3600),
            Arc::new(live(60).1),
        );
        // Wait for the first feed without sleeping: the thread takes the lock to feed.
        while buf.0.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        f.disarm().unwrap();
        assert_eq!(*buf.0.lock().unwrap(), b"\0V");
    }
}
