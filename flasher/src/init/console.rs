//! What PID 1 shows: readable progress lines on the console, and optionally one
//! JSON object per line (a serialized [`Event`]) to the `flasher.events=` path, a
//! serial tty such as `/dev/ttyS1` or a file. Both are [`Observer`]s of the same
//! event stream (ARCHITECTURE rule 7).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use led::Phase;

use super::Error;
use crate::progress::{Event, Observer};

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
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let new_phase = s.phase != Some(e.phase);
        if new_phase {
            s.phase = Some(e.phase);
            s.step = None;
        }
        let line = if e.phase == Phase::Failure {
            let class = e
                .error_class
                .map(|c| format!(" (error class {c})"))
                .unwrap_or_default();
            Some(format!(
                "flasher: FAILED{class}: {}",
                e.message.as_deref().unwrap_or("unknown error")
            ))
        } else if let Some(m) = &e.message {
            Some(format!("flasher: [{}] {m}", e.phase))
        } else if let (Some(done), Some(total)) = (e.done, e.total) {
            // An empty phase is complete.
            let pct = done.saturating_mul(100).checked_div(total).unwrap_or(100);
            let step = pct / STEP_PERCENT;
            if s.step.is_some_and(|last| step <= last) {
                None
            } else {
                s.step = Some(step);
                let rate = e
                    .rate
                    .map(|r| format!(", {}/s", size(r)))
                    .unwrap_or_default();
                Some(format!(
                    "flasher: [{}] {} of {} ({pct}%){rate}",
                    e.phase,
                    size(done),
                    size(total)
                ))
            }
        } else if new_phase {
            Some(format!("flasher: [{}]", e.phase))
        } else {
            None
        };
        if let Some(line) = line {
            // Nowhere to report a console write error; the LEDs still show the state.
            let _ = writeln!(s.out, "{line}");
            let _ = s.out.flush();
        }
    }
}

/// A byte count for people: `512 B`, `1.5 KiB`, `3.9 GiB`.
pub use crate::progress::iec_size as size;

/// JSON event lines: each event serialized on its own line, flushed at once so a
/// harness reading the serial port sees it immediately.
pub struct JsonLines<W: Write + Send> {
    out: Mutex<W>,
}

impl<W: Write + Send> JsonLines<W> {
    pub fn new(out: W) -> Self {
        JsonLines {
            out: Mutex::new(out),
        }
    }

    pub fn into_inner(self) -> W {
        self.out.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: Write + Send> Observer for JsonLines<W> {
    fn event(&self, e: &Event) {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // Event holds only plain data, so serialization cannot fail; a write error
        // (tty gone) has nowhere to be reported.
        if let Ok(mut line) = serde_json::to_vec(e) {
            line.push(b'\n');
            let _ = out.write_all(&line);
            let _ = out.flush();
        }
    }
}

/// Open the `flasher.events=` path under `root` for appending: a file is created if
/// missing; a tty is switched to raw mode so the kernel adds no `\r` and no echo.
pub fn open_events(root: &Path, path: &Path) -> Result<JsonLines<File>, Error> {
    let full = super::under(root, path);
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .open(&full)
        .map_err(|source| Error::Events {
            path: full.clone(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(msg: &str, class: u8) -> Event {
        Event {
            error_class: Some(class),
            ..Event::phase(Phase::Failure).with_message(msg)
        }
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
        c.event(&failure("verify mismatch at 4096..8192", 5));
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
        assert_eq!(
            *lines.last().unwrap(),
            "flasher: FAILED (error class 5): verify mismatch at 4096..8192"
        );
    }

    #[test]
    fn json_lines_round_trip() {
        let j = JsonLines::new(Vec::new());
        j.event(&Event::progress(Phase::Verifying, 10, 20, 5));
        j.event(&failure("target too small", 3));
        let text = String::from_utf8(j.into_inner()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["phase"], "verifying");
        assert_eq!(lines[0]["done"], 10);
        assert_eq!(lines[1]["phase"], "failure");
        assert_eq!(lines[1]["error_class"], 3);
        assert_eq!(lines[1]["message"], "target too small");
    }

    #[test]
    fn events_file_is_created_under_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("run")).unwrap();
        let j = open_events(root.path(), Path::new("/run/events.jsonl")).unwrap();
        j.event(&Event::phase(Phase::Success));
        drop(j);
        let text = std::fs::read_to_string(root.path().join("run/events.jsonl")).unwrap();
        assert_eq!(text, "{\"phase\":\"success\"}\n");
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
