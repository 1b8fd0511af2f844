//! `mkflasher build`, `configure` and `inspect` end to end on files: the
//! card's tables pass `sfdisk --verify`, its FAT passes `fsck.vfat -n`, the
//! payload partition holds the bundle byte for byte, and building twice gives
//! identical bytes.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::process::Command;

use flasher_format::bundle::{BundleWriter, WriterOptions};
use mkflasher::cmd::{build, configure, initramfs as initrd, inspect};
use mkflasher::{card, disk, fat};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool missing: run scripts/setup-host");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

fn make_bundle(dir: &Path) -> PathBuf {
    let opts = WriterOptions {
        chunk_size: 64 << 10,
        level: 3,
        workers: 1,
        ..Default::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    w.push_data(&data).unwrap();
    w.push_zero(1 << 20).unwrap();
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    let p = dir.join("os.bundle");
    std::fs::write(&p, out).unwrap();
    p
}

struct Fixture {
    _t: tempfile::TempDir,
    dir: PathBuf,
    bundle: PathBuf,
    kernel: PathBuf,
    init: PathBuf,
    init_arm: PathBuf,
    sdboot: PathBuf,
    uboot: PathBuf,
}

fn fixture() -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().to_path_buf();
    let bundle = make_bundle(&dir);
    let kernel = dir.join("vmlinuz");
    std::fs::write(&kernel, vec![0x4b; 2 << 20]).unwrap();
    let init = dir.join("init");
    std::fs::write(&init, initrd::fake_static_init()).unwrap();
    let init_arm = dir.join("init-armv7");
    std::fs::write(&init_arm, initrd::fake_static_init_for(boards::Arch::Armv7)).unwrap();
    let sdboot = dir.join("systemd-bootx64.efi");
    std::fs::write(&sdboot, b"MZ fake systemd-boot").unwrap();
    let uboot = dir.join("uboot");
    std::fs::create_dir_all(uboot.join("dtbs")).unwrap();
    std::fs::write(uboot.join("MLO"), vec![1; 100_000]).unwrap();
    std::fs::write(uboot.join("u-boot.img"), vec![2; 500_000]).unwrap();
    std::fs::write(uboot.join("dtbs/am335x-boneblack.dtb"), vec![3; 60_000]).unwrap();
    let modules = dir.join("modules");
    mkflasher::modules::fake_tree(&modules).unwrap();
    Fixture {
        _t: t,
        dir,
        bundle,
        kernel,
        init,
        init_arm,
        sdboot,
        uboot,
    }
}

fn args(f: &Fixture, board: &str, out: &str) -> build::Args {
    build::Args {
        board: board.into(),
        payload: f.bundle.clone(),
        bmap: None,
        output: f.dir.join(out),
        kernel: Some(f.kernel.clone()),
        initramfs: None,
        kernel_modules: Some(f.dir.join("modules")),
        init: Some(match boards::find(board).unwrap().arch {
            boards::Arch::Armv7 => f.init_arm.clone(),
            _ => f.init.clone(),
        }),
        board_file: None,
        bootloader_files: (!board.starts_with("qemu")).then(|| f.uboot.clone()),
        systemd_boot: Some(f.sdboot.clone()),
        cmdline: "flasher.verify=full".into(),
        log_size: Some(1 << 20),
        unit_data: None,
        unit_files: None,
        image_size: 0,
        power_of_two: false,
        trust: vec![],
        sign: None,
    }
}

/// Copy one partition out and run fsck.vfat -n on it.
fn fsck_boot(card_path: &Path, dir: &Path) {
    let vol = card::open_boot(card_path).unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut { vol }, &mut bytes).unwrap();
    let p = dir.join("boot.fat");
    std::fs::write(&p, bytes).unwrap();
    run(Command::new("fsck.vfat").arg("-n").arg(&p));
}

fn check_card(f: &Fixture, board: &str) -> PathBuf {
    let a = args(f, board, &format!("{board}.img"));
    let out = a.output.clone();
    build::run(a).unwrap();
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&out));
    assert!(verify.contains("No errors detected"), "{verify}");
    fsck_boot(&out, &f.dir);
    // The payload partition starts with the bundle, byte for byte.
    let img = std::fs::read(&out).unwrap();
    let bundle = std::fs::read(&f.bundle).unwrap();
    let (_, parts) = disk::read_table(&mut Cursor::new(img.clone())).unwrap();
    let payload = &parts[1];
    assert_eq!(&img[payload.offset as usize..][..bundle.len()], &bundle[..]);
    // Reproducible.
    let again = args(f, board, &format!("{board}-again.img"));
    let again_path = again.output.clone();
    build::run(again).unwrap();
    assert!(
        img == std::fs::read(again_path).unwrap(),
        "{board}: two builds differ"
    );
    out
}

#[test]
fn x86_gpt_card_with_systemd_boot() {
    let f = fixture();
    let out = check_card(&f, "qemu-x86_64-nuc");
    let dump = run(Command::new("sfdisk").arg("--dump").arg(&out));
    assert!(dump.contains("label: gpt"), "{dump}");
    for name in [card::BOOT_NAME, card::PAYLOAD_NAME, card::LOG_NAME] {
        assert!(dump.contains(&format!("name=\"{name}\"")), "{dump}");
    }
    assert!(
        dump.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
        "ESP type: {dump}"
    );
    let mut vol = card::open_boot(&out).unwrap();
    assert_eq!(
        fat::read_file(&mut vol, "EFI/BOOT/BOOTX64.EFI").unwrap(),
        b"MZ fake systemd-boot"
    );
    let entry = String::from_utf8(fat::read_file(&mut vol, "loader/entries/flasher.conf").unwrap())
        .unwrap();
    assert!(
        entry.contains("linux /vmlinuz") && entry.contains("initrd /initramfs"),
        "{entry}"
    );
    assert!(
        entry.contains("flasher.board=qemu-x86_64-nuc") && entry.contains("console=ttyS0"),
        "{entry}"
    );
    assert!(entry.contains("flasher.verify=full"), "{entry}");
    assert_eq!(fat::read_file(&mut vol, "vmlinuz").unwrap().len(), 2 << 20);
    let ird = fat::read_file(&mut vol, "initramfs").unwrap();
    let recs = mkflasher::cpio::parse(&mkflasher::cpio::decompress(&ird).unwrap()).unwrap();
    assert!(recs.iter().any(|r| r.name == "lib/modules/nvme.ko"));

    // configure edits the FAT in place; it still checks clean and the rest of
    // the card is untouched.
    let before = std::fs::read(&out).unwrap();
    configure::run(configure::Args {
        card: out.clone(),
        hostname: Some("line-3".into()),
        wifi_ssid: Some("factory".into()),
        wifi_psk: Some("s3cret-pass".into()),
        persistent_logging: Some(configure::OnOff::On),
    })
    .unwrap();
    fsck_boot(&out, &f.dir);
    let after = std::fs::read(&out).unwrap();
    let (_, parts) = disk::read_table(&mut Cursor::new(after.clone())).unwrap();
    let boot_end = (parts[0].offset + parts[0].size) as usize;
    assert!(
        before[boot_end..] == after[boot_end..],
        "configure wrote outside flash-boot"
    );
    assert!(before[..parts[0].offset as usize] == after[..parts[0].offset as usize]);
    let mut vol = card::open_boot(&out).unwrap();
    let cfg = String::from_utf8(fat::read_file(&mut vol, "config.json").unwrap()).unwrap();
    assert!(cfg.contains("\"hostname\": \"line-3\""), "{cfg}");
    let nm =
        String::from_utf8(fat::read_file(&mut vol, "system-connections/wifi").unwrap()).unwrap();
    assert!(nm.contains("ssid=factory"), "{nm}");

    let text = inspect::describe(&out).unwrap();
    for want in [
        "Gpt",
        "flash-boot",
        "EFI/BOOT/BOOTX64.EFI",
        "flasher-payload: bundle version",
        "unit log: 0 record(s)",
        "line-3",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    let b = inspect::describe(&f.bundle).unwrap();
    assert!(
        b.contains("bundle version") && b.contains("image size"),
        "{b}"
    );
}

#[test]
fn uboot_mbr_card() {
    let f = fixture();
    let out = check_card(&f, "beaglebone-black");
    let dump = run(Command::new("sfdisk").arg("--dump").arg(&out));
    assert!(dump.contains("label: dos"), "{dump}");
    assert!(dump.contains("type=c, bootable"), "{dump}");
    assert!(dump.contains("type=da"), "{dump}");
    let mut vol = card::open_boot(&out).unwrap();
    assert_eq!(fat::read_file(&mut vol, "MLO").unwrap(), vec![1; 100_000]);
    assert_eq!(
        fat::read_file(&mut vol, "dtbs/am335x-boneblack.dtb")
            .unwrap()
            .len(),
        60_000
    );
    let ext =
        String::from_utf8(fat::read_file(&mut vol, "extlinux/extlinux.conf").unwrap()).unwrap();
    // The board's FDT, found in --bootloader-files DIR/dtbs/ (which replaces
    // Debian's device trees), and its console.
    assert!(
        ext.contains("KERNEL /vmlinuz") && ext.contains("FDT /dtbs/am335x-boneblack.dtb\n"),
        "{ext}"
    );
    assert!(
        // Detected from its device tree on the board: not pinned.
        ext.contains("APPEND console=ttyO0,115200n8 flasher.verify=full")
            && !ext.contains("flasher.board="),
        "{ext}"
    );
    assert!(inspect::describe(&out).unwrap().contains("Mbr"));
}

#[test]
fn raw_image_payload_is_bundled_first() {
    let f = fixture();
    let mut a = args(&f, "qemu-x86_64-nuc", "raw.img");
    // Any file that is not a bundle is an OS image to bundle: here, the kernel.
    a.payload = f.kernel.clone();
    let out = a.output.clone();
    build::run(a).unwrap();
    let image = std::fs::read(&f.kernel).unwrap();
    let dev = std::fs::File::open(&out).unwrap();
    let (mut payload, _) = disk::open_partition(dev, card::PAYLOAD_NAME, None).unwrap();
    let opened = flasher_format::bundle::read_manifest(&mut payload).unwrap();
    assert_eq!(opened.manifest.image_size, image.len() as u64);
    // The intermediate bundle is not left behind next to the card.
    assert!(!build::auto_bundle_path(&out).exists());
}

#[test]
fn real_kernel_and_systemd_boot_when_cached() {
    let cache = flasher_qemu::locate::fixture_cache();
    let (Some(kernel), Some(modules)) = (
        flasher_qemu::locate::qemu_kernel(&cache),
        flasher_qemu::locate::qemu_modules_dir(&cache),
    ) else {
        eprintln!("qemu-fixtures/cache has no kernel (run qemu-fixtures/setup); skipped");
        return;
    };
    let f = fixture();
    let mut a = args(&f, "qemu-x86_64-sd", "sd.img");
    a.kernel = None; // default: the cached kernel
    a.systemd_boot = None; // default: the cached systemd-boot
    a.kernel_modules = None; // default: the cached module tree
    a.power_of_two = true; // QEMU's sd-card needs it
    let out = a.output.clone();
    build::run(a).unwrap();
    assert!(std::fs::metadata(&out).unwrap().len().is_power_of_two());
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&out));
    assert!(verify.contains("No errors detected"), "{verify}");
    fsck_boot(&out, &f.dir);
    let mut vol = card::open_boot(&out).unwrap();
    assert_eq!(
        fat::read_file(&mut vol, "vmlinuz").unwrap(),
        std::fs::read(kernel).unwrap()
    );
    let efi = fat::read_file(&mut vol, "EFI/BOOT/BOOTX64.EFI").unwrap();
    assert_eq!(&efi[..2], b"MZ");
    let ird = fat::read_file(&mut vol, "initramfs").unwrap();
    let recs = mkflasher::cpio::parse(&mkflasher::cpio::decompress(&ird).unwrap()).unwrap();
    assert!(recs.iter().any(|r| r.name == "lib/modules/sdhci-pci.ko"));
    let _ = modules;
}

/// Debian's parts cache (`scripts/fetch-debian-parts`, run by
/// qemu-fixtures/setup and so by scripts/test).
fn debian_parts() -> PathBuf {
    let d = flasher_qemu::locate::debian_parts();
    assert!(
        d.join("SHA256SUMS").is_file(),
        "{} is missing: run scripts/fetch-debian-parts",
        d.display()
    );
    d
}

/// A U-Boot board's card with nothing but the board and the payload: the
/// armmp kernel, modules and device trees and Debian's U-Boot come from the
/// parts cache. (The fake ARM /init stands in for scripts/build-init-armv7.)
fn debian_card(f: &Fixture, board: &str) -> (PathBuf, Vec<u8>) {
    let mut a = args(f, board, &format!("{board}-debian.img"));
    a.kernel = None;
    a.kernel_modules = None;
    a.bootloader_files = None;
    a.cmdline = String::new();
    let out = a.output.clone();
    build::run(a).unwrap();
    let verify = run(Command::new("sfdisk").arg("--verify").arg(&out));
    assert!(verify.contains("No errors detected"), "{verify}");
    fsck_boot(&out, &f.dir);
    let img = std::fs::read(&out).unwrap();
    (out, img)
}

fn extlinux(card_path: &Path) -> String {
    let mut vol = card::open_boot(card_path).unwrap();
    String::from_utf8(fat::read_file(&mut vol, "extlinux/extlinux.conf").unwrap()).unwrap()
}

fn initramfs_names(card_path: &Path) -> Vec<String> {
    let mut vol = card::open_boot(card_path).unwrap();
    let ird = fat::read_file(&mut vol, "initramfs").unwrap();
    let recs = mkflasher::cpio::parse(&mkflasher::cpio::decompress(&ird).unwrap()).unwrap();
    recs.into_iter().map(|r| r.name).collect()
}

#[test]
fn beaglebone_card_from_debian_parts_alone() {
    let parts = debian_parts();
    let f = fixture();
    let (out, _) = debian_card(&f, "beaglebone-black");
    let uboot = |rel: &str| std::fs::read(flasher_qemu::locate::uboot_file(&parts, rel)).unwrap();
    let mut vol = card::open_boot(&out).unwrap();
    // The AM335x ROM reads MLO from the FAT root; MLO reads u-boot.img there.
    assert!(fat::read_file(&mut vol, "MLO").unwrap() == uboot("am335x_boneblack/MLO"));
    assert!(
        fat::read_file(&mut vol, "u-boot.img").unwrap() == uboot("am335x_boneblack/u-boot.img")
    );
    let dtb = flasher_qemu::locate::armmp_dtb(&parts, "am335x-boneblack.dtb").unwrap();
    assert!(
        fat::read_file(&mut vol, "dtbs/am335x-boneblack.dtb").unwrap()
            == std::fs::read(dtb).unwrap()
    );
    let kernel = flasher_qemu::locate::qemu_kernel_for(&parts, boards::Arch::Armv7).unwrap();
    assert!(fat::read_file(&mut vol, "vmlinuz").unwrap() == std::fs::read(kernel).unwrap());
    let ext = extlinux(&out);
    assert!(ext.contains("FDT /dtbs/am335x-boneblack.dtb\n"), "{ext}");
    assert!(ext.contains("APPEND console=ttyO0,115200n8"), "{ext}");
    // The board's MMC host driver, from the armmp module tree.
    let names = initramfs_names(&out);
    assert!(
        names.iter().any(|n| n == "lib/modules/sdhci-omap.ko"),
        "{names:?}"
    );
    // Nothing raw: the sectors between the MBR and the first partition stay zero.
    let img = std::fs::read(&out).unwrap();
    assert!(img[512..1 << 20].iter().all(|&b| b == 0));
}

#[test]
fn hummingboard_card_places_spl_at_1k_and_uboot_at_69k() {
    let parts = debian_parts();
    let f = fixture();
    let (out, img) = debian_card(&f, "hummingboard-i2");
    let spl = std::fs::read(flasher_qemu::locate::uboot_file(&parts, "mx6cuboxi/SPL")).unwrap();
    let ub = std::fs::read(flasher_qemu::locate::uboot_file(
        &parts,
        "mx6cuboxi/u-boot.img",
    ))
    .unwrap();
    assert!(img[1024..1024 + spl.len()] == spl[..], "SPL at 1 KiB");
    assert!(
        img[69 * 1024..69 * 1024 + ub.len()] == ub[..],
        "u-boot.img at 69 KiB"
    );
    // The MBR is untouched (sfdisk --verify above) and ends in its signature.
    assert_eq!(&img[510..512], &[0x55, 0xaa]);
    assert!(img[512..1024].iter().all(|&b| b == 0));
    // No U-Boot in the FAT: the i.MX6 ROM reads raw sectors.
    let mut vol = card::open_boot(&out).unwrap();
    assert!(fat::read_file(&mut vol, "SPL").is_err());
    // Two SoC variants: U-Boot's findfdt picks ${fdtfile} from /dtbs.
    let ext = extlinux(&out);
    assert!(ext.contains("FDTDIR /dtbs\n"), "{ext}");
    assert!(ext.contains("APPEND console=ttymxc0,115200"), "{ext}");
    for dtb in [
        "imx6q-hummingboard-emmc-som-v15.dtb",
        "imx6dl-hummingboard-emmc-som-v15.dtb",
    ] {
        let want = std::fs::read(flasher_qemu::locate::armmp_dtb(&parts, dtb).unwrap()).unwrap();
        assert!(fat::read_file(&mut vol, &format!("dtbs/{dtb}")).unwrap() == want);
    }
    let names = initramfs_names(&out);
    assert!(
        names.iter().any(|n| n == "lib/modules/sdhci-esdhc-imx.ko"),
        "{names:?}"
    );
    // Reproducible with the raw pieces too.
    let (_, again) = debian_card(&f, "hummingboard-i2");
    assert!(img == again, "two builds differ");
}

#[test]
fn boards_whose_first_stages_debian_lacks_need_bootloader_files() {
    let f = fixture();
    for board in ["odroid-xu4", "odroid-c1", "artik5", "artik10"] {
        let mut a = args(&f, board, &format!("{board}.img"));
        a.bootloader_files = None;
        match build::run(a) {
            Err(mkflasher::Error::Card(card::Error::NeedsBootloaderFiles { board: b, needs })) => {
                assert_eq!(b, board);
                assert!(!needs.is_empty());
            }
            other => panic!("{board}: {other:?}"),
        }
    }
    // With them (and the device trees in DIR/dtbs/) the card is built.
    let mut a = args(&f, "odroid-xu4", "xu4.img");
    a.kernel_modules = None;
    a.kernel = Some(f.kernel.clone());
    build::run(a).unwrap();
}

/// A fake Debian parts cache for `card::resolve_parts`.
fn fake_parts(dir: &Path, spl: usize, uboot: usize) -> PathBuf {
    let d = dir.join("parts");
    let ub = d.join("u-boot/usr/lib/u-boot/mx6cuboxi");
    std::fs::create_dir_all(&ub).unwrap();
    std::fs::write(ub.join("SPL"), vec![5; spl]).unwrap();
    std::fs::write(ub.join("u-boot.img"), vec![6; uboot]).unwrap();
    let k = d.join("armmp/usr/lib/linux-image-6.1.0-9-armmp");
    std::fs::create_dir_all(&k).unwrap();
    for n in [
        "imx6q-hummingboard-emmc-som-v15.dtb",
        "imx6dl-hummingboard-emmc-som-v15.dtb",
    ] {
        std::fs::write(k.join(n), b"dtb").unwrap();
    }
    d
}

#[test]
fn raw_pieces_must_fit_between_the_mbr_and_the_first_partition() {
    let t = tempfile::tempdir().unwrap();
    let hb = boards::find("hummingboard-i2").unwrap();
    let resolve = |spl, uboot| card::resolve_parts(&hb, &fake_parts(t.path(), spl, uboot), None);
    let ok = resolve(50_000, 500_000).unwrap();
    assert_eq!(
        ok.raw.iter().map(|r| r.0).collect::<Vec<_>>(),
        [1024, 70656]
    );
    assert_eq!(ok.dtbs.len(), 2);
    // u-boot.img from 69 KiB past 1 MiB.
    match resolve(50_000, 1_000_000) {
        Err(card::Error::RawPlacement { offset, end, .. }) => {
            assert_eq!((offset, end), (70656, 1_070_656));
        }
        other => panic!("{other:?}"),
    }
    // SPL from 1 KiB over u-boot.img at 69 KiB.
    assert!(matches!(
        resolve(80_000, 10_000),
        Err(card::Error::RawPlacement { offset: 70656, .. })
    ));
    // A board file of its own with a piece over the MBR's partition table:
    // validation refuses it before any build.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards/data/hummingboard-i2.toml"),
    )
    .unwrap()
    .replace("offset = 1024", "offset = 446");
    let p = t.path().join("hummingboard-i2.toml");
    std::fs::write(&p, text).unwrap();
    assert!(matches!(
        boards::load_file(&p),
        Err(boards::Error::Invalid { .. })
    ));
    // Missing parts name what to fetch.
    let empty = t.path().join("empty");
    assert!(matches!(
        card::resolve_parts(&hb, &empty, None),
        Err(card::Error::MissingDebianPart { .. })
    ));
    // --bootloader-files DIR overrides per file: its SPL, Debian's u-boot.img.
    let own = t.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    std::fs::write(own.join("SPL"), vec![7; 1000]).unwrap();
    let parts = fake_parts(t.path(), 50_000, 500_000);
    let r = card::resolve_parts(&hb, &parts, Some(&own)).unwrap();
    assert_eq!(r.raw[0], (1024, own.join("SPL")));
    assert_eq!(
        r.raw[1],
        (
            70656,
            flasher_qemu::locate::uboot_file(&parts, "mx6cuboxi/u-boot.img")
        )
    );
}
