//! The card's flash-boot FAT as the init reads it (issue 22): the config read
//! once (`config_inject::CardConfig::read`: names checked, every file and
//! the whole bounded, directories bounded), copied onto a fresh target FAT
//! (`copy_config_with`), and the other reads the init makes from the card
//! (`fat::read_file` with a bound, as for bootloader files and the pool;
//! `fat::list`).

use flasher::config_inject::{self, CardConfig, MAX_CARD_CONFIG, MAX_CONFIG_JSON};
use flasher_disk::fat;
use std::io::Cursor;

pub fn card(data: &[u8]) {
    for path in [
        "MLO",
        "u-boot.img",
        "units/pool.csv",
        "EFI/BOOT/BOOTX64.EFI",
    ] {
        if let Ok(Some(b)) = fat::read_file(Cursor::new(data), path, 64 << 10) {
            assert!(
                b.len() <= 64 << 10,
                "{path}: {} bytes over the bound",
                b.len()
            );
        }
    }
    if let Ok(all) = fat::list(Cursor::new(data)) {
        assert!(all.len() <= fat::MAX_DIR_ENTRIES + 1);
        for e in &all {
            assert!(e.path.matches('/').count() <= fat::MAX_DEPTH, "{}", e.path);
        }
    }
    let Ok(cfg) = CardConfig::read(Cursor::new(data)) else {
        return;
    };
    let files = cfg.files();
    let mut total = 0u64;
    let mut names: Vec<String> = Vec::new();
    for (path, bytes) in &files {
        assert!(bytes.len() as u64 <= MAX_CONFIG_JSON, "{path}");
        total += bytes.len() as u64;
        let name = path.strip_prefix("system-connections/").unwrap_or(path);
        assert!(!name.is_empty());
        assert!(!name.contains(['/', '\\']), "{path}: a path separator");
        assert!(!name.contains(".."), "{path}: `..`");
        assert!(
            !name.chars().any(char::is_control),
            "{path}: a control character"
        );
        names.push(name.to_ascii_lowercase());
    }
    assert!(total <= MAX_CARD_CONFIG, "{total} bytes of config");
    if let Some(conns) = &cfg.connections {
        let mut n: Vec<String> = conns.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
        n.sort();
        assert!(n.windows(2).all(|w| w[0] != w[1]), "duplicate names {n:?}");
    }
    // Copied onto a fresh FAT: every file lands as read (or the target is
    // too small, an I/O error naming the file).
    let mut target = Cursor::new(vec![0u8; 6 << 20]);
    fatfs::format_volume(&mut target, fatfs::FormatVolumeOptions::new())
        .expect("format a target FAT");
    match config_inject::copy_config_with(&cfg, &mut target, None) {
        Ok(_) => {
            for (name, bytes) in cfg.connections.iter().flatten() {
                let path = format!("system-connections/{name}");
                let got = fat::read_file(&mut target, &path, MAX_CONFIG_JSON)
                    .expect("read back")
                    .expect("copied");
                assert!(got == *bytes, "{path} differs on the target");
            }
            if let Some(h) = &cfg.hostname {
                let got = fat::read_file(&mut target, "hostname", MAX_CONFIG_JSON)
                    .expect("read back")
                    .expect("copied");
                assert!(got == *h, "hostname differs on the target");
            }
        }
        Err(config_inject::Error::Io(_)) => {}
        Err(e) => panic!("copying config already read and checked failed: {e}"),
    }
}
