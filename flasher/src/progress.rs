//! Progress as a stream of events (docs/architecture.md rule 7). The pipeline emits events
//! into an [`Observer`]; the console, LEDs, host progress bars and JSON event lines
//! each subscribe. None of them is wired into the pipeline itself.

use flasher_format::Phase;
use std::io::Write;
use std::sync::Mutex;

/// The one event type, shared with the host through the contract crate.
pub use flasher_format::event::{Body, Event, RecordResult, SCHEMA_VERSION};

/// Something that wants to hear about progress.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// Feeds progress events to an LED animator (phase, progress fraction, error
/// class): the LEDs subscribe to the stream like any other observer. Only the
/// flasher's own state moves them: `led` events are the LEDs' echo of it, and a
/// `record` event (appended after a failure, too) must not end the blink code.
pub struct LedObserver(pub led::Animator);
impl Observer for LedObserver {
    fn event(&self, e: &Event) {
        if !e.is_flasher_state() {
            return;
        }
        let (done, total) = match e.bytes() {
            Some((done, total, _)) => (Some(done), Some(total)),
            None => (None, None),
        };
        self.0
            .on_event(e.phase, done, total, e.error_class().map(u8::from));
    }
}

/// LEDs that report each pattern they start showing back into the event stream
/// as a `led` event, so boards with no LEDs (and the QEMU harness) still see
/// what an operator would. The stream is held weakly: it owns the LED observer
/// that owns these LEDs, and a strong reference would be a cycle.
pub struct AnnouncingLeds {
    inner: Box<dyn led::Leds>,
    to: std::sync::Weak<dyn Observer>,
}

impl AnnouncingLeds {
    pub fn new(inner: Box<dyn led::Leds>, to: std::sync::Weak<dyn Observer>) -> Self {
        AnnouncingLeds { inner, to }
    }
}

impl led::Leds for AnnouncingLeds {
    fn count(&self) -> usize {
        self.inner.count()
    }
    fn set(&mut self, idx: usize, brightness: f32) -> led::Result<()> {
        self.inner.set(idx, brightness)
    }
    fn set_hw_pattern(
        &mut self,
        idx: usize,
        cycle: &[(f32, std::time::Duration)],
    ) -> led::Result<bool> {
        self.inner.set_hw_pattern(idx, cycle)
    }
    fn announce(&mut self, what: &led::Announcement) -> led::Result<()> {
        if let Some(to) = self.to.upgrade() {
            // Classes outside 1..=8 cannot come from the flasher (they are
            // `flasher leds --error-class` experiments); the line then says none.
            let class = what
                .error_class
                .and_then(|c| flasher_format::ErrorClass::try_from(c).ok());
            to.event(&Event::led(
                what.phase,
                what.pattern.clone(),
                self.inner.labels(),
                class,
            ));
        }
        self.inner.announce(what)
    }
    fn restore(&mut self) -> led::Result<()> {
        self.inner.restore()
    }
    fn labels(&self) -> Vec<String> {
        self.inner.labels()
    }
}

/// Ignores every event.
pub struct Null;
impl Observer for Null {
    fn event(&self, _: &Event) {}
}

/// Sends each event to several observers, in order.
#[derive(Default)]
pub struct Fanout(pub Vec<Box<dyn Observer>>);
impl Observer for Fanout {
    fn event(&self, event: &Event) {
        for o in &self.0 {
            o.event(event);
        }
    }
}

/// Records every event; for tests and for the unit record's phase timings.
#[derive(Default)]
pub struct Recorder(pub Mutex<Vec<Event>>);
impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        // A poisoned lock only means another thread panicked mid-push; the
        // events collected so far are still valid.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// The distinct phases in the order they were first entered.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for e in self.events() {
            if out.last() != Some(&e.phase) {
                out.push(e.phase);
            }
        }
        out
    }
}
impl Observer for Recorder {
    fn event(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}
impl<T: Observer + ?Sized> Observer for std::sync::Arc<T> {
    fn event(&self, event: &Event) {
        (**self).event(event)
    }
}
impl<T: Observer + ?Sized> Observer for &T {
    fn event(&self, event: &Event) {
        (**self).event(event)
    }
}

/// JSON event lines (docs/events.md): each event serialized on its own line,
/// flushed at once so a harness reading the serial port sees it immediately.
pub struct JsonLines<W: Write + Send> {
    out: Mutex<(W, u64)>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out: Mutex::new((out, 0)),
        }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl<W: Write + Send> Observer for JsonLines<W> {
    fn event(&self, e: &Event) {
        let mut g = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let (out, last) = &mut *g;
        // Events are stamped where they happen, on several threads (the LED
        // animator, the pipeline); one stamped a moment before the previous line
        // was written would go back in time. Readers may rely on t_ms never
        // decreasing, so such a line carries the previous line's time.
        let mut line = if e.t_ms < *last {
            e.clone().with_t_ms(*last).to_line()
        } else {
            e.to_line()
        };
        *last = e.t_ms.max(*last);
        line.push('\n');
        // A write error (tty gone) has nowhere to be reported.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// Open an events output (`flasher.events=` on the board, `--events` on a
/// host) for appending: a file is created if missing; a tty is switched to raw
/// mode so the kernel adds no `\r` and no echo.
pub fn open_events_at(full: &std::path::Path) -> std::io::Result<JsonLines<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(full)?;
    if nix::unistd::isatty(std::os::fd::AsRawFd::as_raw_fd(&file)).unwrap_or(false) {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        if let Ok(mut t) = tcgetattr(&file) {
            cfmakeraw(&mut t);
            // Best effort: cooked mode still delivers readable lines.
            let _ = tcsetattr(&file, SetArg::TCSANOW, &t);
        }
    }
    Ok(JsonLines::new(file))
}
