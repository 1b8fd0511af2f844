//! Shared helpers for the end-to-end tests: building real images with the system's
//! partitioning and filesystem tools, and locating the built binaries.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Run a command, panicking with its output on failure (test helper).
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {cmd:?}: {e} (scripts/setup-host installs the tools)")
    });
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A partition of a built image, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Part {
    pub offset: u64,
    pub size: u64,
}

/// A real disk image built with sfdisk, mkfs.vfat and mkfs.ext4.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub size: u64,
    pub fat: Part,
    pub ext4: Part,
}

/// Build a sparse GPT image of `size` bytes (a multiple of 512, not
/// necessarily of 4096 or 1 MiB) with a FAT partition (files copied with mcopy
/// when mtools is installed) and an ext4 partition filled from a directory
/// with small and larger files, some zero-filled.
pub fn build_gpt_image(dir: &Path, size: u64) -> Image {
    assert_eq!(size % 512, 0);
    let path = dir.join("disk.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    let fat = Part {
        offset: 1 << 20,
        size: 8 << 20,
    };
    // ext4 from 9 MiB up to 1 MiB before the backup GPT area (34 sectors).
    let ext_end = (size - 34 * 512) / (1 << 20) * (1 << 20);
    let ext4 = Part {
        offset: 9 << 20,
        size: ext_end - (9 << 20),
    };
    let script = format!(
        "label: gpt\nunit: sectors\nfirst-lba: 34\n\
         start={}, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=boot\n\
         start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=data\n",
        fat.offset / 512,
        fat.size / 512,
        ext4.offset / 512,
        ext4.size / 512
    );
    let mut child = Command::new("sfdisk")
        .args(["--no-reread", "--no-tell-kernel", "-q"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk (fdisk package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");

    run(Command::new("mkfs.vfat")
        .args(["-F", "16", "-s", "1", "-n", "BOOT", "-S", "512"])
        .arg(format!("--offset={}", fat.offset / 512))
        .arg(&path)
        .arg((fat.size / 1024).to_string()));
    let content = dir.join("rootfs");
    std::fs::create_dir_all(content.join("etc")).unwrap();
    std::fs::write(content.join("etc/hostname"), "flasher-test\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(content.join("big.bin"), &big).unwrap();
    std::fs::write(content.join("zeros.bin"), vec![0u8; 2 << 20]).unwrap();
    std::fs::write(content.join("odd.txt"), "x".repeat(12_345)).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "data", "-b", "4096"])
        .arg("-E")
        .arg(format!("offset={}", ext4.offset))
        .arg("-d")
        .arg(&content)
        .arg(&path)
        .arg(format!("{}k", ext4.size / 1024)));
    if Command::new("mcopy").arg("--version").output().is_ok() {
        let cfg = dir.join("config.txt");
        std::fs::write(&cfg, "console=ttyS0\n").unwrap();
        run(Command::new("mcopy")
            .arg("-i")
            .arg(format!("{}@@{}", path.display(), fat.offset))
            .arg(&cfg)
            .arg("::config.txt"));
    }
    Image {
        path,
        size,
        fat,
        ext4,
    }
}

/// A file of `size` bytes filled with a non-zero pattern (stale data a flash must overwrite).
pub fn garbage_file(path: &Path, size: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let block: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(40503) >> 7) as u8 | 0x01)
        .collect();
    let mut left = size;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
}

/// Read `len` bytes at `off` of a file.
pub fn read_range(path: &Path, off: u64, len: u64) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len as usize];
    f.read_exact(&mut v).unwrap();
    v
}

/// Copy a byte range of `from` into a new file `to` (to fsck a partition).
pub fn extract(from: &Path, part: Part, to: &Path) {
    std::fs::write(to, read_range(from, part.offset, part.size)).unwrap();
}

/// `e2fsck -fn` on a file holding an ext4 filesystem; panics with its output on errors.
pub fn e2fsck(fs: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(fs));
}

/// `fsck.vfat -n` on a file holding a FAT filesystem.
pub fn fsck_vfat(fs: &Path) {
    run(Command::new("fsck.vfat").arg("-n").arg(fs));
}

/// A loop device over a file; detached on drop.
pub struct Loop(pub PathBuf);

impl Loop {
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut c = Command::new("losetup");
        c.args(["-f", "--show"]);
        if read_only {
            c.arg("-r");
        }
        let dev = run(c.arg(file));
        Loop(PathBuf::from(dev.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The built `mkflasher` / `flasher` binaries (cargo builds them for integration tests).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join(name)
}
