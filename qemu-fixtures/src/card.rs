//! Reading (and, on a copy, patching) the boot configuration of a card or disk
//! image, in user space: the partition table and the FAT files with
//! `flasher_disk` (`fat::read_file`, `list_dir`, `write_file`).
//!
//! `qemu-x86_64-sd` has no firmware that reads a card, so the harness plays
//! U-Boot: it takes the kernel, initramfs and command line from the card's
//! `flash-boot` FAT and hands them to QEMU's `-kernel`/`-initrd`/`-append`.
//! `qemu-x86_64-nuc` boots through OVMF + systemd-boot; there the harness only
//! patches the loader entries' `options` on a copy of the card when the run needs
//! extra kernel arguments.

use super::Error;
use flasher_disk::fat;
use flasher_format::card as layout;
use flasher_format::io::IoContext;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::Path;

/// One partition: where it is, and what we know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub offset: u64,
    pub size: u64,
    pub esp: bool,
    pub fat_type: bool,
}

/// The partitions of a GPT or MBR image, in table order; empty without a table.
pub fn partitions<R: Read + Seek>(img: &mut R) -> io::Result<Vec<Part>> {
    let table = match flasher_disk::Table::read(img) {
        Ok(t) => t,
        Err(flasher_disk::Error::NoTable) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(table
        .partitions
        .into_iter()
        .map(|p| Part {
            esp: p.part_type.is_esp(),
            fat_type: p.part_type.is_fat(),
            name: p.name,
            offset: p.offset,
            size: p.size,
        })
        .collect())
}

/// The boot partition: the one named `flash-boot`, else the ESP, else the first
/// FAT-typed one, else the first.
pub fn boot_partition(path: &Path) -> Result<Part, Error> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let parts = partitions(&mut f).map_err(|e| {
        Error::Io(flasher_format::io::IoError::new(
            format!("reading the partition table of {}", path.display()),
            e,
        ))
    })?;
    parts
        .iter()
        .find(|p| p.name == layout::BOOT_NAME)
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
        Error::Io(flasher_format::io::IoError::new(
            format!("reading the boot partition of {}", path.display()),
            e,
        ))
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

/// The whole of `path` in the volume, `None` if it is missing or unreadable.
fn read_fat_file<V: Read + Seek>(vol: &mut V, path: &str) -> Option<Vec<u8>> {
    fat::read_file(vol, path, u64::MAX).ok().flatten()
}

/// The names of the files directly in `dir`, sorted; empty if there is no
/// such directory (or it cannot be read).
fn dir_files<V: Read + Seek>(vol: &mut V, dir: &str) -> Vec<String> {
    files_in(fat::list_dir(vol, dir).ok().flatten().unwrap_or_default())
}

/// The names of the files among `entries`, sorted.
fn files_in(entries: Vec<fat::Entry>) -> Vec<String> {
    let mut names: Vec<String> = entries
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| e.name().to_string())
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
fn default_entry<V: Read + Seek>(vol: &mut V) -> Option<String> {
    let entries: Vec<String> = dir_files(vol, "loader/entries")
        .into_iter()
        .filter(|n| n.to_ascii_lowercase().ends_with(".conf"))
        .collect();
    let default = read_fat_file(vol, "loader/loader.conf").and_then(|c| {
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
    let mut vol = Cursor::new(read_part(path, &part)?);
    let root = fat::list_dir(&mut vol, "").map_err(|e| Error::Card {
        path: path.to_path_buf(),
        reason: format!(
            "partition at {} bytes is not a readable FAT: {e}",
            part.offset
        ),
    })?;
    let root = files_in(root.unwrap_or_default());
    let missing = |what: &str| Error::Card {
        path: path.to_path_buf(),
        reason: format!("{what} named by the boot configuration is missing from the FAT"),
    };
    let (mut kernel, mut initrd, mut cmdline) = (None, None, Vec::new());
    if let Some(entry) = default_entry(&mut vol) {
        let text = read_fat_file(&mut vol, &format!("loader/entries/{entry}")).unwrap_or_default();
        for (k, v) in keyed(&String::from_utf8_lossy(&text)) {
            match k.as_str() {
                "linux" => kernel = Some(read_fat_file(&mut vol, &v).ok_or_else(|| missing(&v))?),
                "initrd" if initrd.is_none() => {
                    initrd = Some(read_fat_file(&mut vol, &v).ok_or_else(|| missing(&v))?)
                }
                "options" => cmdline.push(v),
                _ => {}
            }
        }
    } else if let Some(text) = read_fat_file(&mut vol, "extlinux/extlinux.conf") {
        for (k, v) in keyed(&String::from_utf8_lossy(&text)) {
            match k.as_str() {
                "linux" | "kernel" if kernel.is_none() => {
                    kernel = Some(read_fat_file(&mut vol, &v).ok_or_else(|| missing(&v))?)
                }
                "initrd" if initrd.is_none() => {
                    initrd = Some(read_fat_file(&mut vol, &v).ok_or_else(|| missing(&v))?)
                }
                "append" if cmdline.is_empty() => cmdline.push(v),
                _ => {}
            }
        }
    }
    let mut find = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| root.iter().find(|r| r.eq_ignore_ascii_case(n)))
            .and_then(|n| read_fat_file(&mut vol, n))
    };
    if kernel.is_none() {
        kernel = find(&[
            layout::KERNEL_FILE,
            "bzImage",
            "linux",
            "kernel",
            "Image",
            "zImage",
        ]);
    }
    if initrd.is_none() {
        initrd = find(&[
            layout::INITRAMFS_FILE,
            "initramfs.cpio.zst",
            "initramfs.cpio.gz",
            "initramfs.img",
            "initrd",
            "initrd.img",
        ]);
    }
    if let Some(c) = find(&[layout::CMDLINE_FILE, "cmdline"]) {
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

/// Add kernel arguments to every loader entry's `options` on `path` (a copy of
/// the card: the user's card is never touched). Returns how many entries changed.
pub fn append_loader_options(path: &Path, extra: &str) -> Result<usize, Error> {
    let part = boot_partition(path)?;
    let ctx = |e| {
        Error::Io(flasher_format::io::IoError::new(
            format!("patching the loader entries of {}", path.display()),
            e,
        ))
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(ctx)?;
    let mut vol = flasher_disk::PartitionSlice::new(file, part.offset, part.size);
    let entries = fat::list_dir(&mut vol, "loader/entries").map_err(ctx)?;
    let mut changed = 0;
    for name in files_in(entries.unwrap_or_default()) {
        let p = format!("loader/entries/{name}");
        let Some(text) = read_fat_file(&mut vol, &p) else {
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
        fat::write_file(&mut vol, &p, out.as_bytes(), fatfs::FsOptions::new()).map_err(ctx)?;
        changed += 1;
    }
    Ok(changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A GPT image (written by sgdisk-compatible layout, built by hand here) with
    /// one ESP named `flash-boot` holding a FAT made by fatfs.
    pub(crate) fn image(files: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
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
        let size = start * 512 + fat_size + 34 * 512;
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        let esp = flasher_disk::gpt::NewPartition {
            name: "flash-boot".into(),
            type_guid: flasher_disk::gpt::ESP_TYPE,
            part_guid: [1; 16],
            first_lba: start,
            last_lba: start + fat_size / 512 - 1,
            attributes: 0,
        };
        flasher_disk::gpt::write_new(&mut disk, 512, size, [2; 16], &[esp]).unwrap();
        let mut disk = disk.into_inner();
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
