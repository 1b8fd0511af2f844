//! Patterns as data: a timeline of steps, each giving every LED a brightness and
//! holding it for a while, either looping or shown once. Also the named built-in
//! patterns a board file can pick per phase, and the default phase → pattern map
//! (docs/leds.md, "What each phase shows").
//!
//! Timings are chosen to be told apart at a glance from across a room: the slow
//! blink (1 Hz) and fast blink (5 Hz) differ by 5×, the heartbeat is a double
//! pulse, and blink codes use long pulses with a long pause so they can be counted.

use crate::Phase;
use std::time::Duration;

/// Slow blink (verifying): 1 Hz.
pub const SLOW_BLINK: Duration = Duration::from_millis(500);
/// Fast blink (finishing; writing on a one-LED board): 5 Hz.
pub const FAST_BLINK: Duration = Duration::from_millis(100);
/// Running light: how long each LED stays lit before the next.
pub const RUNNING_STEP: Duration = Duration::from_millis(150);
/// Progress fill: half-period of the blinking "next" LED.
pub const PROGRESS_BLINK: Duration = Duration::from_millis(300);
/// Heartbeat: on, off, on, off (a "lub-dub" once a second).
pub const HEARTBEAT: [(f32, Duration); 4] = [
    (1.0, Duration::from_millis(100)),
    (0.0, Duration::from_millis(150)),
    (1.0, Duration::from_millis(100)),
    (0.0, Duration::from_millis(650)),
];
/// Blink code: each of the N blinks is on this long ...
pub const CODE_ON: Duration = Duration::from_millis(250);
/// ... then off this long ...
pub const CODE_OFF: Duration = Duration::from_millis(350);
/// ... and after the N-th blink the LEDs stay dark this long before repeating.
pub const CODE_PAUSE: Duration = Duration::from_millis(1500);
/// Highest blink-code class shown; larger classes are clamped (nobody counts 20 blinks).
pub const MAX_CODE: u8 = 15;

/// One step of a timeline: the brightness of every LED (0.0 off ..= 1.0 full),
/// held for `hold`. A zero `hold` only makes sense for the last step of a one-shot
/// pattern (it is then shown until the pattern changes).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub levels: Vec<f32>,
    pub hold: Duration,
}

/// A timeline of steps over `leds` LEDs.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    pub leds: usize,
    pub steps: Vec<Step>,
    /// Loop forever (true) or stop on the last step (false).
    pub repeat: bool,
}

/// What one LED does in a pattern the kernel can run on its own: stay at one level,
/// or cycle through (brightness, duration) pairs forever.
#[derive(Debug, Clone, PartialEq)]
pub enum LedPlan {
    Static(f32),
    Cycle(Vec<(f32, Duration)>),
}

impl Pattern {
    /// A pattern that shows `levels` and stays there.
    pub fn fixed(levels: Vec<f32>) -> Pattern {
        Pattern {
            leds: levels.len(),
            steps: vec![Step {
                levels,
                hold: Duration::ZERO,
            }],
            repeat: false,
        }
    }

    /// Every LED at `level`, forever.
    pub fn all(leds: usize, level: f32) -> Pattern {
        Pattern::fixed(vec![level; leds])
    }

    /// A looping pattern where every LED follows the same (level, duration) cycle.
    pub fn uniform(leds: usize, cycle: &[(f32, Duration)]) -> Pattern {
        Pattern {
            leds,
            steps: cycle
                .iter()
                .map(|&(level, hold)| Step {
                    levels: vec![level; leds],
                    hold,
                })
                .collect(),
            repeat: true,
        }
    }

    /// All LEDs blinking together: `on` lit, `off` dark.
    pub fn blink(leds: usize, on: Duration, off: Duration) -> Pattern {
        Pattern::uniform(leds, &[(1.0, on), (0.0, off)])
    }

    /// Heartbeat (double pulse, once a second) on the first LED; the others dark.
    pub fn heartbeat(leds: usize) -> Pattern {
        Pattern {
            leds,
            steps: HEARTBEAT
                .iter()
                .map(|&(level, hold)| {
                    let mut levels = vec![0.0; leds];
                    if let Some(first) = levels.first_mut() {
                        *first = level;
                    }
                    Step { levels, hold }
                })
                .collect(),
            repeat: true,
        }
    }

    /// One lit LED running 0, 1, .., N-1, N-2, .., 1 and back (a "Knight Rider"
    /// light). With one LED there is nothing to run across, so it blinks fast.
    pub fn running_light(leds: usize) -> Pattern {
        if leds <= 1 {
            return Pattern::blink(leds, FAST_BLINK, FAST_BLINK);
        }
        let positions = (0..leds).chain((1..leds - 1).rev());
        Pattern {
            leds,
            steps: positions
                .map(|lit| Step {
                    levels: (0..leds)
                        .map(|i| if i == lit { 1.0 } else { 0.0 })
                        .collect(),
                    hold: RUNNING_STEP,
                })
                .collect(),
            repeat: true,
        }
    }

    /// Progress fill: of N LEDs, `floor(fraction × N)` are solid and the next one
    /// blinks (so a slow stretch never looks like a hang). At 100 % all are solid.
    /// With one LED: it blinks until done, then stays on.
    pub fn progress(leds: usize, fraction: f32) -> Pattern {
        let fraction = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 1.0)
        };
        // `as` truncates towards zero, which is the floor here (fraction ≥ 0).
        let full = ((fraction * leds as f32) as usize).min(leds);
        if full == leds {
            return Pattern::all(leds, 1.0);
        }
        let step = |next_on: bool| Step {
            levels: (0..leds)
                .map(|i| {
                    if i < full || (i == full && next_on) {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect(),
            hold: PROGRESS_BLINK,
        };
        Pattern {
            leds,
            steps: vec![step(true), step(false)],
            repeat: true,
        }
    }

    /// Blink code on all LEDs: `class` short blinks, a long pause, repeated.
    /// Class 0 is shown as 1 blink and classes above [`MAX_CODE`] as `MAX_CODE`,
    /// so the LEDs never look like an all-off "success, powered down".
    pub fn blink_code(leds: usize, class: u8) -> Pattern {
        Pattern::uniform(leds, &blink_code_cycle(class))
    }

    /// The time one pass through the steps takes.
    pub fn cycle_length(&self) -> Duration {
        self.steps.iter().map(|s| s.hold).sum()
    }

    /// True if the pattern never changes after its first step is shown.
    pub fn is_static(&self) -> bool {
        match self.steps.len() {
            0 | 1 => true,
            _ => !self.repeat && self.steps.iter().all(|s| s.levels == self.steps[0].levels),
        }
    }

    /// If the kernel can run this pattern by itself, what each LED must do:
    /// the pattern loops, and every LED that changes follows the same cycle (the
    /// kernel starts each LED's trigger separately, so LEDs that must move *relative
    /// to each other*, like the running light, stay in user space).
    pub fn hardware_plan(&self) -> Option<Vec<LedPlan>> {
        if !self.repeat || self.steps.len() < 2 || self.cycle_length().is_zero() {
            return None;
        }
        let mut plans = Vec::with_capacity(self.leds);
        let mut shared: Option<&Vec<(f32, Duration)>> = None;
        let cycles: Vec<Vec<(f32, Duration)>> = (0..self.leds).map(|i| self.led_cycle(i)).collect();
        for cycle in &cycles {
            if cycle.len() == 1 {
                plans.push(LedPlan::Static(cycle[0].0));
                continue;
            }
            match shared {
                None => shared = Some(cycle),
                Some(s) if s == cycle => {}
                Some(_) => return None,
            }
            plans.push(LedPlan::Cycle(cycle.clone()));
        }
        Some(plans)
    }

    /// LED `i`'s own (level, duration) cycle, with runs of equal levels merged.
    fn led_cycle(&self, i: usize) -> Vec<(f32, Duration)> {
        let mut out: Vec<(f32, Duration)> = Vec::new();
        for step in &self.steps {
            let level = step.levels.get(i).copied().unwrap_or(0.0);
            match out.last_mut() {
                Some(last) if last.0 == level => last.1 += step.hold,
                _ => out.push((level, step.hold)),
            }
        }
        // A cycle that ends where it starts is one run across the loop boundary.
        if out.len() > 1 && out[0].0 == out[out.len() - 1].0 {
            if let Some((_, extra)) = out.pop() {
                out[0].1 += extra;
            }
        }
        out
    }
}

/// The (level, duration) cycle of blink code `class` (see [`Pattern::blink_code`]).
pub fn blink_code_cycle(class: u8) -> Vec<(f32, Duration)> {
    let n = class.clamp(1, MAX_CODE);
    let mut cycle = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        cycle.push((1.0, CODE_ON));
        cycle.push((0.0, if i + 1 == n { CODE_PAUSE } else { CODE_OFF }));
    }
    cycle
}

/// The built-in patterns, by the names board files use in `[leds.phases]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PatternSpec {
    /// Double pulse once a second on the first LED.
    Heartbeat,
    /// A light running back and forth (one LED: fast blink).
    RunningLight,
    /// LEDs fill up as the write advances; the next one blinks.
    Progress,
    /// All LEDs blinking together at 1 Hz.
    SlowBlink,
    /// All LEDs blinking together at 5 Hz.
    FastBlink,
    /// All LEDs on.
    Solid,
    /// All LEDs off.
    Off,
    /// N blinks, a pause, repeated; N is the error class.
    BlinkCode,
}

impl PatternSpec {
    pub const ALL: [PatternSpec; 8] = [
        PatternSpec::Heartbeat,
        PatternSpec::RunningLight,
        PatternSpec::Progress,
        PatternSpec::SlowBlink,
        PatternSpec::FastBlink,
        PatternSpec::Solid,
        PatternSpec::Off,
        PatternSpec::BlinkCode,
    ];
    pub const NAMES: [&'static str; 8] = [
        "heartbeat",
        "running-light",
        "progress",
        "slow-blink",
        "fast-blink",
        "solid",
        "off",
        "blink-code",
    ];

    pub fn name(self) -> &'static str {
        match self {
            PatternSpec::Heartbeat => "heartbeat",
            PatternSpec::RunningLight => "running-light",
            PatternSpec::Progress => "progress",
            PatternSpec::SlowBlink => "slow-blink",
            PatternSpec::FastBlink => "fast-blink",
            PatternSpec::Solid => "solid",
            PatternSpec::Off => "off",
            PatternSpec::BlinkCode => "blink-code",
        }
    }

    /// Parse a board file's pattern name (`all-off` is accepted for `off`).
    pub fn parse(name: &str) -> Option<PatternSpec> {
        if name == "all-off" {
            return Some(PatternSpec::Off);
        }
        PatternSpec::ALL.into_iter().find(|p| p.name() == name)
    }

    /// The default for a phase, from the LED language table in docs/leds.md.
    pub fn default_for(phase: Phase) -> PatternSpec {
        match phase {
            Phase::Starting | Phase::Searching => PatternSpec::Heartbeat,
            Phase::Writing => PatternSpec::RunningLight,
            Phase::Verifying => PatternSpec::SlowBlink,
            Phase::Finishing => PatternSpec::FastBlink,
            Phase::Success => PatternSpec::Solid,
            Phase::Failure => PatternSpec::BlinkCode,
        }
    }

    /// The timeline for `leds` LEDs, given the current progress (0..=1) and error class.
    pub fn build(self, leds: usize, progress: f32, error_class: u8) -> Pattern {
        match self {
            PatternSpec::Heartbeat => Pattern::heartbeat(leds),
            PatternSpec::RunningLight => Pattern::running_light(leds),
            PatternSpec::Progress => Pattern::progress(leds, progress),
            PatternSpec::SlowBlink => Pattern::blink(leds, SLOW_BLINK, SLOW_BLINK),
            PatternSpec::FastBlink => Pattern::blink(leds, FAST_BLINK, FAST_BLINK),
            PatternSpec::Solid => Pattern::all(leds, 1.0),
            PatternSpec::Off => Pattern::all(leds, 0.0),
            PatternSpec::BlinkCode => Pattern::blink_code(leds, error_class),
        }
    }
}

impl std::fmt::Display for PatternSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PatternSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PatternSpec::parse(s).ok_or_else(|| {
            format!(
                "unknown LED pattern {s:?}; expected one of: {}",
                PatternSpec::NAMES.join(", ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn lit(p: &Pattern) -> Vec<Vec<usize>> {
        p.steps
            .iter()
            .map(|s| (0..p.leds).filter(|&i| s.levels[i] > 0.0).collect())
            .collect()
    }

    #[test]
    fn running_light_goes_back_and_forth() {
        let p = Pattern::running_light(4);
        assert!(p.repeat);
        assert_eq!(
            lit(&p),
            vec![vec![0], vec![1], vec![2], vec![3], vec![2], vec![1]]
        );
        assert!(p.steps.iter().all(|s| s.hold == RUNNING_STEP));
        assert_eq!(lit(&Pattern::running_light(2)), vec![vec![0], vec![1]]);
    }

    #[test]
    fn running_light_on_one_led_is_a_fast_blink() {
        assert_eq!(
            Pattern::running_light(1),
            Pattern::blink(1, FAST_BLINK, FAST_BLINK)
        );
    }

    #[test]
    fn progress_fills_and_blinks_the_next_led() {
        assert_eq!(lit(&Pattern::progress(4, 0.0)), vec![vec![0], vec![]]);
        assert_eq!(
            lit(&Pattern::progress(4, 0.55)),
            vec![vec![0, 1, 2], vec![0, 1]]
        );
        assert_eq!(
            lit(&Pattern::progress(4, 0.99)),
            vec![vec![0, 1, 2, 3], vec![0, 1, 2]]
        );
        let done = Pattern::progress(4, 1.0);
        assert!(done.is_static());
        assert_eq!(lit(&done), vec![vec![0, 1, 2, 3]]);
        // Out-of-range input is clamped, not trusted.
        assert_eq!(Pattern::progress(4, 7.0), done);
        assert_eq!(Pattern::progress(4, f32::NAN), Pattern::progress(4, 0.0));
    }

    #[test]
    fn blink_code_has_n_blinks_then_a_pause() {
        let cycle = blink_code_cycle(3);
        assert_eq!(
            cycle,
            vec![
                (1.0, CODE_ON),
                (0.0, CODE_OFF),
                (1.0, CODE_ON),
                (0.0, CODE_OFF),
                (1.0, CODE_ON),
                (0.0, CODE_PAUSE),
            ]
        );
        let p = Pattern::blink_code(4, 3);
        assert_eq!(p.steps.len(), 6);
        assert!(p.steps.iter().all(|s| s.levels.len() == 4));
        assert_eq!(blink_code_cycle(0).len(), 2);
        assert_eq!(blink_code_cycle(200).len(), 2 * MAX_CODE as usize);
    }

    #[test]
    fn heartbeat_only_uses_the_first_led() {
        let p = Pattern::heartbeat(3);
        assert_eq!(lit(&p), vec![vec![0], vec![], vec![0], vec![]]);
        assert_eq!(p.cycle_length(), ms(1000));
    }

    #[test]
    fn static_patterns() {
        assert!(Pattern::all(4, 1.0).is_static());
        assert!(Pattern::all(0, 1.0).is_static());
        assert!(!Pattern::blink(2, ms(1), ms(1)).is_static());
    }

    #[test]
    fn hardware_plan_for_uniform_and_single_led_patterns() {
        let plan = Pattern::blink_code(2, 2).hardware_plan().unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0], LedPlan::Cycle(blink_code_cycle(2)));
        assert_eq!(plan[0], plan[1]);

        let hb = Pattern::heartbeat(3).hardware_plan().unwrap();
        assert_eq!(hb[1], LedPlan::Static(0.0));
        assert_eq!(hb[2], LedPlan::Static(0.0));
        assert_eq!(
            hb[0],
            LedPlan::Cycle(vec![
                (1.0, ms(100)),
                (0.0, ms(150)),
                (1.0, ms(100)),
                (0.0, ms(650))
            ])
        );

        // Progress: the solid LEDs are static, the next one cycles.
        let pr = Pattern::progress(3, 0.4).hardware_plan().unwrap();
        assert_eq!(pr[0], LedPlan::Static(1.0));
        assert!(matches!(pr[1], LedPlan::Cycle(_)));
        assert_eq!(pr[2], LedPlan::Static(0.0));
    }

    #[test]
    fn no_hardware_plan_for_lights_that_move_relative_to_each_other() {
        assert_eq!(Pattern::running_light(4).hardware_plan(), None);
        assert_eq!(Pattern::all(4, 1.0).hardware_plan(), None);
    }

    #[test]
    fn merged_cycles_join_across_the_loop() {
        // Running light on 3 LEDs: LED 0 is lit once per 4 steps.
        let p = Pattern::running_light(3);
        assert_eq!(p.led_cycle(0), vec![(1.0, ms(150)), (0.0, ms(450))]);
        // LED 2 is dark at the start and end: the runs merge into one.
        assert_eq!(p.led_cycle(2), vec![(0.0, ms(450)), (1.0, ms(150))]);
    }

    #[test]
    fn names_round_trip_and_defaults_follow_the_architecture() {
        for p in PatternSpec::ALL {
            assert_eq!(p.name().parse::<PatternSpec>(), Ok(p));
        }
        assert_eq!(PatternSpec::parse("all-off"), Some(PatternSpec::Off));
        assert_eq!(PatternSpec::parse("disco"), None);
        assert_eq!(
            PatternSpec::default_for(Phase::Starting),
            PatternSpec::Heartbeat
        );
        assert_eq!(
            PatternSpec::default_for(Phase::Searching),
            PatternSpec::Heartbeat
        );
        assert_eq!(
            PatternSpec::default_for(Phase::Writing),
            PatternSpec::RunningLight
        );
        assert_eq!(
            PatternSpec::default_for(Phase::Verifying),
            PatternSpec::SlowBlink
        );
        assert_eq!(PatternSpec::default_for(Phase::Success), PatternSpec::Solid);
        assert_eq!(
            PatternSpec::default_for(Phase::Failure),
            PatternSpec::BlinkCode
        );
    }

    fn solid_count(p: &Pattern) -> usize {
        // LEDs lit in every step.
        (0..p.leds)
            .filter(|&i| p.steps.iter().all(|s| s.levels[i] > 0.0))
            .count()
    }

    proptest::proptest! {
        #[test]
        fn every_builtin_is_well_formed(
            n in 0usize..10,
            progress in 0.0f32..=1.0,
            class in 0u8..=255,
        ) {
            for spec in PatternSpec::ALL {
                let p = spec.build(n, progress, class);
                proptest::prop_assert_eq!(p.leds, n);
                proptest::prop_assert!(!p.steps.is_empty());
                for step in &p.steps {
                    proptest::prop_assert_eq!(step.levels.len(), n);
                    proptest::prop_assert!(step.levels.iter().all(|l| (0.0..=1.0).contains(l)));
                }
                // A looping pattern always takes time (the animator never spins).
                if p.repeat {
                    proptest::prop_assert!(!p.cycle_length().is_zero());
                }
                // Each LED's merged cycle covers the whole cycle.
                for i in 0..n {
                    let total: Duration = p.led_cycle(i).iter().map(|c| c.1).sum();
                    proptest::prop_assert_eq!(total, p.cycle_length());
                }
            }
        }

        #[test]
        fn progress_never_goes_backwards(n in 1usize..12, a in 0.0f32..=1.0, b in 0.0f32..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            proptest::prop_assert!(
                solid_count(&Pattern::progress(n, lo)) <= solid_count(&Pattern::progress(n, hi))
            );
        }

        #[test]
        fn blink_code_shows_exactly_n_blinks(class in 1u8..=MAX_CODE) {
            let cycle = blink_code_cycle(class);
            let blinks = cycle.iter().filter(|c| c.0 > 0.0).count();
            proptest::prop_assert_eq!(blinks, class as usize);
            // The pause is the longest dark stretch, so the count is unambiguous.
            let longest_off = cycle.iter().filter(|c| c.0 == 0.0).map(|c| c.1).max();
            proptest::prop_assert_eq!(longest_off, Some(CODE_PAUSE));
        }
    }
}
