//! The flasher's event stream as the harness reads it: JSON lines from the
//! guest's events port, parsed as `flasher_format::event::Event`, split across
//! partial reads, with the lines that are not events kept to fail the run.

use flasher_format::event::{Body, Event};
use flasher_format::Phase;
use std::sync::Arc;

/// Called with each event as it arrives (live progress).
pub type EventHook = Arc<dyn Fn(&Event) + Send + Sync>;

/// An event line that did not parse as an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// The line as received (trimmed).
    pub line: String,
    /// Why it is not an event.
    pub reason: String,
}

/// A whole saved event stream (`mkflasher qemu --events FILE`), parsed by the
/// same rules as a live run: the events, and the lines that are not events.
pub fn parse_events(bytes: &[u8]) -> (Vec<Event>, Vec<BadLine>) {
    let mut buf = bytes.to_vec();
    buf.push(b'\n');
    let (mut events, mut bad) = (Vec::new(), Vec::new());
    drain_events(&mut buf, &mut events, &mut bad, None);
    (events, bad)
}

/// Parse complete event lines out of `buf`, leaving a trailing partial line.
/// From the first event on, every non-blank line must be an [`Event`]; one that
/// is not goes to `bad` as received, so the run can fail quoting it.
pub(crate) fn drain_events(
    buf: &mut Vec<u8>,
    out: &mut Vec<Event>,
    bad: &mut Vec<BadLine>,
    hook: Option<&EventHook>,
) {
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line: Vec<u8> = buf.drain(..=nl).collect();
        let text = String::from_utf8_lossy(&line);
        // A tty in cooked mode adds \r; a UART may idle as NULs between lines.
        let text = text.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if text.is_empty() {
            continue;
        }
        match Event::parse(text) {
            Ok(e) => {
                if let Some(h) = hook {
                    h(&e);
                }
                out.push(e);
            }
            // Before the flasher's first event the port carries the firmware's
            // own output (OVMF writes to every serial port): not event lines.
            Err(_) if out.is_empty() => {
                tracing::debug!("before the first event: {text}");
            }
            Err(e) => bad.push(BadLine {
                line: text.to_string(),
                reason: e.to_string(),
            }),
        }
    }
}

/// How far the writing phase has got, in percent, by this event.
pub(crate) fn writing_fraction(e: &Event) -> Option<f64> {
    match e.body {
        Body::Progress { done, total, .. } if e.phase == Phase::Writing && total > 0 => {
            Some(100.0 * done as f64 / total as f64)
        }
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn at(t_ms: u64, phase: Phase, body: Body) -> Event {
        Event::at(t_ms, phase, body)
    }

    pub(crate) fn entered(t_ms: u64, phase: Phase) -> Event {
        Event::phase(phase).with_t_ms(t_ms)
    }

    #[test]
    fn events_are_parsed_across_partial_reads() {
        let writing = at(
            1,
            Phase::Writing,
            Body::Progress {
                done: 5,
                total: 10,
                rate: 1,
            },
        )
        .to_line();
        let verifying = entered(2, Phase::Verifying).to_line();
        let (v1, v2) = verifying.split_at(20);
        // Firmware output before the first event (OVMF writes to every serial
        // port) is not an event line; after it, every line must be one.
        let mut buf = format!("BdsDxe: loading Boot0001\r\n{writing}\r\n{v1}").into_bytes();
        let (mut out, mut bad) = (Vec::new(), Vec::new());
        drain_events(&mut buf, &mut out, &mut bad, None);
        assert!(bad.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(writing_fraction(&out[0]), Some(50.0));
        let success = entered(3, Phase::Success).to_line();
        buf.extend_from_slice(format!("{v2}\n\n\0{success}\nnoise\n").as_bytes());
        drain_events(&mut buf, &mut out, &mut bad, None);
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].phase, Phase::Verifying);
        assert!(buf.is_empty());
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, "noise");
    }
}
