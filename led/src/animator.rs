//! The animator: shows the current phase's pattern on a board's LEDs.
//!
//! [`Engine`] is the whole logic, synchronous and clock-free: it is told the time
//! and answers with the next deadline. [`Animator`] runs an engine on its own
//! thread, sleeping on an injected [`Clock`] between steps and waking early for
//! phase, progress and error-class changes. LED errors are logged once per LED and
//! never reach the caller: LEDs must not stop a flash.

use crate::backend::{Announcement, Leds, NullLeds};
use crate::clock::{Clock, SystemClock, Wake};
use crate::pattern::{LedPlan, Pattern, PatternSpec};
use crate::{LedConfig, Phase, Result};
use crossbeam_channel::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

/// The error class shown if the failure phase arrives without one (8: internal error).
pub const DEFAULT_ERROR_CLASS: u8 = 8;

/// Shows patterns on LEDs, given the time; see the module docs.
pub struct Engine {
    leds: Box<dyn Leds>,
    config: LedConfig,
    phase: Option<Phase>,
    spec: PatternSpec,
    progress: f32,
    error_class: u8,
    pattern: Pattern,
    step: usize,
    step_started: Duration,
    /// The kernel runs the current pattern (timer/pattern triggers).
    hardware: bool,
    /// What each LED shows, if we know (skips rewriting unchanged LEDs).
    shown: Vec<Option<f32>>,
    /// LEDs whose failure was already logged (log once, not every step).
    complained: Vec<bool>,
}

impl Engine {
    /// Nothing is shown until the first [`set_phase`](Self::set_phase).
    pub fn new(leds: Box<dyn Leds>, config: &LedConfig) -> Engine {
        let n = leds.count();
        Engine {
            leds,
            config: config.clone(),
            phase: None,
            spec: PatternSpec::Off,
            progress: 0.0,
            error_class: DEFAULT_ERROR_CLASS,
            pattern: Pattern::all(n, 0.0),
            step: 0,
            step_started: Duration::ZERO,
            hardware: false,
            shown: vec![None; n],
            complained: vec![false; n],
        }
    }

    pub fn phase(&self) -> Option<Phase> {
        self.phase
    }
    pub fn spec(&self) -> PatternSpec {
        self.spec
    }
    pub fn pattern(&self) -> &Pattern {
        &self.pattern
    }
    /// Whether the kernel is running the current pattern by itself.
    pub fn in_hardware(&self) -> bool {
        self.hardware
    }
    pub fn leds(&self) -> &dyn Leds {
        &*self.leds
    }
    pub fn into_leds(self) -> Box<dyn Leds> {
        self.leds
    }

    /// The board's pattern for `phase`; an unknown name in the board file falls
    /// back to the default with a warning.
    fn spec_for(&self, phase: Phase) -> PatternSpec {
        self.config.pattern_for(phase).unwrap_or_else(|e| {
            tracing::warn!("{e}; showing the default pattern");
            PatternSpec::default_for(phase)
        })
    }

    /// Switch to `phase`'s pattern (from its first step). Re-entering the current
    /// phase changes nothing. Returns the next deadline.
    pub fn set_phase(&mut self, phase: Phase, now: Duration) -> Option<Duration> {
        if self.phase == Some(phase) {
            return self.deadline();
        }
        self.phase = Some(phase);
        self.spec = self.spec_for(phase);
        self.restart(now)
    }

    /// Set the fraction done (0..=1). Only progress patterns change.
    pub fn set_progress(&mut self, fraction: f32, now: Duration) -> Option<Duration> {
        self.progress = fraction;
        if self.spec != PatternSpec::Progress || self.phase.is_none() {
            return self.deadline();
        }
        let pattern = self.build();
        if pattern == self.pattern {
            return self.deadline();
        }
        // Keep the blink rhythm: same step, same start.
        self.pattern = pattern;
        if self.step >= self.pattern.steps.len() {
            self.step = 0;
            self.step_started = now;
        }
        self.show(now)
    }

    /// Set the blink-code class; a blink code already showing restarts with it.
    pub fn set_error_class(&mut self, class: u8, now: Duration) -> Option<Duration> {
        if class == self.error_class {
            return self.deadline();
        }
        self.error_class = class;
        if self.spec == PatternSpec::BlinkCode || self.phase == Some(Phase::Failure) {
            return self.restart(now);
        }
        self.deadline()
    }

    fn build(&self) -> Pattern {
        self.spec
            .build(self.leds.count(), self.progress, self.error_class)
    }

    fn restart(&mut self, now: Duration) -> Option<Duration> {
        let phase = self.phase?;
        let failing = phase == Phase::Failure || self.spec == PatternSpec::BlinkCode;
        let what = Announcement {
            phase,
            pattern: self.spec.name().to_string(),
            error_class: failing.then_some(self.error_class),
        };
        if let Err(e) = self.leds.announce(&what) {
            tracing::warn!("LED event not written: {e}");
        }
        self.pattern = self.build();
        self.step = 0;
        self.step_started = now;
        self.show(now)
    }

    /// Show the current pattern: hand it to the kernel if every LED that moves
    /// can take it, else show the current step and return its deadline.
    fn show(&mut self, now: Duration) -> Option<Duration> {
        self.hardware = self.try_hardware();
        if self.hardware {
            return None;
        }
        self.apply_step();
        self.tick(now)
    }

    fn try_hardware(&mut self) -> bool {
        let Some(plan) = self.pattern.hardware_plan() else {
            return false;
        };
        // Moving LEDs first: if one refuses, nothing static was written yet and
        // the user-space timeline takes over all of them.
        for (i, p) in plan.iter().enumerate() {
            if let LedPlan::Cycle(cycle) = p {
                self.shown[i] = None;
                match self.leds.set_hw_pattern(i, cycle) {
                    Ok(true) => {}
                    Ok(false) => return false,
                    Err(e) => {
                        self.complain(i, &e);
                        return false;
                    }
                }
            }
        }
        for (i, p) in plan.iter().enumerate() {
            if let LedPlan::Static(level) = p {
                self.write(i, *level);
            }
        }
        true
    }

    fn complain(&mut self, i: usize, e: &crate::Error) {
        if !std::mem::replace(&mut self.complained[i], true) {
            tracing::warn!("LED {i}: {e}; carrying on without it");
        }
    }

    fn write(&mut self, i: usize, level: f32) {
        if self.shown[i] == Some(level) {
            return;
        }
        match self.leds.set(i, level) {
            Ok(()) => self.shown[i] = Some(level),
            Err(e) => {
                self.shown[i] = None;
                self.complain(i, &e);
            }
        }
    }

    fn apply_step(&mut self) {
        let Some(step) = self.pattern.steps.get(self.step) else {
            return;
        };
        let levels = step.levels.clone();
        for (i, level) in levels.into_iter().enumerate().take(self.shown.len()) {
            self.write(i, level);
        }
    }

    /// When the current step ends, or `None` if nothing will change by itself.
    pub fn deadline(&self) -> Option<Duration> {
        if self.hardware || self.leds.count() == 0 || self.pattern.is_static() {
            return None;
        }
        if self.pattern.cycle_length().is_zero() {
            return None;
        }
        let last = self.step + 1 == self.pattern.steps.len();
        if last && !self.pattern.repeat {
            return None;
        }
        Some(self.step_started + self.pattern.steps[self.step].hold)
    }

    /// Advance to the step showing at `now` and return the next deadline.
    pub fn tick(&mut self, now: Duration) -> Option<Duration> {
        let cycle = self.pattern.cycle_length();
        let mut moved = false;
        while let Some(end) = self.deadline() {
            if now < end {
                break;
            }
            self.step = (self.step + 1) % self.pattern.steps.len();
            self.step_started = end;
            moved = true;
            // After a stall longer than a cycle (a blocked thread, a suspended
            // board), resume from now instead of replaying every missed step.
            if now.saturating_sub(self.step_started) > cycle {
                self.step_started = now;
            }
        }
        if moved {
            self.apply_step();
        }
        self.deadline()
    }

    /// Put the LEDs back as they were before we took over.
    pub fn restore(&mut self) -> Result<()> {
        self.shown.iter_mut().for_each(|s| *s = None);
        self.leds.restore()
    }
}

/// What the animator thread is told.
#[derive(Debug, Clone)]
pub enum Command {
    Phase(Phase),
    Progress(f32),
    ErrorClass(u8),
    /// Error class and failure phase in one step (no flash of the default class).
    Fail(u8),
    /// One progress event: progress (if known), error class (if any), then phase.
    Event {
        phase: Phase,
        progress: Option<f32>,
        error_class: Option<u8>,
    },
    /// Reply once every earlier command has been applied.
    Sync(Sender<()>),
    Stop,
}

/// Runs an [`Engine`] on its own thread; see the module docs.
pub struct Animator {
    tx: Sender<Command>,
    thread: Option<JoinHandle<Box<dyn Leds>>>,
}

impl Animator {
    /// Start on the real clock. Nothing is shown until [`set_phase`](Self::set_phase).
    pub fn start(leds: Box<dyn Leds>, config: &LedConfig) -> Animator {
        Animator::start_with_clock(leds, config, SystemClock::new())
    }

    /// Start on an injected clock (tests use [`crate::clock::FakeClock`]).
    pub fn start_with_clock<C: Clock>(
        leds: Box<dyn Leds>,
        config: &LedConfig,
        clock: C,
    ) -> Animator {
        let (tx, rx) = crossbeam_channel::unbounded::<Command>();
        let mut engine = Engine::new(leds, config);
        let spawned = std::thread::Builder::new()
            .name("leds".into())
            .spawn(move || {
                let mut deadline = None;
                loop {
                    deadline = match clock.sleep_until(deadline, &rx) {
                        Wake::Deadline => engine.tick(clock.now()),
                        Wake::Message(Command::Stop) | Wake::Closed => break,
                        Wake::Message(cmd) => {
                            let now = clock.now();
                            match cmd {
                                Command::Phase(p) => engine.set_phase(p, now),
                                Command::Progress(f) => engine.set_progress(f, now),
                                Command::ErrorClass(c) => engine.set_error_class(c, now),
                                Command::Fail(c) => {
                                    engine.set_error_class(c, now);
                                    engine.set_phase(Phase::Failure, now)
                                }
                                Command::Event {
                                    phase,
                                    progress,
                                    error_class,
                                } => {
                                    if let Some(f) = progress {
                                        engine.set_progress(f, now);
                                    }
                                    if let Some(c) = error_class {
                                        engine.set_error_class(c, now);
                                    }
                                    engine.set_phase(phase, now)
                                }
                                Command::Sync(reply) => {
                                    // The caller may have given up waiting; fine.
                                    let _ = reply.send(());
                                    engine.deadline()
                                }
                                Command::Stop => None,
                            }
                        }
                    };
                }
                engine.into_leds()
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("LED thread not started ({e}); the LEDs stay as they are");
                None
            }
        };
        Animator { tx, thread }
    }

    fn send(&self, cmd: Command) {
        // The thread only goes away in `stop`; a send error means it panicked,
        // which was already reported by the panic itself.
        let _ = self.tx.send(cmd);
    }

    pub fn set_phase(&self, phase: Phase) {
        self.send(Command::Phase(phase));
    }

    /// Fraction of the write done, 0.0..=1.0 (for progress patterns).
    pub fn set_progress(&self, fraction: f32) {
        self.send(Command::Progress(fraction));
    }

    /// The blink-code class to show in the failure phase (see docs/leds.md).
    pub fn set_error_class(&self, class: u8) {
        self.send(Command::ErrorClass(class));
    }

    /// Enter the failure phase showing blink code `class`.
    pub fn fail(&self, class: u8) {
        self.send(Command::Fail(class));
    }

    /// Follow one progress event (the fields of `flasher::progress::Event`), as
    /// one message so the thread never shows a half-applied event.
    pub fn on_event(
        &self,
        phase: Phase,
        done: Option<u64>,
        total: Option<u64>,
        error_class: Option<u8>,
    ) {
        let progress = match (done, total) {
            (Some(done), Some(total)) if total > 0 => Some((done as f64 / total as f64) as f32),
            _ => None,
        };
        self.send(Command::Event {
            phase,
            progress,
            error_class,
        });
    }

    /// Wait until every earlier call has reached the LEDs (e.g. before powering
    /// off on success, or before a test reads a fake tree). Returns at once if the
    /// thread is gone. With a [`crate::clock::FakeClock`] this wakes the thread like
    /// any other call.
    pub fn sync(&self) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self.tx.send(Command::Sync(tx)).is_ok() {
            // Err: the thread ended (panicked) without replying; nothing to wait for.
            let _ = rx.recv();
        }
    }

    /// Stop the thread and hand back the LEDs. What they show stays: a static
    /// pattern (success) stays lit, a kernel-run pattern (a blink code where the
    /// `timer`/`pattern` triggers exist) keeps blinking; a user-space animation
    /// freezes on its current step.
    pub fn stop(mut self) -> Box<dyn Leds> {
        self.join()
    }

    /// Stop, then put the LEDs back as they were (original triggers).
    pub fn restore(self) -> Result<()> {
        self.stop().restore()
    }

    fn join(&mut self) -> Box<dyn Leds> {
        let _ = self.tx.send(Command::Stop);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(leds)) => leds,
            Some(Err(_)) => {
                tracing::warn!("LED thread panicked; its LEDs are left as they are");
                Box::new(NullLeds)
            }
            None => Box::new(NullLeds),
        }
    }
}

impl Drop for Animator {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Recording, RecordingLeds};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn after_a_stall_the_pattern_resumes_from_now() {
        let leds = RecordingLeds::new(4);
        let mut e = Engine::new(Box::new(leds.clone()), &LedConfig::default());
        assert_eq!(e.set_phase(Phase::Writing, ms(0)), Some(ms(150)));
        // Ten seconds late: one step forward, timed from now, not 66 replayed steps.
        leds.take();
        assert_eq!(e.tick(ms(10_000)), Some(ms(10_150)));
        assert_eq!(
            leds.take(),
            [
                Recording::Set {
                    idx: 0,
                    brightness: 0.0
                },
                Recording::Set {
                    idx: 1,
                    brightness: 1.0
                },
            ]
        );
        // An early tick changes nothing.
        assert_eq!(e.tick(ms(10_100)), Some(ms(10_150)));
        assert!(leds.take().is_empty());
    }

    /// LEDs whose every write fails, counting the attempts.
    struct Broken(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Leds for Broken {
        fn count(&self) -> usize {
            2
        }
        fn set(&mut self, _: usize, _: f32) -> Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(crate::Error::Io(flasher_format::io::IoError::new(
                "/sys/class/leds/x/brightness",
                std::io::Error::from_raw_os_error(5),
            )))
        }
    }

    #[test]
    fn failing_leds_never_stop_the_animation() {
        let tries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut e = Engine::new(Box::new(Broken(tries.clone())), &LedConfig::default());
        assert_eq!(e.set_phase(Phase::Verifying, ms(0)), Some(ms(500)));
        assert_eq!(e.tick(ms(500)), Some(ms(1000)));
        assert_eq!(e.set_phase(Phase::Success, ms(700)), None);
        // Every step was still attempted on both LEDs (a broken LED may recover).
        assert_eq!(tries.load(std::sync::atomic::Ordering::SeqCst), 6);
        assert!(e.complained.iter().all(|&c| c));
    }

    #[test]
    fn zero_leds_need_no_wakeups() {
        let leds = RecordingLeds::new(0);
        let mut e = Engine::new(Box::new(leds.clone()), &LedConfig::default());
        assert_eq!(e.set_phase(Phase::Writing, ms(0)), None);
        // The phase is still announced (for the event sink).
        assert_eq!(leds.announcements().len(), 1);
    }
}
