//! Machine-readable results of `mkflasher qemu` for CI systems and test
//! farms: the run as one JSON object (`--json`, [`Report`], with serde) and
//! as JUnit XML (`--junit`, [`Report::junit`]). docs/qemu.md "Results for CI"
//! describes both.
//!
//! The verdict and the phases come from the harness's outcome
//! ([`flasher_qemu::QemuOutcome::verdict`], `phase_times`); the unit record is
//! read back from the card's log after the run with the same code as
//! `mkflasher records` ([`crate::records::read_card`]): the harness keeps
//! what the board writes to the card (`flasher_qemu::CardWrites`).

use std::path::{Path, PathBuf};

use flasher_format::ErrorClass;
use flasher_qemu::{CardWriteBack, PhaseTime, QemuOptions, QemuOutcome, Verdict};
use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
use serde::{Deserialize, Serialize};

use crate::records::{self, Entry};

/// The report's format version: raised when a field is removed or changes
/// meaning; adding a field keeps it.
pub const REPORT_VERSION: u32 = 1;

/// One `mkflasher qemu` run, as `--json` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// [`REPORT_VERSION`].
    pub version: u32,
    /// The virtual board (`qemu-x86_64-sd`, ...).
    pub board: String,
    pub card: PathBuf,
    /// Absent for a run without an internal disk (`--no-target`).
    pub target: Option<PathBuf>,
    pub verdict: Verdict,
    /// Why the run did not succeed, as the command's error says it; absent
    /// on success.
    pub message: Option<String>,
    /// The flasher's blink-code class when it reported a failure.
    pub error_class: Option<ClassReport>,
    /// Wall-clock seconds of the VM run (firmware and kernel boot included).
    pub elapsed_s: f64,
    /// From `/init` starting to its first write, by the guest's clock.
    pub init_to_first_write_s: Option<f64>,
    /// The flasher's phases in order, by the guest's clock.
    pub phases: Vec<PhaseTime>,
    /// The guest powered itself off (the flasher's end of a run).
    pub powered_off: bool,
    /// Where the board's writes to the card went; absent when the VM did not run.
    pub card_writes: Option<CardWriteBack>,
    /// The last record the board appended to the card's unit log in this run
    /// (the run's result, or its attempt-started record when it was cut
    /// short), as `mkflasher records --json` shows it; absent when the board
    /// appended none or the card's writes were discarded.
    pub unit_record: Option<Entry>,
    /// The guest console and QEMU's messages, when kept (`--console-log`).
    pub console_log: Option<PathBuf>,
    /// The flasher's JSON event lines, when kept (`--events`).
    pub events: Option<PathBuf>,
}

/// A blink-code class and what it means (docs/leds.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassReport {
    /// The class number, which is the number of blinks (1..=8).
    pub class: ErrorClass,
    pub meaning: String,
}

impl ClassReport {
    fn of(class: ErrorClass) -> Self {
        ClassReport {
            class,
            meaning: class.describe().to_string(),
        }
    }
}

impl Report {
    /// The report of a run that happened. `unit_record`: see
    /// [`appended_record`]; `console_log`: where the console was saved.
    pub fn from_outcome(
        opts: &QemuOptions,
        outcome: &QemuOutcome,
        unit_record: Option<Entry>,
        console_log: Option<&Path>,
    ) -> Self {
        let check = outcome.check(opts.timeout, flasher_qemu::fault::power_cut(&opts.faults));
        Report {
            verdict: outcome.verdict(),
            message: check.err().map(|e| e.to_string()),
            error_class: outcome.failure_class().map(ClassReport::of),
            elapsed_s: outcome.elapsed.as_secs_f64(),
            init_to_first_write_s: outcome.init_to_first_write().map(|d| d.as_secs_f64()),
            phases: outcome.phase_times(),
            powered_off: outcome.powered_off,
            card_writes: Some(outcome.card_writes.clone()),
            unit_record,
            console_log: console_log.map(Path::to_path_buf),
            ..Report::empty(opts, Verdict::Success)
        }
    }

    /// The report of a run the harness could not make: `message` says why.
    pub fn from_error(opts: &QemuOptions, message: String) -> Self {
        Report {
            message: Some(message),
            ..Report::empty(opts, Verdict::Error)
        }
    }

    fn empty(opts: &QemuOptions, verdict: Verdict) -> Self {
        Report {
            version: REPORT_VERSION,
            board: opts.board.name().to_string(),
            card: opts.card.clone(),
            target: opts.target.clone(),
            verdict,
            message: None,
            error_class: None,
            elapsed_s: 0.0,
            init_to_first_write_s: None,
            phases: Vec::new(),
            powered_off: false,
            card_writes: None,
            unit_record: None,
            console_log: None,
            events: opts.events.clone(),
        }
    }

    /// The report as pretty-printed JSON, with a final newline. Fails only
    /// on a path that is not UTF-8 (JSON strings cannot hold it).
    pub fn to_json(&self) -> std::io::Result<String> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        Ok(text)
    }

    /// The report as JUnit XML: one `testsuite` holding one `testcase` for
    /// the run; a run that did not succeed has a `failure` (an `error` when
    /// the harness could not run the VM) whose `type` names the verdict and
    /// the blink-code class and whose `message` is the reason; `system-out`
    /// names the console log and events files. [`junit_suite`] writes it.
    pub fn junit(&self) -> std::io::Result<String> {
        let properties = [
            ("board", Some(self.board.clone())),
            ("card", Some(path_text(&self.card))),
            ("target", self.target.as_deref().map(path_text)),
            ("verdict", Some(self.verdict.to_string())),
        ];
        let properties: Vec<(&str, String)> = properties
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        let case = TestCase {
            name: self.case_name(),
            classname: self.classname(),
            time_s: self.elapsed_s,
            problem: self.problem(),
            system_out: self.system_out(),
        };
        junit_suite("mkflasher qemu", self.elapsed_s, &properties, &[case])
    }

    /// The JUnit test case's name: `flash CARD onto TARGET`.
    pub fn case_name(&self) -> String {
        format!(
            "flash {} onto {}",
            file_name(&self.card),
            self.target
                .as_deref()
                .map_or_else(|| "no internal disk".to_string(), file_name)
        )
    }

    /// The JUnit test case's class name: `mkflasher.qemu.BOARD`.
    pub fn classname(&self) -> String {
        format!("mkflasher.qemu.{}", self.board)
    }

    /// The verdict with the blink-code class, when there is one:
    /// `refused: class 2 (payload invalid)`.
    pub fn kind(&self) -> String {
        match &self.error_class {
            Some(c) => format!("{}: {}", self.verdict, c.class),
            None => self.verdict.to_string(),
        }
    }

    /// The failure (an error for the `error` verdict) of a run that did not
    /// succeed; None on success.
    pub fn problem(&self) -> Option<Problem> {
        if self.verdict == Verdict::Success {
            return None;
        }
        let kind = self.kind();
        let message = self.message.clone().unwrap_or_else(|| kind.clone());
        Some(Problem {
            errored: self.verdict == Verdict::Error,
            text: self.details(&message),
            kind,
            message,
        })
    }

    /// The test case's `system-out`: where the console log and the events are.
    pub fn system_out(&self) -> String {
        let mut out = Vec::new();
        for (what, path) in [("console log", &self.console_log), ("events", &self.events)] {
            if let Some(p) = path {
                out.push(format!("{what}: {}", path_text(p)));
            }
        }
        out.join("\n")
    }

    /// The phases in order as text, for messages: `writing → verifying → success`.
    pub fn phase_names(&self) -> String {
        let names: Vec<&str> = self.phases.iter().map(|p| p.phase.as_str()).collect();
        names.join(" → ")
    }

    /// The failure element's text: what happened, for a person reading CI.
    pub fn details(&self, message: &str) -> String {
        let mut lines = vec![format!("verdict: {}", self.verdict), message.to_string()];
        if let Some(c) = &self.error_class {
            lines.push(format!(
                "blink code: {} blinks, {}",
                c.class.blinks(),
                c.meaning
            ));
        }
        if !self.phases.is_empty() {
            let phases: Vec<String> = self
                .phases
                .iter()
                .map(|p| format!("{} {} ms", p.phase, p.duration_ms))
                .collect();
            lines.push(format!("phases: {}", phases.join(", ")));
        }
        lines.join("\n")
    }
}

/// One JUnit `testcase`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    pub name: String,
    pub classname: String,
    pub time_s: f64,
    /// Why it did not pass; None when it passed.
    pub problem: Option<Problem>,
    /// The `system-out` text (the files to look at).
    pub system_out: String,
}

/// A test case's `failure` or `error` element.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// An `error` (the harness could not run the VM) rather than a `failure`.
    pub errored: bool,
    /// The element's `type`.
    pub kind: String,
    /// The element's `message`.
    pub message: String,
    /// The element's text, for a person reading CI.
    pub text: String,
}

/// A JUnit XML document: one `testsuite` named `name` with `properties` and
/// `cases`. The attributes are those the common JUnit schema (Jenkins'
/// junit-10.xsd, as CI systems read it) requires: `testsuite` `name`,
/// `tests`, `failures`, `errors`, `time`; `testcase` `name`, `classname`,
/// `time`.
///
/// Written with quick-xml (already in the tree for bmap files, and
/// maintained): it escapes `&`, `<`, `>` and quotes in text and attributes.
/// What escaping cannot express, the control characters XML 1.0 forbids (a
/// console's escape sequences in a message), is replaced by [`xml_safe`]
/// first.
pub fn junit_suite(
    name: &str,
    time_s: f64,
    properties: &[(&str, String)],
    cases: &[TestCase],
) -> std::io::Result<String> {
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    let count = |errored: bool| {
        cases
            .iter()
            .filter(|c| c.problem.as_ref().is_some_and(|p| p.errored == errored))
            .count()
            .to_string()
    };
    let (tests, failures, errors) = (cases.len().to_string(), count(false), count(true));
    let time = format!("{time_s:.3}");
    w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    w.write_event(Event::Start(BytesStart::new("testsuite").with_attributes(
        [
            ("name", xml_safe(name).as_str()),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", errors.as_str()),
            ("skipped", "0"),
            ("time", time.as_str()),
        ],
    )))?;
    w.write_event(Event::Start(BytesStart::new("properties")))?;
    for (name, value) in properties {
        w.write_event(Event::Empty(BytesStart::new("property").with_attributes([
            ("name", *name),
            ("value", xml_safe(value).as_str()),
        ])))?;
    }
    w.write_event(Event::End(BytesEnd::new("properties")))?;
    for case in cases {
        let time = format!("{:.3}", case.time_s);
        w.write_event(Event::Start(BytesStart::new("testcase").with_attributes([
            ("name", xml_safe(&case.name).as_str()),
            ("classname", xml_safe(&case.classname).as_str()),
            ("time", time.as_str()),
        ])))?;
        if let Some(p) = &case.problem {
            let element = if p.errored { "error" } else { "failure" };
            w.write_event(Event::Start(BytesStart::new(element).with_attributes([
                ("message", xml_safe(&p.message).as_str()),
                ("type", xml_safe(&p.kind).as_str()),
            ])))?;
            w.write_event(Event::Text(BytesText::new(&xml_safe(&p.text))))?;
            w.write_event(Event::End(BytesEnd::new(element)))?;
        }
        w.write_event(Event::Start(BytesStart::new("system-out")))?;
        w.write_event(Event::Text(BytesText::new(&xml_safe(&case.system_out))))?;
        w.write_event(Event::End(BytesEnd::new("system-out")))?;
        w.write_event(Event::End(BytesEnd::new("testcase")))?;
    }
    w.write_event(Event::End(BytesEnd::new("testsuite")))?;
    let mut xml = String::from_utf8(w.into_inner())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    xml.push('\n');
    Ok(xml)
}

fn path_text(p: &Path) -> String {
    p.display().to_string()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(|| path_text(p), |n| n.to_string_lossy().into_owned())
}

/// `text` with every character XML 1.0 cannot carry even escaped (control
/// characters other than tab, newline and carriage return; U+FFFE, U+FFFF)
/// replaced by U+FFFD.
pub fn xml_safe(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// How many records the card's log holds now (before a run), or None when
/// it cannot be read (no log partition, not a card: the run will say so).
pub fn records_on(card: &Path) -> Option<usize> {
    match records::read_card(card) {
        Ok(entries) => Some(entries.len()),
        Err(e) => {
            tracing::debug!("no unit record will be reported: {e}");
            None
        }
    }
}

/// The last record appended to `card`'s log after the first `before`.
pub fn appended_record(card: &Path, before: usize) -> Option<Entry> {
    match records::read_card(card) {
        Ok(mut entries) if entries.len() > before => entries.pop(),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("reading the unit record of this run back from the card: {e}");
            None
        }
    }
}

/// One run of the harness and its report, as `mkflasher qemu` and each
/// scenario of `mkflasher qemu-matrix` make it: boots `opts`, saves the
/// console to `console_log`, and, with `with_record` (and the card's writes
/// kept), reads the run's unit record back from the card. The report is made
/// whatever happened (the `error` verdict when the VM could not run); the
/// result is Ok only when the run succeeded ([`QemuOutcome::check`]), else
/// the error the command reports.
pub fn run_reported(
    opts: &QemuOptions,
    console_log: Option<&Path>,
    with_record: bool,
) -> (Report, crate::Result<()>) {
    use flasher_format::io::IoContext;
    // How many records the card holds before the run: the one after them is
    // this run's.
    let before = (with_record && opts.card_writes == flasher_qemu::CardWrites::Persist)
        .then(|| records_on(&opts.card))
        .flatten();
    let outcome = match flasher_qemu::run(opts) {
        Ok(o) => o,
        Err(e) => {
            let report = Report::from_error(opts, flasher::error::report(&e));
            return (report, Err(e.into()));
        }
    };
    let saved = match console_log {
        Some(path) => std::fs::write(path, &outcome.console_log)
            .with_context(|| format!("saving the console log to {}", path.display()))
            .map(|()| Some(path)),
        None => Ok(None),
    };
    let record = before.and_then(|n| appended_record(&opts.card, n));
    let report = Report::from_outcome(
        opts,
        &outcome,
        record,
        saved.as_ref().ok().copied().flatten(),
    );
    let result = saved.map_err(crate::Error::from).and_then(|_| {
        outcome
            .check(opts.timeout, flasher_qemu::fault::power_cut(&opts.faults))
            .map_err(crate::Error::from)
    });
    (report, result)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flasher_format::event::{Body, Event as FlasherEvent};
    use flasher_format::record::{Outcome, TargetIdentity, UnitRecord};
    use flasher_format::Phase;
    use flasher_qemu::VirtualBoard;
    use quick_xml::events::Event as Xml;
    use std::time::Duration;

    fn entered(t: u64, phase: Phase) -> FlasherEvent {
        FlasherEvent::phase(phase).with_t_ms(t)
    }

    fn outcome(events: Vec<FlasherEvent>) -> QemuOutcome {
        QemuOutcome {
            events,
            powered_off: true,
            elapsed: Duration::from_millis(41_250),
            card_used: PathBuf::from("/cards/card.img"),
            card_writes: CardWriteBack {
                copied_back: vec![(1 << 20, 1024)],
                ..CardWriteBack::default()
            },
            ..QemuOutcome::default()
        }
    }

    fn opts() -> QemuOptions {
        let mut o = QemuOptions::new(
            VirtualBoard::Sd,
            "/cards/card.img",
            Some(PathBuf::from("/t/unit<1>.img")),
        );
        o.events = Some(PathBuf::from("/t/events.jsonl"));
        o
    }

    fn success() -> QemuOutcome {
        outcome(vec![
            entered(3000, Phase::Starting),
            entered(3400, Phase::Searching),
            entered(3900, Phase::Writing),
            entered(9000, Phase::Verifying),
            entered(12000, Phase::Finishing),
            entered(12500, Phase::Success),
        ])
    }

    /// The pool's third unit: refused before writing, class 2.
    fn refused() -> QemuOutcome {
        let mut o = outcome(vec![
            entered(3000, Phase::Starting),
            entered(3400, Phase::Searching),
            FlasherEvent::failure(
                ErrorClass::PayloadInvalid,
                "the card's unit pool is used up: all 2 rows are claimed & \"done\" <x>\u{1b}[0m",
            )
            .with_t_ms(3800),
        ]);
        o.events.push(FlasherEvent::at(
            3810,
            Phase::Failure,
            Body::Message {
                message: "powering off".into(),
            },
        ));
        o
    }

    fn record() -> Entry {
        Entry {
            card: records::CardRef {
                path: "/cards/card.img".into(),
                id: "gpt:00000000-0000-4000-8000-000000000000".into(),
            },
            offset: 512,
            log_digest: "ab".repeat(32),
            time: None,
            record: UnitRecord {
                seq: 2,
                timestamp_unix_s: None,
                flasher_version: "0.1.0".into(),
                board: "qemu-x86_64-sd".into(),
                target: TargetIdentity::default(),
                image_digest: "cd".repeat(32),
                signer: String::new(),
                bytes_written: 1 << 20,
                phases: Vec::new(),
                result: Outcome::Ok,
                attempt_started: false,
                unit_row: None,
                health: None,
            },
        }
    }

    #[test]
    fn the_json_parses_back_with_verdict_phases_and_record() {
        let ok = Report::from_outcome(
            &opts(),
            &success(),
            Some(record()),
            Some(Path::new("/t/c.log")),
        );
        let back: Report = serde_json::from_str(&ok.to_json().unwrap()).unwrap();
        assert_eq!(back, ok);
        assert_eq!(back.verdict, Verdict::Success);
        assert_eq!(back.message, None);
        let phases: Vec<(Phase, u64)> = back
            .phases
            .iter()
            .map(|p| (p.phase, p.duration_ms))
            .collect();
        assert_eq!(
            phases,
            [
                (Phase::Starting, 400),
                (Phase::Searching, 500),
                (Phase::Writing, 5100),
                (Phase::Verifying, 3000),
                (Phase::Finishing, 500),
                (Phase::Success, 0),
            ]
        );
        assert_eq!(back.init_to_first_write_s, Some(0.9));
        assert_eq!(back.unit_record.as_ref().map(|r| r.record.seq), Some(2));
        assert_eq!(
            back.card_writes.as_ref().map(|w| w.bytes_copied_back()),
            Some(1024)
        );

        let no = Report::from_outcome(&opts(), &refused(), None, None);
        let text = no.to_json().unwrap();
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verdict, Verdict::Refused);
        let class = back.error_class.unwrap();
        assert_eq!(
            (class.class, class.meaning.as_str()),
            (ErrorClass::PayloadInvalid, "payload invalid")
        );
        assert!(back.message.unwrap().contains("used up"));
        // Field names and values a CI script matches on, as text.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["verdict"], "refused");
        assert_eq!(v["error_class"]["class"], 2);
        assert_eq!(v["phases"][1]["phase"], "searching");
        assert_eq!(v["events"], "/t/events.jsonl");
        assert!(v["console_log"].is_null());

        let err = Report::from_error(&opts(), "card /cards/card.img cannot be opened".into());
        let back: Report = serde_json::from_str(&err.to_json().unwrap()).unwrap();
        assert_eq!(back.verdict, Verdict::Error);
        assert!(back.card_writes.is_none() && back.phases.is_empty());
    }

    /// One element as read: its name, attributes and text.
    pub(crate) type Element = (String, Vec<(String, String)>, String);

    /// quick-xml's reader: the element tree and the attributes CI reads.
    pub(crate) fn elements(xml: &str) -> Vec<Element> {
        let mut r = quick_xml::Reader::from_str(xml);
        // The writer's indentation is not content.
        r.config_mut().trim_text(true);
        let mut out: Vec<Element> = Vec::new();
        loop {
            match r.read_event().unwrap() {
                Xml::Start(e) | Xml::Empty(e) => {
                    let attrs = e
                        .attributes()
                        .map(|a| {
                            let a = a.unwrap();
                            (
                                String::from_utf8(a.key.as_ref().to_vec()).unwrap(),
                                a.unescape_value().unwrap().into_owned(),
                            )
                        })
                        .collect();
                    out.push((
                        String::from_utf8(e.name().as_ref().to_vec()).unwrap(),
                        attrs,
                        String::new(),
                    ));
                }
                Xml::Text(t) => {
                    if let Some(last) = out.last_mut() {
                        last.2.push_str(&t.unescape().unwrap());
                    }
                }
                Xml::Eof => return out,
                _ => {}
            }
        }
    }

    /// The elements' names, in order, separated by spaces.
    pub(crate) fn tags(els: &[Element]) -> String {
        let names: Vec<&str> = els.iter().map(|e| e.0.as_str()).collect();
        names.join(" ")
    }

    pub(crate) fn attr<'a>(e: &'a Element, name: &str) -> &'a str {
        e.1.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no {name}: {:?}", e.0, e.1))
    }

    #[test]
    fn junit_has_one_suite_one_case_and_the_failure_with_its_class() {
        let xml = Report::from_outcome(&opts(), &refused(), None, Some(Path::new("/t/c&d.log")))
            .junit()
            .unwrap();
        let els = elements(&xml);
        assert_eq!(
            tags(&els),
            "testsuite properties property property property property testcase failure system-out",
            "{xml}"
        );
        let suite = &els[0];
        assert_eq!(
            ["tests", "failures", "errors"].map(|a| attr(suite, a)),
            ["1", "1", "0"]
        );
        assert_eq!(attr(suite, "time"), "41.250");
        let case = &els[6];
        assert_eq!(attr(case, "name"), "flash card.img onto unit<1>.img");
        assert_eq!(attr(case, "classname"), "mkflasher.qemu.qemu-x86_64-sd");
        let failure = &els[7];
        assert_eq!(attr(failure, "type"), "refused: class 2 (payload invalid)");
        let message = attr(failure, "message");
        assert!(
            message.contains("used up: all 2 rows are claimed & \"done\" <x>\u{fffd}[0m"),
            "{message}"
        );
        assert!(
            failure.2.contains("blink code: 2 blinks, payload invalid"),
            "{}",
            failure.2
        );
        assert!(
            failure
                .2
                .contains("phases: starting 400 ms, searching 400 ms, failure 10 ms"),
            "{}",
            failure.2
        );
        assert_eq!(els[8].2, "console log: /t/c&d.log\nevents: /t/events.jsonl");

        let ok = Report::from_outcome(&opts(), &success(), None, None)
            .junit()
            .unwrap();
        let els = elements(&ok);
        assert!(
            els.iter().all(|e| e.0 != "failure" && e.0 != "error"),
            "{ok}"
        );
        assert_eq!(attr(&els[0], "failures"), "0");

        let err = Report::from_error(&opts(), "QEMU missing".into())
            .junit()
            .unwrap();
        let els = elements(&err);
        assert_eq!(["failures", "errors"].map(|a| attr(&els[0], a)), ["0", "1"]);
        let e = els
            .iter()
            .find(|e| e.0 == "error")
            .expect("an error element");
        assert_eq!(
            (attr(e, "type"), attr(e, "message")),
            ("error", "QEMU missing")
        );
    }

    /// What the JUnit schema (Jenkins' junit-10.xsd) requires of a suite
    /// and its cases, checked by Python's ElementTree; prints the counts of
    /// failures, errors and tests, and the first case's name.
    const CHECK: &str = r#"
import sys, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.buffer.read())
assert root.tag == "testsuite", root.tag
for a in ("name", "tests", "failures", "errors", "time"):
    assert a in root.attrib, "testsuite lacks " + a
cases = root.findall("testcase")
assert len(cases) == int(root.get("tests")) >= 1, len(cases)
failed = len(root.findall("testcase/failure"))
errored = len(root.findall("testcase/error"))
assert (failed, errored) == (int(root.get("failures")), int(root.get("errors"))), (failed, errored)
for c in cases:
    for a in ("name", "classname", "time"):
        assert a in c.attrib, "testcase lacks " + a
    float(c.get("time"))
    for f in c.findall("failure") + c.findall("error"):
        assert f.get("message") and f.get("type"), f.attrib
    assert c.find("system-out") is not None
print(root.get("failures"), root.get("errors"), root.get("tests"), cases[0].get("name"))
"#;

    /// An independent parser: `xml` through [`CHECK`]; what it printed, or
    /// None (saying so) where there is no python3.
    pub(crate) fn python_junit_check(xml: &str) -> Option<String> {
        use std::io::Write;
        let child = std::process::Command::new("python3")
            .args(["-c", CHECK])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("python3 not found: the JUnit XML was checked with quick-xml only");
            return None;
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(xml.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}\n{xml}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    #[test]
    fn junit_passes_pythons_parser_and_the_schemas_required_attributes() {
        let reports = [
            Report::from_outcome(&opts(), &refused(), None, Some(Path::new("/t/c.log"))),
            Report::from_outcome(&opts(), &success(), Some(record()), None),
            Report::from_error(&opts(), "QEMU missing".into()),
        ];
        for (report, want) in reports.iter().zip(["1 0 1", "0 0 1", "0 1 1"]) {
            let Some(said) = python_junit_check(&report.junit().unwrap()) else {
                return;
            };
            assert!(said.starts_with(want), "{said}");
            assert!(said.contains("flash card.img onto unit<1>.img"), "{said}");
        }
    }

    #[test]
    fn xml_safe_keeps_text_and_replaces_what_xml_cannot_carry() {
        assert_eq!(xml_safe("a\tb\nc\r<&>é✓"), "a\tb\nc\r<&>é✓");
        assert_eq!(
            xml_safe("\u{0}x\u{1b}[1m\u{ffff}"),
            "\u{fffd}x\u{fffd}[1m\u{fffd}"
        );
    }
}
