//! The PID-1 sequence as an orchestration over [`Steps`], one method per step of
//! the data flow on the board (docs/init.md, "Sequence"; docs/architecture.md,
//! "The path of one byte"). The order, the failure path (blink code, console
//! message, record, wait) and the ending (record, success, watchdog disarm, power
//! off) live here and are tested with a fake that records calls; the real steps
//! are [`Real`](crate::real::Real)'s.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use flasher_format::Phase;

use super::power::After;
use super::Error;
use flasher::progress::Event;
use flasher_format::cmdline::Options;
use flasher_format::ErrorClass;

/// One step of the run, for error classes and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Mount,
    Cmdline,
    Modules,
    Board,
    Watchdog,
    Storage,
    Payload,
    Target,
    Write,
    Fixups,
    Bootloader,
    Config,
    /// The partition table goes live: GPT headers, then sector 0.
    Commit,
    Record,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Mount => "early mounts",
            Step::Cmdline => "kernel command line",
            Step::Modules => "kernel modules",
            Step::Board => "board detection",
            Step::Watchdog => "watchdog",
            Step::Storage => "storage wait",
            Step::Payload => "payload search",
            Step::Target => "target choice",
            Step::Write => "write and verify",
            Step::Fixups => "partition fix-ups",
            Step::Bootloader => "bootloader",
            Step::Config => "config copy",
            Step::Commit => "partition table commit",
            Step::Record => "unit record",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The chosen target, as the record and the console describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetInfo {
    /// Device node, e.g. `/dev/mmcblk1`.
    pub device: PathBuf,
    /// eMMC CID/serial/model or disk model/serial.
    pub identity: String,
    pub size_bytes: u64,
}

/// What the write step reports.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteSummary {
    /// Hex digest of the image as the manifest names it.
    pub image_digest: String,
    pub bytes_written: u64,
    /// How long each phase took, by name (`preflight`, `write`, `verify`, ...).
    pub phases: Vec<(String, Duration)>,
}

/// Why a run failed.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    /// The blink-code class (docs/leds.md).
    pub class: ErrorClass,
    pub error: crate::Error,
}

impl Failure {
    /// A failure of `step`, classified by [`Step::classify`].
    pub fn new(step: Step, error: crate::Error) -> Self {
        Failure {
            step,
            class: step.classify(&error),
            error,
        }
    }
}

impl std::fmt::Display for Failure {
    /// The step and the error, e.g. "config copy: write hostname: No space left on
    /// device". The project's error messages already include their source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

/// What the record step is given: everything known about this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub board: Option<String>,
    pub target: Option<TargetInfo>,
    pub write: Option<WriteSummary>,
    /// `None` on success; otherwise the step, class and message.
    pub failure: Option<(Step, ErrorClass, String)>,
}

/// How a run that did not fail ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The target was written, verified, fixed up, configured and recorded.
    Flashed {
        board: String,
        target: TargetInfo,
        write: WriteSummary,
    },
    /// `flasher.dry-run`: stopped after choosing the target; nothing written.
    DryRun { board: String, target: TargetInfo },
}

/// One method per step. The real implementation keeps its own state (the detected
/// board, the boot medium, the open target) between calls.
pub trait Steps {
    /// Mount proc, sysfs, devtmpfs, /run; open the console.
    fn mount(&mut self) -> crate::Result<()>;
    /// Parse the `flasher.*` options; open the events path if given.
    fn options(&mut self) -> crate::Result<Options>;
    /// Load the kernel modules (storage, LEDs, watchdog drivers).
    fn load_modules(&mut self, o: &Options) -> crate::Result<()>;
    /// Detect the board (or take `flasher.board=`); start its LEDs. Returns its name.
    fn detect_board(&mut self, o: &Options) -> crate::Result<String>;
    /// Open and start feeding the board's watchdog, if it has one.
    fn start_watchdog(&mut self) -> crate::Result<()>;
    /// Wait for block devices to appear (after the LEDs are up, so a board whose
    /// storage never shows up still shows blink code 1).
    fn wait_for_storage(&mut self, o: &Options) -> crate::Result<()>;
    /// Scan storage; find the boot medium with the payload and log partitions.
    fn find_payload(&mut self, o: &Options) -> crate::Result<()>;
    /// Choose the internal target (never the boot medium).
    fn choose_target(&mut self, o: &Options) -> crate::Result<TargetInfo>;
    /// Stream the payload onto the target and verify it.
    fn write(&mut self, o: &Options) -> crate::Result<WriteSummary>;
    /// Partition-table fix-ups (backup GPT, optional data growth).
    fn fixups(&mut self, o: &Options) -> crate::Result<()>;
    /// eMMC boot partitions / raw bootloader.
    fn bootloader(&mut self, o: &Options) -> crate::Result<()>;
    /// Copy config from the card's flash-boot FAT onto the target's boot partition.
    fn copy_config(&mut self, o: &Options) -> crate::Result<()>;
    /// Make the partition table live, as the last write to the target: GPT
    /// headers, flush, read back, then sector 0, flush, read back.
    fn commit_table(&mut self, o: &Options) -> crate::Result<()>;
    /// Append the unit record to the card's log partition.
    fn append_record(&mut self, r: &RunRecord) -> crate::Result<()>;
    /// Show an event on the console, the event stream and the LEDs.
    fn show(&mut self, e: &Event);
    /// Disarm the watchdog, sync, then power off / reboot / halt / wait.
    /// The real one never returns.
    fn finish(&mut self, after: After);
}

/// What a run knew when it stopped.
#[derive(Default)]
struct State {
    options: Option<Options>,
    step: Option<Step>,
    board: Option<String>,
    target: Option<TargetInfo>,
    write: Option<WriteSummary>,
}

/// Run the steps in order and stop at the first error. Does not record, show the
/// result or finish; [`drive`] does.
fn run_steps(s: &mut dyn Steps, st: &mut State) -> Result<Outcome, Box<Failure>> {
    fn at<T>(st: &mut State, step: Step, r: crate::Result<T>) -> Result<T, Box<Failure>> {
        st.step = Some(step);
        r.map_err(|error| Box::new(Failure::new(step, error)))
    }
    st.step = Some(Step::Mount);
    at(st, Step::Mount, s.mount())?;
    s.show(
        &Event::phase(Phase::Starting)
            .with_message(format!("flasher {} starting", env!("CARGO_PKG_VERSION"))),
    );
    st.step = Some(Step::Cmdline);
    let o = at(st, Step::Cmdline, s.options())?;
    for w in &o.warnings {
        s.show(&Event::message(Phase::Starting, w.clone()));
    }
    st.options = Some(o.clone());
    st.step = Some(Step::Modules);
    at(st, Step::Modules, s.load_modules(&o))?;
    st.step = Some(Step::Board);
    let board = at(st, Step::Board, s.detect_board(&o))?;
    st.board = Some(board.clone());
    s.show(&Event::phase(Phase::Searching).with_message("looking for the payload and the target"));
    st.step = Some(Step::Watchdog);
    at(st, Step::Watchdog, s.start_watchdog())?;
    st.step = Some(Step::Storage);
    at(st, Step::Storage, s.wait_for_storage(&o))?;
    st.step = Some(Step::Payload);
    at(st, Step::Payload, s.find_payload(&o))?;
    st.step = Some(Step::Target);
    let target = at(st, Step::Target, s.choose_target(&o))?;
    st.target = Some(target.clone());
    s.show(&Event::message(
        Phase::Searching,
        format!(
            "target {} ({}, {})",
            target.device.display(),
            target.identity,
            flasher_format::units::iec(target.size_bytes)
        ),
    ));
    if o.dry_run {
        return Ok(Outcome::DryRun { board, target });
    }
    st.step = Some(Step::Write);
    let write = at(st, Step::Write, s.write(&o))?;
    st.write = Some(write.clone());
    s.show(&Event::phase(Phase::Finishing).with_message("fixing up the partition table"));
    st.step = Some(Step::Fixups);
    at(st, Step::Fixups, s.fixups(&o))?;
    st.step = Some(Step::Bootloader);
    at(st, Step::Bootloader, s.bootloader(&o))?;
    st.step = Some(Step::Config);
    at(st, Step::Config, s.copy_config(&o))?;
    st.step = Some(Step::Commit);
    at(st, Step::Commit, s.commit_table(&o))?;
    st.step = Some(Step::Record);
    at(
        st,
        Step::Record,
        s.append_record(&RunRecord {
            board: Some(board.clone()),
            target: Some(target.clone()),
            write: Some(write.clone()),
            failure: None,
        }),
    )?;
    Ok(Outcome::Flashed {
        board,
        target,
        write,
    })
}

/// The whole run: the steps, then either success (LEDs success, watchdog disarm,
/// `flasher.after`) or failure (blink code with the error class, console message,
/// a record of the failure, then `flasher.on-failure`, by default wait forever).
/// A panic inside a step is caught here and handled as an internal error (class 8),
/// so it is recorded too. Returns only if `finish` does (fakes; the real one never).
pub fn drive(s: &mut dyn Steps) -> Result<Outcome, Box<Failure>> {
    let mut st = State::default();
    let result = match catch_unwind(AssertUnwindSafe(|| run_steps(s, &mut st))) {
        Ok(r) => r,
        Err(payload) => Err(Box::new(Failure::new(
            st.step.unwrap_or(Step::Mount),
            Error::Panic(super::panic::message(&*payload)),
        ))),
    };
    let options = st.options.clone().unwrap_or_default();
    match result {
        Ok(outcome) => {
            let msg = match &outcome {
                Outcome::Flashed { target, write, .. } => format!(
                    "wrote and verified {} on {}; {} next",
                    flasher_format::units::iec(write.bytes_written),
                    target.device.display(),
                    options.after
                ),
                Outcome::DryRun { target, .. } => format!(
                    "dry run: would write {}; nothing written; {} next",
                    target.device.display(),
                    options.after
                ),
            };
            s.show(&Event::phase(Phase::Success).with_message(msg));
            s.finish(options.after);
            Ok(outcome)
        }
        Err(failure) => {
            let (step, class) = (failure.step, failure.class);
            let message = failure.to_string();
            s.show(&Event::failure(class, message.clone()));
            // Every run leaves a record, failed ones too; unless recording itself failed.
            if step != Step::Record {
                let rec = RunRecord {
                    board: st.board.clone(),
                    target: st.target.clone(),
                    write: st.write.clone(),
                    failure: Some((step, class, message)),
                };
                if let Err(e) = s.append_record(&rec) {
                    // Same phase and class, so the LEDs and event readers keep the
                    // original blink code.
                    s.show(&Event::failure(
                        class,
                        format!("could not append the unit record either: {e}"),
                    ));
                }
            }
            s.finish(options.on_failure);
            Err(failure)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flasher::progress::Observer;
    use flasher::progress::Recorder;

    type MakeError = fn() -> Error;

    /// Records each call by name; fails (or panics) at a chosen step.
    #[derive(Default)]
    struct Fake {
        calls: Vec<String>,
        fail_at: Option<(&'static str, MakeError)>,
        panic_at: Option<&'static str>,
        cmdline: String,
        events: Recorder,
        records: Vec<RunRecord>,
        record_fails: bool,
    }

    impl Fake {
        fn step(&mut self, name: &'static str) -> crate::Result<()> {
            self.calls.push(name.to_string());
            if self.panic_at == Some(name) {
                panic!("fake panic in {name}");
            }
            match self.fail_at {
                Some((n, e)) if n == name => Err(e()),
                _ => Ok(()),
            }
        }
    }

    fn target() -> TargetInfo {
        TargetInfo {
            device: "/dev/mmcblk1".into(),
            identity: "eMMC CID 150100".into(),
            size_bytes: 4 << 30,
        }
    }

    impl Steps for Fake {
        fn mount(&mut self) -> crate::Result<()> {
            self.step("mount")
        }
        fn options(&mut self) -> crate::Result<Options> {
            self.step("options")?;
            Options::parse(&self.cmdline).map_err(super::Error::from)
        }
        fn load_modules(&mut self, _: &Options) -> crate::Result<()> {
            self.step("modules")
        }
        fn detect_board(&mut self, _: &Options) -> crate::Result<String> {
            self.step("board").map(|_| "bbb".to_string())
        }
        fn start_watchdog(&mut self) -> crate::Result<()> {
            self.step("watchdog")
        }
        fn wait_for_storage(&mut self, _: &Options) -> crate::Result<()> {
            self.step("storage")
        }
        fn find_payload(&mut self, _: &Options) -> crate::Result<()> {
            self.step("payload")
        }
        fn choose_target(&mut self, _: &Options) -> crate::Result<TargetInfo> {
            self.step("target").map(|_| target())
        }
        fn write(&mut self, _: &Options) -> crate::Result<WriteSummary> {
            self.step("write").map(|_| WriteSummary {
                image_digest: "ab12".into(),
                bytes_written: 1 << 20,
                phases: vec![("write".into(), Duration::from_secs(3))],
            })
        }
        fn fixups(&mut self, _: &Options) -> crate::Result<()> {
            self.step("fixups")
        }
        fn bootloader(&mut self, _: &Options) -> crate::Result<()> {
            self.step("bootloader")
        }
        fn copy_config(&mut self, _: &Options) -> crate::Result<()> {
            self.step("config")
        }
        fn commit_table(&mut self, _: &Options) -> crate::Result<()> {
            self.step("commit")
        }
        fn append_record(&mut self, r: &RunRecord) -> crate::Result<()> {
            self.calls.push("record".into());
            self.records.push(r.clone());
            if self.record_fails {
                return Err(Error::Read {
                    path: "/dev/sda3".into(),
                    source: std::io::Error::other("log partition full"),
                });
            }
            Ok(())
        }
        fn show(&mut self, e: &Event) {
            if matches!(e.phase, Phase::Success | Phase::Failure) {
                self.calls.push(format!("show {}", e.phase));
            }
            self.events.event(e);
        }
        fn finish(&mut self, after: After) {
            // The real finish disarms the watchdog first (tested in power.rs).
            self.calls.push("disarm".into());
            self.calls.push(format!("finish {after}"));
        }
    }

    const ALL: [&str; 14] = [
        "mount",
        "options",
        "modules",
        "board",
        "watchdog",
        "storage",
        "payload",
        "target",
        "write",
        "fixups",
        "bootloader",
        "config",
        "commit",
        "record",
    ];

    #[test]
    fn success_runs_every_step_in_order() {
        let mut f = Fake::default();
        let out = drive(&mut f).unwrap();
        let mut want: Vec<&str> = ALL.to_vec();
        want.extend(["show success", "disarm", "finish poweroff"]);
        assert_eq!(f.calls, want);
        assert!(matches!(out, Outcome::Flashed { ref board, .. } if board == "bbb"));
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].failure, None);
        assert_eq!(f.records[0].write.as_ref().unwrap().image_digest, "ab12");
        assert_eq!(
            f.events.phases(),
            [
                Phase::Starting,
                Phase::Searching,
                Phase::Finishing,
                Phase::Success
            ]
        );
    }

    #[test]
    fn dry_run_stops_after_target_and_writes_nothing() {
        let mut f = Fake {
            cmdline: "flasher.dry-run flasher.after=wait".into(),
            ..Default::default()
        };
        let out = drive(&mut f).unwrap();
        let mut want: Vec<&str> = ALL[..8].to_vec();
        want.extend(["show success", "disarm", "finish wait"]);
        assert_eq!(f.calls, want);
        assert!(matches!(out, Outcome::DryRun { .. }));
        assert!(f.records.is_empty());
    }

    fn fail_at(step: &'static str, err: MakeError, cmdline: &str) -> (Fake, Box<Failure>) {
        let mut f = Fake {
            fail_at: Some((step, err)),
            cmdline: cmdline.into(),
            ..Default::default()
        };
        let failure = drive(&mut f).unwrap_err();
        (f, failure)
    }

    fn some_error() -> Error {
        Error::NoBlockDevices {
            waited: Duration::from_secs(30),
            seen: "loop0".into(),
        }
    }

    #[test]
    fn failure_stops_records_and_waits() {
        let (f, failure) = fail_at("fixups", some_error, "");
        let mut want: Vec<&str> = ALL[..10].to_vec();
        want.extend(["show failure", "record", "disarm", "finish wait"]);
        assert_eq!(f.calls, want);
        assert_eq!(failure.step, Step::Fixups);
        // Post-write steps are class 7 whatever the inner error.
        assert_eq!(failure.class, ErrorClass::PostWrite);
        let rec = &f.records[0];
        assert_eq!(rec.board.as_deref(), Some("bbb"));
        assert_eq!(rec.target, Some(target()));
        assert!(rec.write.is_some());
        let (step, class, msg) = rec.failure.clone().unwrap();
        assert_eq!((step, class), (Step::Fixups, ErrorClass::PostWrite));
        assert!(msg.starts_with("partition fix-ups: "), "{msg}");
        let last = f.events.events().pop().unwrap();
        assert_eq!(last.phase, Phase::Failure);
        assert_eq!(
            last.error_class(),
            Some(flasher_format::ErrorClass::PostWrite)
        );
    }

    #[test]
    fn failure_honours_on_failure() {
        let (f, _) = fail_at("payload", some_error, "flasher.on-failure=poweroff");
        assert_eq!(f.calls.last().unwrap(), "finish poweroff");
    }

    #[test]
    fn early_failure_still_records_with_defaults() {
        let (f, failure) = fail_at("modules", some_error, "flasher.after=reboot");
        assert_eq!(failure.class, ErrorClass::NoStorage);
        assert_eq!(
            f.calls,
            [
                "mount",
                "options",
                "modules",
                "show failure",
                "record",
                "disarm",
                "finish wait"
            ]
        );
        assert_eq!(f.records[0].board, None);
    }

    #[test]
    fn storage_timeout_after_the_board_is_known_is_class_1() {
        let (f, failure) = fail_at("storage", some_error, "");
        assert_eq!(
            (failure.step, failure.class),
            (Step::Storage, ErrorClass::NoStorage)
        );
        let mut want: Vec<&str> = ALL[..6].to_vec();
        want.extend(["show failure", "record", "disarm", "finish wait"]);
        assert_eq!(f.calls, want);
        // The board (and so its LEDs) was known when the failure was shown.
        assert_eq!(f.records[0].board.as_deref(), Some("bbb"));
    }

    #[test]
    fn a_failed_failure_record_keeps_the_class() {
        let mut f = Fake {
            fail_at: Some(("payload", some_error)),
            record_fails: true,
            ..Default::default()
        };
        let failure = drive(&mut f).unwrap_err();
        // NoBlockDevices carries its own class (1), whatever the step.
        assert_eq!(failure.class, ErrorClass::NoStorage);
        let failures: Vec<Event> = f
            .events
            .events()
            .into_iter()
            .filter(|e| e.phase == Phase::Failure)
            .collect();
        assert_eq!(failures.len(), 2);
        assert!(failures
            .iter()
            .all(|e| e.error_class() == Some(flasher_format::ErrorClass::NoStorage)));
        assert!(failures[1].text().unwrap().contains("unit record"));
    }

    #[test]
    fn bad_cmdline_is_class_6() {
        let mut f = Fake {
            cmdline: "flasher.after=explode".into(),
            ..Default::default()
        };
        let failure = drive(&mut f).unwrap_err();
        assert_eq!(
            (failure.step, failure.class),
            (Step::Cmdline, ErrorClass::BoardConfig)
        );
        assert!(failure.to_string().contains("explode"));
        assert_eq!(f.calls.last().unwrap(), "finish wait");
    }

    #[test]
    fn record_failure_is_not_recorded_twice() {
        let mut f = Fake {
            record_fails: true,
            ..Default::default()
        };
        let failure = drive(&mut f).unwrap_err();
        assert_eq!(
            (failure.step, failure.class),
            (Step::Record, ErrorClass::PostWrite)
        );
        let mut want: Vec<&str> = ALL.to_vec();
        want.extend(["show failure", "disarm", "finish wait"]);
        assert_eq!(f.calls, want);
    }

    #[test]
    fn panic_in_a_step_is_class_8_and_recorded() {
        // The default hook prints the fake panic; swapping hooks here would race
        // with panic.rs's hook test.
        let mut f = Fake {
            panic_at: Some("write"),
            ..Default::default()
        };
        let failure = drive(&mut f).unwrap_err();
        assert_eq!(
            (failure.step, failure.class),
            (Step::Write, ErrorClass::Internal)
        );
        assert!(matches!(failure.error, Error::Panic(ref m) if m.contains("fake panic")));
        let mut want: Vec<&str> = ALL[..9].to_vec();
        want.extend(["show failure", "record", "disarm", "finish wait"]);
        assert_eq!(f.calls, want);
    }
}
