//! Refusals before the first write that need the system's view of the target:
//! is it (or a partition of it) mounted, is it held by LVM/RAID/dm. Both read
//! `<root>/proc/self/mountinfo` and `<root>/sys/dev/block/MAJ:MIN/` so tests run
//! on fake trees. Devices are compared by major:minor, never by name.

use super::Error;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Refuse `target` if it is a block device that is mounted (itself or any of
/// its partitions) or held by another block device. Regular files pass.
pub fn check_not_in_use(target: &Path, root: &Path) -> Result<(), Error> {
    let Ok(meta) = std::fs::metadata(target) else {
        // Opening reports a missing target with the right error.
        return Ok(());
    };
    if !meta.file_type().is_block_device() {
        return Ok(());
    }
    let rdev = meta.rdev();
    check_devnum(target, (libc::major(rdev), libc::minor(rdev)), root)
}

/// The check for a known major:minor (what `check_not_in_use` does after stat).
pub fn check_devnum(target: &Path, dev: (u32, u32), root: &Path) -> Result<(), Error> {
    let devnum = format!("{}:{}", dev.0, dev.1);
    let sysdir = root.join("sys/dev/block").join(&devnum);
    // The disk itself plus its partitions: subdirectories with a `dev` file.
    let mut ours = vec![devnum.clone()];
    if let Ok(rd) = std::fs::read_dir(&sysdir) {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("dev")) {
                if e.path().join("partition").exists() {
                    ours.push(s.trim().to_string());
                }
            }
        }
    }
    let mountinfo_path = root.join("proc/self/mountinfo");
    let mountinfo = std::fs::read_to_string(&mountinfo_path).map_err(|source| Error::Probe {
        what: mountinfo_path.display().to_string(),
        source,
    })?;
    if let Some((mounted, mount_point)) = find_mount(&mountinfo, &ours) {
        return Err(Error::Mounted {
            path: target.to_owned(),
            device: devnum,
            mounted,
            mount_point,
        });
    }
    let mut holders = Vec::new();
    let mut dirs = vec![sysdir.join("holders")];
    if let Ok(rd) = std::fs::read_dir(&sysdir) {
        for e in rd.flatten() {
            if e.path().join("partition").exists() {
                dirs.push(e.path().join("holders"));
            }
        }
    }
    for d in dirs {
        if let Ok(rd) = std::fs::read_dir(&d) {
            holders.extend(
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    if !holders.is_empty() {
        holders.sort_unstable();
        return Err(Error::Held {
            path: target.to_owned(),
            holders,
        });
    }
    Ok(())
}

/// The first mountinfo line whose major:minor (third field) is one of `devs`.
fn find_mount(mountinfo: &str, devs: &[String]) -> Option<(String, String)> {
    mountinfo.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, _, devnum, _, mount_point) =
            (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        devs.iter()
            .any(|d| d == devnum)
            .then(|| (devnum.to_string(), mount_point.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/self")).unwrap();
        std::fs::write(
            d.path().join("proc/self/mountinfo"),
            "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n\
             40 22 179:1 / /boot rw shared:2 - vfat /dev/mmcblk0p1 rw\n",
        )
        .unwrap();
        for (disk, parts) in [
            ("179:0", vec![("mmcblk0p1", "179:1")]),
            ("179:8", vec![("mmcblk1p1", "179:9")]),
        ] {
            let base = d.path().join("sys/dev/block").join(disk);
            std::fs::create_dir_all(base.join("holders")).unwrap();
            for (name, dev) in parts {
                std::fs::create_dir_all(base.join(name).join("holders")).unwrap();
                std::fs::write(base.join(name).join("dev"), format!("{dev}\n")).unwrap();
                std::fs::write(base.join(name).join("partition"), "1\n").unwrap();
            }
        }
        d
    }

    #[test]
    fn mounted_partition_refuses_the_whole_disk() {
        let t = tree();
        let e = check_devnum(Path::new("/dev/mmcblk0"), (179, 0), t.path()).unwrap_err();
        assert!(
            matches!(&e, Error::Mounted { mounted, mount_point, .. } if mounted == "179:1" && mount_point == "/boot"),
            "{e:?}"
        );
    }

    #[test]
    fn mounted_device_itself_is_refused_and_free_disk_passes() {
        let t = tree();
        let e = check_devnum(Path::new("/dev/nvme0n1p2"), (259, 2), t.path()).unwrap_err();
        assert!(matches!(e, Error::Mounted { .. }));
        check_devnum(Path::new("/dev/mmcblk1"), (179, 8), t.path()).unwrap();
    }

    #[test]
    fn held_disk_is_refused() {
        let t = tree();
        std::fs::create_dir_all(t.path().join("sys/dev/block/179:8/mmcblk1p1/holders/dm-0"))
            .unwrap();
        let e = check_devnum(Path::new("/dev/mmcblk1"), (179, 8), t.path()).unwrap_err();
        assert!(
            matches!(&e, Error::Held { holders, .. } if holders == &["dm-0".to_string()]),
            "{e:?}"
        );
    }
}
