//! Time, injected: the one [`Clock`] trait of the LEDs and of the board's
//! `/init`. Code that measures or waits never calls `Instant::now` or `sleep`
//! itself: the LED animator sleeps on a [`Clock`] between steps, the init's
//! watchdog stamps progress with one (`flasher_init::watchdog::Liveness`) and
//! its block-device wait polls on one (`flasher_init::modules`). Production
//! code uses [`SystemClock`]; tests move time by hand, with [`FakeClock`] here
//! or a fake of their own, and never sleep.

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why [`Clock::sleep_until`] returned.
#[derive(Debug, PartialEq)]
pub enum Wake<T> {
    /// The deadline passed.
    Deadline,
    /// A message arrived first.
    Message(T),
    /// Every sender is gone; nothing more will arrive.
    Closed,
}

/// A monotonic clock. Times are durations since the clock's own start.
///
/// `dyn Clock` has only [`now`](Clock::now) (the watchdog's liveness reads the
/// time through one); the sleeps need a concrete clock.
pub trait Clock: Send + 'static {
    fn now(&self) -> Duration;

    /// Sleep until `deadline` (forever if `None`) or until a message arrives on
    /// `inbox`, whichever is first.
    fn sleep_until<T: Send>(&self, deadline: Option<Duration>, inbox: &Receiver<T>) -> Wake<T>
    where
        Self: Sized;

    /// Sleep for `d`, with nothing to wake up early for.
    fn sleep(&self, d: Duration)
    where
        Self: Sized,
    {
        let _ = self.sleep_until(
            Some(self.now().saturating_add(d)),
            &crossbeam_channel::never::<()>(),
        );
    }
}

/// The real monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> SystemClock {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn sleep_until<T: Send>(&self, deadline: Option<Duration>, inbox: &Receiver<T>) -> Wake<T> {
        let result = match deadline {
            None => inbox.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(d) => inbox.recv_timeout(d.saturating_sub(self.now())),
        };
        match result {
            Ok(m) => Wake::Message(m),
            Err(RecvTimeoutError::Timeout) => Wake::Deadline,
            Err(RecvTimeoutError::Disconnected) => Wake::Closed,
        }
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

/// A clock the test moves by hand, in lockstep with the thread sleeping on it:
/// each `sleep_until` reports its deadline to the [`FakeClockControl`] and waits
/// there until the test calls [`FakeClockControl::advance`] (time jumps to that
/// deadline) or a message arrives (time stands still). Nothing depends on real
/// time except a generous safety timeout so a broken test fails instead of hanging.
#[derive(Clone)]
pub struct FakeClock {
    now: Arc<Mutex<Duration>>,
    requests: Sender<Option<Duration>>,
    go: Receiver<()>,
}

/// The test's side of a [`FakeClock`].
pub struct FakeClockControl {
    now: Arc<Mutex<Duration>>,
    requests: Receiver<Option<Duration>>,
    go: Sender<()>,
    pending: Option<Option<Duration>>,
}

/// How long a test waits for the animator thread before calling it stuck.
const SAFETY: Duration = Duration::from_secs(10);

impl FakeClock {
    pub fn new() -> (FakeClock, FakeClockControl) {
        let now = Arc::new(Mutex::new(Duration::ZERO));
        let (req_tx, req_rx) = crossbeam_channel::unbounded();
        let (go_tx, go_rx) = crossbeam_channel::unbounded();
        (
            FakeClock {
                now: now.clone(),
                requests: req_tx,
                go: go_rx,
            },
            FakeClockControl {
                now,
                requests: req_rx,
                go: go_tx,
                pending: None,
            },
        )
    }
}

fn read(now: &Mutex<Duration>) -> Duration {
    // Poisoning only means a test thread panicked; the value is still a Duration.
    *now.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        read(&self.now)
    }

    fn sleep_until<T: Send>(&self, deadline: Option<Duration>, inbox: &Receiver<T>) -> Wake<T> {
        // A message already waiting wins without involving the test.
        match inbox.try_recv() {
            Ok(m) => return Wake::Message(m),
            Err(TryRecvError::Disconnected) => return Wake::Closed,
            Err(TryRecvError::Empty) => {}
        }
        if deadline.is_some_and(|d| d <= self.now()) {
            return Wake::Deadline;
        }
        if self.requests.send(deadline).is_err() {
            // The control is gone: behave like a clock that never advances.
            return match inbox.recv() {
                Ok(m) => Wake::Message(m),
                Err(_) => Wake::Closed,
            };
        }
        crossbeam_channel::select! {
            recv(inbox) -> m => match m {
                Ok(m) => Wake::Message(m),
                Err(_) => Wake::Closed,
            },
            recv(self.go) -> _ => Wake::Deadline,
        }
    }
}

impl FakeClockControl {
    pub fn now(&self) -> Duration {
        read(&self.now)
    }

    /// Wait until the sleeping thread is parked in `sleep_until`, and return the
    /// deadline it sleeps towards (`None`: it waits for a message only).
    /// Panics if the thread does not park within a generous safety timeout.
    pub fn next_deadline(&mut self) -> Option<Duration> {
        if let Some(d) = self.pending {
            return d;
        }
        // Requests arrive in order; the caller keeps them in step by reading each
        // one before sending the thread a message (then calling `interrupted`).
        let d = match self.requests.recv_timeout(SAFETY) {
            Ok(d) => d,
            Err(e) => panic!("animator thread did not go to sleep: {e}"),
        };
        self.pending = Some(d);
        d
    }

    /// Forget the sleep seen by [`next_deadline`](Self::next_deadline): call after
    /// sending the thread a message, which ends that sleep without advancing time.
    pub fn interrupted(&mut self) {
        self.pending = None;
    }

    /// Move time to the parked thread's deadline and wake it. Returns the new time.
    /// Panics if the thread is parked with no deadline (nothing would happen).
    pub fn advance(&mut self) -> Duration {
        let d = match self.next_deadline() {
            Some(d) => d,
            None => panic!("advance: the thread sleeps with no deadline (static pattern)"),
        };
        *self.now.lock().unwrap_or_else(|e| e.into_inner()) = d;
        self.pending = None;
        // The thread holds the receiver for as long as it sleeps on us.
        let _ = self.go.send(());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_clock_moves_only_when_told() {
        let (clock, mut ctl) = FakeClock::new();
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        let t = std::thread::spawn(move || {
            let a = clock.sleep_until(Some(Duration::from_millis(100)), &rx);
            let at = clock.now();
            let b = clock.sleep_until(Some(Duration::from_millis(300)), &rx);
            (a, at, b, clock.now())
        });
        assert_eq!(ctl.next_deadline(), Some(Duration::from_millis(100)));
        assert_eq!(ctl.now(), Duration::ZERO);
        assert_eq!(ctl.advance(), Duration::from_millis(100));
        assert_eq!(ctl.next_deadline(), Some(Duration::from_millis(300)));
        tx.send(7).unwrap();
        ctl.interrupted();
        let (a, at, b, end) = t.join().unwrap();
        assert_eq!(a, Wake::Deadline);
        assert_eq!(at, Duration::from_millis(100));
        assert_eq!(b, Wake::Message(7));
        // A message does not move time.
        assert_eq!(end, Duration::from_millis(100));
    }

    #[test]
    fn system_clock_returns_on_message_and_on_close() {
        let clock = SystemClock::new();
        let (tx, rx) = crossbeam_channel::unbounded::<u8>();
        tx.send(1).unwrap();
        assert_eq!(clock.sleep_until(None, &rx), Wake::Message(1));
        drop(tx);
        assert_eq!(clock.sleep_until(None, &rx), Wake::Closed);
        // A deadline already in the past returns at once.
        let (_tx, rx) = crossbeam_channel::unbounded::<u8>();
        assert_eq!(clock.sleep_until(Some(Duration::ZERO), &rx), Wake::Deadline);
    }
}
