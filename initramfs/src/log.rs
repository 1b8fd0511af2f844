//! Library log lines (`tracing` events, e.g. the pipeline's O_DIRECT fallback)
//! on the console, as `LEVEL message key=value`, for the board binary.
//!
//! The host tools (`mkflasher`, `flasher`) use `tracing-subscriber`; `/init`
//! needs none of its span machinery or filters, and this is a few hundred bytes
//! instead of tens of KiB.

use std::fmt::{self, Write as _};
use std::io::Write as _;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Prints events at `max` and more severe to stderr; spans are ignored.
pub struct ConsoleLog {
    max: Level,
}

impl ConsoleLog {
    pub fn new(max: Level) -> Self {
        ConsoleLog { max }
    }

    /// Install as the global subscriber (once; later calls change nothing).
    pub fn install(max: Level) {
        let _ = tracing::subscriber::set_global_default(ConsoleLog::new(max));
    }

    /// The line an event prints as.
    pub fn line(event: &Event<'_>) -> String {
        let mut line = Line(String::new());
        event.record(&mut line);
        format!("{:>5} {}", event.metadata().level(), line.0.trim_start())
    }
}

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Writing to a String cannot fail.
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
    /// An `f64` field, with three decimals by integer arithmetic. The trait's
    /// default (`{:?}`) links core's float formatter into /init for this one
    /// method (18.9 KB with its tables and unwind data, docs/building.md), and
    /// no event in the board binary has a float field.
    fn record_f64(&mut self, field: &Field, value: f64) {
        let milli = (value * 1000.0).round();
        let text = if milli.is_nan() {
            "NaN".to_string()
        } else if milli.abs() >= 1e18 {
            if milli < 0.0 { "-inf" } else { "inf" }.to_string()
        } else {
            let m = milli as i64;
            let sign = if m < 0 { "-" } else { "" };
            let m = m.unsigned_abs();
            format!("{sign}{}.{:03}", m / 1000, m % 1000)
        };
        let _ = if field.name() == "message" {
            write!(self.0, " {text}")
        } else {
            write!(self.0, " {}={text}", field.name())
        };
    }
}

impl Subscriber for ConsoleLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // Levels order from TRACE (largest) to ERROR (smallest).
        *metadata.level() <= self.max
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        // One write per line, so lines from threads do not interleave.
        let line = ConsoleLog::line(event) + "\n";
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Captures lines instead of printing them.
    struct Capture(Arc<Mutex<Vec<String>>>, ConsoleLog);
    impl Subscriber for Capture {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            self.1.enabled(m)
        }
        fn new_span(&self, a: &Attributes<'_>) -> Id {
            self.1.new_span(a)
        }
        fn record(&self, _: &Id, _: &Record<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, e: &Event<'_>) {
            self.0.lock().unwrap().push(ConsoleLog::line(e));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn info_and_above_with_fields() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sub = Capture(lines.clone(), ConsoleLog::new(Level::INFO));
        tracing::subscriber::with_default(sub, || {
            tracing::warn!(
                path = "/dev/mmcblk1",
                "O_DIRECT refused; using the page cache"
            );
            tracing::info!("plain {}", 3);
            tracing::debug!("not shown");
            tracing::info!(rate = 1.25, low = -2.0004, "floats");
        });
        assert_eq!(
            *lines.lock().unwrap(),
            [
                " WARN O_DIRECT refused; using the page cache path=\"/dev/mmcblk1\"",
                " INFO plain 3",
                " INFO floats rate=1.250 low=-2.000",
            ]
        );
    }
}
