//! Early boot as data: the filesystems PID 1 mounts before anything else, as a
//! table whose entries print themselves as the equivalent `mount` command, and the
//! console that becomes stdin/stdout/stderr.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;

use super::Error;

/// One early mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mount {
    pub source: &'static str,
    /// Absolute path; joined onto the root at mount time.
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Mode for the mount point if it has to be created.
    pub dir_mode: u32,
}

/// The mounts every run needs, in order.
pub const EARLY: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
        dir_mode: 0o555,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID
            .union(MsFlags::MS_NODEV)
            .union(MsFlags::MS_NOEXEC),
        data: None,
        dir_mode: 0o555,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        dir_mode: 0o755,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        dir_mode: 0o755,
    },
];

impl fmt::Display for Mount {
    /// As the equivalent shell command: `mount -t proc -o nosuid,nodev,noexec proc /proc`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut opts: Vec<&str> = [
            (MsFlags::MS_RDONLY, "ro"),
            (MsFlags::MS_NOSUID, "nosuid"),
            (MsFlags::MS_NODEV, "nodev"),
            (MsFlags::MS_NOEXEC, "noexec"),
        ]
        .iter()
        .filter(|(flag, _)| self.flags.contains(*flag))
        .map(|(_, name)| *name)
        .collect();
        if let Some(d) = self.data {
            opts.push(d);
        }
        write!(f, "mount -t {}", self.fstype)?;
        if !opts.is_empty() {
            write!(f, " -o {}", opts.join(","))?;
        }
        write!(f, " {} {}", self.source, self.target)
    }
}

/// The `mount(2)` call, behind a trait so tests record instead of mounting.
pub trait Mounter {
    fn mount(&mut self, m: &Mount, target: &Path) -> Result<(), Errno>;
}

/// The real `mount(2)`.
pub struct Nix;

impl Mounter for Nix {
    fn mount(&mut self, m: &Mount, target: &Path) -> Result<(), Errno> {
        nix::mount::mount(Some(m.source), target, Some(m.fstype), m.flags, m.data)
    }
}

/// What happened to one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    Done,
    /// EBUSY: something is mounted there already (e.g. the kernel's devtmpfs automount).
    Already,
}

/// Create each mount point under `root` and mount the table, in order. A mount that
/// reports EBUSY is already there and is fine; any other failure stops with an error
/// naming the entry.
pub fn mount_all(
    root: &Path,
    table: &[Mount],
    mounter: &mut dyn Mounter,
) -> Result<Vec<(Mount, Mounted)>, Error> {
    let mut out = Vec::with_capacity(table.len());
    for m in table {
        let target = root.join(m.target.trim_start_matches('/'));
        if !target.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(m.dir_mode)
                .create(&target)
                .map_err(|source| Error::MountPoint {
                    path: target.clone(),
                    source,
                })?;
        }
        match mounter.mount(m, &target) {
            Ok(()) => out.push((*m, Mounted::Done)),
            Err(Errno::EBUSY) => out.push((*m, Mounted::Already)),
            Err(errno) => {
                return Err(Error::Mount {
                    command: m.to_string(),
                    errno,
                })
            }
        }
    }
    Ok(out)
}

/// Open `root/dev/console` for reading and writing, without making it our
/// controlling terminal (so a Ctrl-C on the console cannot signal PID 1).
pub fn open_console(root: &Path) -> Result<File, Error> {
    let path = root.join("dev/console");
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(&path)
        .map_err(|source| Error::Console { path, source })
}

/// Make `fds` (normally 0, 1 and 2) refer to `console`.
pub fn attach(console: &File, fds: &[RawFd]) -> Result<(), Error> {
    for &fd in fds {
        nix::unistd::dup2(console.as_raw_fd(), fd).map_err(|errno| Error::Dup { fd, errno })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::FromRawFd;

    #[derive(Default)]
    struct Fake {
        seen: Vec<String>,
        fail: Vec<(&'static str, Errno)>,
    }
    impl Mounter for Fake {
        fn mount(&mut self, m: &Mount, target: &Path) -> Result<(), Errno> {
            assert!(target.is_dir(), "mount point {target:?} was not created");
            self.seen.push(m.target.to_string());
            match self.fail.iter().find(|(t, _)| *t == m.target) {
                Some((_, e)) => Err(*e),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn table_prints_as_commands() {
        let lines: Vec<String> = EARLY.iter().map(|m| m.to_string()).collect();
        assert_eq!(
            lines,
            [
                "mount -t proc -o nosuid,nodev,noexec proc /proc",
                "mount -t sysfs -o nosuid,nodev,noexec sysfs /sys",
                "mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev",
                "mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run",
            ]
        );
    }

    #[test]
    fn mounts_in_order_and_creates_dirs() {
        let root = tempfile::tempdir().unwrap();
        let mut fake = Fake::default();
        let done = mount_all(root.path(), EARLY, &mut fake).unwrap();
        assert_eq!(fake.seen, ["/proc", "/sys", "/dev", "/run"]);
        assert!(done.iter().all(|(_, r)| *r == Mounted::Done));
        for d in ["proc", "sys", "dev", "run"] {
            assert!(root.path().join(d).is_dir());
        }
    }

    #[test]
    fn ebusy_is_already_mounted() {
        let root = tempfile::tempdir().unwrap();
        let mut fake = Fake {
            fail: vec![("/dev", Errno::EBUSY)],
            ..Default::default()
        };
        let done = mount_all(root.path(), EARLY, &mut fake).unwrap();
        assert_eq!(done[2].1, Mounted::Already);
        assert_eq!(fake.seen.len(), 4);
    }

    #[test]
    fn other_errors_stop_and_name_the_mount() {
        let root = tempfile::tempdir().unwrap();
        let mut fake = Fake {
            fail: vec![("/sys", Errno::ENODEV)],
            ..Default::default()
        };
        match mount_all(root.path(), EARLY, &mut fake) {
            Err(Error::Mount { command, errno }) => {
                assert!(command.contains("sysfs /sys"));
                assert_eq!(errno, Errno::ENODEV);
            }
            other => panic!("expected Mount error, got {other:?}"),
        }
        assert_eq!(fake.seen, ["/proc", "/sys"]);
    }

    /// The real mount(2), on a tmpfs entry under a temporary root (CI runs as root).
    #[test]
    fn real_tmpfs_mount() {
        let root = tempfile::tempdir().unwrap();
        let table = [EARLY[3]];
        let done = mount_all(root.path(), &table, &mut Nix).unwrap();
        let run = root.path().join("run");
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(run.to_str().unwrap()));
        nix::mount::umount(&run).unwrap();
        assert_eq!(done[0].1, Mounted::Done);
        assert!(mounted, "{run:?} not in mountinfo");
    }

    #[test]
    fn console_opens_and_attaches() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("dev")).unwrap();
        std::fs::write(root.path().join("dev/console"), b"").unwrap();
        let console = open_console(root.path()).unwrap();
        // Attach onto a spare descriptor rather than the test's own stdout.
        let spare = tempfile::tempfile().unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(spare);
        attach(&console, &[fd]).unwrap();
        // SAFETY: fd is ours (from into_raw_fd) and now a dup of the console.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(b"hello").unwrap();
        let mut got = String::new();
        let mut c = File::open(root.path().join("dev/console")).unwrap();
        c.rewind().unwrap();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        assert!(matches!(
            open_console(tempfile::tempdir().unwrap().path()),
            Err(Error::Console { .. })
        ));
    }
}
