//! The panic hook for PID 1. A panic anywhere (any thread) shows the failure, with
//! error class 8 (internal error), on the console, the event stream and the LEDs.
//! It never exits: [`crate::main`] catches the unwind and parks, so the kernel never
//! sees PID 1 die (which would be a kernel panic and a dark, silent board).

use std::any::Any;
use std::panic::Location;
use std::sync::Arc;

use flasher::progress::{Event, Observer};

/// The blink-code class of a panic.
pub const PANIC_CLASS: flasher_format::ErrorClass = flasher_format::ErrorClass::Internal;

/// The text of a panic payload (`panic!("...")` gives `&str` or `String`).
pub fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_string()
    }
}

/// The failure event for a panic.
pub fn event(payload: &(dyn Any + Send), location: Option<&Location<'_>>) -> Event {
    let at = location
        .map(|l| format!(" at {}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current()
        .name()
        .map(|n| format!(" in thread {n}"))
        .unwrap_or_default();
    Event::failure(
        PANIC_CLASS,
        format!(
            "internal error: {}{at}{thread}; this is a flasher bug, please report it",
            message(payload)
        ),
    )
}

/// Replace the panic hook with one that sends the failure event to `observer`
/// (console, events, LEDs) and to stderr.
pub fn install(observer: Arc<dyn Observer>) {
    std::panic::set_hook(Box::new(move |info| {
        let e = event(info.payload(), info.location());
        eprintln!("flasher: PANIC: {}", e.text().unwrap_or_default());
        observer.event(&e);
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use flasher::progress::Recorder;
    use flasher_format::Phase;

    #[test]
    fn payload_text() {
        assert_eq!(message(&"boom"), "boom");
        assert_eq!(message(&String::from("bang")), "bang");
        assert_eq!(message(&42u32), "panic with a non-text payload");
    }

    #[test]
    fn hook_reports_class_8_and_unwind_is_caught() {
        let rec = Arc::new(Recorder::default());
        install(rec.clone());
        let r = std::panic::catch_unwind(|| panic!("index out of range"));
        // Restore the default hook for the other tests in this process.
        let _ = std::panic::take_hook();
        assert!(r.is_err());
        let ev = rec
            .events()
            .into_iter()
            .find(|e| e.text().is_some_and(|m| m.contains("index out of range")))
            .expect("the hook sent a failure event");
        assert_eq!(ev.phase, Phase::Failure);
        assert_eq!(ev.error_class(), Some(flasher_format::ErrorClass::Internal));
        assert!(ev.text().unwrap().contains("panic.rs"));
    }
}
