//! The real [`Steps`]: the kernel, the board's hardware, and the other parts of
//! the library (boards, storage, pipeline, fix-ups, record, LEDs).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use led::Phase;

use super::cmdline::Options;
use super::console::{open_events, Console};
use super::modules::{self, Finit, RealClock};
use super::mounts::{self, Nix, EARLY};
use super::power::{self, After, Power, System};
use super::run::{RunRecord, Steps, TargetInfo, WriteSummary};
use super::watchdog::{Disarm, Feeder, Watchdog};
use super::Error;
use crate::progress::{Event, Observer};

/// Observers that can be added to after they were handed out (the panic hook gets
/// this before the events path and the LEDs are known).
#[derive(Default)]
pub struct Sinks(RwLock<Vec<Box<dyn Observer>>>);

impl Sinks {
    pub fn add(&self, o: Box<dyn Observer>) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).push(o);
    }
}

impl Observer for Sinks {
    fn event(&self, e: &Event) {
        for o in self.0.read().unwrap_or_else(|e| e.into_inner()).iter() {
            o.event(e);
        }
    }
}

/// How often the block-device wait looks at /sys/block.
const POLL: Duration = Duration::from_millis(100);
/// How often the watchdog is fed; well under the usual 60 s (and most 10+ s) timeouts.
const FEED_EVERY: Duration = Duration::from_secs(2);

/// The real steps.
pub struct Real {
    root: PathBuf,
    pid1: bool,
    sinks: Arc<Sinks>,
    watchdog: Option<Feeder<File>>,
}

impl Real {
    /// `pid1`: whether this really is the board's init. When false, the steps that
    /// would disturb a host (mounts, console takeover, reboot) are skipped.
    pub fn new(root: &Path, pid1: bool) -> Self {
        let sinks = Arc::new(Sinks::default());
        // Before the console is attached this is the kernel's initial stderr,
        // which is /dev/console too.
        sinks.add(Box::new(Console::new(std::io::stderr())));
        Real {
            root: root.to_path_buf(),
            pid1,
            sinks,
            watchdog: None,
        }
    }

    /// The event sinks (console, events, LEDs), for the panic hook.
    pub fn observer(&self) -> Arc<dyn Observer> {
        self.sinks.clone()
    }

    fn note(&self, phase: Phase, msg: String) {
        self.sinks.event(&Event::phase(phase).with_message(msg));
    }

    /// Open the board's watchdog under the root and start feeding it.
    pub fn start_watchdog_at(&mut self, path: &Path) -> Result<(), Error> {
        let wd = Watchdog::open(&self.root, path)?;
        self.watchdog = Some(Feeder::spawn(wd, FEED_EVERY));
        Ok(())
    }
}

fn not_yet(what: &'static str) -> Error {
    Error::NotAvailable {
        what,
        detail: "not wired into init yet".into(),
    }
}

impl Steps for Real {
    fn mount(&mut self) -> Result<(), Error> {
        if !self.pid1 {
            return Ok(());
        }
        for (m, r) in mounts::mount_all(&self.root, EARLY, &mut Nix)? {
            if r == mounts::Mounted::Already {
                eprintln!("flasher: {m}: already mounted");
            }
        }
        match mounts::open_console(&self.root) {
            Ok(c) => mounts::attach(&c, &[0, 1, 2])?,
            // Keep the kernel's initial stdout/stderr: still the console on most boards.
            Err(e) => eprintln!("flasher: {e}"),
        }
        Ok(())
    }

    fn options(&mut self) -> Result<Options, Error> {
        let o = Options::from_root(&self.root)?;
        if let Some(path) = &o.events {
            match open_events(&self.root, path) {
                Ok(j) => self.sinks.add(Box::new(j)),
                // The console still shows everything; not worth failing the flash.
                Err(e) => self.note(Phase::Starting, format!("warning: {e}")),
            }
        }
        Ok(o)
    }

    fn load_modules(&mut self, o: &Options) -> Result<(), Error> {
        let order = modules::load_order(&self.root)?;
        let r = modules::load_all(&order, &mut Finit);
        for (name, errno) in &r.failed {
            self.note(
                Phase::Starting,
                format!("warning: module {name} failed to load: {errno}"),
            );
        }
        self.note(
            Phase::Starting,
            format!(
                "modules: {} loaded, {} already present, {} failed",
                r.loaded.len(),
                r.already.len(),
                r.failed.len()
            ),
        );
        let target = o
            .target
            .as_deref()
            .map(|t| t.trim_start_matches("/dev/").to_string());
        let seen = modules::wait_for_block_devices(
            &self.root,
            |names| match &target {
                Some(t) => names.iter().any(|n| n == t),
                None => modules::any_real_disk(names),
            },
            o.timeout,
            POLL,
            &mut RealClock::default(),
        )?;
        self.note(
            Phase::Starting,
            format!("block devices: {}", seen.join(", ")),
        );
        Ok(())
    }

    fn detect_board(&mut self, _o: &Options) -> Result<String, Error> {
        Err(not_yet("board detection"))
    }

    fn start_watchdog(&mut self) -> Result<(), Error> {
        Ok(())
    }

    fn find_payload(&mut self, _o: &Options) -> Result<(), Error> {
        Err(not_yet("storage scan"))
    }

    fn choose_target(&mut self, _o: &Options) -> Result<TargetInfo, Error> {
        Err(not_yet("target choice"))
    }

    fn write(&mut self, _o: &Options) -> Result<WriteSummary, Error> {
        Err(not_yet("pipeline"))
    }

    fn fixups(&mut self, _o: &Options) -> Result<(), Error> {
        Err(not_yet("partition fix-ups"))
    }

    fn bootloader(&mut self, _o: &Options) -> Result<(), Error> {
        Err(not_yet("bootloader"))
    }

    fn copy_config(&mut self, _o: &Options) -> Result<(), Error> {
        Err(not_yet("config copy"))
    }

    fn append_record(&mut self, _r: &RunRecord) -> Result<(), Error> {
        Err(not_yet("unit record"))
    }

    fn show(&mut self, e: &Event) {
        self.sinks.event(e);
    }

    fn finish(&mut self, after: After) {
        let wd = self.watchdog.as_mut().map(|w| w as &mut dyn Disarm);
        if self.pid1 {
            power::finish(after, wd, &mut System);
        } else {
            power::finish(after, wd, &mut NotPid1);
        }
    }
}

/// When not PID 1: say what would happen instead of rebooting the host, then park.
struct NotPid1;

impl Power for NotPid1 {
    fn sync(&mut self) {
        nix::unistd::sync();
    }
    fn reboot(&mut self, how: After) -> Result<(), nix::errno::Errno> {
        eprintln!("flasher: not PID 1, so not calling reboot(2) for {how}");
        Err(nix::errno::Errno::EPERM)
    }
    fn park(&mut self) {
        System.park()
    }
}
