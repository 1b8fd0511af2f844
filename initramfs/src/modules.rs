//! Kernel modules and the wait for block devices. The initramfs builder
//! (`mkflasher initramfs`, `mkflasher build`) resolves the board's module
//! closure and writes `/lib/modules/load-order`, one module path per line with
//! dependencies first; PID 1 loads them in that order with `finit_module(2)` and
//! then polls `/sys/block` until the storage it needs shows up.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use led::Clock;
use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;

use super::Error;

/// Where the load order lives, relative to the root.
pub use flasher_format::card::initramfs::LOAD_ORDER;

/// Read `root/lib/modules/load-order`: module paths, one per line, `#` comments and
/// blank lines skipped; absolute paths are taken relative to `root`. A missing file
/// means there is nothing to load (a kernel with everything built in).
pub fn load_order(root: &Path) -> Result<Vec<PathBuf>, Error> {
    let path = root.join(LOAD_ORDER);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Read { path, source }),
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| root.join(l.trim_start_matches('/')))
        .collect())
}

/// The `finit_module(2)` call, behind a trait so tests record instead of loading.
pub trait Loader {
    fn load(&mut self, path: &Path) -> Result<(), Errno>;
}

/// `<linux/module.h>`: the kernel decompresses the module itself.
const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// The real `finit_module(2)`. Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`)
/// are handed to the kernel to decompress (Linux 5.17+).
pub struct Finit;

impl Loader for Finit {
    fn load(&mut self, path: &Path) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| {
            e.raw_os_error()
                .map(Errno::from_raw)
                .unwrap_or(Errno::ENOENT)
        })?;
        let name = path.to_string_lossy();
        let flags = if [".xz", ".zst", ".gz"].iter().any(|s| name.ends_with(s)) {
            // MODULE_INIT_COMPRESSED_FILE from <linux/module.h>; nix 0.29 lacks the name.
            ModuleInitFlags::from_bits_retain(MODULE_INIT_COMPRESSED_FILE)
        } else {
            ModuleInitFlags::empty()
        };
        nix::kmod::finit_module(&file, c"", flags)
    }
}

/// What loading the list did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadReport {
    pub loaded: Vec<String>,
    /// EEXIST: built in or loaded before; fine.
    pub already: Vec<String>,
    /// Module name and errno; loading went on with the rest.
    pub failed: Vec<(String, Errno)>,
}

/// A module's name from its path: `/lib/modules/6.1/.../sdhci-pci.ko.xz` → `sdhci-pci`.
pub fn module_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    match file.find(".ko") {
        Some(i) => file[..i].to_string(),
        None => file,
    }
}

/// Load every module in order. A failure is logged with the module and errno and
/// loading continues: a missing optional driver should not stop the flash, and the
/// block-device wait that follows reports what is really missing.
pub fn load_all(paths: &[PathBuf], loader: &mut dyn Loader) -> LoadReport {
    let mut r = LoadReport::default();
    for p in paths {
        let name = module_name(p);
        match loader.load(p) {
            Ok(()) => r.loaded.push(name),
            Err(Errno::EEXIST) => r.already.push(name),
            Err(e) => {
                tracing::warn!("loading module {name} ({}) failed: {e}", p.display());
                r.failed.push((name, e));
            }
        }
    }
    r
}

/// The names under `root/sys/block`, sorted.
pub fn block_devices(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sys/block"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    names
}

/// Poll `root/sys/block` every `poll` until `ready` accepts the list of devices, or
/// `timeout` passes. Returns the devices seen when ready; on timeout the error lists
/// what was seen, so the console says which disk never came. Time is `clock`'s
/// (`led::SystemClock` on the board), so tests do not sleep.
pub fn wait_for_block_devices(
    root: &Path,
    mut ready: impl FnMut(&[String]) -> bool,
    timeout: Duration,
    poll: Duration,
    clock: &impl Clock,
) -> Result<Vec<String>, Error> {
    let start = clock.now();
    loop {
        let seen = block_devices(root);
        if ready(&seen) {
            return Ok(seen);
        }
        let waited = clock.now().saturating_sub(start);
        if waited >= timeout {
            return Err(Error::NoBlockDevices {
                waited,
                seen: seen.join(", "),
            });
        }
        clock.sleep(poll.min(timeout - waited));
    }
}

/// The default readiness test: at least one block device that is not a RAM disk,
/// loop device or zram (those exist before any storage driver has probed).
pub fn any_real_disk(names: &[String]) -> bool {
    names
        .iter()
        .any(|n| !(n.starts_with("ram") || n.starts_with("loop") || n.starts_with("zram")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use led::clock::Wake;
    use std::cell::{Cell, RefCell};

    #[test]
    fn reads_load_order_relative_to_root() {
        let root = tempfile::tempdir().unwrap();
        assert!(load_order(root.path()).unwrap().is_empty());
        std::fs::create_dir_all(root.path().join("lib/modules")).unwrap();
        std::fs::write(
            root.path().join(LOAD_ORDER),
            "# deps first\n/lib/modules/6.1/mmc_core.ko\n\n/lib/modules/6.1/sdhci.ko\n  /lib/modules/6.1/sdhci-pci.ko.xz  \n",
        )
        .unwrap();
        let got = load_order(root.path()).unwrap();
        assert_eq!(
            got,
            [
                root.path().join("lib/modules/6.1/mmc_core.ko"),
                root.path().join("lib/modules/6.1/sdhci.ko"),
                root.path().join("lib/modules/6.1/sdhci-pci.ko.xz"),
            ]
        );
        assert_eq!(module_name(&got[2]), "sdhci-pci");
    }

    struct Fake {
        order: Vec<String>,
    }
    impl Loader for Fake {
        fn load(&mut self, path: &Path) -> Result<(), Errno> {
            let n = module_name(path);
            self.order.push(n.clone());
            match n.as_str() {
                "mmc_core" => Err(Errno::EEXIST),
                "cqhci" => Err(Errno::ENOEXEC),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn loads_in_order_and_continues_after_failure() {
        let paths: Vec<PathBuf> = ["mmc_core.ko", "cqhci.ko", "sdhci.ko", "sdhci-pci.ko"]
            .iter()
            .map(PathBuf::from)
            .collect();
        let mut fake = Fake { order: vec![] };
        let r = load_all(&paths, &mut fake);
        assert_eq!(fake.order, ["mmc_core", "cqhci", "sdhci", "sdhci-pci"]);
        assert_eq!(r.already, ["mmc_core"]);
        assert_eq!(r.failed, [("cqhci".to_string(), Errno::ENOEXEC)]);
        assert_eq!(r.loaded, ["sdhci", "sdhci-pci"]);
    }

    #[test]
    fn finit_reports_missing_file() {
        assert_eq!(
            Finit.load(Path::new("/nonexistent/x.ko")),
            Err(Errno::ENOENT)
        );
    }

    /// A clock that only moves when slept, and runs a hook on each sleep.
    struct FakeClock<F: FnMut(u32)> {
        now: Cell<Duration>,
        sleeps: Cell<u32>,
        on_sleep: RefCell<F>,
    }
    impl<F: FnMut(u32) + Send + 'static> Clock for FakeClock<F> {
        fn now(&self) -> Duration {
            self.now.get()
        }
        /// A sleep jumps to its deadline (`Clock::sleep` asks for `now + d`).
        fn sleep_until<T: Send>(
            &self,
            deadline: Option<Duration>,
            _: &crossbeam_channel::Receiver<T>,
        ) -> Wake<T> {
            let deadline = deadline.expect("the block-device wait always has a deadline");
            self.now.set(deadline);
            self.sleeps.set(self.sleeps.get() + 1);
            (self.on_sleep.borrow_mut())(self.sleeps.get());
            Wake::Deadline
        }
    }

    #[test]
    fn waits_until_the_disk_appears() {
        let root = tempfile::tempdir().unwrap();
        let block = root.path().join("sys/block");
        std::fs::create_dir_all(block.join("ram0")).unwrap();
        let b = block.clone();
        let clock = FakeClock {
            now: Cell::new(Duration::ZERO),
            sleeps: Cell::new(0),
            on_sleep: RefCell::new(move |n| {
                if n == 3 {
                    std::fs::create_dir(b.join("mmcblk0")).unwrap();
                }
            }),
        };
        let seen = wait_for_block_devices(
            root.path(),
            any_real_disk,
            Duration::from_secs(10),
            Duration::from_millis(100),
            &clock,
        )
        .unwrap();
        assert_eq!(seen, ["mmcblk0", "ram0"]);
        assert_eq!(clock.sleeps.get(), 3);
        assert_eq!(clock.now.get(), Duration::from_millis(300));
    }

    #[test]
    fn times_out_listing_what_it_saw() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/block/loop0")).unwrap();
        let clock = FakeClock {
            now: Cell::new(Duration::ZERO),
            sleeps: Cell::new(0),
            on_sleep: RefCell::new(|_| {}),
        };
        let r = wait_for_block_devices(
            root.path(),
            |names| names.iter().any(|n| n == "nvme0n1"),
            Duration::from_secs(1),
            Duration::from_millis(300),
            &clock,
        );
        match r {
            Err(Error::NoBlockDevices { waited, seen }) => {
                assert_eq!(waited, Duration::from_secs(1));
                assert_eq!(seen, "loop0");
            }
            other => panic!("expected timeout, got {other:?}"),
        }
        // 300 + 300 + 300 + the last 100 up to the timeout.
        assert_eq!(clock.sleeps.get(), 4);
    }
}
