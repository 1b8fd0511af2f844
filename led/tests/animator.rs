//! Pattern timing through the animator thread, driven by a fake clock in lockstep
//! (no sleeps): which LEDs change at which moment, and that phase changes,
//! progress and error classes take effect at once.

mod common;

use common::*;
use flasher_format::Phase;
use led::backend::{Recording, RecordingLeds};
use led::{Animator, Announcement, FakeClock, FakeClockControl, LedConfig};
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The brightness of each LED after applying `log` to all-unknown LEDs.
fn state(n: usize, log: &[Recording]) -> Vec<Option<f32>> {
    let mut s = vec![None; n];
    for r in log {
        if let Recording::Set { idx, brightness } = r {
            s[*idx] = Some(*brightness);
        }
    }
    s
}

fn lit(n: usize, log: &[Recording]) -> Vec<usize> {
    state(n, log)
        .iter()
        .enumerate()
        .filter(|(_, b)| b.is_some_and(|b| b > 0.0))
        .map(|(i, _)| i)
        .collect()
}

struct Rig {
    anim: Animator,
    ctl: FakeClockControl,
    leds: RecordingLeds,
}

impl Rig {
    fn new(leds: RecordingLeds, config: &LedConfig) -> Rig {
        let (clock, mut ctl) = FakeClock::new();
        let anim = Animator::start_with_clock(Box::new(leds.clone()), config, clock);
        // The thread parks with nothing to do until told a phase.
        assert_eq!(ctl.next_deadline(), None);
        Rig { anim, ctl, leds }
    }

    /// Send a command while the thread is parked, and wait until it parks again.
    fn tell(&mut self, f: impl FnOnce(&Animator)) -> Option<Duration> {
        self.ctl.next_deadline();
        f(&self.anim);
        self.ctl.interrupted();
        self.ctl.next_deadline()
    }

    /// Let time run to the next deadline; returns (the new time, the next deadline).
    fn step(&mut self) -> (Duration, Option<Duration>) {
        let t = self.ctl.advance();
        (t, self.ctl.next_deadline())
    }
}

#[test]
fn running_light_moves_every_150_ms_and_bounces() {
    let mut rig = Rig::new(RecordingLeds::new(4), &LedConfig::default());
    let first = rig.tell(|a| a.set_phase(Phase::Writing));
    assert_eq!(first, Some(ms(150)));
    assert_eq!(lit(4, &rig.leds.log()), [0]);
    let mut seen = vec![];
    let mut times = vec![];
    for _ in 0..7 {
        let (t, next) = rig.step();
        assert_eq!(next, Some(t + ms(150)));
        times.push(t.as_millis());
        seen.push(lit(4, &rig.leds.log()));
    }
    assert_eq!(times, [150, 300, 450, 600, 750, 900, 1050]);
    assert_eq!(
        seen,
        [
            vec![1],
            vec![2],
            vec![3],
            vec![2],
            vec![1],
            vec![0],
            vec![1]
        ]
    );
    assert_eq!(
        rig.leds.announcements(),
        [Announcement {
            phase: Phase::Writing,
            pattern: "running-light".into(),
            error_class: None
        }]
    );
}

#[test]
fn only_changed_leds_are_written() {
    let mut rig = Rig::new(RecordingLeds::new(4), &LedConfig::default());
    rig.tell(|a| a.set_phase(Phase::Writing));
    rig.leds.take();
    rig.step();
    // LED 0 goes off, LED 1 goes on; LEDs 2 and 3 were already off.
    assert_eq!(
        rig.leds.take(),
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
}

#[test]
fn heartbeat_timing_on_the_first_led() {
    let mut rig = Rig::new(RecordingLeds::new(2), &LedConfig::default());
    assert_eq!(rig.tell(|a| a.set_phase(Phase::Starting)), Some(ms(100)));
    assert_eq!(state(2, &rig.leds.log()), [Some(1.0), Some(0.0)]);
    let mut timeline = vec![];
    for _ in 0..5 {
        let (t, _) = rig.step();
        timeline.push((t.as_millis(), state(2, &rig.leds.log())[0]));
    }
    assert_eq!(
        timeline,
        [
            (100, Some(0.0)),
            (250, Some(1.0)),
            (350, Some(0.0)),
            (1000, Some(1.0)),
            (1100, Some(0.0)),
        ]
    );
    // The second LED was never lit.
    assert!(rig.leds.log().iter().all(|r| !matches!(
        r,
        Recording::Set { idx: 1, brightness } if *brightness > 0.0
    )));
    // Searching shows the same pattern: no restart, no new announcement.
    rig.tell(|a| a.set_phase(Phase::Starting));
    assert_eq!(rig.leds.announcements().len(), 1);
}

#[test]
fn phase_change_takes_effect_immediately_and_restarts_timing() {
    let mut rig = Rig::new(RecordingLeds::new(3), &LedConfig::default());
    rig.tell(|a| a.set_phase(Phase::Writing));
    rig.step(); // t = 150
    rig.step(); // t = 300
                // Verifying arrives at t = 300 (between steps): all on at once, 500 ms each.
    let next = rig.tell(|a| a.set_phase(Phase::Verifying));
    assert_eq!(next, Some(ms(800)));
    assert_eq!(lit(3, &rig.leds.log()), [0, 1, 2]);
    let (t, next) = rig.step();
    assert_eq!((t, next), (ms(800), Some(ms(1300))));
    assert_eq!(lit(3, &rig.leds.log()), Vec::<usize>::new());
}

#[test]
fn success_is_static_and_needs_no_wakeups() {
    let mut rig = Rig::new(RecordingLeds::new(4), &LedConfig::default());
    rig.tell(|a| a.set_phase(Phase::Writing));
    let next = rig.tell(|a| a.set_phase(Phase::Success));
    assert_eq!(next, None);
    assert_eq!(state(4, &rig.leds.log()), [Some(1.0); 4]);
}

#[test]
fn blink_code_timing_in_user_space() {
    let mut rig = Rig::new(RecordingLeds::new(2), &LedConfig::default());
    assert_eq!(rig.tell(|a| a.fail(3)), Some(ms(250)));
    let mut timeline = vec![(0, lit(2, &rig.leds.log()).len())];
    for _ in 0..7 {
        let (t, _) = rig.step();
        timeline.push((t.as_millis(), lit(2, &rig.leds.log()).len()));
    }
    // 3 × (250 on, 350 off), the last off stretched to a 1500 ms pause, repeat.
    assert_eq!(
        timeline,
        [
            (0, 2),
            (250, 0),
            (600, 2),
            (850, 0),
            (1200, 2),
            (1450, 0),
            (2950, 2),
            (3200, 0),
        ]
    );
    assert_eq!(
        rig.leds.announcements(),
        [Announcement {
            phase: Phase::Failure,
            pattern: "blink-code".into(),
            error_class: Some(3)
        }]
    );
}

#[test]
fn blink_code_goes_to_the_kernel_where_it_can() {
    let mut rig = Rig::new(RecordingLeds::with_hardware(2), &LedConfig::default());
    assert_eq!(
        rig.tell(|a| a.fail(5)),
        None,
        "the kernel runs it; no wakeups"
    );
    let hw: Vec<_> = rig
        .leds
        .log()
        .into_iter()
        .filter_map(|r| match r {
            Recording::Hw { idx, cycle } => Some((idx, cycle)),
            _ => None,
        })
        .collect();
    let code = led::pattern::blink_code_cycle(5);
    assert_eq!(hw, [(0, code.clone()), (1, code)]);
}

#[test]
fn error_class_change_during_failure_restarts_the_code() {
    let mut rig = Rig::new(RecordingLeds::new(1), &LedConfig::default());
    rig.tell(|a| a.set_phase(Phase::Failure));
    rig.tell(|a| a.set_error_class(2));
    let classes: Vec<_> = rig
        .leds
        .announcements()
        .iter()
        .map(|a| a.error_class)
        .collect();
    assert_eq!(classes, [Some(led::animator::DEFAULT_ERROR_CLASS), Some(2)]);
}

#[test]
fn progress_fill_follows_progress_and_keeps_its_rhythm() {
    let config =
        LedConfig::from_board_toml("[leds]\nphases = { writing = \"progress\" }\n").unwrap();
    let mut rig = Rig::new(RecordingLeds::new(4), &config);
    assert_eq!(rig.tell(|a| a.set_phase(Phase::Writing)), Some(ms(300)));
    assert_eq!(lit(4, &rig.leds.log()), [0]);
    // Half way: two solid, the third blinking, on the same 300 ms grid.
    assert_eq!(rig.tell(|a| a.set_progress(0.5)), Some(ms(300)));
    assert_eq!(lit(4, &rig.leds.log()), [0, 1, 2]);
    let (t, _) = rig.step();
    assert_eq!(t, ms(300));
    assert_eq!(lit(4, &rig.leds.log()), [0, 1]);
    // Done: all solid, nothing left to animate.
    assert_eq!(rig.tell(|a| a.set_progress(1.0)), None);
    assert_eq!(lit(4, &rig.leds.log()), [0, 1, 2, 3]);
}

#[test]
fn progress_events_drive_the_animator() {
    let config =
        LedConfig::from_board_toml("[leds]\nphases = { writing = \"progress\" }\n").unwrap();
    let mut rig = Rig::new(RecordingLeds::new(4), &config);
    rig.tell(|a| a.on_event(Phase::Writing, Some(3), Some(4), None));
    assert_eq!(lit(4, &rig.leds.log()), [0, 1, 2, 3]);
    rig.tell(|a| a.on_event(Phase::Failure, None, None, Some(6)));
    assert_eq!(
        rig.leds.announcements().last().unwrap().error_class,
        Some(6)
    );
}

#[test]
fn board_override_and_unknown_name_fallback() {
    let mut config = LedConfig::default();
    config.phases.insert(Phase::Verifying, "fast-blink".into());
    config
        .phases
        .insert(Phase::Success, "no-such-pattern".into());
    let mut rig = Rig::new(RecordingLeds::new(1), &config);
    assert_eq!(rig.tell(|a| a.set_phase(Phase::Verifying)), Some(ms(100)));
    // An unknown name never stops the flash: the default (solid) is shown.
    assert_eq!(rig.tell(|a| a.set_phase(Phase::Success)), None);
    assert_eq!(state(1, &rig.leds.log()), [Some(1.0)]);
    let patterns: Vec<_> = rig
        .leds
        .announcements()
        .into_iter()
        .map(|a| a.pattern)
        .collect();
    assert_eq!(patterns, ["fast-blink", "solid"]);
}

#[test]
fn stop_hands_back_the_leds_and_restore_reaches_them() {
    let mut rig = Rig::new(RecordingLeds::new(1), &LedConfig::default());
    rig.tell(|a| a.set_phase(Phase::Success));
    let leds = rig.leds.clone();
    rig.anim.restore().unwrap();
    assert_eq!(leds.log().last(), Some(&Recording::Restore));
}

#[test]
fn failure_blink_code_runs_in_the_kernel_on_a_fake_tree() {
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = BBB_MAINLINE
        .iter()
        .map(|n| add_led(root.path(), n, 255, &triggers("heartbeat", true, true)))
        .collect();
    let config = bbb_config();
    let events = root.path().join("events.jsonl");
    let leds = led::open(root.path(), &config, Some(&events));
    let (clock, mut ctl) = FakeClock::new();
    let anim = Animator::start_with_clock(leds, &config, clock);
    ctl.next_deadline();
    anim.fail(2);
    ctl.interrupted();
    assert_eq!(ctl.next_deadline(), None);
    drop(anim.stop());
    for d in &dirs {
        assert_eq!(read(d.join("trigger")), "pattern");
        assert_eq!(
            read(d.join("pattern")),
            "255 250 255 0 0 350 0 0 255 250 255 0 0 1500 0 0"
        );
    }
    assert_eq!(
        read(&events),
        "{\"phase\":\"failure\",\"pattern\":\"blink-code\",\"error_class\":2}\n"
    );
}

#[test]
fn mixed_kernel_support_falls_back_to_user_space_for_all() {
    let root = tempfile::tempdir().unwrap();
    let a = add_led(root.path(), "a", 255, &triggers("heartbeat", true, true));
    let b = add_led(root.path(), "b", 255, &triggers("heartbeat", false, false));
    let config = LedConfig::from_board_toml(
        "[leds]\nleds = [{kind=\"class\", names=[\"a\"]}, {kind=\"class\", names=[\"b\"]}]\n",
    )
    .unwrap();
    let (clock, mut ctl) = FakeClock::new();
    let anim = Animator::start_with_clock(led::open(root.path(), &config, None), &config, clock);
    ctl.next_deadline();
    anim.set_phase(Phase::Verifying);
    ctl.interrupted();
    assert_eq!(ctl.next_deadline(), Some(ms(500)));
    // Both in user space, in step: "a" left the timer trigger for manual control.
    for d in [&a, &b] {
        assert_eq!(read(d.join("trigger")), "none");
        assert_eq!(read(d.join("brightness")), "255");
    }
    ctl.advance();
    ctl.next_deadline();
    for d in [&a, &b] {
        assert_eq!(read(d.join("brightness")), "0");
    }
    drop(anim.stop());
}
