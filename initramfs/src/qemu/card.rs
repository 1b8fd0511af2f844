//! Reading (and, on a copy, patching) the boot configuration of a card or disk
//! image, in user space: the partition table by hand, the FAT with `fatfs`.
//!
//! `qemu-x86_64-sd` has no firmware that reads a card, so the harness plays
//! U-Boot: it takes the kernel, initramfs and command line from the card's
//! `flash-boot` FAT and hands them to QEMU's `-kernel`/`-initrd`/`-append`.
//! `qemu-x86_64-nuc` boots through OVMF + systemd-boot; there the harness only
//! patches the loader entries' `options` on a copy of the card when the run needs
//! extra kernel arguments.

use super::Error;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;

const SECTOR: u64 = 512;
/// The EFI system partition type GUID as stored on disk (mixed endian).
const ESP_GUID: [u8; 16] = [
    0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b,
];

/// One partition: where it is, and what we know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub esp: bool,
    pub fat_type: bool,
}

fn le_u32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The partitions of a GPT or MBR image, in table order.
pub fn partitions<R: Read + Seek>(img: &mut R) -> io::Result<Vec<Part>> {
    let mut mbr = [0u8; 512];
    img.seek(SeekFrom::Start(0))?;
    img.read_exact(&mut mbr)?;
    if mbr[510] != 0x55 || mbr[511] != 0xaa {
        return Ok(Vec::new());
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xee) {
        let mut hdr = [0u8; 512];
        img.seek(SeekFrom::Start(SECTOR))?;
        img.read_exact(&mut hdr)?;
        if &hdr[0..8] != b"EFI PART" {
            return Ok(Vec::new());
        }
        let lba = le_u64(&hdr, 72);
        let count = le_u32(&hdr, 80).min(1024);
        let esize = le_u32(&hdr, 84).max(128);
        let mut table = vec![0u8; (count * esize) as usize];
        img.seek(SeekFrom::Start(lba * SECTOR))?;
        img.read_exact(&mut table)?;
        let mut out = Vec::new();
        for e in table.chunks(esize as usize) {
            if e[0..16].iter().all(|&b| b == 0) {
                continue;
            }
            let (first, last) = (le_u64(e, 32), le_u64(e, 40));
            let name: Vec<u16> = e[56..128]
                .chunks(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            let esp = e[0..16] == ESP_GUID;
            out.push(Part {
                name: String::from_utf16_lossy(&name),
                offset: first * SECTOR,
                size: (last + 1).saturating_sub(first) * SECTOR,
                esp,
                fat_type: esp,
            });
        }
        return Ok(out);
    }
    Ok(entries
        .iter()
        .filter(|e| e[4] != 0)
        .map(|e| Part {
            name: String::new(),
            offset: le_u32(e, 8) * SECTOR,
            size: le_u32(e, 12) * SECTOR,
            esp: e[4] == 0xef,
            fat_type: matches!(e[4], 0x01 | 0x04 | 0x06 | 0x0b | 0x0c | 0x0e | 0xef),
        })
        .collect())
}

/// The boot partition: the one named `flash-boot`, else the ESP, else the first
/// FAT-typed one, else the first.
pub fn boot_partition(path: &Path) -> Result<Part, Error> {
    let mut f =
        File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let parts = partitions(&mut f).map_err(|e| {
        Error::io(
            format!("reading the partition table of {}", path.display()),
            e,
        )
    })?;
    parts
        .iter()
        .find(|p| p.name == "flash-boot")
        .or_else(|| parts.iter().find(|p| p.esp))
        .or_else(|| parts.iter().find(|p| p.fat_type))
        .or_else(|| parts.first())
        .cloned()
        .ok_or_else(|| Error::Card {
            path: path.to_path_buf(),
            reason: "no GPT or MBR partition table; build the card with `mkflasher build`".into(),
        })
}

fn read_part(path: &Path, part: &Part) -> Result<Vec<u8>, Error> {
    let ctx = |e| {
        Error::io(
            format!("reading the boot partition of {}", path.display()),
            e,
        )
    };
    let mut f = File::open(path).map_err(ctx)?;
    f.seek(SeekFrom::Start(part.offset)).map_err(ctx)?;
    let mut buf = vec![0u8; part.size as usize];
    f.read_exact(&mut buf).map_err(ctx)?;
    Ok(buf)
}

/// What a bootloader would load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootSpec {
    pub kernel: Vec<u8>,
    pub initrd: Option<Vec<u8>>,
    /// Kernel arguments found on the card (loader entry, extlinux, cmdline file).
    pub cmdline: String,
}

fn read_fat_file<T: Read + Write + Seek>(fs: &fatfs::FileSystem<T>, path: &str) -> Option<Vec<u8>> {
    let mut f = fs.root_dir().open_file(path.trim_start_matches('/')).ok()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out).ok()?;
    Some(out)
}

fn dir_files<T: Read + Write + Seek>(fs: &fatfs::FileSystem<T>, dir: &str) -> Vec<String> {
    let dir = dir.trim_matches('/');
    let d = if dir.is_empty() {
        fs.root_dir()
    } else {
        match fs.root_dir().open_dir(dir) {
            Ok(d) => d,
            Err(_) => return Vec::new(),
        }
    };
    let mut names: Vec<String> = d
        .iter()
        .filter_map(|e| e.ok())
        .filter(|e| e.is_file())
        .map(|e| e.file_name())
        .collect();
    names.sort();
    names
}

/// `key value` lines of a loader entry or extlinux.conf (keys lower-cased).
fn keyed(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(char::is_whitespace)?;
            Some((k.to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect()
}

/// The loader entry systemd-boot would pick: loader.conf's `default`, else the first.
fn default_entry<T: Read + Write + Seek>(fs: &fatfs::FileSystem<T>) -> Option<String> {
    let entries: Vec<String> = dir_files(fs, "loader/entries")
        .into_iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".conf"))
        .collect();
    let default = read_fat_file(fs, "loader/loader.conf").and_then(|c| {
        keyed(&String::from_utf8_lossy(&c))
            .into_iter()
            .find(|(k, _)| k == "default")
            .map(|(_, v)| v)
    });
    default
        .and_then(|d| {
            entries
                .iter()
                .find(|e| **e == d || e.trim_end_matches(".conf") == d)
                .cloned()
        })
        .or_else(|| entries.first().cloned())
}

/// Kernel, initramfs and command line from the card's boot FAT.
pub fn boot_spec(path: &Path) -> Result<BootSpec, Error> {
    let part = boot_partition(path)?;
    let bytes = read_part(path, &part)?;
    let fs = fatfs::FileSystem::new(Cursor::new(bytes), fatfs::FsOptions::new()).map_err(|e| {
        Error::Card {
            path: path.to_path_buf(),
            reason: format!(
                "partition at {} bytes is not a readable FAT: {e}",
                part.offset
            ),
        }
    })?;
    let missing = |what: &str| Error::Card {
        path: path.to_path_buf(),
        reason: format!("{what} named by the boot configuration is missing from the FAT"),
    };
    let (mut kernel, mut initrd, mut cmdline) = (None, None, Vec::new());
    if let Some(entry) = default_entry(&fs) {
        let text = read_fat_file(&fs, &format!("loader/entries/{entry}")).unwrap_or_default();
        for (k, v) in keyed(&String::from_utf8_lossy(&text)) {
            match k.as_str() {
                "linux" => kernel = Some(read_fat_file(&fs, &v).ok_or_else(|| missing(&v))?),
                "initrd" if initrd.is_none() => {
                    initrd = Some(read_fat_file(&fs, &v).ok_or_else(|| missing(&v))?)
                }
                "options" => cmdline.push(v),
                _ => {}
            }
        }
    } else if let Some(text) = read_fat_file(&fs, "extlinux/extlinux.conf") {
        for (k, v) in keyed(&String::from_utf8_lossy(&text)) {
            match k.as_str() {
                "linux" | "kernel" if kernel.is_none() => {
                    kernel = Some(read_fat_file(&fs, &v).ok_or_else(|| missing(&v))?)
                }
                "initrd" if initrd.is_none() => {
                    initrd = Some(read_fat_file(&fs, &v).ok_or_else(|| missing(&v))?)
                }
                "append" if cmdline.is_empty() => cmdline.push(v),
                _ => {}
            }
        }
    }
    let root = dir_files(&fs, "/");
    let find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| root.iter().find(|r| r.eq_ignore_ascii_case(n)))
            .and_then(|n| read_fat_file(&fs, n))
    };
    if kernel.is_none() {
        kernel = find(&["vmlinuz", "bzImage", "linux", "kernel", "Image", "zImage"]);
    }
    if initrd.is_none() {
        initrd = find(&[
            "initramfs",
            "initramfs.cpio.zst",
            "initramfs.cpio.gz",
            "initramfs.img",
            "initrd",
            "initrd.img",
        ]);
    }
    if let Some(c) = find(&["cmdline.txt", "cmdline"]) {
        cmdline.push(String::from_utf8_lossy(&c).trim().to_string());
    }
    let kernel = kernel.ok_or_else(|| Error::Card {
        path: path.to_path_buf(),
        reason: format!(
            "no kernel in the boot FAT (looked at loader/entries, extlinux/extlinux.conf and vmlinuz/bzImage/Image; found {})",
            root.join(", ")
        ),
    })?;
    Ok(BootSpec {
        kernel,
        initrd,
        cmdline: cmdline.join(" "),
    })
}

/// A window onto part of a file, so `fatfs` can edit one partition in place.
struct Slice {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for Slice {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}
impl Write for Slice {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "end of partition"));
        }
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}
impl Seek for Slice {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// Add kernel arguments to every loader entry's `options` on `path` (a copy of
/// the card: the user's card is never touched). Returns how many entries changed.
pub fn append_loader_options(path: &Path, extra: &str) -> Result<usize, Error> {
    let part = boot_partition(path)?;
    let ctx = |e| {
        Error::io(
            format!("patching the loader entries of {}", path.display()),
            e,
        )
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(ctx)?;
    let slice = Slice {
        file,
        start: part.offset,
        len: part.size,
        pos: 0,
    };
    let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).map_err(ctx)?;
    let mut changed = 0;
    for name in dir_files(&fs, "loader/entries") {
        let p = format!("loader/entries/{name}");
        let Some(text) = read_fat_file(&fs, &p) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let mut out = String::new();
        let mut had_options = false;
        for line in text.lines() {
            if line
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("options")
                && !had_options
            {
                had_options = true;
                out.push_str(&format!("{} {extra}\n", line.trim_end()));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !had_options {
            out.push_str(&format!("options {extra}\n"));
        }
        let mut f = fs.root_dir().open_file(&p).map_err(ctx)?;
        f.truncate().map_err(ctx)?;
        f.write_all(out.as_bytes()).map_err(ctx)?;
        f.flush().map_err(ctx)?;
        changed += 1;
    }
    fs.unmount().map_err(ctx)?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A GPT image (written by sgdisk-compatible layout, built by hand here) with
    /// one ESP named `flash-boot` holding a FAT made by fatfs.
    fn image(files: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let fat_size = 8u64 << 20;
        let mut fat = Cursor::new(vec![0u8; fat_size as usize]);
        fatfs::format_volume(&mut fat, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut fat, fatfs::FsOptions::new()).unwrap();
            for (p, data) in files {
                let mut dir = fs.root_dir();
                let parts: Vec<&str> = p.split('/').collect();
                for d in &parts[..parts.len() - 1] {
                    dir = dir.create_dir(d).unwrap();
                }
                let mut f = dir.create_file(parts[parts.len() - 1]).unwrap();
                f.write_all(data).unwrap();
            }
        }
        let start = 2048u64;
        let mut disk = vec![0u8; (start * 512 + fat_size + 34 * 512) as usize];
        // Protective MBR.
        disk[446 + 4] = 0xee;
        disk[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        disk[510] = 0x55;
        disk[511] = 0xaa;
        // GPT header: entries at LBA 2, 128 entries of 128 bytes.
        disk[512..520].copy_from_slice(b"EFI PART");
        disk[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        disk[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        disk[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        let e = 1024;
        disk[e..e + 16].copy_from_slice(&ESP_GUID);
        disk[e + 16] = 1;
        disk[e + 32..e + 40].copy_from_slice(&start.to_le_bytes());
        disk[e + 40..e + 48].copy_from_slice(&(start + fat_size / 512 - 1).to_le_bytes());
        for (i, c) in "flash-boot".encode_utf16().enumerate() {
            disk[e + 56 + 2 * i..e + 58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        disk[(start * 512) as usize..(start * 512 + fat_size) as usize]
            .copy_from_slice(fat.get_ref());
        let mut t = tempfile::NamedTempFile::new().unwrap();
        t.write_all(&disk).unwrap();
        t
    }

    #[test]
    fn finds_the_named_gpt_partition() {
        let t = image(&[("vmlinuz", b"K")]);
        let p = boot_partition(t.path()).unwrap();
        assert_eq!(p.name, "flash-boot");
        assert_eq!(p.offset, 2048 * 512);
        assert_eq!(p.size, 8 << 20);
        assert!(p.esp);
    }

    #[test]
    fn loader_entry_wins_and_cmdline_file_is_added() {
        let t = image(&[
            ("loader/loader.conf", b"timeout 0\ndefault b.conf\n"),
            ("loader/entries/a.conf", b"linux /a\n"),
            (
                "loader/entries/b.conf",
                b"title B\nlinux /kern\ninitrd /ird\noptions quiet x=1\n",
            ),
            ("kern", b"KERNEL"),
            ("ird", b"INITRD"),
            ("a", b"WRONG"),
            ("cmdline.txt", b"flasher.verify=on\n"),
        ]);
        let s = boot_spec(t.path()).unwrap();
        assert_eq!(s.kernel, b"KERNEL");
        assert_eq!(s.initrd.as_deref(), Some(&b"INITRD"[..]));
        assert_eq!(s.cmdline, "quiet x=1 flasher.verify=on");
    }

    #[test]
    fn extlinux_and_plain_names() {
        let t = image(&[
            (
                "extlinux/extlinux.conf",
                b"LABEL x\n  LINUX /Image\n  INITRD /initramfs\n  APPEND a=b\n",
            ),
            ("Image", b"I"),
            ("initramfs", b"R"),
        ]);
        let s = boot_spec(t.path()).unwrap();
        assert_eq!(
            (s.kernel.as_slice(), s.cmdline.as_str()),
            (&b"I"[..], "a=b")
        );
        let t = image(&[("vmlinuz", b"V"), ("initramfs.cpio.zst", b"Z")]);
        let s = boot_spec(t.path()).unwrap();
        assert_eq!(s.kernel, b"V");
        assert_eq!(s.initrd.as_deref(), Some(&b"Z"[..]));
    }

    #[test]
    fn no_kernel_is_a_card_error() {
        let t = image(&[("readme", b"x")]);
        assert!(matches!(boot_spec(t.path()), Err(Error::Card { .. })));
        let blank = tempfile::NamedTempFile::new().unwrap();
        blank.as_file().set_len(1 << 20).unwrap();
        assert!(matches!(
            boot_partition(blank.path()),
            Err(Error::Card { .. })
        ));
    }

    #[test]
    fn patches_loader_options_in_place() {
        let t = image(&[
            (
                "loader/entries/f.conf",
                b"title F\nlinux /k\noptions console=ttyS0\n",
            ),
            ("loader/entries/g.conf", b"linux /k\n"),
            ("k", b"K"),
        ]);
        assert_eq!(
            append_loader_options(t.path(), "flasher.board=bogus").unwrap(),
            2
        );
        let s = boot_spec(t.path()).unwrap();
        assert_eq!(s.cmdline, "console=ttyS0 flasher.board=bogus");
    }
}
