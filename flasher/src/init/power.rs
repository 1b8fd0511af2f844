//! How a PID-1 run ends: disarm the watchdog, sync, then `reboot(2)` with the
//! chosen mode, or park forever. The system calls sit behind [`Power`] so tests
//! record the sequence instead of switching the machine off.

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

/// End the run: disarm the watchdog first (so a power-off or a long wait never turns
/// into a watchdog reset, which would start flashing again), sync, then reboot with
/// `after`'s mode. If `reboot(2)` fails, say so on stderr and park: PID 1 never exits.
pub fn finish(after: After, watchdog: Option<&mut dyn Disarm>, power: &mut dyn Power) {
    if let Some(wd) = watchdog {
        if let Err(e) = wd.disarm() {
            // Keep going: a watchdog that cannot be disarmed may reset the board,
            // but powering off still beats hanging.
            eprintln!("flasher: watchdog disarm failed: {e}");
        }
    }
    power.sync();
    if after == After::Wait {
        power.park();
        return;
    }
    if let Err(e) = power.reboot(after) {
        eprintln!("flasher: {after} failed: {e}; staying on instead");
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
    fn wait_disarms_and_parks() {
        assert_eq!(run(After::Wait, None), ["disarm", "sync", "park"]);
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
