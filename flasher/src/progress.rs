//! Progress as a stream of events (ARCHITECTURE rule 7). The pipeline emits events
//! into an [`Observer`]; the console, LEDs, host progress bars and JSON event lines
//! each subscribe. None of them is wired into the pipeline itself.

use led::Phase;
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
                .and_then(|c| led::ErrorClass::try_from(c).ok());
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
