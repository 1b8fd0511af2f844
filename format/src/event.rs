//! The event stream's one type (docs/architecture.md rule 7): what `/init` writes as JSON
//! lines to `flasher.events=`, what the console, LEDs and host progress bars
//! observe, and what the QEMU harness, the demo and the tests parse back.
//! docs/events.md is the schema for people; this module is the schema for code.
//!
//! Every line is one JSON object with the common fields `v` (schema version),
//! `t_ms` (milliseconds since boot, `CLOCK_BOOTTIME`), `phase` and `kind`, plus the
//! fields of its kind (see [`Body`]).

use crate::{ErrorClass, Phase};
use serde::{Deserialize, Serialize};

/// The schema version written in every line's `v`. Adding a kind or an optional
/// field keeps it; removing or renaming a field, changing a field's meaning or
/// unit, or adding a phase raises it (see docs/events.md, "Versioning").
pub const SCHEMA_VERSION: u32 = 1;

/// Where event timestamps come from: milliseconds since boot. A plain function
/// pointer so tests can pass a fixed clock without threading state around.
pub type Clock = fn() -> u64;

/// Milliseconds since boot, counting time suspended (`CLOCK_BOOTTIME`): on a board
/// this lines up with the kernel's own log timestamps, and it never goes back.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on every
    // Linux since 2.6.39. On the impossible failure `ts` stays zero.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec.max(0) as u64)
        .saturating_mul(1000)
        .saturating_add(ts.tv_nsec.max(0) as u64 / 1_000_000)
}

/// Elsewhere (host builds on other systems): milliseconds since the first call.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub fn boot_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// One event: the common fields and the kind's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The schema version this line was written with ([`SCHEMA_VERSION`]).
    pub v: u32,
    /// When the event happened, in milliseconds since boot (`CLOCK_BOOTTIME`).
    pub t_ms: u64,
    /// The phase the flasher is in (for `led`: the phase whose pattern shows).
    pub phase: Phase,
    /// `kind` and the kind's fields, flattened into the same object.
    #[serde(flatten)]
    pub body: Body,
}

/// What happened; serialized as `"kind"` plus the variant's fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// The flasher entered `phase`; for `success` and `failure`, the result.
    Phase {
        /// What the phase is about, or on failure the error as the console shows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// On failure: the blink-code class (1..=8, docs/leds.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_class: Option<ErrorClass>,
    },
    /// Bytes processed in a byte-counting phase (writing, verifying).
    Progress {
        /// Bytes done in this phase so far.
        done: u64,
        /// Bytes this phase will process in all.
        total: u64,
        /// Bytes per second over the phase so far.
        rate: u64,
    },
    /// A note for people within the current phase (what was found, a warning).
    Message { message: String },
    /// The LEDs started showing a pattern.
    Led {
        /// The pattern's name (`heartbeat`, `running-light`, `blink-code`, ...).
        pattern: String,
        /// The LEDs that show it, as the board names them; empty on a board
        /// with no LEDs (the event line is then the only signal).
        #[serde(default)]
        leds: Vec<String>,
        /// For the failure blink code: how many blinks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_class: Option<ErrorClass>,
    },
    /// The unit record was appended to the card's `flasher-log` partition.
    Record {
        /// The record's sequence number in the log (1 for the first unit).
        seq: u64,
        /// The result the record holds.
        result: RecordResult,
        /// The log partition's device node.
        #[serde(default)]
        log: String,
        /// Where the record starts in the partition, in bytes.
        #[serde(default)]
        offset: u64,
    },
    /// A kind this reader does not know (written by a newer flasher). The common
    /// fields are still valid; the kind's own fields are skipped.
    #[serde(other)]
    Unknown,
}

/// The result a unit record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordResult {
    Ok,
    Error,
}

impl Event {
    /// An event happening now ([`boot_ms`]).
    pub fn new(phase: Phase, body: Body) -> Self {
        Event::at(boot_ms(), phase, body)
    }

    /// An event at an explicit time (tests, replays).
    pub fn at(t_ms: u64, phase: Phase, body: Body) -> Self {
        Event {
            v: SCHEMA_VERSION,
            t_ms,
            phase,
            body,
        }
    }

    /// The flasher entered `phase`.
    pub fn phase(phase: Phase) -> Self {
        Event::new(
            phase,
            Body::Phase {
                message: None,
                error_class: None,
            },
        )
    }

    /// A note for people within `phase`.
    pub fn message(phase: Phase, message: impl Into<String>) -> Self {
        Event::new(
            phase,
            Body::Message {
                message: message.into(),
            },
        )
    }

    /// Byte counts in `phase`.
    pub fn progress(phase: Phase, done: u64, total: u64, rate: u64) -> Self {
        Event::new(phase, Body::Progress { done, total, rate })
    }

    /// The run failed: the error and its blink-code class.
    pub fn failure(class: ErrorClass, message: impl Into<String>) -> Self {
        Event::new(
            Phase::Failure,
            Body::Phase {
                message: Some(message.into()),
                error_class: Some(class),
            },
        )
    }

    /// The LEDs show `pattern` for `phase`.
    pub fn led(
        phase: Phase,
        pattern: impl Into<String>,
        leds: Vec<String>,
        error_class: Option<ErrorClass>,
    ) -> Self {
        Event::new(
            phase,
            Body::Led {
                pattern: pattern.into(),
                leds,
                error_class,
            },
        )
    }

    /// The unit record `seq` was appended at `offset` of `log`.
    pub fn record(
        phase: Phase,
        seq: u64,
        result: RecordResult,
        log: impl Into<String>,
        offset: u64,
    ) -> Self {
        Event::new(
            phase,
            Body::Record {
                seq,
                result,
                log: log.into(),
                offset,
            },
        )
    }

    /// Attach a message to a `phase` or `message` event; other kinds carry none
    /// and are returned unchanged.
    pub fn with_message(mut self, text: impl Into<String>) -> Self {
        match &mut self.body {
            Body::Phase { message, .. } => *message = Some(text.into()),
            Body::Message { message } => *message = text.into(),
            _ => {}
        }
        self
    }

    /// Stamp another time (tests; a writer keeping its lines in order).
    pub fn with_t_ms(mut self, t_ms: u64) -> Self {
        self.t_ms = t_ms;
        self
    }

    /// The `kind` name as written on the line.
    pub fn kind(&self) -> &'static str {
        match self.body {
            Body::Phase { .. } => "phase",
            Body::Progress { .. } => "progress",
            Body::Message { .. } => "message",
            Body::Led { .. } => "led",
            Body::Record { .. } => "record",
            Body::Unknown => "unknown",
        }
    }

    /// The text for people, if this kind carries one.
    pub fn text(&self) -> Option<&str> {
        match &self.body {
            Body::Phase { message, .. } => message.as_deref(),
            Body::Message { message } => Some(message),
            _ => None,
        }
    }

    /// `(done, total, rate)` of a progress event.
    pub fn bytes(&self) -> Option<(u64, u64, u64)> {
        match self.body {
            Body::Progress { done, total, rate } => Some((done, total, rate)),
            _ => None,
        }
    }

    /// The blink-code class of a failure (`phase`) or blink-code (`led`) event.
    pub fn error_class(&self) -> Option<ErrorClass> {
        match self.body {
            Body::Phase { error_class, .. } | Body::Led { error_class, .. } => error_class,
            _ => None,
        }
    }

    /// Whether this event is the flasher's own report of where it is (phase,
    /// progress, message), as opposed to an echo (LEDs) or a side record.
    pub fn is_flasher_state(&self) -> bool {
        matches!(
            self.body,
            Body::Phase { .. } | Body::Progress { .. } | Body::Message { .. }
        )
    }

    /// Whether this is a failure report (`phase` event in the failure phase).
    pub fn is_failure(&self) -> bool {
        self.phase == Phase::Failure && matches!(self.body, Body::Phase { .. })
    }

    /// One JSON line, without the newline.
    pub fn to_line(&self) -> String {
        // Serializing cannot fail: every field is a string, a number, a unit-only
        // enum or a list of strings, and the map keys are static names.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parse one line. Unknown fields are ignored and an unknown kind becomes
    /// [`Body::Unknown`]. A line that does not parse but says it is from a newer
    /// schema fails with [`ParseError::Newer`], so the reader can say "upgrade".
    pub fn parse(line: &str) -> Result<Event, ParseError> {
        match serde_json::from_str::<Event>(line.trim()) {
            Ok(e) => Ok(e),
            Err(source) => {
                #[derive(Deserialize)]
                struct VersionOnly {
                    v: u32,
                }
                match serde_json::from_str::<VersionOnly>(line.trim()) {
                    Ok(VersionOnly { v }) if v > SCHEMA_VERSION => {
                        Err(ParseError::Newer { v, source })
                    }
                    _ => Err(ParseError::Invalid { source }),
                }
            }
        }
    }
}

/// Why a line is not an [`Event`].
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("event line from schema version {v}, newer than this reader's {SCHEMA_VERSION}: {source}; use a newer mkflasher")]
    Newer {
        v: u32,
        #[source]
        source: serde_json::Error,
    },
    #[error("not an event line: {source}")]
    Invalid {
        #[source]
        source: serde_json::Error,
    },
}

impl std::str::FromStr for Event {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Event::parse(s)
    }
}

/// What is wrong with a stream of events as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("event line {line} has schema version {v}, expected {SCHEMA_VERSION}")]
    Version { line: usize, v: u32 },
    #[error("event line {line} goes back in time: t_ms {t_ms} after {previous}")]
    TimeBackwards {
        line: usize,
        t_ms: u64,
        previous: u64,
    },
}

/// Check a run's events in order: every one is from this schema version, and the
/// timestamps never decrease. `line` in the error counts from 1.
pub fn check_stream<'a>(events: impl IntoIterator<Item = &'a Event>) -> Result<(), StreamError> {
    let mut previous: Option<u64> = None;
    for (i, e) in events.into_iter().enumerate() {
        if e.v != SCHEMA_VERSION {
            return Err(StreamError::Version {
                line: i + 1,
                v: e.v,
            });
        }
        if let Some(p) = previous.filter(|&p| e.t_ms < p) {
            return Err(StreamError::TimeBackwards {
                line: i + 1,
                t_ms: e.t_ms,
                previous: p,
            });
        }
        previous = Some(e.t_ms);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Event> {
        vec![
            Event::at(
                10,
                Phase::Starting,
                Body::Phase {
                    message: Some("flasher 0.1.0 starting".into()),
                    error_class: None,
                },
            ),
            Event::phase(Phase::Searching),
            Event::message(Phase::Searching, "block devices: mmcblk0, mmcblk1"),
            // Near u64::MAX: flatten buffers values, and must not squeeze them
            // through an f64 or an i64.
            Event::progress(Phase::Writing, u64::MAX - 1, u64::MAX, (1 << 53) + 1),
            Event::led(
                Phase::Writing,
                "running-light",
                vec!["beaglebone:green:usr0".into()],
                None,
            ),
            Event::led(
                Phase::Failure,
                "blink-code",
                vec![],
                Some(ErrorClass::WriteIo),
            ),
            Event::failure(ErrorClass::VerifyMismatch, "verify mismatch at 4096..8192"),
            Event::record(
                Phase::Failure,
                7,
                RecordResult::Error,
                "/dev/mmcblk0p3",
                4096,
            ),
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for e in samples() {
            let line = e.to_line();
            assert_eq!(Event::parse(&line).unwrap(), e, "{line}");
        }
    }

    #[test]
    fn lines_carry_the_common_fields() {
        for e in samples() {
            let v: serde_json::Value = serde_json::from_str(&e.to_line()).unwrap();
            assert_eq!(v["v"], SCHEMA_VERSION);
            assert_eq!(v["kind"], e.kind());
            assert_eq!(v["phase"], e.phase.as_str());
            assert_eq!(v["t_ms"], e.t_ms);
        }
    }

    #[test]
    fn wire_format_is_stable() {
        let e = Event::at(
            1234,
            Phase::Writing,
            Body::Progress {
                done: 5,
                total: 10,
                rate: 2,
            },
        );
        assert_eq!(
            e.to_line(),
            r#"{"v":1,"t_ms":1234,"phase":"writing","kind":"progress","done":5,"total":10,"rate":2}"#
        );
        let f = Event::failure(ErrorClass::TargetRefused, "too small").with_t_ms(9);
        assert_eq!(
            f.to_line(),
            r#"{"v":1,"t_ms":9,"phase":"failure","kind":"phase","message":"too small","error_class":3}"#
        );
    }

    #[test]
    fn unknown_fields_and_kinds_are_tolerated() {
        let e = Event::parse(
            r#"{"v":1,"t_ms":5,"phase":"writing","kind":"progress","done":1,"total":2,"rate":3,"eta_s":9}"#,
        )
        .unwrap();
        assert_eq!(e.bytes(), Some((1, 2, 3)));
        let e =
            Event::parse(r#"{"v":2,"t_ms":5,"phase":"verifying","kind":"thermal","celsius":71}"#)
                .unwrap();
        assert!(matches!(e.body, Body::Unknown));
        assert_eq!((e.v, e.t_ms, e.phase), (2, 5, Phase::Verifying));
    }

    #[test]
    fn newer_lines_that_do_not_parse_say_so() {
        let newer = r#"{"v":2,"t_ms":5,"phase":"rebooting","kind":"phase"}"#;
        assert!(matches!(
            Event::parse(newer),
            Err(ParseError::Newer { v: 2, .. })
        ));
        let same = r#"{"v":1,"t_ms":5,"phase":"rebooting","kind":"phase"}"#;
        assert!(matches!(
            Event::parse(same),
            Err(ParseError::Invalid { .. })
        ));
        // The old, unversioned lines are not events of this schema.
        assert!(matches!(
            Event::parse(r#"{"phase":"writing","done":1,"total":2}"#),
            Err(ParseError::Invalid { .. })
        ));
        assert!(matches!(
            Event::parse("noise"),
            Err(ParseError::Invalid { .. })
        ));
    }

    #[test]
    fn constructors_stamp_boot_time() {
        let before = boot_ms();
        let e = Event::phase(Phase::Starting);
        assert!(e.t_ms >= before && e.t_ms <= boot_ms());
        assert_eq!(e.v, SCHEMA_VERSION);
    }

    #[test]
    fn stream_check_finds_version_and_time_faults() {
        let at = |t| Event::phase(Phase::Writing).with_t_ms(t);
        assert_eq!(check_stream(&[at(1), at(1), at(5)]), Ok(()));
        assert_eq!(
            check_stream(&[at(1), at(5), at(4)]),
            Err(StreamError::TimeBackwards {
                line: 3,
                t_ms: 4,
                previous: 5
            })
        );
        let mut old = at(9);
        old.v = 0;
        assert_eq!(
            check_stream(&[at(1), old]),
            Err(StreamError::Version { line: 2, v: 0 })
        );
    }

    #[test]
    fn the_documented_examples_parse() {
        let doc = include_str!("../../docs/events.md");
        let examples: Vec<Event> = doc
            .lines()
            .filter(|l| l.starts_with("{\"v\":"))
            .map(|l| Event::parse(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        for kind in ["phase", "progress", "message", "led", "record"] {
            assert!(
                examples.iter().any(|e| e.kind() == kind),
                "docs/events.md has no example of {kind}"
            );
            assert!(
                doc.contains(&format!("### `{kind}`")),
                "{kind} undocumented"
            );
        }
        assert!(examples.iter().all(|e| e.v == SCHEMA_VERSION));
    }

    #[test]
    fn accessors_match_the_kind() {
        let f = Event::failure(ErrorClass::NoStorage, "no eMMC");
        assert!(f.is_failure() && f.is_flasher_state());
        assert_eq!(f.error_class(), Some(ErrorClass::NoStorage));
        assert_eq!(f.text(), Some("no eMMC"));
        let l = Event::led(
            Phase::Failure,
            "blink-code",
            vec![],
            Some(ErrorClass::NoStorage),
        );
        assert!(!l.is_failure() && !l.is_flasher_state());
        let m = Event::message(Phase::Searching, "a").with_message("b");
        assert_eq!(m.text(), Some("b"));
        assert_eq!(m.bytes(), None);
    }
}
