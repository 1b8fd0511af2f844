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

// ---------------------------------------------------------------------------
// The system disk and the image's disk behind filesystems whose mount does not
// show the disk's device number (issue 22, finding 6): btrfs (`0:N`),
// device-mapper and md stacks, ZFS and FUSE. docs/host-safety.md.

/// A symlink at `link` to the canonical directory of `target`.
fn link_to(target: &Path, link: &Path) {
    let real = std::fs::canonicalize(target).unwrap();
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(real, link).unwrap();
}

/// A virtual block device (`dm-N`, `mdN`) with number `dev` over `slaves`
/// (names under `sys/class/block`), listed in `sys/block` and `sys/class/block`.
fn virtual_block(root: &Path, name: &str, dev: &str, slaves: &[&str], dm_name: Option<&str>) {
    let dir = root.join("sys/devices/virtual/block").join(name);
    std::fs::create_dir_all(dir.join("slaves")).unwrap();
    std::fs::create_dir_all(dir.join("holders")).unwrap();
    std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
    std::fs::write(dir.join("size"), "41943040\n").unwrap();
    std::fs::write(dir.join("ro"), "0\n").unwrap();
    if let Some(n) = dm_name {
        std::fs::create_dir_all(dir.join("dm")).unwrap();
        std::fs::write(dir.join("dm/name"), format!("{n}\n")).unwrap();
    }
    for s in slaves {
        let lower = root.join("sys/class/block").join(s);
        link_to(&lower, &dir.join("slaves").join(s));
        let holder = std::fs::canonicalize(&lower).unwrap().join("holders");
        std::fs::create_dir_all(&holder).unwrap();
        std::os::unix::fs::symlink(&dir, holder.join(name)).unwrap();
    }
    link_to(&dir, &root.join("sys/block").join(name));
    link_to(&dir, &root.join("sys/class/block").join(name));
    std::fs::write(root.join("dev").join(name), b"").unwrap();
}

/// A mounted btrfs filesystem `uuid` on `members` (`/sys/fs/btrfs/<uuid>/devices/<name>`).
fn btrfs(root: &Path, uuid: &str, members: &[&str]) {
    let devices = root.join("sys/fs/btrfs").join(uuid).join("devices");
    std::fs::create_dir_all(&devices).unwrap();
    for m in members {
        link_to(&root.join("sys/class/block").join(m), &devices.join(m));
    }
}

/// Replace `proc/self/mountinfo` (call after the last `FakeRoot::mount`).
fn mountinfo(root: &Path, lines: &[&str]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(root.join("proc/self/mountinfo"), text).unwrap();
}

/// A system running from a USB stick (sda: EFI on sda1, the rest on sda2)
/// and a second stick (sdb) that is a card candidate. Returns sda2's name.
fn two_sticks(r: &mut FakeRoot) -> String {
    let sda = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 64_000_000_000)
        .unwrap();
    r.partition(&sda, 1, Some("EFI"), 512 << 20).unwrap();
    let (p2, ..) = r.partition(&sda, 2, None, 50 << 30).unwrap();
    let sdb = r
        .usb_stick("pci0000:00/0000:00:14.0", 3, 1, "sdb", 15_931_539_456)
        .unwrap();
    r.partition(&sdb, 1, None, 14 << 30).unwrap();
    p2
}

fn assert_system(all: &[Drive], name: &str, holds: &[&str]) {
    let d = find(all, name);
    match &d.unsafe_ {
        Some(Unsafe::System { holds: h }) => assert_eq!(h, &holds.map_to_strings()),
        other => panic!("{name}: expected the system disk holding {holds:?}, got {other:?}"),
    }
    let e = judge(&d.path, d, true).unwrap_err();
    assert!(matches!(e, Error::SystemDisk { .. }), "{e:?}");
}

trait ToStrings {
    fn map_to_strings(&self) -> Vec<String>;
}
impl ToStrings for &[&str] {
    fn map_to_strings(&self) -> Vec<String> {
        self.iter().map(|s| s.to_string()).collect()
    }
}

#[test]
fn a_btrfs_root_marks_the_disk_below_as_the_system_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let p2 = two_sticks(&mut r);
    btrfs(root, "5c1f7a3e-0d1b-4c1e-9b9a-2f7c2b1d9e01", &[&p2]);
    // btrfs shows an anonymous device number (0:35), never sda2's 8:2.
    mountinfo(
        root,
        &[
            "1 0 0:2 / / rw - rootfs rootfs rw",
            "27 1 0:35 /@ / rw,relatime shared:1 - btrfs /dev/sda2 rw,ssd,space_cache=v2,subvolid=256,subvol=/@",
            "28 27 0:35 /@home /home rw,relatime shared:2 - btrfs /dev/sda2 rw,ssd,subvolid=257,subvol=/@home",
        ],
    );
    let all = survey(root, &Context::default()).unwrap();
    assert_system(&all, "sda", &["/"]);
    assert_eq!(
        find(&all, "sdb").unsafe_,
        None,
        "the other stick stays offered"
    );
    let offered: Vec<&str> = all
        .iter()
        .filter(|d| d.is_candidate())
        .map(|d| d.name.as_str())
        .collect();
    assert_eq!(offered, ["sdb"]);
}

#[test]
fn a_multi_device_btrfs_root_marks_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let p2 = two_sticks(&mut r);
    // raid1 over sda2 and sdb1; the mount names only the first member.
    btrfs(root, "5c1f7a3e-0d1b-4c1e-9b9a-2f7c2b1d9e01", &[&p2, "sdb1"]);
    mountinfo(
        root,
        &["27 1 0:35 / / rw,relatime shared:1 - btrfs /dev/sda2 rw,subvolid=5,subvol=/"],
    );
    let all = survey(root, &Context::default()).unwrap();
    assert_system(&all, "sda", &["/"]);
    assert_system(&all, "sdb", &["/"]);
}

#[test]
fn a_btrfs_root_on_dm_crypt_marks_the_disk_below() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let p2 = two_sticks(&mut r);
    // LUKS on sda2 (dm-0, 254:0), btrfs inside, mounted by its /dev/mapper name.
    virtual_block(root, "dm-0", "254:0", &[&p2], Some("luks-0b5e"));
    btrfs(root, "9a0c", &["dm-0"]);
    mountinfo(
        root,
        &["27 1 0:35 /@ / rw,relatime shared:1 - btrfs /dev/mapper/luks-0b5e rw,subvol=/@"],
    );
    let all = survey(root, &Context::default()).unwrap();
    assert_system(&all, "sda", &["/"]);
    assert_system(&all, "dm-0", &["/"]);
    assert_eq!(find(&all, "sdb").unsafe_, None);
}

#[test]
fn a_root_on_lvm_marks_the_disk_below_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let sda = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 64_000_000_000)
        .unwrap();
    let (p3, ..) = r.partition(&sda, 3, None, 50 << 30).unwrap();
    r.usb_stick("pci0000:00/0000:00:14.0", 3, 1, "sdb", 15_931_539_456)
        .unwrap();
    // vg-root (dm-0, 253:0) on the physical volume sda3.
    virtual_block(root, "dm-0", "253:0", &[&p3], Some("vg-root"));
    mountinfo(
        root,
        &["27 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw"],
    );
    let all = survey(root, &Context::default()).unwrap();
    assert_system(&all, "sda", &["/"]);
    assert_eq!(find(&all, "sdb").unsafe_, None);
}

#[test]
fn nested_dm_on_dm_on_md_marks_every_disk_below() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let p2 = two_sticks(&mut r);
    let sdc = r
        .usb_stick("pci0000:00/0000:00:14.0", 4, 2, "sdc", 15_931_539_456)
        .unwrap();
    r.usb_stick("pci0000:00/0000:00:14.0", 5, 3, "sdd", 15_931_539_456)
        .unwrap();
    let (c1, ..) = r.partition(&sdc, 1, None, 14 << 30).unwrap();
    // md0 (RAID1 over sda2 and sdc1) <- dm-0 (LUKS) <- dm-1 (LVM root).
    virtual_block(root, "md0", "9:0", &[&p2, &c1], None);
    virtual_block(root, "dm-0", "253:0", &["md0"], Some("luks-md0"));
    virtual_block(root, "dm-1", "253:1", &["dm-0"], Some("vg-root"));
    mountinfo(
        root,
        &["27 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw"],
    );
    let all = survey(root, &Context::default()).unwrap();
    for name in ["sda", "sdc", "md0", "dm-0", "dm-1"] {
        assert_system(&all, name, &["/"]);
    }
    assert_eq!(find(&all, "sdb").unsafe_, None);
    assert_eq!(find(&all, "sdd").unsafe_, None);
}

/// A desktop whose system disk cannot be traced: an NVMe disk, a SATA disk,
/// a USB stick (sda) and `/` on `fstype` from `source` with device `0:40`.
fn untraceable_root(root: &Path, fstype: &str, source: &str) -> Vec<Drive> {
    let mut r = FakeRoot::new(root).unwrap();
    let nvme = r
        .nvme(
            "pci0000:00/0000:00:1d.0/0000:3a:00.0",
            0,
            1,
            512_110_190_592,
        )
        .unwrap();
    r.partition(&nvme, 1, None, 400 << 30).unwrap();
    r.sata("pci0000:00/0000:00:17.0", 1, 1, "sdb", 500_107_862_016)
        .unwrap();
    r.usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 30_752_636_928)
        .unwrap();
    let line = format!("27 1 0:40 / / rw,relatime shared:1 - {fstype} {source} rw");
    mountinfo(root, &[&line]);
    survey(root, &Context::default()).unwrap()
}

#[test]
fn a_zfs_root_refuses_every_internal_disk_also_with_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let all = untraceable_root(dir.path(), "zfs", "rpool/ROOT/debian");
    for name in ["nvme0n1", "sdb"] {
        let d = find(&all, name);
        match &d.unsafe_ {
            Some(u @ Unsafe::SystemUnresolved { holds }) => {
                assert_eq!(holds, &["/ on zfs rpool/ROOT/debian"]);
                assert!(!u.overridable());
            }
            other => panic!("{name}: {other:?}"),
        }
        let e = judge(&d.path, d, true).unwrap_err();
        match &e {
            Error::SystemUnresolved { holds, .. } => {
                assert_eq!(holds, &["/ on zfs rpool/ROOT/debian"])
            }
            other => panic!("{name}: {other:?}"),
        }
        assert!(e.to_string().contains("--allow-non-removable"), "{e}");
    }
    // Removable drives stay offered.
    assert_eq!(find(&all, "sda").unsafe_, None);
    let note = mkflasher::cmd::drives::note(dir.path())
        .unwrap()
        .expect("a note says why");
    assert!(note.contains("zfs rpool/ROOT/debian"), "{note}");
}

#[test]
fn a_zfs_pool_member_that_udev_recorded_is_the_system_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let p2 = two_sticks(&mut r);
    r.sata("pci0000:00/0000:00:17.0", 1, 2, "sdc", 500_107_862_016)
        .unwrap();
    let dev = std::fs::read_to_string(root.join("sys/class/block").join(&p2).join("dev")).unwrap();
    r.file(
        &format!("run/udev/data/b{}", dev.trim()),
        b"S:disk/by-label/rpool\nE:ID_FS_TYPE=zfs_member\nE:ID_FS_LABEL=rpool\nE:ID_FS_USAGE=filesystem\n",
    )
    .unwrap();
    mountinfo(
        root,
        &["27 1 0:40 / / rw,relatime shared:1 - zfs rpool/ROOT/debian rw,xattr,posixacl"],
    );
    let all = survey(root, &Context::default()).unwrap();
    // The member udev knows is the system disk; other disks may be members
    // udev did not record: internal ones are refused, cards offered.
    assert_system(&all, "sda", &["/"]);
    assert!(
        matches!(
            &find(&all, "sdc").unsafe_,
            Some(Unsafe::SystemUnresolved { .. })
        ),
        "{all:#?}"
    );
    assert_eq!(find(&all, "sdb").unsafe_, None);
}

#[test]
fn an_image_on_zfs_refuses_every_internal_disk() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    r.sata("pci0000:00/0000:00:17.0", 1, 1, "sdb", 500_107_862_016)
        .unwrap();
    let stick = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 30_752_636_928)
        .unwrap();
    r.partition(&stick, 1, None, 30 << 30).unwrap();
    mountinfo(
        root,
        &[
            "1 0 0:2 / / rw - rootfs rootfs rw",
            "40 1 0:61 / /tank rw,relatime shared:9 - zfs tank rw,xattr",
        ],
    );
    let image = Path::new("/tank/images/os.img");
    let ctx = Context {
        input: Some((
            image.into(),
            DevNum {
                major: 0,
                minor: 61,
            },
        )),
    };
    let all = survey(root, &ctx).unwrap();
    let sdb = find(&all, "sdb");
    assert!(
        matches!(&sdb.unsafe_, Some(Unsafe::InputUnresolved { image: i, on }) if i == image && on == &["/tank on zfs tank"]),
        "{:?}",
        sdb.unsafe_
    );
    let e = judge(&sdb.path, sdb, true).unwrap_err();
    assert!(matches!(e, Error::InputUnresolved { .. }), "{e:?}");
    assert_eq!(find(&all, "sda").unsafe_, None);
}

#[test]
fn a_live_system_overlay_root_marks_the_stick_it_was_booted_from() {
    // A live ISO: / is an overlay of a squashfs (on loop0, whose file lies on
    // the ISO partition sdb1) and a tmpfs.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    let sda = r
        .usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 15_931_539_456)
        .unwrap();
    let sdb = r
        .usb_stick("pci0000:00/0000:00:14.0", 3, 1, "sdb", 15_931_539_456)
        .unwrap();
    r.partition(&sdb, 1, None, 4 << 30).unwrap();
    let lo = r.loop_device(0, 2 << 30).unwrap();
    std::fs::create_dir_all(lo.dir.join("loop")).unwrap();
    std::fs::write(
        lo.dir.join("loop/backing_file"),
        "/run/initramfs/live/LiveOS/squashfs.img\n",
    )
    .unwrap();
    for d in [
        "run/rootfsbase",
        "run/overlayfs/upper",
        "run/overlayfs/work",
        "run/initramfs/live/LiveOS",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("run/initramfs/live/LiveOS/squashfs.img"), b"").unwrap();
    let sdb1 = format!("{}:{}", sdb.major, sdb.minor + 1);
    mountinfo(
        root,
        &[
            "20 1 0:30 / / rw,relatime shared:1 - overlay LiveOS_rootfs rw,lowerdir=/run/rootfsbase,upperdir=/run/overlayfs/upper,workdir=/run/overlayfs/work",
            "21 20 0:31 / /run rw,relatime shared:2 - tmpfs tmpfs rw",
            &format!("22 21 {sdb1} / /run/initramfs/live ro,relatime shared:3 - iso9660 /dev/sdb1 ro"),
            "23 21 7:0 / /run/rootfsbase ro,relatime shared:4 - squashfs /dev/loop0 ro",
        ],
    );
    let all = survey(root, &Context::default()).unwrap();
    assert_system(&all, "sdb", &["/"]);
    assert_eq!(find(&all, &sda.name).unsafe_, None);
    // The same overlay in a container, where the layers are not visible:
    // the system disk is unresolved.
    std::fs::remove_dir_all(root.join("run")).unwrap();
    let all = survey(root, &Context::default()).unwrap();
    assert!(
        matches!(&find(&all, "loop0").unsafe_, Some(Unsafe::Virtual { .. })),
        "a loop device stays overridable: {all:#?}"
    );
    let note = mkflasher::cmd::drives::note(root)
        .unwrap()
        .expect("unresolved");
    assert!(note.contains("overlay"), "{note}");
}

#[test]
fn a_fuse_root_refuses_every_internal_disk_also_with_the_override() {
    let dir = tempfile::tempdir().unwrap();
    let all = untraceable_root(dir.path(), "fuse.mergerfs", "pool");
    let d = find(&all, "sdb");
    let e = judge(&d.path, d, true).unwrap_err();
    assert!(
        matches!(&e, Error::SystemUnresolved { holds, .. } if holds == &["/ on fuse.mergerfs pool"]),
        "{e:?}"
    );
    assert_eq!(find(&all, "sda").unsafe_, None);
}

#[test]
fn the_disk_holding_an_image_on_btrfs_is_unsafe() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut r = FakeRoot::new(root).unwrap();
    two_sticks(&mut r);
    // The image lies on a btrfs filesystem on the second stick (sdb1),
    // mounted on /srv/images (0:52).
    btrfs(root, "77e1", &["sdb1"]);
    mountinfo(
        root,
        &[
            "1 0 0:2 / / rw - rootfs rootfs rw",
            "40 1 0:52 / /srv/images rw,relatime shared:9 - btrfs /dev/sdb1 rw,subvolid=5,subvol=/",
        ],
    );
    let image = Path::new("/srv/images/os.img");
    // st_dev as the mount shows it, and a subvolume's own anonymous device
    // (btrfs gives each subvolume one; mountinfo does not list it).
    for dev in [
        DevNum {
            major: 0,
            minor: 52,
        },
        DevNum {
            major: 0,
            minor: 77,
        },
    ] {
        let ctx = Context {
            input: Some((image.into(), dev)),
        };
        let all = survey(root, &ctx).unwrap();
        let sdb = find(&all, "sdb");
        assert!(
            matches!(&sdb.unsafe_, Some(Unsafe::Input { image: i }) if i == image),
            "{dev}: {:?}",
            sdb.unsafe_
        );
        let e = judge(&sdb.path, sdb, true).unwrap_err();
        assert!(matches!(e, Error::HoldsInput { .. }), "{e:?}");
        assert_eq!(find(&all, "sda").unsafe_, None, "{dev}");
    }
}
