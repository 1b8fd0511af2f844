//! Reading what PID 1 needs after the write: the partition that holds the target's
//! boot FAT (parsed from the table just written, since the kernel's partition nodes
//! for the target are stale until it re-reads the table). The card's config is
//! read by `flasher::config_inject::CardConfig`. Read-only on the card, in
//! user space (no vfat module, no mount), through `flasher_disk::fat`.

use flasher_disk::fat;

use flasher::config_inject::PartitionSlice;

/// `dev` limited to `span`.
pub fn slice<D>(dev: D, span: fat::Span) -> PartitionSlice<D> {
    PartitionSlice::new(dev, span.0, span.1)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flasher_disk::fat::{first_fat, partitions, read_file};
    use std::io::{self, Cursor, Read, Seek, Write};

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
        let mut d = Cursor::new(vec![0u8; size as usize]);
        let table: Vec<_> = parts
            .iter()
            .map(|(lba, data, kind)| flasher_disk::mbr::NewPartition {
                sys: *kind,
                bootable: false,
                start_lba: *lba,
                sectors: data.len() as u64 / 512,
            })
            .collect();
        flasher_disk::mbr::write_new(&mut d, 512, [1, 2, 3, 4], &table).unwrap();
        let mut d = d.into_inner();
        for (lba, data, _) in parts {
            let at = (*lba * 512) as usize;
            d[at..at + data.len()].copy_from_slice(data);
        }
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
        assert_eq!(
            read_file(&mut s, "MLO", u64::MAX).unwrap().unwrap(),
            b"mlo bytes"
        );
        assert_eq!(read_file(&mut s, "u-boot.img", u64::MAX).unwrap(), None);
        assert!(!flasher::config_inject::CardConfig::read(&mut s)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn gpt_partitions() {
        for ss in [512u64, 4096] {
            let mut d = Cursor::new(vec![0u8; 1 << 20]);
            let part = |first, last| flasher_disk::gpt::NewPartition {
                name: String::new(),
                type_guid: flasher_disk::table::LINUX_FS,
                part_guid: [first as u8; 16],
                first_lba: first,
                last_lba: last,
                attributes: 0,
            };
            let first = if ss == 512 { 34 } else { 6 };
            let parts = [part(first, 99), part(100, 199)];
            flasher_disk::gpt::write_new(&mut d, ss, 1 << 20, [9; 16], &parts).unwrap();
            let got = partitions(&mut d).unwrap();
            assert_eq!(
                got,
                [(first * ss, (100 - first) * ss), (100 * ss, 100 * ss)],
                "{ss}-byte sectors"
            );
        }
    }

    #[test]
    fn no_table_no_fat() {
        let mut c = Cursor::new(vec![0u8; 64 << 10]);
        assert!(partitions(&mut c).unwrap().is_empty());
        assert_eq!(first_fat(&mut c).unwrap(), None);
        let empty = fat_with(4 << 20, &[]);
        assert!(flasher::config_inject::CardConfig::read(Cursor::new(empty))
            .unwrap()
            .is_empty());
    }

    /// Counts the bytes read through it: proof that a hostile header did not
    /// make `partitions` read (and so allocate) its claimed entry array.
    struct Counting<R> {
        inner: R,
        read: u64,
    }
    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(b)?;
            self.read += n as u64;
            Ok(n)
        }
    }
    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, p: io::SeekFrom) -> io::Result<u64> {
            self.inner.seek(p)
        }
    }

    /// Issue 10 item 7: the target's table is unvalidated input. A GPT header
    /// (with a correct CRC) claiming 2^32-1 entries of 2 GiB each is refused by
    /// `flasher_disk`'s bound (`MAX_ENTRY_BYTES`, checked when the header is
    /// parsed) before anything is allocated or read for the entries.
    #[test]
    fn partitions_refuses_a_huge_entry_array_without_allocating() {
        let mut d = Cursor::new(vec![0u8; 1 << 20]);
        let p = flasher_disk::gpt::NewPartition {
            name: String::new(),
            type_guid: flasher_disk::table::LINUX_FS,
            part_guid: [1; 16],
            first_lba: 34,
            last_lba: 99,
            attributes: 0,
        };
        flasher_disk::gpt::write_new(&mut d, 512, 1 << 20, [9; 16], &[p]).unwrap();
        let mut disk = d.into_inner();
        let hostile = |h: &mut [u8]| {
            h[80..84].copy_from_slice(&u32::MAX.to_le_bytes());
            h[84..88].copy_from_slice(&0x8000_0000u32.to_le_bytes());
            let hs = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
            let crc = flasher_disk::gpt::header_crc(h, hs);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
        };
        hostile(&mut disk[512..1024]);
        // The primary alone is hostile: the intact backup is used instead.
        let mut c = Counting {
            inner: Cursor::new(disk.clone()),
            read: 0,
        };
        assert_eq!(partitions(&mut c).unwrap(), [(34 * 512, 66 * 512)]);
        assert!(c.read <= flasher_disk::gpt::MAX_ENTRY_BYTES);
        // Both hostile: refused.
        let end = disk.len();
        hostile(&mut disk[end - 512..]);
        let mut c = Counting {
            inner: Cursor::new(disk),
            read: 0,
        };
        let e = partitions(&mut c).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(
            matches!(
                e.get_ref()
                    .and_then(|r| r.downcast_ref::<flasher_disk::Error>()),
                Some(flasher_disk::Error::BadHeader { .. })
            ),
            "{e:?}"
        );
        assert!(
            c.read <= flasher_disk::gpt::MAX_ENTRY_BYTES,
            "read {} bytes",
            c.read
        );
    }
}
