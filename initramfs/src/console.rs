//! What PID 1 shows: readable progress lines on the console, and optionally one
//! JSON object per line (a serialized [`Event`]) to the `flasher.events=` path, a
//! serial tty such as `/dev/ttyS1` or a file. Both are [`Observer`]s of the same
//! event stream (docs/architecture.md rule 7), which
//! [`Sinks`](crate::sinks::Sinks) fans out to them.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use flasher_format::Phase;

use super::Error;
use flasher::progress::{open_events_at, Body, Event, JsonLines, Observer, RecordResult};

/// Readable lines: every phase change and message, and progress in 5 % steps
/// (a 115200-baud console cannot take a line per chunk).
pub struct Console<W: Write + Send> {
    inner: Mutex<ConsoleState<W>>,
}

struct ConsoleState<W> {
    out: W,
    phase: Option<Phase>,
    /// The last progress step printed in this phase, in 5 % units.
    step: Option<u64>,
}

/// Progress is printed each time it crosses a multiple of this many percent.
const STEP_PERCENT: u64 = 5;

impl<W: Write + Send> Console<W> {
    pub fn new(out: W) -> Self {
        Console {
            inner: Mutex::new(ConsoleState {
                out,
                phase: None,
                step: None,
            }),
        }
    }

    /// The writer back (tests read what was printed).
    pub fn into_inner(self) -> W {
        self.inner
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .out
    }
}

impl<W: Write + Send> Observer for Console<W> {
    fn event(&self, e: &Event) {
        // The LEDs' echo is for machines and boards without LEDs; people at the
        // console already read the phase it follows.
        if !e.is_flasher_state() && !matches!(e.body, Body::Record { .. }) {
            return;
        }
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let new_phase = s.phase != Some(e.phase);
        if new_phase {
            s.phase = Some(e.phase);
            s.step = None;
        }
        let line = match &e.body {
            Body::Record {
                seq,
                result,
                log,
                offset,
            } => Some(format!(
                "flasher: [{}] unit record {seq} ({}) appended to {log} at byte {offset}",
                e.phase,
                match result {
                    RecordResult::Ok => "ok",
                    RecordResult::Error => "error",
                }
            )),
            _ if e.phase == Phase::Failure => {
                let class = e
                    .error_class()
                    .map(|c| format!(" (error class {})", c.blinks()))
                    .unwrap_or_default();
                Some(format!(
                    "flasher: FAILED{class}: {}",
                    e.text().unwrap_or("unknown error")
                ))
            }
            _ if e.text().is_some() => {
                Some(format!("flasher: [{}] {}", e.phase, e.text().unwrap_or("")))
            }
            Body::Progress { done, total, rate } => {
                let (done, total) = (*done, *total);
                // An empty phase is complete.
                let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
                let step = pct / STEP_PERCENT;
                if s.step.is_some_and(|last| step <= last) {
                    None
                } else {
                    s.step = Some(step);
                    Some(format!(
                        "flasher: [{}] {} of {} ({pct}%), {}/s",
                        e.phase,
                        size(done),
                        size(total),
                        size(*rate)
                    ))
                }
            }
            _ if new_phase => Some(format!("flasher: [{}]", e.phase)),
            _ => None,
        };
        if let Some(line) = line {
            // Nowhere to report a console write error; the LEDs still show the state.
            let _ = writeln!(s.out, "{line}");
            let _ = s.out.flush();
        }
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.9 GiB`.
use flasher_format::units::iec as size;

/// Open the `flasher.events=` path under `root` for appending: a file is created if
/// missing; a tty is switched to raw mode so the kernel adds no `\r` and no echo.
pub fn open_events(root: &Path, path: &Path) -> Result<JsonLines<File>, Error> {
    let full = super::under(root, path);
    open_events_at(&full).map_err(|source| Error::Events { path: full, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    use flasher_format::ErrorClass;

    fn failure(msg: &str, class: ErrorClass) -> Event {
        Event::failure(class, msg)
    }

    #[test]
    fn readable_lines_with_throttled_progress() {
        let c = Console::new(Vec::new());
        c.event(&Event::phase(Phase::Starting).with_message("flasher 0.1.0"));
        c.event(&Event::phase(Phase::Searching));
        let total = 100 * 1024 * 1024;
        for i in 0..=100u64 {
            c.event(&Event::progress(
                Phase::Writing,
                total * i / 100,
                total,
                2 << 20,
            ));
        }
        c.event(&Event::led(Phase::Failure, "blink-code", vec![], None));
        c.event(&Event::record(
            Phase::Failure,
            3,
            RecordResult::Error,
            "/dev/mmcblk0p3",
            512,
        ));
        c.event(&failure(
            "verify mismatch at 4096..8192",
            ErrorClass::VerifyMismatch,
        ));
        let text = String::from_utf8(c.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "flasher: [starting] flasher 0.1.0");
        assert_eq!(lines[1], "flasher: [searching]");
        assert_eq!(
            lines[2],
            "flasher: [writing] 0 B of 100.0 MiB (0%), 2.0 MiB/s"
        );
        assert_eq!(
            lines[3],
            "flasher: [writing] 5.0 MiB of 100.0 MiB (5%), 2.0 MiB/s"
        );
        // 0 %, 5 %, ... 100 %: 21 progress lines, not 101.
        assert_eq!(lines.iter().filter(|l| l.contains("[writing]")).count(), 21);
        // The LED echo is not shown; the record is.
        assert_eq!(
            lines[lines.len() - 2],
            "flasher: [failure] unit record 3 (error) appended to /dev/mmcblk0p3 at byte 512"
        );
        assert_eq!(
            *lines.last().unwrap(),
            "flasher: FAILED (error class 5): verify mismatch at 4096..8192"
        );
    }

    #[test]
    fn json_lines_round_trip_in_time_order() {
        let j = JsonLines::new(Vec::new());
        let sent = [
            Event::progress(Phase::Verifying, 10, 20, 5).with_t_ms(100),
            failure("target too small", ErrorClass::TargetRefused).with_t_ms(120),
            // Stamped on another thread just before the previous line went out.
            Event::led(Phase::Failure, "blink-code", vec![], None).with_t_ms(119),
        ];
        for e in &sent {
            j.event(e);
        }
        let text = String::from_utf8(j.into_inner()).unwrap();
        let got: Vec<Event> = text.lines().map(|l| Event::parse(l).unwrap()).collect();
        assert_eq!(got[..2], sent[..2]);
        assert_eq!(got[2], sent[2].clone().with_t_ms(120));
        assert_eq!(flasher_format::event::check_stream(&got), Ok(()));
    }

    #[test]
    fn events_file_is_created_under_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("run")).unwrap();
        let j = open_events(root.path(), Path::new("/run/events.jsonl")).unwrap();
        j.event(&Event::phase(Phase::Success).with_t_ms(7));
        drop(j);
        let text = std::fs::read_to_string(root.path().join("run/events.jsonl")).unwrap();
        assert_eq!(
            text,
            "{\"v\":1,\"t_ms\":7,\"phase\":\"success\",\"kind\":\"phase\"}\n"
        );
        assert!(matches!(
            open_events(root.path(), Path::new("/nodir/x")),
            Err(Error::Events { .. })
        ));
    }

    #[test]
    fn sizes() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(4_187_593_113), "3.9 GiB");
    }
}
