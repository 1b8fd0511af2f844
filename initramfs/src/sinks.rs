//! The event fan-out of a run: [`Sinks`] is the one [`Observer`] the steps, the
//! pipeline and the panic hook report to, and it passes each event on to every
//! sink added so far: the console (from the start), the JSON event lines of
//! `flasher.events=` (once the command line is read, with the events before it
//! replayed), the watchdog's liveness and the LEDs (once the board is known).
//! The sinks themselves live in [`console`](crate::console),
//! [`watchdog`](crate::watchdog) and the `led` crate; this module only fans out
//! (docs/architecture.md rule 7).

use std::sync::{Mutex, RwLock};

use flasher::progress::{Event, Observer};

/// Observers that can be added to after they were handed out (the panic hook gets
/// this before the events path and the LEDs are known).
///
/// Until the event stream is attached ([`Sinks::add_stream`]) the events shown so
/// far are kept, so the stream still starts with `/init`'s first event: a reader
/// times the run from it (boot to first write, docs/events.md).
pub struct Sinks {
    observers: RwLock<Vec<Box<dyn Observer>>>,
    backlog: Mutex<Option<Vec<Event>>>,
}

/// Events kept for the stream before it is attached: the start, the mounts and
/// the command-line warnings are a handful; a bound keeps a runaway note from
/// growing without limit on a card whose command line names no stream.
const BACKLOG: usize = 64;

impl Default for Sinks {
    fn default() -> Self {
        Sinks {
            observers: RwLock::default(),
            backlog: Mutex::new(Some(Vec::new())),
        }
    }
}

impl Sinks {
    pub fn add(&self, o: Box<dyn Observer>) {
        self.observers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(o);
    }

    /// Add the event stream, first replaying the events it missed.
    pub fn add_stream(&self, o: Box<dyn Observer>) {
        for e in self.take_backlog() {
            o.event(&e);
        }
        self.add(o);
    }

    /// Stop keeping events for a stream (there is none, or it is attached).
    pub fn take_backlog(&self) -> Vec<Event> {
        let mut b = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        b.take().unwrap_or_default()
    }
}

impl Observer for Sinks {
    fn event(&self, e: &Event) {
        if let Some(b) = self
            .backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .filter(|b| b.len() < BACKLOG)
        {
            b.push(e.clone());
        }
        for o in self
            .observers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            o.event(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flasher_format::Phase;
    use std::sync::Arc;

    #[test]
    fn sinks_reach_observers_added_later() {
        let sinks = Arc::new(Sinks::default());
        let handed_out: Arc<dyn Observer> = sinks.clone();
        let rec = Arc::new(flasher::progress::Recorder::default());
        sinks.add(Box::new(rec.clone()));
        handed_out.event(&Event::phase(Phase::Writing));
        assert_eq!(rec.phases(), [Phase::Writing]);
    }

    /// The event stream, attached once the command line is read, still starts
    /// with the events shown before it; later observers get no replay, and
    /// nothing is kept once the stream is attached.
    #[test]
    fn the_stream_gets_the_events_before_it() {
        let sinks = Sinks::default();
        let early = Arc::new(flasher::progress::Recorder::default());
        sinks.add(Box::new(early.clone()));
        sinks.event(&Event::phase(Phase::Starting));
        let stream = Arc::new(flasher::progress::Recorder::default());
        sinks.add_stream(Box::new(stream.clone()));
        sinks.event(&Event::phase(Phase::Searching));
        let leds = Arc::new(flasher::progress::Recorder::default());
        sinks.add(Box::new(leds.clone()));
        sinks.event(&Event::phase(Phase::Writing));
        assert_eq!(
            stream.phases(),
            [Phase::Starting, Phase::Searching, Phase::Writing]
        );
        assert_eq!(leds.phases(), [Phase::Writing]);
        assert!(sinks.take_backlog().is_empty());
    }
}
