//! How a PID-1 run ends: disarm the watchdog, sync, then `reboot(2)` with the
//! chosen mode; or keep the watchdog fed, sync and park forever. The system
//! calls sit behind [`Power`] so tests record the sequence instead of switching
//! the machine off; off PID 1 (`flasher-init` run by hand on a workstation),
//! `NotPid1` says what it would do instead of rebooting the host.

use std::time::Duration;

use nix::errno::Errno;

use super::watchdog::Disarm;
pub use flasher_format::cmdline::After;

/// The system calls that end a run.
pub trait Power {
    /// Flush every filesystem and block device cache (`sync(2)`).
    fn sync(&mut self);
    /// `reboot(2)` with this mode (never [`After::Wait`]). The real one only returns
    /// on failure; fakes return `Ok(())` to mean "the machine went down".
    fn reboot(&mut self, how: After) -> Result<(), Errno>;
    /// Sleep forever. The real one never returns; fakes record and return.
    fn park(&mut self);
}

/// The real system calls.
pub struct System;

impl Power for System {
    fn sync(&mut self) {
        nix::unistd::sync();
    }

    fn reboot(&mut self, how: After) -> Result<(), Errno> {
        use nix::sys::reboot::{reboot, RebootMode};
        let mode = match how {
            After::PowerOff => RebootMode::RB_POWER_OFF,
            After::Reboot => RebootMode::RB_AUTOBOOT,
            After::Halt => RebootMode::RB_HALT_SYSTEM,
            After::Wait => return Ok(()),
        };
        // reboot(2) only returns on failure (e.g. EPERM when not PID 1 / no CAP_SYS_BOOT).
        match reboot(mode) {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }

    fn park(&mut self) {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// When not PID 1: say what would happen instead of rebooting the host, then park.
pub(crate) struct NotPid1;

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

/// End the run without ever letting the watchdog reset the board into a second
/// flash. `wait` (the default after a failure): keep the watchdog fed while the
/// board parks showing its result; feeding also holds on kernels built with
/// `CONFIG_WATCHDOG_NOWAYOUT`, where the magic close is ignored and a disarmed
/// watchdog would reset the board. Power-off, reboot, halt: disarm first (so the
/// halted or rebooting board is not reset mid-way), sync, then `reboot(2)`. If
/// `reboot(2)` fails, say so on stderr, keep the watchdog fed if it could not be
/// disarmed, and park: PID 1 never exits.
pub fn finish(after: After, watchdog: Option<&mut dyn Disarm>, power: &mut dyn Power) {
    if after == After::Wait {
        if let Some(wd) = watchdog {
            wd.keep_feeding();
        }
        power.sync();
        power.park();
        return;
    }
    let mut undisarmed = None;
    if let Some(wd) = watchdog {
        if let Err(e) = wd.disarm() {
            // Keep going: a watchdog that cannot be disarmed may reset the board,
            // but powering off still beats hanging.
            eprintln!("flasher: watchdog disarm failed: {e}");
            undisarmed = Some(wd);
        }
    }
    power.sync();
    if let Err(e) = power.reboot(after) {
        eprintln!("flasher: {after} failed: {e}; staying on instead");
        if let Some(wd) = undisarmed {
            wd.keep_feeding();
        }
        power.park();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records the calls, in order, shared with a fake watchdog.
    #[derive(Default)]
    pub struct FakePower {
        pub calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        pub fail_reboot: Option<Errno>,
    }

    impl Power for FakePower {
        fn sync(&mut self) {
            self.calls.lock().unwrap().push("sync".into());
        }
        fn reboot(&mut self, how: After) -> Result<(), Errno> {
            self.calls.lock().unwrap().push(format!("reboot {how}"));
            match self.fail_reboot {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
        fn park(&mut self) {
            self.calls.lock().unwrap().push("park".into());
        }
    }

    pub struct FakeWatchdog(pub std::sync::Arc<std::sync::Mutex<Vec<String>>>);
    impl Disarm for FakeWatchdog {
        fn disarm(&mut self) -> std::io::Result<()> {
            self.0.lock().unwrap().push("disarm".into());
            Ok(())
        }
        fn keep_feeding(&mut self) {
            self.0.lock().unwrap().push("keep feeding".into());
        }
    }

    fn run(after: After, fail: Option<Errno>) -> Vec<String> {
        let mut p = FakePower {
            fail_reboot: fail,
            ..Default::default()
        };
        let mut wd = FakeWatchdog(p.calls.clone());
        finish(after, Some(&mut wd), &mut p);
        let calls = p.calls.lock().unwrap().clone();
        calls
    }

    #[test]
    fn disarm_then_sync_then_power_off() {
        assert_eq!(
            run(After::PowerOff, None),
            ["disarm", "sync", "reboot poweroff"]
        );
        assert_eq!(
            run(After::Reboot, None),
            ["disarm", "sync", "reboot reboot"]
        );
        assert_eq!(run(After::Halt, None), ["disarm", "sync", "reboot halt"]);
    }

    #[test]
    fn wait_keeps_feeding_and_parks() {
        assert_eq!(run(After::Wait, None), ["keep feeding", "sync", "park"]);
    }

    #[test]
    fn failed_reboot_parks() {
        assert_eq!(
            run(After::PowerOff, Some(Errno::EPERM)),
            ["disarm", "sync", "reboot poweroff", "park"]
        );
    }

    #[test]
    fn no_watchdog() {
        let mut p = FakePower::default();
        finish(After::PowerOff, None, &mut p);
        assert_eq!(*p.calls.lock().unwrap(), ["sync", "reboot poweroff"]);
    }

    #[test]
    fn after_round_trips() {
        for a in [After::PowerOff, After::Reboot, After::Halt, After::Wait] {
            assert_eq!(a.to_string().parse::<After>(), Ok(a));
        }
        assert!("off".parse::<After>().is_err());
    }
}
