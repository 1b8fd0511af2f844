//! `flasher leds`: show a phase's LED pattern on a board's real or fake LEDs, so
//! an operator can check a board's LEDs and tests can drive them. A static pattern
//! (success: all on) is left in place on exit; so is a pattern the kernel runs by
//! itself (blinking through the `timer`/`pattern` triggers). `--restore` hands the
//! LEDs back to their original triggers instead.
//!
//! Also [`LedObserver`], which subscribes an LED animator to the pipeline's
//! progress events.

use flasher_format::Phase;
use led::{Animator, LedConfig, LedSpec};
use std::path::PathBuf;
use std::time::Duration;

/// How long an animated pattern runs when `--for` is not given.
const DEFAULT_SECONDS: f64 = 10.0;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root of the /sys and /dev tree (a fake tree in tests).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// A built-in board whose LEDs to use (see `flasher boards`). Without this,
    /// --board-file or --led, the board is detected under --root.
    #[arg(long, conflicts_with = "board_file")]
    pub board: Option<String>,
    /// A board file (TOML) whose [leds] table to use.
    #[arg(long)]
    pub board_file: Option<PathBuf>,
    /// An LED-class LED by name (repeatable): added after the board's LEDs, or
    /// used alone when no board is given.
    #[arg(long = "led", value_name = "NAME")]
    pub leds: Vec<String>,
    /// The phase whose pattern to show: starting, searching, writing, verifying,
    /// finishing, success, failure.
    #[arg(long)]
    pub phase: Phase,
    /// How long to animate, in seconds. Default: 0 for a static pattern (success),
    /// 10 for animated ones.
    #[arg(long = "for", value_name = "SECONDS")]
    pub seconds: Option<f64>,
    /// The blink code shown in the failure phase (1-15; see docs/leds.md).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=15))]
    pub error_class: Option<u8>,
    /// Fraction done (0.0-1.0) for a board whose writing phase shows progress.
    #[arg(long)]
    pub progress: Option<f32>,
    /// Also write one JSON line per phase/pattern change to this file or tty.
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// On exit, give the LEDs back to the triggers they had (e.g. heartbeat).
    #[arg(long)]
    pub restore: bool,
}

/// The LED configuration `args` asks for, and where it came from.
fn config(args: &Args) -> flasher::Result<(LedConfig, String)> {
    let (mut config, source) = match (&args.board, &args.board_file) {
        (Some(name), _) => (boards::find(name)?.leds, format!("board {name}")),
        (None, Some(path)) => {
            let board = boards::load_file(path)?;
            let source = format!("board {} from {}", board.name, path.display());
            (board.leds, source)
        }
        (None, None) if !args.leds.is_empty() => (LedConfig::default(), "--led".to_string()),
        (None, None) => {
            // Nothing named: detect the board under --root, as the init does.
            let found = boards::detect(&args.root, None, &boards::builtin()?)?;
            let source = format!("board {} (detected by {})", found.board.name, found.how);
            (found.board.leds, source)
        }
    };
    config.leds.extend(args.leds.iter().map(|n| LedSpec::Class {
        names: vec![n.clone()],
    }));
    Ok((config, source))
}

pub fn run(args: Args) -> flasher::Result<()> {
    if let Some(s) = args.seconds.filter(|s| !s.is_finite() || *s < 0.0) {
        return Err(flasher::Error::Usage(format!(
            "--for {s}: give a number of seconds, 0 or more"
        )));
    }
    let (config, source) = config(&args)?;
    let spec = config.pattern_for(args.phase).map_err(|e| {
        flasher::Error::Usage(format!("{e}; fix the board file's [leds.phases] table"))
    })?;
    let opened = led::open_report(&args.root, &config, None);
    for w in &opened.warnings {
        tracing::warn!("{w}");
    }
    // Pattern changes go out as typed `led` events (docs/events.md), the same
    // lines /init writes to flasher.events=.
    let sink: Option<std::sync::Arc<dyn flasher::progress::Observer>> = match &args.events {
        Some(path) => match flasher::progress::open_events_at(path) {
            Ok(j) => Some(std::sync::Arc::new(j)),
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        },
        None => None,
    };
    let labels = led::Leds::labels(&opened.leds);
    let count = labels.len();
    let pattern = spec.build(
        count,
        args.progress.unwrap_or(0.0),
        args.error_class
            .unwrap_or(led::animator::DEFAULT_ERROR_CLASS),
    );
    println!(
        "{source}, phase {}: {} on {} LED{}{}",
        args.phase,
        spec,
        count,
        if count == 1 { "" } else { "s" },
        if labels.is_empty() {
            String::new()
        } else {
            format!(" ({})", labels.join(", "))
        }
    );
    if count == 0 && args.events.is_none() {
        println!("no LEDs found; the board reports phases on the console and with --events PATH");
    }

    let leds: Box<dyn led::Leds> = match &sink {
        Some(sink) => Box::new(flasher::progress::AnnouncingLeds::new(
            Box::new(opened.leds),
            std::sync::Arc::downgrade(sink),
        )),
        None => Box::new(opened.leds),
    };
    let animator = Animator::start(leds, &config);
    if let Some(f) = args.progress {
        animator.set_progress(f);
    }
    match (args.phase, args.error_class) {
        (Phase::Failure, Some(class)) => animator.fail(class),
        (phase, class) => {
            if let Some(class) = class {
                animator.set_error_class(class);
            }
            animator.set_phase(phase);
        }
    }
    let seconds = args.seconds.unwrap_or(if pattern.is_static() {
        0.0
    } else {
        DEFAULT_SECONDS
    });
    std::thread::sleep(Duration::from_secs_f64(seconds));
    if args.restore {
        animator.restore().map_err(|e| match e {
            led::Error::Io(e) => flasher::Error::Io(flasher_format::io::IoError::new(
                format!("restore LED trigger {}", e.context),
                e.source,
            )),
            other => flasher::Error::Usage(other.to_string()),
        })?;
    } else {
        // Static and kernel-run patterns stay as they are.
        drop(animator.stop());
    }
    Ok(())
}

/// The LED subscriber to the progress stream (shared with the on-board init).
pub use flasher::progress::LedObserver;

#[cfg(test)]
mod tests {
    use super::*;
    use flasher::progress::{Event, Observer};
    use std::path::Path;

    const BBB_VENDOR: [&str; 4] = [
        "beaglebone:green:usr0",
        "beaglebone:green:usr1",
        "beaglebone:green:usr2",
        "beaglebone:green:usr3",
    ];

    fn add_led(root: &Path, name: &str, trigger: &str) -> PathBuf {
        let dir = root.join("sys/class/leds").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("max_brightness"), "255\n").unwrap();
        std::fs::write(dir.join("brightness"), "0\n").unwrap();
        std::fs::write(dir.join("trigger"), trigger).unwrap();
        dir
    }

    fn args(root: &Path, phase: Phase) -> Args {
        Args {
            root: root.to_path_buf(),
            board: Some("beaglebone-black".into()),
            board_file: None,
            leds: vec![],
            phase,
            seconds: None,
            error_class: None,
            progress: None,
            events: None,
            restore: false,
        }
    }

    fn read(p: PathBuf) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    #[test]
    fn success_on_beaglebone_black_lights_all_four_and_stays() {
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<_> = BBB_VENDOR
            .iter()
            .map(|n| add_led(root.path(), n, "none [heartbeat] timer"))
            .collect();
        let events = root.path().join("events");
        run(Args {
            events: Some(events.clone()),
            ..args(root.path(), Phase::Success)
        })
        .unwrap();
        for d in dirs {
            assert_eq!(read(d.join("trigger")), "none");
            assert_eq!(read(d.join("brightness")), "255");
        }
        let lines: Vec<Event> = read(events)
            .lines()
            .map(|l| Event::parse(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].phase, Phase::Success);
        match &lines[0].body {
            flasher::progress::Body::Led { pattern, leds, .. } => {
                assert_eq!(pattern, "solid");
                assert_eq!(leds.len(), 4);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failure_with_a_class_leaves_the_kernel_blinking_the_code() {
        let root = tempfile::tempdir().unwrap();
        let d = add_led(
            root.path(),
            "beaglebone:green:usr0",
            "none [heartbeat] timer pattern",
        );
        run(Args {
            error_class: Some(2),
            seconds: Some(0.0),
            ..args(root.path(), Phase::Failure)
        })
        .unwrap();
        assert_eq!(read(d.join("trigger")), "pattern");
        assert_eq!(
            read(d.join("pattern")),
            "255 250 255 0 0 350 0 0 255 250 255 0 0 1500 0 0"
        );
        // Class 1 is a plain on/off cycle: the timer trigger suffices. (A fresh
        // tree: the fake `trigger` file now holds only what we wrote.)
        let root = tempfile::tempdir().unwrap();
        let d = add_led(
            root.path(),
            "beaglebone:green:usr0",
            "none [heartbeat] timer pattern",
        );
        run(Args {
            error_class: Some(1),
            seconds: Some(0.0),
            ..args(root.path(), Phase::Failure)
        })
        .unwrap();
        assert_eq!(read(d.join("trigger")), "timer");
        assert_eq!(read(d.join("delay_on")), "250");
        assert_eq!(read(d.join("delay_off")), "1500");
    }

    #[test]
    fn restore_puts_the_kernel_trigger_back() {
        let root = tempfile::tempdir().unwrap();
        let d = add_led(
            root.path(),
            "beaglebone:green:usr0",
            "none [heartbeat] timer",
        );
        run(Args {
            restore: true,
            ..args(root.path(), Phase::Success)
        })
        .unwrap();
        assert_eq!(read(d.join("trigger")), "heartbeat");
    }

    #[test]
    fn led_names_without_a_board() {
        let root = tempfile::tempdir().unwrap();
        let d = add_led(root.path(), "input0::capslock", "[none] kbd-capslock");
        run(Args {
            board: None,
            leds: vec!["input0::capslock".into()],
            ..args(root.path(), Phase::Success)
        })
        .unwrap();
        assert_eq!(read(d.join("brightness")), "255");
    }

    #[test]
    fn without_a_board_the_board_is_detected() {
        let root = tempfile::tempdir().unwrap();
        let d = add_led(
            root.path(),
            "beaglebone:green:heartbeat",
            "none [heartbeat]",
        );
        std::fs::create_dir_all(root.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            root.path().join("proc/device-tree/compatible"),
            "ti,am335x-bone-black\0ti,am335x-bone\0ti,am33xx\0",
        )
        .unwrap();
        run(Args {
            board: None,
            ..args(root.path(), Phase::Success)
        })
        .unwrap();
        assert_eq!(read(d.join("brightness")), "255");
    }

    #[test]
    fn undetectable_or_unknown_board_is_a_board_error() {
        let root = tempfile::tempdir().unwrap();
        let err = run(Args {
            board: None,
            ..args(root.path(), Phase::Success)
        })
        .unwrap_err();
        assert!(matches!(err, flasher::Error::Board(_)), "{err:?}");
        let err = run(Args {
            board: Some("no-such-board".into()),
            ..args(root.path(), Phase::Success)
        })
        .unwrap_err();
        assert!(matches!(
            err,
            flasher::Error::Board(boards::Error::UnknownBoard { .. })
        ));
    }

    #[test]
    fn board_file_gives_the_leds_and_overrides() {
        let root = tempfile::tempdir().unwrap();
        let d = add_led(root.path(), "beaglebone:green:usr0", "none [heartbeat]");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/data/beaglebone-black.toml"),
        )
        .unwrap();
        // The board's success phase overridden to all-off.
        let file = root.path().join("my-bbb.toml");
        std::fs::write(
            &file,
            text.replace("[leds]\n", "[leds]\nphases = { success = \"off\" }\n"),
        )
        .unwrap();
        std::fs::write(d.join("brightness"), "255").unwrap();
        run(Args {
            board: None,
            board_file: Some(file),
            ..args(root.path(), Phase::Success)
        })
        .unwrap();
        assert_eq!(read(d.join("brightness")), "0");
    }

    #[test]
    fn negative_duration_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let err = run(Args {
            seconds: Some(-1.0),
            ..args(root.path(), Phase::Success)
        })
        .unwrap_err();
        assert!(matches!(err, flasher::Error::Usage(_)));
    }

    #[test]
    fn observer_follows_progress_events() {
        let leds = led::backend::RecordingLeds::new(2);
        let observer = LedObserver(Animator::start(
            Box::new(leds.clone()),
            &LedConfig::default(),
        ));
        observer.event(&Event::phase(Phase::Writing));
        observer.event(&Event::failure(
            flasher_format::ErrorClass::WriteIo,
            "write error",
        ));
        // The LEDs' own echo and the unit record do not move them.
        observer.event(&Event::led(Phase::Writing, "running-light", vec![], None));
        observer.event(&Event::record(
            Phase::Finishing,
            1,
            flasher::progress::RecordResult::Error,
            "/dev/null",
            0,
        ));
        drop(observer.0.stop());
        let shown: Vec<_> = leds
            .announcements()
            .into_iter()
            .map(|a| (a.phase, a.error_class))
            .collect();
        assert_eq!(shown, [(Phase::Writing, None), (Phase::Failure, Some(4))]);
    }
}
