//! The card's FAT and partition tables checked by the real tools:
//! `fsck.vfat -n` (dosfstools) and `sfdisk --verify` (fdisk).

use std::process::Command;

use mkflasher::disk::{self, Contents, PartKind, PartSpec, Table};
use mkflasher::fat::{self, FatFile};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .expect("tool not installed: run scripts/setup-host");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn files() -> Vec<FatFile> {
    vec![
        FatFile::new("EFI/BOOT/BOOTX64.EFI", vec![0x4d; 100_000]),
        FatFile::new("loader/entries/flasher.conf", b"linux /vmlinuz\n".to_vec()),
        FatFile::new("vmlinuz", vec![3; 300_000]),
        FatFile::new("initramfs", vec![5; 50_000]),
    ]
}

#[test]
fn fat_volumes_pass_fsck() {
    let dir = tempfile::tempdir().unwrap();
    for size in [8u64 << 20, 32 << 20, 520 << 20] {
        let p = dir.path().join(format!("fat{size}.img"));
        std::fs::write(&p, fat::make_fat(size, "flash-boot", &files()).unwrap()).unwrap();
        run(Command::new("fsck.vfat").arg("-n").arg(&p));
        // And after an in-place rewrite.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        fat::write_file(&f, "config.json", b"{}").unwrap();
        fat::write_file(&f, "system-connections/wifi", b"[wifi]").unwrap();
        run(Command::new("fsck.vfat").arg("-n").arg(&p));
    }
}

#[test]
fn tables_pass_sfdisk_verify() {
    let dir = tempfile::tempdir().unwrap();
    for table in [Table::Gpt, Table::Mbr] {
        let p = dir.path().join("card.img");
        let parts = vec![
            PartSpec {
                name: "flash-boot".into(),
                kind: if table == Table::Gpt {
                    PartKind::Esp
                } else {
                    PartKind::BasicData
                },
                size: 16 << 20,
                bootable: table == Table::Mbr,
                contents: Contents::Bytes(fat::make_fat(16 << 20, "flash-boot", &files()).unwrap()),
            },
            PartSpec {
                name: "flasher-payload".into(),
                kind: PartKind::Raw,
                size: 0,
                bootable: false,
                contents: Contents::Bytes(vec![1; 3 << 20]),
            },
            PartSpec {
                name: "flasher-log".into(),
                kind: PartKind::Raw,
                size: 1 << 20,
                bootable: false,
                contents: Contents::Zero,
            },
        ];
        disk::write_disk(&p, table, &parts).unwrap();
        let v = run(Command::new("sfdisk").arg("--verify").arg(&p));
        assert!(v.contains("No errors detected"), "{v}");
        let dump = run(Command::new("sfdisk").arg("--dump").arg(&p));
        if table == Table::Gpt {
            assert!(dump.contains("name=\"flasher-payload\""), "{dump}");
            let v = run(Command::new("sgdisk").arg("-v").arg(&p));
            assert!(v.contains("No problems found"), "{v}");
        } else {
            assert!(dump.contains("type=c, bootable"), "{dump}");
        }
        // The FAT inside the partition still checks out.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let (slice, _) = disk::open_partition(f, "flash-boot", Some(1)).unwrap();
        assert_eq!(fat::read_file(slice, "vmlinuz").unwrap(), vec![3; 300_000]);
    }
}
