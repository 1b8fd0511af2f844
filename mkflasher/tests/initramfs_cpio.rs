//! The initramfs read back by the real `cpio -t` (after `zstd -d` / `gzip -d`):
//! /init and the sdhci modules for qemu-x86_64-sd, from a synthetic module tree
//! and, when `qemu-fixtures/setup` has run, from the real Debian kernel.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use mkflasher::cmd::initramfs::{self as initrd, Args};
use mkflasher::cpio::Compression;
use mkflasher::modules;

/// `DECOMPRESSOR -dc FILE | cpio -t`
fn cpio_list(file: &Path, decompressor: &str) -> Vec<String> {
    let data = Command::new(decompressor)
        .args(["-d", "-c"])
        .arg(file)
        .output()
        .expect("decompressor missing: run scripts/setup-host");
    assert!(data.status.success(), "{decompressor} -d failed");
    let mut cpio = Command::new("cpio")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio missing: run scripts/setup-host");
    cpio.stdin.take().unwrap().write_all(&data.stdout).unwrap();
    let out = cpio.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio -t failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn init_for_tests(dir: &Path) -> std::path::PathBuf {
    // The real static init when scripts/build-init has run, else a stand-in.
    let real = flasher_qemu::locate::init();
    if real.is_file() {
        return real;
    }
    let p = dir.join("init");
    std::fs::write(&p, initrd::fake_static_init()).unwrap();
    p
}

fn build(dir: &Path, modules: &Path, c: Compression, out: &str) -> std::path::PathBuf {
    let output = dir.join(out);
    initrd::run(Args {
        board: "qemu-x86_64-sd".into(),
        output: output.clone(),
        kernel_modules: Some(modules.to_path_buf()),
        init: Some(init_for_tests(dir)),
        board_file: None,
        compress: c,
        trust: vec![],
    })
    .unwrap();
    output
}

#[test]
fn synthetic_tree_listed_by_real_cpio() {
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("lib/modules/6.1.0-test");
    modules::fake_tree(&tree).unwrap();
    for (c, tool) in [(Compression::Zstd, "zstd"), (Compression::Gzip, "gzip")] {
        let out = build(t.path(), &tree, c, "initramfs.img");
        let names = cpio_list(&out, tool);
        for want in [
            "init",
            "dev/console",
            "proc",
            "sys",
            "run",
            "etc/flasher/board.json",
            "lib/modules/sdhci.ko",
            "lib/modules/sdhci-pci.ko",
            "lib/modules/cqhci.ko",
            "lib/modules/mmc_core.ko",
            "lib/modules/mmc_block.ko",
            "lib/modules/load-order",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
        // Reproducible: a second build is byte-identical.
        let again = build(t.path(), &tree, c, "again.img");
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&again).unwrap());
    }
}

#[test]
fn real_debian_kernel_modules_when_cached() {
    let Some(tree) = flasher_qemu::locate::qemu_modules_dir(&flasher_qemu::locate::fixture_cache())
    else {
        eprintln!("qemu-fixtures/cache has no kernel modules (run qemu-fixtures/setup); skipped");
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let out = build(t.path(), &tree, Compression::Zstd, "initramfs.img");
    let names = cpio_list(&out, "zstd");
    for want in [
        "init",
        "lib/modules/sdhci.ko",
        "lib/modules/sdhci-pci.ko",
        "lib/modules/cqhci.ko",
        "lib/modules/mmc_core.ko",
        "lib/modules/mmc_block.ko",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Every module listed in load-order comes after each of its depends=.
    let raw = mkflasher::cpio::decompress(&std::fs::read(&out).unwrap()).unwrap();
    let recs = mkflasher::cpio::parse(&raw).unwrap();
    let order = recs
        .iter()
        .find(|r| r.name == "lib/modules/load-order")
        .unwrap();
    let order: Vec<String> = String::from_utf8(order.data.clone())
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let pos = |name: &str| {
        order
            .iter()
            .position(|p| modules::name_of_file(p).as_deref() == Some(name))
    };
    for (i, p) in order.iter().enumerate() {
        let rec = recs.iter().find(|r| format!("/{}", r.name) == *p).unwrap();
        for d in modules::parse_modinfo(&rec.data).depends {
            let j = pos(&d).unwrap_or_else(|| panic!("{d} (needed by {p}) not in load-order"));
            assert!(j < i, "{d} must load before {p}");
        }
    }
    // The NUC board: NVMe and USB storage closures resolve against the same kernel.
    let nuc = initrd::Args {
        board: "qemu-x86_64-nuc".into(),
        output: t.path().join("nuc.img"),
        kernel_modules: Some(tree.clone()),
        init: Some(init_for_tests(t.path())),
        board_file: None,
        compress: Compression::Zstd,
        trust: vec![],
    };
    initrd::run(nuc).unwrap();
}

/// `--trust KEY.pub` puts the key into /etc/flasher/trusted, named by its
/// fingerprint, where /init looks for it; a bad key file is refused.
#[test]
fn trusted_keys_land_in_etc_flasher_trusted() {
    use flasher_format::bundle::{PublicKey, SecretKey};
    let t = tempfile::tempdir().unwrap();
    let tree = t.path().join("lib/modules/6.1.0-test");
    modules::fake_tree(&tree).unwrap();
    let key = SecretKey::from_seed(&[4; 32]).public();
    let pubfile = t.path().join("factory.pub");
    std::fs::write(&pubfile, key.to_text("factory")).unwrap();
    let args = |trust: Vec<std::path::PathBuf>| Args {
        board: "qemu-x86_64-sd".into(),
        output: t.path().join("trusted.img"),
        kernel_modules: Some(tree.clone()),
        init: Some(init_for_tests(t.path())),
        board_file: None,
        compress: Compression::Zstd,
        trust,
    };
    initrd::run(args(vec![pubfile.clone()])).unwrap();
    let fp = key.fingerprint().replace(':', "-");
    let want = format!("etc/flasher/trusted/{fp}.pub");
    let names = cpio_list(&t.path().join("trusted.img"), "zstd");
    assert!(names.contains(&want), "{want} missing from {names:?}");
    let spec = initrd::spec_from_args(&args(vec![pubfile])).unwrap();
    assert_eq!(spec.trust, vec![key.clone()]);
    assert_eq!(PublicKey::parse(&key.to_text("")).unwrap(), key);
    let bad = t.path().join("bad.pub");
    std::fs::write(&bad, "ssh-ed25519 AAAA").unwrap();
    assert!(initrd::run(args(vec![bad])).is_err());
}

/// `mkflasher initramfs --board qemu-imx6-nitrogen6x` picks the board's
/// architecture: the armmp module tree from the Debian parts cache by default (the
/// twin's 23 modules, dependencies first, every one an ARM ELF), and refuses an
/// x86_64 `/init`.
#[test]
fn twin_initramfs_takes_the_armmp_modules_and_an_arm_init() {
    let cache = flasher_qemu::locate::debian_parts();
    if flasher_qemu::locate::qemu_modules_dir_for(&cache, boards::Arch::Armv7).is_none() {
        eprintln!("debian-parts has no armmp kernel (run scripts/fetch-debian-parts); skipped");
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let arm_init = t.path().join("init-armv7");
    std::fs::write(&arm_init, initrd::fake_static_init_for(boards::Arch::Armv7)).unwrap();
    let args = |init: &Path| Args {
        board: "qemu-imx6-nitrogen6x".into(),
        output: t.path().join("initramfs.img"),
        kernel_modules: None,
        init: Some(init.to_path_buf()),
        board_file: None,
        compress: Compression::Zstd,
        trust: vec![],
    };
    let spec = initrd::spec_from_args(&args(&arm_init)).unwrap();
    assert_eq!(
        spec.kernel_modules,
        flasher_qemu::locate::qemu_modules_dir_for(&cache, boards::Arch::Armv7)
    );
    let (bytes, summary) = initrd::build(&spec).unwrap();
    assert_eq!(summary.modules.len(), 23, "{:?}", summary.modules);
    assert_eq!(summary.modules[0], "gpio-mxc.ko");
    let pos = |m: &str| summary.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("sdhci.ko") < pos("sdhci-esdhc-imx.ko"));
    assert!(pos("usbcore.ko") < pos("ci_hdrc_imx.ko"));
    assert!(pos("scsi_mod.ko") < pos("usb-storage.ko"));
    let recs = mkflasher::cpio::parse(&mkflasher::cpio::decompress(&bytes).unwrap()).unwrap();
    for r in recs.iter().filter(|r| r.name.ends_with(".ko")) {
        // e_machine 40: EM_ARM.
        assert_eq!(
            &r.data[0x12..0x14],
            &[40, 0],
            "{} is not an ARM module",
            r.name
        );
    }
    // The x86_64 /init on the ARM board's initramfs is refused.
    let x86_init = t.path().join("init-x86_64");
    std::fs::write(&x86_init, initrd::fake_static_init()).unwrap();
    let spec = initrd::spec_from_args(&args(&x86_init)).unwrap();
    match initrd::build(&spec) {
        Err(mkflasher::Error::Initramfs(e)) => {
            assert!(matches!(e, initrd::Error::WrongArch { machine: 62, .. }))
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}
