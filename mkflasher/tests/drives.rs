//! Drive classification (`mkflasher drives`, the target check of `mkflasher
//! write`) on fake kernel-shaped trees: what is offered, what is unsafe and why.

use flasher::storage::testing::FakeRoot;
use flasher::storage::DevNum;
use mkflasher::drives::{survey, Context, Drive, Unsafe};
use mkflasher::hostwrite::{judge, Error};
use std::path::Path;

fn find<'a>(list: &'a [Drive], name: &str) -> &'a Drive {
    list.iter()
        .find(|d| d.name == name)
        .unwrap_or_else(|| panic!("{name} not listed: {list:#?}"))
}

/// A laptop: NVMe system disk (/ on p2, /boot/efi on p1, swap on p3), a SATA
/// data disk, a built-in SD reader (PCI SDHCI, `removable=0`) with a card, a
/// USB stick, an attached loop device and an empty USB card reader.
fn laptop(root: &Path) -> FakeRoot {
    let mut r = FakeRoot::new(root).unwrap();
    let nvme = r
        .nvme(
            "pci0000:00/0000:00:1d.0/0000:3a:00.0",
            0,
            1,
            512_110_190_592,
        )
        .unwrap();
    let (_, ma, mi1) = r.partition(&nvme, 1, Some("EFI"), 512 << 20).unwrap();
    let (_, _, mi2) = r.partition(&nvme, 2, Some("root"), 400 << 30).unwrap();
    r.partition(&nvme, 3, Some("swap"), 8 << 30).unwrap();
    r.mount(ma, mi2, "/").unwrap();
    r.mount(ma, mi1, "/boot/efi").unwrap();
    r.file(
        "proc/swaps",
        b"Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1p3 partition 8388604 0 -2\n",
    )
    .unwrap();
    let sata = r
        .sata("pci0000:00/0000:00:17.0", 1, 1, "sdb", 500_107_862_016)
        .unwrap();
    r.partition(&sata, 1, None, 500 << 30).unwrap();
    r.mount(8, sata.minor + 1, "/home/me/data").unwrap();
    r.mmc("pci0000:00/0000:00:14.5", 0, 0, "SD", 15_931_539_456, false)
        .unwrap();
    let stick = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 30_752_636_928)
        .unwrap();
    r.partition(&stick, 1, None, 30 << 30).unwrap();
    r.mount(8, stick.minor + 1, "/media/me/STICK").unwrap();
    r.usb_stick("pci0000:00/0000:00:14.0", 3, 2, "sdc", 0)
        .unwrap();
    r.loop_device(0, 64 << 20).unwrap();
    r
}

#[test]
fn laptop_drives_are_classified() {
    let dir = tempfile::tempdir().unwrap();
    let _r = laptop(dir.path());
    let all = survey(dir.path(), &Context::default()).unwrap();

    // USB stick: offered, mounted partition shown, not large.
    let usb = find(&all, "sda");
    assert_eq!(usb.unsafe_, None);
    assert_eq!(usb.kind, "USB");
    assert_eq!(usb.mounted, vec!["/media/me/STICK".to_string()]);
    assert!(!usb.large);

    // Built-in SD reader: removable=0, offered anyway because it is an SD card.
    let sd = find(&all, "mmcblk0");
    assert!(!sd.removable);
    assert_eq!(sd.kind, "SD");
    assert_eq!(sd.unsafe_, None);

    // NVMe system disk: holds /, /boot/efi and swap, never offered.
    let nvme = find(&all, "nvme0n1");
    match &nvme.unsafe_ {
        Some(Unsafe::System { holds }) => {
            assert_eq!(holds, &["/", "/boot/efi", "swap"].map(String::from))
        }
        other => panic!("nvme0n1: {other:?}"),
    }
    assert!(nvme.large);

    // SATA data disk: internal, mounted elsewhere (not a system mount), large.
    let sata = find(&all, "sdb");
    assert_eq!(sata.unsafe_, Some(Unsafe::NonRemovable));
    assert!(sata.large, "500 GB is over the 128 GB warning");

    // Loop device: virtual. The empty reader (size 0) is left out.
    assert_eq!(
        find(&all, "loop0").unsafe_,
        Some(Unsafe::Virtual {
            what: "loop".into()
        })
    );
    assert!(all.iter().all(|d| d.name != "sdc"), "{all:#?}");

    let offered: Vec<&str> = all
        .iter()
        .filter(|d| d.is_candidate())
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(offered, ["mmcblk0", "sda"]);
}

#[test]
fn the_disk_holding_the_input_image_is_unsafe() {
    let dir = tempfile::tempdir().unwrap();
    let _r = laptop(dir.path());
    // The image lies on the USB stick's first partition.
    let before = survey(dir.path(), &Context::default()).unwrap();
    let sda = find(&before, "sda").dev;
    let ctx = Context {
        input: Some((
            "/media/me/STICK/os.img".into(),
            DevNum {
                major: sda.major,
                minor: sda.minor + 1,
            },
        )),
    };
    let all = survey(dir.path(), &ctx).unwrap();
    assert!(
        matches!(&find(&all, "sda").unsafe_, Some(Unsafe::Input { image }) if image == Path::new("/media/me/STICK/os.img"))
    );
    let e = judge(Path::new("/dev/sda"), find(&all, "sda"), true).unwrap_err();
    assert!(matches!(e, Error::HoldsInput { .. }), "{e:?}");
}

#[test]
fn a_root_on_device_mapper_marks_the_disk_below() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = FakeRoot::new(dir.path()).unwrap();
    let stick = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 30_752_636_928)
        .unwrap();
    let (part, ..) = r.partition(&stick, 2, None, 20 << 30).unwrap();
    // dm-0 (LUKS or LVM) on sda2, mounted on /: a system running from a stick.
    let dm = dir.path().join("sys/devices/virtual/block/dm-0");
    std::fs::create_dir_all(dm.join("slaves")).unwrap();
    std::fs::write(dm.join("dev"), "254:0\n").unwrap();
    std::fs::write(dm.join("size"), "41943040\n").unwrap();
    std::os::unix::fs::symlink(&dm, dm.join("slaves").join(&part)).unwrap();
    std::os::unix::fs::symlink(&dm, dir.path().join("sys/block/dm-0")).unwrap();
    std::os::unix::fs::symlink(&dm, dir.path().join("sys/class/block/dm-0")).unwrap();
    r.mount(254, 0, "/").unwrap();
    let all = survey(dir.path(), &Context::default()).unwrap();
    assert!(
        matches!(&find(&all, "sda").unsafe_, Some(Unsafe::System { holds }) if holds == &["/"]),
        "{all:#?}"
    );
    assert!(matches!(
        &find(&all, "dm-0").unsafe_,
        Some(Unsafe::System { .. })
    ));
    let e = judge(Path::new("/dev/sda"), find(&all, "sda"), true).unwrap_err();
    assert!(matches!(e, Error::SystemDisk { .. }), "{e:?}");
}

#[test]
fn refusals_say_what_to_do_and_the_override_lifts_only_some() {
    let dir = tempfile::tempdir().unwrap();
    let _r = laptop(dir.path());
    let all = survey(dir.path(), &Context::default()).unwrap();
    let sata = find(&all, "sdb");
    let e = judge(Path::new("/dev/sdb"), sata, false).unwrap_err();
    assert!(matches!(e, Error::NonRemovable { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("500.1 GB") && msg.contains("--allow-non-removable"),
        "{msg}"
    );
    judge(Path::new("/dev/sdb"), sata, true).unwrap();
    let lo = find(&all, "loop0");
    assert!(matches!(
        judge(Path::new("/dev/loop0"), lo, false),
        Err(Error::Virtual { .. })
    ));
    judge(Path::new("/dev/loop0"), lo, true).unwrap();
    // The system disk stays refused with the override.
    let nvme = find(&all, "nvme0n1");
    assert!(matches!(
        judge(Path::new("/dev/nvme0n1"), nvme, true),
        Err(Error::SystemDisk { .. })
    ));
    judge(Path::new("/dev/sda"), find(&all, "sda"), false).unwrap();
}

#[test]
fn drives_command_lists_candidates_and_all() {
    let dir = tempfile::tempdir().unwrap();
    let _r = laptop(dir.path());
    let args = |all| mkflasher::cmd::drives::Args {
        all,
        json: false,
        root: dir.path().to_owned(),
    };
    let some = mkflasher::cmd::drives::list(&args(false)).unwrap();
    assert_eq!(some.len(), 2);
    let every = mkflasher::cmd::drives::list(&args(true)).unwrap();
    let table = mkflasher::cmd::drives::table(&every);
    assert!(
        table.contains("UNSAFE: system disk: /, /boot/efi, swap"),
        "{table}"
    );
    assert!(table.contains("WARNING: over 128.0 GB"), "{table}");
    let json = serde_json::to_value(&every).unwrap();
    let sdb = json
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "sdb")
        .unwrap();
    assert_eq!(sdb["unsafe"]["reason"], "non_removable");
}
