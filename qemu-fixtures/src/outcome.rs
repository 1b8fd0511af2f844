//! What one run produced ([`QemuOutcome`]): its events, console and how the VM
//! ended, where the board's writes to the card went, and the verdicts drawn
//! from them (`check`, [`Verdict`], the phases and their times, the time from
//! `/init` to the first write).

use crate::card_writes::CardWriteBack;
use crate::events::BadLine;
use crate::{Error, Result};
use flasher_format::event::Event;
use flasher_format::Phase;
use std::path::PathBuf;
use std::time::Duration;

/// What happened in one run. (`Default`: a run that produced nothing, for
/// tests and reports to fill in.)
#[derive(Debug, Clone, Default)]
pub struct QemuOutcome {
    /// Every event line, parsed, in order.
    pub events: Vec<Event>,
    /// Lines on the event port that are not events (there should be none).
    pub bad_lines: Vec<BadLine>,
    /// The guest powered itself off (QEMU exited on its own, kernel said "Power down").
    pub powered_off: bool,
    /// The guest rebooted (with `-no-reboot` QEMU exits instead).
    pub rebooted: bool,
    pub timed_out: bool,
    /// The harness killed QEMU for a `power-cut-at` fault.
    pub power_cut: bool,
    /// OVMF found nothing bootable (the card did not boot) and the run was stopped.
    pub firmware_gave_up: bool,
    /// Guest serial console (ttyS0) and QEMU's own stderr.
    pub console_log: String,
    pub elapsed: Duration,
    /// The card image QEMU booted: the card, or a copy (padded, or with the
    /// harness's kernel arguments) that outlives the run because the caller
    /// gave the work directory; the card when that copy was temporary.
    pub card_used: PathBuf,
    /// Where the board's writes to the card went (on the card file, unless
    /// discarded).
    pub card_writes: CardWriteBack,
}

/// How a run ended, in one word (`mkflasher qemu --json`'s `verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The flasher reported success and the VM powered off ([`QemuOutcome::check`] is Ok).
    Success,
    /// The flasher failed before its `writing` phase: one of the checks made
    /// before the first write (docs/architecture.md rule 2) refused the run,
    /// so the target was not written.
    Refused,
    /// The flasher failed once writing had begun, or its event stream was
    /// not sound.
    Failure,
    /// The harness cut the power (`power-cut-at=` fault) before the flasher finished.
    PowerCut,
    /// The VM did not finish within the time-out.
    Timeout,
    /// The VM stopped without the flasher reporting success or failure (a
    /// kernel panic, a reboot, firmware that found nothing to boot).
    NoResult,
    /// The harness could not run the VM at all ([`crate::run`] returned an
    /// error: QEMU missing, the card unreadable or read-only). Never
    /// returned by [`QemuOutcome::verdict`]; reports use it.
    Error,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::Refused => "refused",
            Verdict::Failure => "failure",
            Verdict::PowerCut => "power-cut",
            Verdict::Timeout => "timeout",
            Verdict::NoResult => "no-result",
            Verdict::Error => "error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One phase of a run by the guest's clock: when the flasher entered it
/// (`t_ms` of its first event) and how long until the next phase began (for
/// the last phase, until the last event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseTime {
    pub phase: Phase,
    pub start_ms: u64,
    pub duration_ms: u64,
}

impl QemuOutcome {
    /// Distinct phases in the order the flasher entered them. The LEDs' echo
    /// (`led` events, written a moment later by another thread) and the unit
    /// record do not count: they follow the phases, they do not move them.
    pub fn phases(&self) -> Vec<Phase> {
        let mut out: Vec<Phase> = Vec::new();
        for e in self.events.iter().filter(|e| e.is_flasher_state()) {
            if out.last() != Some(&e.phase) {
                out.push(e.phase);
            }
        }
        out
    }

    /// [`Self::phases`] with when each began and how long it lasted.
    pub fn phase_times(&self) -> Vec<PhaseTime> {
        let mut out: Vec<PhaseTime> = Vec::new();
        let mut last_t = 0;
        for e in self.events.iter().filter(|e| e.is_flasher_state()) {
            if out.last().map(|p| p.phase) != Some(e.phase) {
                if let Some(prev) = out.last_mut() {
                    prev.duration_ms = e.t_ms.saturating_sub(prev.start_ms);
                }
                out.push(PhaseTime {
                    phase: e.phase,
                    start_ms: e.t_ms,
                    duration_ms: 0,
                });
            }
            last_t = e.t_ms;
        }
        if let Some(prev) = out.last_mut() {
            prev.duration_ms = last_t.saturating_sub(prev.start_ms);
        }
        out
    }

    /// How the run ended, in one word; [`Verdict::Success`] exactly when
    /// [`Self::check`] is Ok, and the other verdicts in `check`'s order.
    pub fn verdict(&self) -> Verdict {
        if self.check_events().is_err() {
            Verdict::Failure
        } else if self.succeeded() {
            Verdict::Success
        } else if self.failure_message().is_some() {
            if self.has_phase(Phase::Writing) {
                Verdict::Failure
            } else {
                Verdict::Refused
            }
        } else if self.power_cut {
            Verdict::PowerCut
        } else if self.timed_out {
            Verdict::Timeout
        } else {
            Verdict::NoResult
        }
    }

    /// [`Self::phases`] as text, for messages: `writing → verifying → success`.
    pub fn phase_names(&self) -> String {
        let names: Vec<&str> = self.phases().iter().map(|p| p.as_str()).collect();
        names.join(" → ")
    }

    pub fn has_phase(&self, phase: Phase) -> bool {
        self.phases().contains(&phase)
    }

    /// From `/init` starting (its first event, the `starting` phase) to the
    /// first event of the `writing` phase, by the guest's own clock; `None` if
    /// the run never started writing. The boot before `/init` (firmware, kernel)
    /// is not counted: it is the board's, not the flasher's.
    pub fn init_to_first_write(&self) -> Option<Duration> {
        let start = self.events.iter().find(|e| e.phase == Phase::Starting)?;
        let write = self.events.iter().find(|e| e.phase == Phase::Writing)?;
        Some(Duration::from_millis(write.t_ms.checked_sub(start.t_ms)?))
    }

    /// The first failure report: the cause. Later failure events are
    /// consequences (e.g. the unit record could not be appended).
    pub fn failure(&self) -> Option<&Event> {
        self.events.iter().find(|e| e.is_failure())
    }

    /// The blink-code class of the first failure event that carries one.
    pub fn failure_class(&self) -> Option<flasher_format::ErrorClass> {
        self.events
            .iter()
            .filter(|e| e.is_failure())
            .find_map(Event::error_class)
    }

    /// The message of the first failure event that carries one: the cause.
    pub fn failure_message(&self) -> Option<String> {
        self.events
            .iter()
            .filter(|e| e.is_failure())
            .find_map(|e| e.text())
            .map(str::to_string)
            .or_else(|| {
                self.has_phase(Phase::Failure)
                    .then(|| "(no message)".to_string())
            })
    }

    /// The stream itself is sound: every line parsed as an [`Event`] of this
    /// schema version, and the timestamps never go back.
    pub fn check_events(&self) -> Result<()> {
        if let Some(b) = self.bad_lines.first() {
            return Err(Error::BadEvents {
                reason: format!(
                    "{} line(s) are not events; the first: {:?} ({})",
                    self.bad_lines.len(),
                    b.line,
                    b.reason
                ),
            });
        }
        flasher_format::event::check_stream(&self.events).map_err(|e| Error::BadEvents {
            reason: e.to_string(),
        })
    }

    /// The flasher reported success and the VM powered off.
    pub fn succeeded(&self) -> bool {
        self.has_phase(Phase::Success) && self.powered_off && !self.has_phase(Phase::Failure)
    }

    /// Ok only on success; otherwise the most telling error.
    pub fn check(&self, timeout: Duration, power_cut_at: Option<f64>) -> Result<()> {
        self.check_events()?;
        if self.succeeded() {
            return Ok(());
        }
        if let Some(message) = self.failure_message() {
            return Err(Error::FlashFailed { message });
        }
        let last_phase = self
            .phases()
            .last()
            .map_or_else(|| "none".to_string(), |p| p.to_string());
        if self.power_cut {
            return Err(Error::PowerCut {
                percent: power_cut_at.unwrap_or(0.0),
            });
        }
        if self.timed_out {
            return Err(Error::TimedOut {
                seconds: timeout.as_secs(),
                last_phase,
            });
        }
        let how = if self.firmware_gave_up {
            "OVMF found nothing bootable on the card and stopped in its shell".to_string()
        } else if self.rebooted {
            "the guest rebooted".to_string()
        } else if self.console_log.contains("Kernel panic") {
            "kernel panic".to_string()
        } else if self.powered_off {
            "powered off".to_string()
        } else {
            "QEMU exited".to_string()
        };
        Err(Error::NoSuccess { last_phase, how })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::tests::{at, entered};
    use flasher_format::event::Body;

    fn outcome(events: Vec<Event>) -> QemuOutcome {
        QemuOutcome {
            events,
            powered_off: true,
            ..QemuOutcome::default()
        }
    }

    #[test]
    fn init_to_first_write_is_from_the_first_starting_event() {
        let run = outcome(vec![
            entered(3380, Phase::Starting),
            entered(3700, Phase::Searching),
            entered(4150, Phase::Writing),
            entered(9000, Phase::Verifying),
        ]);
        assert_eq!(run.init_to_first_write(), Some(Duration::from_millis(770)));
        let refused = outcome(vec![
            entered(3380, Phase::Starting),
            entered(3700, Phase::Failure),
        ]);
        assert_eq!(refused.init_to_first_write(), None);
    }

    #[test]
    fn outcome_verdicts() {
        let progress = |t, done| {
            at(
                t,
                Phase::Writing,
                Body::Progress {
                    done,
                    total: 2,
                    rate: 1,
                },
            )
        };
        let mut o = outcome(vec![
            progress(1, 1),
            progress(2, 2),
            entered(3, Phase::Verifying),
            // The LEDs' echo of the writing pattern, late: not a phase change.
            Event::led(Phase::Writing, "running-light", vec![], None).with_t_ms(3),
            entered(4, Phase::Success),
        ]);
        assert_eq!(
            o.phases(),
            [Phase::Writing, Phase::Verifying, Phase::Success]
        );
        assert_eq!(o.phase_names(), "writing → verifying → success");
        assert!(o.check(Duration::from_secs(1), None).is_ok());
        o.powered_off = false;
        assert!(matches!(
            o.check(Duration::from_secs(1), None),
            Err(Error::NoSuccess { .. })
        ));
        o.events.push(
            Event::failure(
                flasher_format::ErrorClass::WriteIo,
                "write error at byte 20971520",
            )
            .with_t_ms(5),
        );
        match o.check(Duration::from_secs(1), None) {
            Err(Error::FlashFailed { message }) => assert!(message.contains("20971520")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            o.failure().and_then(Event::error_class),
            Some(flasher_format::ErrorClass::WriteIo)
        );
        assert_eq!(o.failure_class(), Some(flasher_format::ErrorClass::WriteIo));
        o.events.clear();
        o.timed_out = true;
        assert!(matches!(
            o.check(Duration::from_secs(1), None),
            Err(Error::TimedOut { .. })
        ));
    }

    #[test]
    fn phase_times_follow_the_phases() {
        let run = outcome(vec![
            entered(1000, Phase::Starting),
            entered(1300, Phase::Searching),
            Event::led(Phase::Searching, "heartbeat", vec![], None).with_t_ms(1350),
            entered(1700, Phase::Writing),
            at(
                2500,
                Phase::Writing,
                Body::Progress {
                    done: 1,
                    total: 1,
                    rate: 1,
                },
            ),
            entered(3000, Phase::Success),
            at(
                3040,
                Phase::Success,
                Body::Message {
                    message: "bye".into(),
                },
            ),
        ]);
        let t: Vec<(Phase, u64, u64)> = run
            .phase_times()
            .iter()
            .map(|p| (p.phase, p.start_ms, p.duration_ms))
            .collect();
        assert_eq!(
            t,
            [
                (Phase::Starting, 1000, 300),
                (Phase::Searching, 1300, 400),
                (Phase::Writing, 1700, 1300),
                (Phase::Success, 3000, 40),
            ]
        );
        assert_eq!(
            run.phases(),
            t.iter().map(|p| p.0).collect::<Vec<_>>(),
            "the same phases as phases()"
        );
        assert!(outcome(vec![]).phase_times().is_empty());
    }

    #[test]
    fn verdicts_in_the_order_check_reports_them() {
        let ok = outcome(vec![entered(1, Phase::Writing), entered(2, Phase::Success)]);
        assert_eq!(ok.verdict(), Verdict::Success);
        let fail = |phases: &[Phase]| {
            let mut events: Vec<Event> = phases
                .iter()
                .enumerate()
                .map(|(i, p)| entered(i as u64, *p))
                .collect();
            events.push(
                Event::failure(flasher_format::ErrorClass::PayloadInvalid, "used up").with_t_ms(10),
            );
            outcome(events)
        };
        assert_eq!(
            fail(&[Phase::Starting, Phase::Searching]).verdict(),
            Verdict::Refused
        );
        assert_eq!(
            fail(&[Phase::Searching, Phase::Writing]).verdict(),
            Verdict::Failure
        );
        let mut o = outcome(vec![entered(1, Phase::Writing)]);
        o.powered_off = false;
        o.power_cut = true;
        assert_eq!(o.verdict(), Verdict::PowerCut);
        o.power_cut = false;
        o.timed_out = true;
        assert_eq!(o.verdict(), Verdict::Timeout);
        o.timed_out = false;
        assert_eq!(o.verdict(), Verdict::NoResult);
        let mut bad = ok.clone();
        bad.bad_lines.push(BadLine {
            line: "x".into(),
            reason: "not JSON".into(),
        });
        assert_eq!(bad.verdict(), Verdict::Failure);
        for v in [Verdict::PowerCut, Verdict::NoResult, Verdict::Error] {
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.as_str())
            );
        }
    }

    #[test]
    fn a_bad_stream_fails_the_run_quoting_the_line() {
        let mut o = outcome(vec![
            entered(5, Phase::Starting),
            entered(9, Phase::Success),
        ]);
        assert!(o.check_events().is_ok());
        o.bad_lines.push(BadLine {
            line: r#"{"phase":"writing"}"#.into(),
            reason: "missing field `v`".into(),
        });
        match o.check(Duration::from_secs(1), None) {
            Err(Error::BadEvents { reason }) => {
                assert!(reason.contains(r#"{\"phase\":\"writing\"}"#), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        o.bad_lines.clear();
        o.events.push(entered(8, Phase::Success));
        assert!(matches!(o.check_events(), Err(Error::BadEvents { .. })));
    }
}
