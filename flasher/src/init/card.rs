//! Reading what PID 1 needs after the write: the partition that holds the target's
//! boot FAT (parsed from the table just written, since the kernel's partition nodes
//! for the target are stale until it re-reads the table), and files on the card's
//! `flash-boot` FAT (bootloader files, whether any config is there). Read-only on
//! the card, in user space (no vfat module, no mount).

use std::io::{self, Read, Seek, SeekFrom};

use crate::config_inject::{PartitionSlice, CONNECTIONS_DIR};

/// A partition as (byte offset, byte length) on its disk.
pub type Span = (u64, u64);

fn read_at<R: Read + Seek>(dev: &mut R, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    dev.seek(SeekFrom::Start(offset))?;
    dev.read_exact(&mut buf)?;
    Ok(buf)
}

fn le32(b: &[u8], at: usize) -> u64 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The partitions in the table at the start of `dev`, in table order: GPT (512 or
/// 4096-byte sectors) or MBR primary partitions. Empty if there is no table.
pub fn partitions<R: Read + Seek>(dev: &mut R) -> io::Result<Vec<Span>> {
    for sector in [512u64, 4096] {
        let Ok(hdr) = read_at(dev, sector, 92) else {
            continue;
        };
        if &hdr[..8] != b"EFI PART" {
            continue;
        }
        let entries_lba = le64(&hdr, 72);
        let count = le32(&hdr, 80).min(1024);
        let size = le32(&hdr, 84);
        if size < 128 {
            return Ok(Vec::new());
        }
        let table = read_at(dev, entries_lba * sector, (count * size) as usize)?;
        let mut out = Vec::new();
        for e in table.chunks_exact(size as usize) {
            // An all-zero type GUID is an unused entry.
            if e[..16].iter().all(|b| *b == 0) {
                continue;
            }
            let (first, last) = (le64(e, 32), le64(e, 40));
            if last >= first {
                out.push((first * sector, (last - first + 1) * sector));
            }
        }
        return Ok(out);
    }
    let mbr = read_at(dev, 0, 512)?;
    if mbr[510..] != [0x55, 0xAA] {
        return Ok(Vec::new());
    }
    Ok((0..4)
        .map(|i| &mbr[446 + 16 * i..446 + 16 * (i + 1)])
        // 0 = unused, 0xEE = protective MBR, 0x05/0x0F/0x85 = extended containers.
        .filter(|e| !matches!(e[4], 0x00 | 0xEE | 0x05 | 0x0F | 0x85))
        .map(|e| (le32(e, 8) * 512, le32(e, 12) * 512))
        .filter(|(_, len)| *len > 0)
        .collect())
}

/// Whether the bytes at `span` start with a FAT boot sector.
pub fn is_fat<R: Read + Seek>(dev: &mut R, span: Span) -> bool {
    let Ok(b) = read_at(dev, span.0, 512) else {
        return false;
    };
    b[510..] == [0x55, 0xAA] && (&b[54..57] == b"FAT" || &b[82..87] == b"FAT32")
}

/// The first partition holding a FAT filesystem: the OS image's boot partition.
pub fn first_fat<R: Read + Seek>(dev: &mut R) -> io::Result<Option<Span>> {
    for p in partitions(dev)? {
        if is_fat(dev, p) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Read `path` from the FAT filesystem `fat` (e.g. the card's flash-boot
/// partition); `Ok(None)` if it does not exist.
pub fn read_file<D: Read + Seek>(mut fat: D, path: &str) -> io::Result<Option<Vec<u8>>> {
    // fatfs asserts that it starts at position 0.
    fat.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(ReadOnly(fat), fatfs::FsOptions::new())?;
    let mut f = match fs.root_dir().open_file(path.trim_start_matches('/')) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut data = Vec::new();
    f.read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Whether the card's flash-boot FAT holds any configuration to copy.
pub fn has_config<D: Read + Seek>(mut fat: D) -> io::Result<bool> {
    fat.seek(SeekFrom::Start(0))?;
    let fs = fatfs::FileSystem::new(ReadOnly(fat), fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    Ok(root.open_file("config.json").is_ok()
        || root.open_file("hostname").is_ok()
        || root.open_dir(CONNECTIONS_DIR).is_ok())
}

/// `dev` limited to `span`.
pub fn slice<D>(dev: D, span: Span) -> PartitionSlice<D> {
    PartitionSlice::new(dev, span.0, span.1)
}

/// A reader that refuses writes, so the card can never be written through it.
struct ReadOnly<D>(D);

impl<D: Read> Read for ReadOnly<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}
impl<D: Seek> Seek for ReadOnly<D> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}
impl<D> io::Write for ReadOnly<D> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the flasher card is never written",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    /// A FAT16 filesystem of `len` bytes holding `files`.
    pub fn fat_with(len: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut img = Cursor::new(vec![0u8; len as usize]);
        fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut img, fatfs::FsOptions::new()).unwrap();
            for (name, data) in files {
                let root = fs.root_dir();
                if let Some((dir, _)) = name.rsplit_once('/') {
                    root.create_dir(dir).unwrap();
                }
                let mut f = root.create_file(name).unwrap();
                f.truncate().unwrap();
                f.write_all(data).unwrap();
            }
        }
        img.into_inner()
    }

    /// A disk image with an MBR whose partitions are `parts` at the given sectors.
    pub fn mbr_disk(size: u64, parts: &[(u64, &[u8], u8)]) -> Vec<u8> {
        let mut d = vec![0u8; size as usize];
        for (i, (lba, data, kind)) in parts.iter().enumerate() {
            let e = 446 + 16 * i;
            d[e + 4] = *kind;
            d[e + 8..e + 12].copy_from_slice(&(*lba as u32).to_le_bytes());
            d[e + 12..e + 16].copy_from_slice(&((data.len() as u64 / 512) as u32).to_le_bytes());
            let at = (*lba * 512) as usize;
            d[at..at + data.len()].copy_from_slice(data);
        }
        d[510] = 0x55;
        d[511] = 0xAA;
        d
    }

    #[test]
    fn mbr_first_fat_and_files() {
        let fat = fat_with(8 << 20, &[("MLO", b"mlo bytes"), ("config.json", b"{}")]);
        let junk = vec![7u8; 1 << 20];
        let disk = mbr_disk(16 << 20, &[(2048, &junk, 0x83), (4096, &fat, 0x0c)]);
        let mut c = Cursor::new(disk);
        assert_eq!(
            partitions(&mut c).unwrap(),
            [(2048 * 512, 1 << 20), (4096 * 512, 8 << 20)]
        );
        let span = first_fat(&mut c).unwrap().unwrap();
        assert_eq!(span, (4096 * 512, 8 << 20));
        let mut s = slice(&mut c, span);
        assert_eq!(read_file(&mut s, "MLO").unwrap().unwrap(), b"mlo bytes");
        assert_eq!(read_file(&mut s, "u-boot.img").unwrap(), None);
        assert!(has_config(&mut s).unwrap());
    }

    #[test]
    fn gpt_partitions() {
        let mut d = vec![0u8; 1 << 20];
        d[512..520].copy_from_slice(b"EFI PART");
        d[512 + 72..512 + 80].copy_from_slice(&2u64.to_le_bytes());
        d[512 + 80..512 + 84].copy_from_slice(&128u32.to_le_bytes());
        d[512 + 84..512 + 88].copy_from_slice(&128u32.to_le_bytes());
        for (i, (first, last)) in [(34u64, 99u64), (0, 0), (100, 199)].iter().enumerate() {
            let e = 1024 + 128 * i;
            if *last > 0 {
                d[e] = 1; // a non-zero type GUID
            }
            d[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            d[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
        let got = partitions(&mut Cursor::new(d)).unwrap();
        assert_eq!(got, [(34 * 512, 66 * 512), (100 * 512, 100 * 512)]);
    }

    #[test]
    fn no_table_no_fat() {
        let mut c = Cursor::new(vec![0u8; 64 << 10]);
        assert!(partitions(&mut c).unwrap().is_empty());
        assert_eq!(first_fat(&mut c).unwrap(), None);
        let empty = fat_with(4 << 20, &[]);
        assert!(!has_config(Cursor::new(empty)).unwrap());
    }
}
