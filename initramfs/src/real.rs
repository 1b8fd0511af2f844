//! The real [`Steps`]: [`Real`] carries a run's state from step to step and does
//! each step on the kernel and the board's hardware, all under one root path,
//! through the engine (`flasher`: storage, pipeline, eMMC), the board data
//! (`boards`) and the LEDs (`led`). It reads the card's `flash-boot` FAT here
//! (bootloader files, config, the per-unit data pool). The rest lives beside
//! it: the event fan-out in [`sinks`](crate::sinks), the unit log and the
//! records in [`unit_log`](crate::unit_log), the eMMC health gate and boot
//! enable in [`emmc`](crate::emmc), how the run ends in [`power`].

use flasher_format::io::IoContext;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use flasher_format::Phase;

use super::console::{open_events, Console};
use super::modules::{self, Finit};
use super::mounts::{self, Nix, EARLY};
use super::power::{self, After, NotPid1, Power, System};
use super::run::{RunRecord, Steps, TargetInfo, WriteSummary};
use super::sinks::Sinks;
use super::unit_log::{
    append_to, claimed_message, disk_identity, summary, target_identity, unit_record,
};
use super::watchdog::{Disarm, Feeder, Liveness, Watchdog};
use super::Error;
use boards::Placement;
use flasher::blockdev::{self, Device};
use flasher::config_inject::{CardConfig, UnitData};
use flasher::pipeline::commit::TableCommit;
use flasher::pipeline::{self, post, WriteOptions, WriteReport};
use flasher::progress::{Event, Observer, RecordResult};
use flasher::storage::{self, BootMedium, Disk};
use flasher_format::bundle::{self, Trust};
use flasher_format::card as card_layout;
use flasher_format::cmdline::{Options, Verify};
use flasher_format::pool::{self, Pool};
use flasher_format::record::{StorageHealth, TargetIdentity, UnitRecord};

/// Opens the EXT_CSD access of a whole-disk eMMC node (the ioctl; a fake in tests).
pub type ExtCsdOpener =
    Box<dyn FnMut(&Path) -> std::io::Result<Box<dyn flasher::emmc::ext_csd::ExtCsd>> + Send>;

/// How often the block-device wait looks at /sys/block.
const POLL: Duration = Duration::from_millis(100);
/// How often the watchdog is fed; well under the usual timeouts (10 to 60 s).
const FEED_EVERY: Duration = Duration::from_secs(2);
/// How long the success pattern shows before power-off, unless the board says.
const SUCCESS_HOLD: Duration = Duration::from_secs(3);
/// The card's boot FAT partition name.
pub const FLASH_BOOT: &str = "flash-boot";
/// A board-supplied (or user-supplied) board file that overrides the built-in one.
pub const BOARD_OVERRIDE: &str = flasher_format::card::initramfs::BOARD_FILE;

/// The real steps. The fields the `impl Real` blocks of [`emmc`](crate::emmc) and
/// [`unit_log`](crate::unit_log) use are `pub(crate)`.
pub struct Real {
    pub(crate) root: PathBuf,
    pid1: bool,
    sinks: Arc<Sinks>,
    watchdog: Option<Feeder<File>>,
    /// When the run last made progress; the watchdog feeder reads it.
    liveness: Option<Arc<Liveness>>,
    pub(crate) board: Option<boards::Board>,
    /// What the storage scan saw, and the boot medium among it.
    disks: Vec<Disk>,
    boot: Option<BootMedium>,
    /// The boot medium's payload and log partitions (device nodes).
    payload: Option<PathBuf>,
    pub(crate) log: Option<PathBuf>,
    /// The card's flash-boot FAT partition (config and bootloader files).
    card_boot: Option<PathBuf>,
    /// The chosen target's device node and identity.
    pub(crate) target: Option<PathBuf>,
    pub(crate) identity: TargetIdentity,
    /// The target's eMMC health as read by the gate (none on other storage).
    pub(crate) health: Option<StorageHealth>,
    report: Option<WriteReport>,
    /// The board's bootloader files, read from the card before the first write.
    boot_files: Vec<(String, Vec<u8>)>,
    /// The card's config, read once before the first write: the bytes the
    /// pins were checked on are the bytes copied (docs/fail-closed.md).
    card_config: CardConfig,
    /// Who signed the payload ("unsigned", a key fingerprint), for the record.
    signer: String,
    /// The row claimed from the card's per-unit data pool, with its files.
    unit: Option<UnitData>,
    succeeded: bool,
    /// `reboot(2)` and friends; a fake in tests.
    power: Box<dyn Power + Send>,
    /// Overrides the success hold before power-off (tests use zero).
    hold: Option<Duration>,
    /// EXT_CSD access for `emmc.boot_enable`.
    pub(crate) ext_csd: ExtCsdOpener,
}

impl Real {
    /// `pid1`: whether this really is the board's init. When false, the steps that
    /// would disturb a host (mounts, console takeover, reboot) are skipped.
    pub fn new(root: &Path, pid1: bool) -> Self {
        let sinks = Arc::new(Sinks::default());
        // Before the console is attached this is the kernel's initial stderr,
        // which is /dev/console too; after `mount` fd 2 is the console we opened.
        sinks.add(Box::new(Console::new(std::io::stderr())));
        Real {
            root: root.to_path_buf(),
            pid1,
            sinks,
            watchdog: None,
            liveness: None,
            board: None,
            disks: Vec::new(),
            boot: None,
            payload: None,
            log: None,
            card_boot: None,
            target: None,
            identity: TargetIdentity::default(),
            health: None,
            report: None,
            boot_files: Vec::new(),
            card_config: CardConfig::default(),
            signer: String::new(),
            unit: None,
            succeeded: false,
            power: if pid1 {
                Box::new(System)
            } else {
                Box::new(NotPid1)
            },
            hold: None,
            ext_csd: Box::new(|dev| {
                Ok(Box::new(flasher::emmc::ext_csd::MmcIoctl::open(dev)?)
                    as Box<dyn flasher::emmc::ext_csd::ExtCsd>)
            }),
        }
    }

    /// Use another EXT_CSD access (tests: a fake register).
    pub fn with_ext_csd(mut self, open: ExtCsdOpener) -> Self {
        self.ext_csd = open;
        self
    }

    /// Use another power backend and success hold (tests: a recorder and zero).
    pub fn with_power(mut self, power: Box<dyn Power + Send>, hold: Duration) -> Self {
        self.power = power;
        self.hold = Some(hold);
        self
    }

    /// The event sinks (console, events, LEDs), for the panic hook.
    pub fn observer(&self) -> Arc<dyn Observer> {
        self.sinks.clone()
    }

    pub(crate) fn note(&self, phase: Phase, msg: String) {
        self.sinks.event(&Event::message(phase, msg));
    }

    /// The card's `flasher-log` partition when the run failed before the payload
    /// search: poll for the boot medium for up to [`LATE_LOG_WAIT`].
    fn late_log(&self) -> Option<PathBuf> {
        let deadline = std::time::Instant::now() + LATE_LOG_WAIT;
        loop {
            let found = storage::scan(&self.root)
                .ok()
                .and_then(|disks| storage::find_boot_medium(&disks, None).ok().flatten())
                .and_then(|boot| boot.log.map(|l| l.dev_path));
            if found.is_some() || std::time::Instant::now() >= deadline {
                return found;
            }
            self.alive();
            std::thread::sleep(POLL);
        }
    }

    pub(crate) fn board(&self) -> crate::Result<&boards::Board> {
        self.board
            .as_ref()
            .ok_or_else(|| missing("a detected board"))
    }

    /// Open the watchdog at `path` under the root and start feeding it while the
    /// run makes progress (no progress for `stall`: feeding stops).
    pub fn start_watchdog_at(&mut self, path: &Path, stall: Duration) -> Result<(), Error> {
        let wd = Watchdog::open(&self.root, path)?;
        let live = Arc::new(Liveness::new(Box::new(led::SystemClock::new()), stall));
        self.sinks.add(Box::new(live.clone()));
        self.watchdog = Some(Feeder::spawn(wd, FEED_EVERY, live.clone()));
        self.liveness = Some(live);
        Ok(())
    }

    /// The run is alive though it emits no event (a poll loop going round).
    fn alive(&self) {
        if let Some(l) = &self.liveness {
            l.touch();
        }
    }

    /// `flasher.target=NAME`: that disk, but never the boot medium
    /// (docs/architecture.md rule 1, compared by major:minor) and never a disk
    /// in use or read-only.
    fn named_target(&self, name: &str) -> crate::Result<Disk> {
        let name = name.trim_start_matches("/dev/");
        let seen = || {
            self.disks
                .iter()
                .map(|d| d.summary(self.boot.as_ref()))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let Some(disk) = self.disks.iter().find(|d| d.name == name) else {
            return Err(Error::TargetRefused {
                name: name.to_string(),
                why: "no such disk".into(),
                seen: seen(),
            });
        };
        let why = if self.boot.as_ref().is_some_and(|b| b.dev == disk.dev) {
            Some("it is the boot medium holding the payload".to_string())
        } else if !disk.uses.is_empty() {
            Some(format!("it is in use ({})", disk.uses.join(", ")))
        } else if disk.read_only {
            Some("it is read-only".to_string())
        } else {
            None
        };
        match why {
            Some(why) => Err(Error::TargetRefused {
                name: name.to_string(),
                why,
                seen: seen(),
            }),
            None => Ok(disk.clone()),
        }
    }

    /// Use these devices instead of storage discovery (the payload and log
    /// partitions on the boot medium, and the target disk).
    pub fn set_devices(
        &mut self,
        payload: PathBuf,
        log: Option<PathBuf>,
        card_boot: Option<PathBuf>,
        target: PathBuf,
    ) {
        self.payload = Some(payload);
        self.log = log;
        self.card_boot = card_boot;
        self.target = Some(target);
    }

    /// Open the target for the post-write steps with O_DIRECT, so every
    /// read-back comes from the medium, not the page cache.
    fn open_device(&self) -> crate::Result<Device> {
        let target = self.target.clone().ok_or_else(|| missing("a target"))?;
        Ok(Device::open(
            &target,
            blockdev::OpenOptions {
                write: true,
                direct: true,
                exclusive: true,
            },
        )?)
    }

    /// The table commit the write step left for the end of the run (with
    /// the image's held-back signatures in it).
    fn pending_commit(&self) -> crate::Result<TableCommit> {
        self.report
            .as_ref()
            .and_then(|r| r.commit.clone())
            .ok_or_else(|| missing("a pending partition-table commit"))
    }

    /// Keep what a step changed in the commit's signature ranges (the boot
    /// FAT's first sectors, a bootloader over a superblock) for the commit.
    fn keep_commit(&mut self, commit: TableCommit) {
        if let Some(r) = self.report.as_mut() {
            r.commit = Some(commit);
        }
    }

    /// A bootloader file read before the write.
    fn boot_file(&self, file: &str) -> crate::Result<&[u8]> {
        self.boot_files
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, d)| d.as_slice())
            .ok_or_else(|| missing("the bootloader file read before the write"))
    }

    /// The card's config (none without a flash-boot partition), read and
    /// checked once.
    fn read_card_config(&self) -> crate::Result<CardConfig> {
        let Some(card) = self.card_boot.as_ref() else {
            return Ok(CardConfig::default());
        };
        let f =
            File::open(card).with_context(|| format!("open card partition {}", card.display()))?;
        Ok(CardConfig::read(f)?)
    }

    /// The card's per-unit data pool, if it has one: parsed, and pinned by
    /// the manifest when keys are trusted (the pool is the same on every
    /// unit, so it can be signed; it pins the `units/` files in turn).
    /// Returns the pool and its digest.
    fn card_pool(
        &self,
        trust: &Trust,
        manifest: &bundle::Manifest,
    ) -> crate::Result<Option<(Pool, String)>> {
        let Some(data) = self.card_read(pool::POOL_FILE, pool::MAX_POOL_BYTES)? else {
            return Ok(None);
        };
        trust.check_file(manifest, pool::POOL_FILE, &data)?;
        let p = Pool::parse(&data)?;
        Ok(Some((p, pool::digest(&data))))
    }

    /// The next row of `pool` for this run and its files from the card's
    /// `units/`, each checked against the pool (so against the pin). Nothing
    /// is written yet: [`Real::begin_attempt`] records the claim.
    fn pick_row(
        &self,
        pool: &Pool,
        digest: &str,
        records: &[UnitRecord],
    ) -> crate::Result<UnitData> {
        if self.log.is_none() {
            return Err(Error::PoolWithoutLog);
        }
        let row = pool.claim(records, digest)?;
        let mut files = Vec::new();
        for name in pool.row_files(row.index) {
            let path = format!("{}/{name}", pool::UNITS_DIR);
            let data =
                self.card_read(&path, pool::MAX_UNIT_FILE)?
                    .ok_or(pool::Error::FileMissing {
                        name: name.clone(),
                        row: row.index,
                    })?;
            pool.check_file(&name, &data)?;
            files.push((name, data));
        }
        Ok(UnitData { row, files })
    }

    /// Read `file` from the card's flash-boot FAT.
    fn card_file(&self, file: &str) -> crate::Result<Vec<u8>> {
        let not_there = || Error::BootloaderFile {
            file: file.to_string(),
            card: self.card_boot.clone(),
        };
        if self.card_boot.is_none() {
            return Err(not_there());
        }
        self.card_read(file, MAX_BOOTLOADER_FILE)?
            .ok_or_else(not_there)
    }

    /// Read `path` (at most `max` bytes) from the card's flash-boot FAT;
    /// `None` when the card has no such file or no flash-boot partition.
    fn card_read(&self, path: &str, max: u64) -> crate::Result<Option<Vec<u8>>> {
        let Some(card) = self.card_boot.as_ref() else {
            return Ok(None);
        };
        let f =
            File::open(card).with_context(|| format!("open card partition {}", card.display()))?;
        Ok(flasher_disk::fat::read_file(f, path, max)
            .with_context(|| format!("read {path} from {}", card.display()))?)
    }
}

/// An earlier step did not leave what this one needs (only reachable if the
/// sequence in `run.rs` changes).
pub(crate) fn missing(what: &'static str) -> crate::Error {
    Error::NotAvailable {
        what,
        detail: "an earlier step did not provide it".into(),
    }
}

impl Steps for Real {
    fn mount(&mut self) -> crate::Result<()> {
        if !self.pid1 {
            return Ok(());
        }
        // Ctrl-Alt-Del mid-flash must not reboot the board: with CAD off the
        // kernel sends SIGINT to PID 1 instead, which has no handler and is ignored.
        let _ = nix::sys::reboot::set_cad_enabled(false);
        for (m, r) in mounts::mount_all(&self.root, EARLY, &mut Nix)? {
            if r == mounts::Mounted::Already {
                eprintln!("flasher: {m}: already mounted");
            }
        }
        match mounts::open_console(&self.root) {
            Ok(c) => mounts::attach(&c, &[0, 1, 2])?,
            // Keep the kernel's initial stdout/stderr: the console on most boards.
            Err(e) => eprintln!("flasher: {e}"),
        }
        Ok(())
    }

    fn options(&mut self) -> crate::Result<Options> {
        let path = self.root.join("proc/cmdline");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read { path, source })?;
        let o = Options::parse(&text).map_err(Error::from)?;
        if let Some(path) = &o.events {
            match open_events(&self.root, path) {
                Ok(j) => self.sinks.add_stream(Box::new(j)),
                // The console still shows everything; not worth failing the flash.
                Err(e) => self.note(Phase::Starting, format!("warning: {e}")),
            }
        }
        // Stop keeping events: a no-op after `add_stream` (which took the
        // backlog), and the end of it when there is no stream or it failed to
        // open; otherwise it would grow for the whole run.
        self.sinks.take_backlog();
        Ok(o)
    }

    fn load_modules(&mut self, _o: &Options) -> crate::Result<()> {
        let order = modules::load_order(&self.root)?;
        let r = modules::load_all(&order, &mut Finit);
        for (name, errno) in &r.failed {
            self.note(
                Phase::Starting,
                format!("warning: module {name} failed to load: {errno}"),
            );
        }
        if !order.is_empty() {
            self.note(
                Phase::Starting,
                format!(
                    "modules: {} loaded, {} already present, {} failed",
                    r.loaded.len(),
                    r.already.len(),
                    r.failed.len()
                ),
            );
        }
        Ok(())
    }

    fn wait_for_storage(&mut self, o: &Options) -> crate::Result<()> {
        let target = o
            .target
            .as_deref()
            .map(|t| t.trim_start_matches("/dev/").to_string());
        // Each poll is the run going round, not a hang: the wait is bounded by
        // `flasher.timeout`, which may be longer than the board's stall interval.
        let seen = modules::wait_for_block_devices(
            &self.root,
            |names| {
                self.alive();
                match &target {
                    Some(t) => names.iter().any(|n| n == t),
                    None => modules::any_real_disk(names),
                }
            },
            o.timeout,
            POLL,
            &led::SystemClock::new(),
        )?;
        // Disks probe at different speeds (the USB stick long after the NVMe): the
        // first disk is not the whole picture. Wait, within the same timeout, until
        // the payload and a target are both visible. If they never are, carry on:
        // the next steps fail with the precise reason and every disk they saw.
        let boot_disk = o.boot_disk.clone();
        let board = self.board.clone();
        let settled = modules::wait_for_block_devices(
            &self.root,
            |_| {
                self.alive();
                storage_settled(
                    &self.root,
                    board.as_ref(),
                    boot_disk.as_deref(),
                    target.as_deref(),
                )
            },
            o.timeout,
            POLL,
            &led::SystemClock::new(),
        );
        let seen = settled.unwrap_or(seen);
        self.note(
            Phase::Searching,
            format!("block devices: {}", seen.join(", ")),
        );
        Ok(())
    }

    fn detect_board(&mut self, o: &Options) -> crate::Result<String> {
        let mut all = boards::builtin()?;
        let extra = self.root.join(BOARD_OVERRIDE);
        // The initramfs's board file names the board the card was built for:
        // a device tree or DMI saying otherwise is refused here, before any write.
        let mut built_for = None;
        if extra.is_file() {
            let b = boards::load_file(&extra)?;
            built_for = Some(b.name.clone());
            all = boards::with_override(all, b);
        }
        let d = boards::detect_for(&self.root, o.board.as_deref(), built_for.as_deref(), &all)?;
        let how = match &o.board {
            Some(_) => "flasher.board= on the kernel command line".to_string(),
            None => d.how.to_string(),
        };
        self.note(
            Phase::Starting,
            format!(
                "board {} ({}), selected by {how}",
                d.board.name, d.board.description
            ),
        );
        // The LEDs follow the event stream from here on, and report each pattern
        // back into it as a `led` event, so boards without LEDs (and the QEMU
        // harness) still see what an operator would.
        let leds = led::open(&self.root, &d.board.leds, None);
        let stream = Arc::downgrade(&self.sinks);
        let leds = Box::new(flasher::progress::AnnouncingLeds::new(leds, stream));
        self.sinks.add(Box::new(flasher::progress::LedObserver(
            led::Animator::start(leds, &d.board.leds),
        )));
        let name = d.board.name.clone();
        self.board = Some(d.board);
        Ok(name)
    }

    fn start_watchdog(&mut self) -> crate::Result<()> {
        let board = self.board()?;
        let Some(path) = board.watchdog.clone() else {
            return Ok(());
        };
        let stall = board.watchdog_stall();
        if let Err(e) = self.start_watchdog_at(Path::new(&path), stall) {
            // Flashing without the watchdog beats not flashing: it only guards hangs.
            self.note(
                Phase::Searching,
                format!("warning: {e}; flashing without it"),
            );
        }
        Ok(())
    }

    fn find_payload(&mut self, o: &Options) -> crate::Result<()> {
        if self.payload.is_some() {
            // Given with `set_devices`.
            return Ok(());
        }
        self.disks = storage::scan(&self.root)?;
        let seen = || {
            self.disks
                .iter()
                .map(|d| d.summary(None))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let boot = storage::find_boot_medium(&self.disks, o.boot_disk.as_deref())?;
        let Some(boot) = boot else {
            return Err(Error::NoPayload {
                disk: None,
                seen: seen(),
            });
        };
        let Some(payload) = &boot.payload else {
            return Err(Error::NoPayload {
                disk: Some(boot.disk.clone()),
                seen: seen(),
            });
        };
        self.note(
            Phase::Searching,
            format!(
                "boot medium {}: payload {} ({}), log {}",
                boot.disk,
                payload.name,
                flasher_format::units::si(payload.size_bytes),
                boot.log
                    .as_ref()
                    .map(|l| l.name.as_str())
                    .unwrap_or("none (no unit record will be kept)")
            ),
        );
        self.payload = Some(payload.dev_path.clone());
        self.log = boot.log.as_ref().map(|l| l.dev_path.clone());
        // GPT cards name it; MBR cards (U-Boot boards) have it first.
        self.card_boot = self
            .disks
            .iter()
            .find(|d| d.name == boot.disk)
            .and_then(|d| {
                d.partition_named(FLASH_BOOT)
                    .or_else(|| d.partitions.iter().find(|p| p.number == 1))
            })
            .map(|p| p.dev_path.clone());
        self.boot = Some(boot);
        Ok(())
    }

    fn choose_target(&mut self, o: &Options) -> crate::Result<TargetInfo> {
        if let Some(device) = self.target.clone().filter(|_| self.disks.is_empty()) {
            // Given with `set_devices`: identity from sysfs by name.
            let name = device
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            self.identity = target_identity(&self.root, &name);
        } else {
            let disk = match o.target.as_deref() {
                Some(name) => self.named_target(name)?,
                None => {
                    let board = self.board()?;
                    let choice = storage::choose_target(board, &self.disks, self.boot.as_ref())?;
                    for r in &choice.rejected {
                        self.note(
                            Phase::Searching,
                            format!("not the target: {} ({})", r.disk, r.why),
                        );
                    }
                    self.note(
                        Phase::Searching,
                        format!("target {}: {}", choice.disk.name, choice.reason),
                    );
                    choice.disk
                }
            };
            self.identity = disk_identity(&disk);
            self.target = Some(disk.dev_path.clone());
        }
        self.health_gate(o)?;
        let device = self.target.clone().ok_or_else(|| missing("a target"))?;
        Ok(TargetInfo {
            device,
            identity: self.identity.to_string(),
            size_bytes: self.identity.size_bytes,
        })
    }

    fn write(&mut self, o: &Options) -> crate::Result<WriteSummary> {
        let payload = self
            .payload
            .clone()
            .ok_or_else(|| missing("the payload partition"))?;
        let target = self.target.clone().ok_or_else(|| missing("a target"))?;
        let file = File::open(&payload)
            .with_context(|| format!("open payload partition {}", payload.display()))?;
        let mut reader = BufReader::new(file);
        // Everything that can be checked before the first write
        // (docs/architecture.md rule 2): the bundle's manifest and signature
        // against the initramfs's trusted keys, the board's bootloader files
        // are on the card and pinned by the manifest, so is the config to copy,
        // the unit log has room; the engine checks the fix-ups and the boot FAT
        // in the image's table.
        let opened = bundle::read_manifest(&mut reader)?;
        let trust = Trust::from_dir(&self.root.join(card_layout::initramfs::TRUSTED_DIR))?;
        let signer = trust.check(&opened)?;
        let mut boot_files = Vec::new();
        for p in &self.board()?.bootloader {
            let file = match p {
                Placement::Raw { file, .. } | Placement::EmmcBoot { file, .. } => file,
            };
            let data = self.card_file(file)?;
            trust.check_file(&opened.manifest, file, &data)?;
            boot_files.push((file.clone(), data));
        }
        self.boot_files = boot_files;
        let card_config = self.read_card_config()?;
        for (name, data) in card_config.files() {
            trust.check_file(&opened.manifest, &name, data)?;
        }
        let has_config = !card_config.is_empty();
        self.card_config = card_config;
        let pool = self.card_pool(&trust, &opened.manifest)?;
        if signer == bundle::Signer::Unsigned {
            self.note(Phase::Searching, bundle::UNSIGNED_WARNING.into());
        }
        self.signer = signer.to_string();
        let row_bytes = match &pool {
            Some(_) => pool::MAX_ROW_BYTES,
            None => 0,
        };
        let records = self.check_log_room(row_bytes)?;
        // Which row this run takes (an exhausted pool stops here, unwritten).
        self.unit = match &pool {
            Some((p, digest)) => Some(self.pick_row(p, digest, &records)?),
            None => None,
        };
        // Counted only once the card-side checks passed: a card missing a file
        // is not this unit's fault. The claim is recorded here, before the
        // first write.
        let claim = self.unit.as_ref().map(|u| u.row.clone());
        self.begin_attempt(o, &records, claim)?;
        if let Some((p, _)) = &pool {
            if let Some(u) = &self.unit {
                self.note(Phase::Searching, claimed_message(u, p.rows.len()));
            }
        }
        let opts = WriteOptions {
            verify: match o.verify {
                Verify::Full => pipeline::Verify::Full,
                Verify::None => pipeline::Verify::None,
            },
            expand_data: o.expand_data,
            skip_equal: o.skip_equal,
            root: self.root.clone(),
            // Bootloader and config come after the image; the table goes live
            // after them, in `commit_table`.
            defer_commit: true,
            require_boot_fat: has_config || self.unit.is_some(),
            trust,
            ..WriteOptions::default()
        };
        let report = pipeline::write_bundle(&opened, reader, &target, &opts, &*self.sinks)?;
        let s = summary(&report);
        self.report = Some(report);
        Ok(s)
    }

    fn fixups(&mut self, _o: &Options) -> crate::Result<()> {
        // The pipeline fixes up the partition table as its last step (backup GPT
        // at the real end, optional growth), so this step reports what it did.
        let report = self
            .report
            .as_ref()
            .ok_or_else(|| missing("a write report"))?;
        let msg = match &report.fixup {
            Some(f) => format!("partition table: {f}"),
            None => "partition table: no fix-up needed".to_string(),
        };
        self.note(Phase::Finishing, msg);
        Ok(())
    }

    fn bootloader(&mut self, _o: &Options) -> crate::Result<()> {
        let placements = self.board()?.bootloader.clone();
        for p in &placements {
            match p {
                Placement::Raw { offset, file } => {
                    let data = self.boot_file(file)?.to_vec();
                    let mut commit = self.pending_commit()?;
                    let mut dev = self.open_device()?;
                    post::place_raw(&mut dev, &mut commit, *offset, &data, file)?;
                    self.keep_commit(commit);
                    self.note(
                        Phase::Finishing,
                        format!(
                            "bootloader: wrote and read back {file} ({} bytes) at byte {offset} of {}",
                            data.len(),
                            dev.path().display()
                        ),
                    );
                }
                Placement::EmmcBoot {
                    partition,
                    offset,
                    file,
                } => {
                    let data = self.boot_file(file)?.to_vec();
                    let part = format!("{}{}", self.identity.device, partition.suffix());
                    flasher::emmc::write_boot_partition(&self.root, &part, &data, *offset)?;
                    self.note(
                        Phase::Finishing,
                        format!(
                            "bootloader: wrote and read back {file} ({} bytes) to {part} at byte {offset}",
                            data.len()
                        ),
                    );
                }
            }
        }
        self.enable_boot_partition()
    }

    fn copy_config(&mut self, _o: &Options) -> crate::Result<()> {
        if self.card_boot.is_none() {
            self.note(
                Phase::Finishing,
                "config: no flash-boot partition on the card".into(),
            );
            return Ok(());
        }
        if self.card_config.is_empty() && self.unit.is_none() {
            self.note(Phase::Finishing, "config: none on the card".into());
            return Ok(());
        }
        let mut commit = self.pending_commit()?;
        let mut dev = self.open_device()?;
        let target = dev.path().to_path_buf();
        // The table is not live yet: find the boot FAT in the table to be committed.
        let span = post::target_fat(&mut dev, &commit)
            .with_context(|| format!("read the partition table of {}", target.display()))?
            .ok_or_else(|| Error::NoTargetBoot {
                target: target.clone(),
            })?;
        let report = post::inject_config(
            &mut dev,
            &mut commit,
            span,
            &self.card_config,
            self.unit.as_ref(),
        )?;
        self.keep_commit(commit);
        let files: Vec<&str> = report.files.iter().map(|(n, _)| n.as_str()).collect();
        self.note(
            Phase::Finishing,
            format!(
                "config: copied {} onto {}",
                files.join(", "),
                target.display()
            ),
        );
        Ok(())
    }

    fn commit_table(&mut self, _o: &Options) -> crate::Result<()> {
        let commit = self.pending_commit()?;
        let mut dev = self.open_device()?;
        commit.apply(&mut dev)?;
        let what: Vec<&str> = commit.sectors.iter().map(|s| s.2).collect();
        let sigs = match commit.signatures.len() {
            0 => String::new(),
            n => format!(
                "{n} held-back signature range(s) ({}), then ",
                flasher_format::units::iec(
                    commit.signatures.iter().map(|s| s.1.len() as u64).sum()
                )
            ),
        };
        self.note(
            Phase::Finishing,
            format!(
                "partition table live: wrote, flushed and read back {sigs}{}",
                what.join(", then ")
            ),
        );
        Ok(())
    }

    fn append_record(&mut self, r: &RunRecord) -> crate::Result<()> {
        // A failure before the payload search (bad flasher.board=, say) still
        // deserves a record: look for the card's log partition now.
        let Some(log) = self.log.clone().or_else(|| self.late_log()) else {
            return Err(Error::NoLog);
        };
        let mut rec = unit_record(r, &self.identity, SystemTime::now());
        rec.signer = self.signer.clone();
        rec.unit_row = self.unit.as_ref().map(|u| u.row.clone());
        rec.health = self.health.clone();
        let (offset, seq) = append_to(&log, &rec)?;
        let (phase, result) = match &r.failure {
            // After a failure the run stays in the failure phase.
            Some(_) => (Phase::Failure, RecordResult::Error),
            None => (Phase::Finishing, RecordResult::Ok),
        };
        self.sinks.event(&Event::record(
            phase,
            seq,
            result,
            log.display().to_string(),
            offset,
        ));
        Ok(())
    }

    fn show(&mut self, e: &Event) {
        if e.phase == Phase::Success {
            self.succeeded = true;
        }
        self.sinks.event(e);
    }

    fn finish(&mut self, after: After) {
        let board_power = self.board.as_ref().map(|b| b.power_off);
        // "Power off" means the board's own way of ending, where it cannot cut power.
        let after = match (after, board_power.map(|p| p.method)) {
            (After::PowerOff, Some(boards::PowerOffMethod::Reboot)) => After::Reboot,
            (After::PowerOff, Some(boards::PowerOffMethod::Halt)) => After::Halt,
            (a, _) => a,
        };
        if self.succeeded && after != After::Wait {
            // Let the operator see "all LEDs solid" before the board goes dark.
            let hold = self.hold.unwrap_or_else(|| {
                board_power
                    .and_then(|p| p.hold_secs)
                    .map(|s| Duration::from_secs(s.into()))
                    .unwrap_or(SUCCESS_HOLD)
            });
            std::thread::sleep(hold);
        }
        let wd = self.watchdog.as_mut().map(|w| w as &mut dyn Disarm);
        power::finish(after, wd, self.power.as_mut());
    }
}

/// The most bytes one bootloader file may have on the card (U-Boot with its
/// SPL is about 1 MiB, Rockchip's idbloader plus u-boot.itb a few MiB; an
/// eMMC boot partition is 4 MiB on most boards): a bound on what PID 1
/// holds through the write (docs/SECURITY.md).
const MAX_BOOTLOADER_FILE: u64 = 8 << 20;

/// How long a failed run waits for the card to show up so it can still record.
const LATE_LOG_WAIT: Duration = Duration::from_secs(10);

/// True once the boot medium with its payload is visible and a target can be
/// chosen (or the named target exists): what the storage wait waits for.
fn storage_settled(
    root: &Path,
    board: Option<&boards::Board>,
    boot_disk: Option<&str>,
    target: Option<&str>,
) -> bool {
    let Ok(disks) = storage::scan(root) else {
        return false;
    };
    let Ok(Some(boot)) = storage::find_boot_medium(&disks, boot_disk) else {
        return false;
    };
    if boot.payload.is_none() {
        return false;
    }
    match (target, board) {
        (Some(t), _) => disks.iter().any(|d| d.name == t),
        (None, Some(b)) => storage::choose_target(b, &disks, Some(&boot)).is_ok(),
        (None, None) => true,
    }
}
