//! Progress as a stream of events (ARCHITECTURE rule 7). The pipeline emits events
//! into an [`Observer`]; the console, LEDs, host progress bars and JSON event lines
//! each subscribe. None of them is wired into the pipeline itself.

use led::Phase;
use serde::Serialize;
use std::sync::Mutex;

/// One progress event. Serialized as one JSON object per line with a `"phase"` field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub phase: Phase,
    /// Bytes done in this phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub done: Option<u64>,
    /// Bytes this phase will process in total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// Bytes per second over the phase so far.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// A human-readable line: what is happening, or the error on failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// On failure: the blink-code error class (see docs/leds.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_class: Option<u8>,
}

impl Event {
    /// A phase change with no byte counts.
    pub fn phase(phase: Phase) -> Self {
        Event {
            phase,
            done: None,
            total: None,
            rate: None,
            message: None,
            error_class: None,
        }
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn progress(phase: Phase, done: u64, total: u64, rate: u64) -> Self {
        Event {
            done: Some(done),
            total: Some(total),
            rate: Some(rate),
            ..Event::phase(phase)
        }
    }
}

/// Something that wants to hear about progress.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event);
}

/// Feeds progress events to an LED animator (phase, progress fraction, error
/// class): the LEDs subscribe to the stream like any other observer.
pub struct LedObserver(pub led::Animator);
impl Observer for LedObserver {
    fn event(&self, e: &Event) {
        self.0.on_event(e.phase, e.done, e.total, e.error_class);
    }
}

/// "512 B", "1.5 KiB", "3.9 GiB": a byte count for console lines and messages.
pub fn iec_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
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
