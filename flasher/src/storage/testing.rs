//! Fake kernel-shaped roots for tests (here, in the init program and in `tests/`).
//!
//! [`FakeRoot`] writes a directory tree shaped like the kernel's: real device
//! directories under `sys/devices/...`, the `sys/block/X -> ../devices/.../block/X`
//! and `sys/class/...` symlinks, `device` links to the card/controller directory
//! (`type`, `name`, `cid`, `model`, `serial`; eMMC `life_time`, `pre_eol_info`,
//! `rev`, `date`, `manfid`), `dev` as `major:minor`, `size` in
//! 512-byte sectors, `ro`, `removable`, partitions with a `partition` file and a
//! `uevent` carrying `PARTNAME=`, eMMC `bootN` partitions with `force_ro`,
//! `proc/self/mountinfo`, and a `dev/NAME` file per disk and partition.

use std::collections::HashMap;
use std::io;
use std::path::{Component, Path, PathBuf};

/// A disk the builder created.
#[derive(Debug, Clone)]
pub struct FakeDisk {
    pub name: String,
    pub major: u32,
    pub minor: u32,
    /// Absolute path of the disk's sysfs directory.
    pub dir: PathBuf,
}

/// Builder for a fake root directory.
#[derive(Debug)]
pub struct FakeRoot {
    root: PathBuf,
    next_minor: HashMap<u32, u32>,
    mountinfo: Vec<String>,
}

fn write(path: &Path, contents: &str) -> io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, contents)
}

/// A relative symlink at `link` pointing to `target` (both absolute), as sysfs has.
fn symlink_rel(target: &Path, link: &Path) -> io::Result<()> {
    let from = link.parent().unwrap_or(Path::new("/"));
    let t: Vec<Component> = target.components().collect();
    let f: Vec<Component> = from.components().collect();
    let common = t.iter().zip(f.iter()).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..f.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c.as_os_str());
    }
    std::fs::create_dir_all(from)?;
    std::os::unix::fs::symlink(rel, link)
}

impl FakeRoot {
    /// Start an empty root at `root` (created if missing) with an empty
    /// `proc/self/mountinfo` holding only a tmpfs root, `sys/block` and `dev`.
    pub fn new(root: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(root.join("sys/block"))?;
        std::fs::create_dir_all(root.join("dev"))?;
        let mut r = FakeRoot {
            root: root.to_path_buf(),
            next_minor: HashMap::new(),
            mountinfo: Vec::new(),
        };
        r.mountinfo
            .push("1 0 0:2 / / rw,relatime - rootfs rootfs rw".to_string());
        r.flush_mountinfo()?;
        Ok(r)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn flush_mountinfo(&self) -> io::Result<()> {
        let mut text = self.mountinfo.join("\n");
        text.push('\n');
        write(&self.root.join("proc/self/mountinfo"), &text)
    }

    fn alloc(&mut self, major: u32, step: u32) -> u32 {
        let next = self.next_minor.entry(major).or_insert(0);
        let minor = *next;
        *next += step;
        minor
    }

    /// Write a block device directory with the kernel's attribute files and the
    /// `sys/block`, `sys/class/block` and `dev/` entries.
    fn block_dir(
        &mut self,
        dir: &Path,
        name: &str,
        major: u32,
        minor: u32,
        size: u64,
        removable: bool,
    ) -> io::Result<()> {
        write(&dir.join("dev"), &format!("{major}:{minor}\n"))?;
        write(&dir.join("size"), &format!("{}\n", size / 512))?;
        write(&dir.join("ro"), "0\n")?;
        write(
            &dir.join("removable"),
            if removable { "1\n" } else { "0\n" },
        )?;
        write(
            &dir.join("uevent"),
            &format!("MAJOR={major}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=disk\n"),
        )?;
        std::fs::create_dir_all(dir.join("holders"))?;
        symlink_rel(dir, &self.root.join("sys/block").join(name))?;
        symlink_rel(dir, &self.root.join("sys/class/block").join(name))?;
        let dev = std::fs::File::create(self.root.join("dev").join(name))?;
        dev.set_len(size)?;
        Ok(())
    }

    /// An MMC/SD card on the host controller at `/sys/devices/<controller>`
    /// (e.g. `platform/ocp/481d8000.mmc` or `pci0000:00/0000:00:06.0`), host
    /// index `host`, disk `mmcblk<index>`. `card_type` is `MMC` or `SD`. eMMC boot
    /// partitions (4 MiB each, `force_ro` = 1) and an RPMB disk are added when
    /// `boot_partitions` is set.
    pub fn mmc(
        &mut self,
        controller: &str,
        host: u32,
        index: u32,
        card_type: &str,
        size: u64,
        boot_partitions: bool,
    ) -> io::Result<FakeDisk> {
        let host_dir = self
            .root
            .join("sys/devices")
            .join(controller)
            .join(format!("mmc_host/mmc{host}"));
        let rca = if card_type == "SD" { "aaaa" } else { "0001" };
        let card = host_dir.join(format!("mmc{host}:{rca}"));
        write(&card.join("type"), &format!("{card_type}\n"))?;
        write(
            &card.join("name"),
            if card_type == "SD" {
                "SD16G\n"
            } else {
                "MMC04G\n"
            },
        )?;
        write(
            &card.join("serial"),
            &format!("0x{:08x}\n", 0x1234_0000 + index),
        )?;
        write(&card.join("cid"), "fe014a4d4d43303447109e3a3b4a8a00\n")?;
        // drivers/mmc/core/{mmc,sd}.c: both card kinds show date and manfid;
        // eMMC also its EXT_CSD revision and (linux >= 4.10) its wear, here
        // a healthy part: 0-10 % and 10-20 % of its life used, pre-EOL normal.
        write(&card.join("date"), "06/2019\n")?;
        write(&card.join("manfid"), "0x000015\n")?;
        if card_type == "MMC" {
            write(&card.join("rev"), "0x8\n")?;
            write(&card.join("life_time"), "0x01 0x02\n")?;
            write(&card.join("pre_eol_info"), "0x01\n")?;
        }
        symlink_rel(
            &host_dir,
            &self.root.join(format!("sys/class/mmc_host/mmc{host}")),
        )?;
        let name = format!("mmcblk{index}");
        let dir = card.join("block").join(&name);
        let minor = self.alloc(179, 8);
        self.block_dir(&dir, &name, 179, minor, size, false)?;
        symlink_rel(&card, &dir.join("device"))?;
        if boot_partitions {
            for suffix in ["boot0", "boot1"] {
                let bname = format!("{name}{suffix}");
                let bdir = card.join("block").join(&bname);
                let bminor = self.alloc(179, 8);
                self.block_dir(&bdir, &bname, 179, bminor, 4 << 20, false)?;
                write(&bdir.join("ro"), "1\n")?;
                write(&bdir.join("force_ro"), "1\n")?;
                symlink_rel(&card, &bdir.join("device"))?;
            }
            // Older kernels show RPMB as a block device too.
            let rname = format!("{name}rpmb");
            let rdir = card.join("block").join(&rname);
            let rminor = self.alloc(179, 8);
            self.block_dir(&rdir, &rname, 179, rminor, 4 << 20, false)?;
        }
        Ok(FakeDisk {
            name,
            major: 179,
            minor,
            dir,
        })
    }

    /// An NVMe namespace `nvme<ctrl>n<ns>` directly under the controller at
    /// `/sys/devices/<pci_path>` (kernels without native multipath).
    pub fn nvme(&mut self, pci_path: &str, ctrl: u32, ns: u32, size: u64) -> io::Result<FakeDisk> {
        let cdir = self
            .root
            .join("sys/devices")
            .join(pci_path)
            .join(format!("nvme/nvme{ctrl}"));
        write(&cdir.join("model"), "QEMU NVMe Ctrl\n")?;
        write(&cdir.join("serial"), &format!("NVME{ctrl:04}\n"))?;
        let name = format!("nvme{ctrl}n{ns}");
        let dir = cdir.join(&name);
        let minor = self.alloc(259, 1);
        self.block_dir(&dir, &name, 259, minor, size, false)?;
        symlink_rel(&cdir, &dir.join("device"))?;
        Ok(FakeDisk {
            name,
            major: 259,
            minor,
            dir,
        })
    }

    /// An NVMe namespace as native multipath shows it (Debian's kernels): the disk
    /// under `/sys/devices/virtual/nvme-subsystem/nvme-subsys<subsys>/`, which
    /// links to the controller at `/sys/devices/<pci_path>/nvme/nvme<ctrl>`.
    pub fn nvme_multipath(
        &mut self,
        pci_path: &str,
        ctrl: u32,
        subsys: u32,
        ns: u32,
        size: u64,
    ) -> io::Result<FakeDisk> {
        let cdir = self
            .root
            .join("sys/devices")
            .join(pci_path)
            .join(format!("nvme/nvme{ctrl}"));
        write(&cdir.join("model"), "QEMU NVMe Ctrl\n")?;
        let sdir = self.root.join(format!(
            "sys/devices/virtual/nvme-subsystem/nvme-subsys{subsys}"
        ));
        write(&sdir.join("model"), "QEMU NVMe Ctrl\n")?;
        write(&sdir.join("serial"), &format!("NVME{ctrl:04}\n"))?;
        symlink_rel(&cdir, &sdir.join(format!("nvme{ctrl}")))?;
        // The per-path disk the kernel hides (no `dev`, `hidden` = 1): it is
        // listed in /sys/block but has no device node.
        let path_name = format!("nvme{subsys}c{ctrl}n{ns}");
        let pdir = cdir.join(&path_name);
        write(&pdir.join("hidden"), "1\n")?;
        write(&pdir.join("size"), &format!("{}\n", size / 512))?;
        symlink_rel(&pdir, &self.root.join("sys/block").join(&path_name))?;
        let name = format!("nvme{ctrl}n{ns}");
        let dir = sdir.join(&name);
        let minor = self.alloc(259, 1);
        self.block_dir(&dir, &name, 259, minor, size, false)?;
        Ok(FakeDisk {
            name,
            major: 259,
            minor,
            dir,
        })
    }

    fn scsi_disk(
        &mut self,
        parent: PathBuf,
        host: u32,
        name: &str,
        size: u64,
        model: &str,
        removable: bool,
    ) -> io::Result<FakeDisk> {
        let sdev = parent.join(format!("host{host}/target{host}:0:0/{host}:0:0:0"));
        write(&sdev.join("model"), &format!("{model}\n"))?;
        write(&sdev.join("vendor"), "ATA     \n")?;
        let dir = sdev.join("block").join(name);
        let minor = self.alloc(8, 16);
        self.block_dir(&dir, name, 8, minor, size, removable)?;
        symlink_rel(&sdev, &dir.join("device"))?;
        Ok(FakeDisk {
            name: name.into(),
            major: 8,
            minor,
            dir,
        })
    }

    /// A SATA disk on the AHCI controller at `/sys/devices/<controller>`, port `ata<port>`.
    pub fn sata(
        &mut self,
        controller: &str,
        port: u32,
        host: u32,
        name: &str,
        size: u64,
    ) -> io::Result<FakeDisk> {
        let parent = self
            .root
            .join("sys/devices")
            .join(controller)
            .join(format!("ata{port}"));
        self.scsi_disk(parent, host, name, size, "Samsung SSD 860", false)
    }

    /// A USB mass-storage stick on the USB host controller at
    /// `/sys/devices/<controller>`, bus `usb<bus>`, port 1; `removable` = 1.
    pub fn usb_stick(
        &mut self,
        controller: &str,
        bus: u32,
        host: u32,
        name: &str,
        size: u64,
    ) -> io::Result<FakeDisk> {
        let parent = self
            .root
            .join("sys/devices")
            .join(controller)
            .join(format!("usb{bus}/{bus}-1/{bus}-1:1.0"));
        self.scsi_disk(parent, host, name, size, "QEMU HARDDISK", true)
    }

    /// A virtio-blk disk `vd?` at `/sys/devices/<pci_path>/virtio<index>`.
    pub fn virtio(
        &mut self,
        pci_path: &str,
        index: u32,
        name: &str,
        size: u64,
    ) -> io::Result<FakeDisk> {
        let vdir = self
            .root
            .join("sys/devices")
            .join(pci_path)
            .join(format!("virtio{index}"));
        let dir = vdir.join("block").join(name);
        let minor = self.alloc(254, 16);
        self.block_dir(&dir, name, 254, minor, size, false)?;
        symlink_rel(&vdir, &dir.join("device"))?;
        Ok(FakeDisk {
            name: name.into(),
            major: 254,
            minor,
            dir,
        })
    }

    /// A loop device (always skipped by the scan).
    pub fn loop_device(&mut self, index: u32, size: u64) -> io::Result<FakeDisk> {
        let name = format!("loop{index}");
        let dir = self.root.join("sys/devices/virtual/block").join(&name);
        let minor = self.alloc(7, 1);
        self.block_dir(&dir, &name, 7, minor, size, false)?;
        Ok(FakeDisk {
            name,
            major: 7,
            minor,
            dir,
        })
    }

    /// Partition `number` of `disk`, with an optional GPT name. Returns its
    /// kernel name (`mmcblk0p1`, `sda1`, `nvme0n1p1`) and device number.
    pub fn partition(
        &mut self,
        disk: &FakeDisk,
        number: u32,
        partname: Option<&str>,
        size: u64,
    ) -> io::Result<(String, u32, u32)> {
        let sep = if disk.name.ends_with(|c: char| c.is_ascii_digit()) {
            "p"
        } else {
            ""
        };
        let name = format!("{}{sep}{number}", disk.name);
        let minor = if disk.major == 259 {
            self.alloc(259, 1)
        } else {
            disk.minor + number
        };
        let dir = disk.dir.join(&name);
        write(&dir.join("dev"), &format!("{}:{minor}\n", disk.major))?;
        write(&dir.join("size"), &format!("{}\n", size / 512))?;
        write(&dir.join("partition"), &format!("{number}\n"))?;
        write(&dir.join("ro"), "0\n")?;
        let mut uevent = format!(
            "MAJOR={}\nMINOR={minor}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={number}\n",
            disk.major
        );
        if let Some(p) = partname {
            uevent.push_str(&format!("PARTNAME={p}\n"));
        }
        write(&dir.join("uevent"), &uevent)?;
        std::fs::create_dir_all(dir.join("holders"))?;
        symlink_rel(&dir, &self.root.join("sys/class/block").join(&name))?;
        std::fs::File::create(self.root.join("dev").join(&name))?.set_len(size)?;
        Ok((name, disk.major, minor))
    }

    /// Record a mount of device `major:minor` on `mountpoint` in mountinfo.
    pub fn mount(&mut self, major: u32, minor: u32, mountpoint: &str) -> io::Result<()> {
        let id = 20 + self.mountinfo.len();
        self.mountinfo.push(format!(
            "{id} 1 {major}:{minor} / {mountpoint} rw,relatime shared:{id} - ext4 /dev/x rw"
        ));
        self.flush_mountinfo()
    }

    /// Set a disk's `ro` flag.
    pub fn set_ro(&mut self, disk: &FakeDisk, ro: bool) -> io::Result<()> {
        write(&disk.dir.join("ro"), if ro { "1\n" } else { "0\n" })
    }

    /// Write a file at a root-relative path (e.g. `proc/cmdline`).
    pub fn file(&mut self, rel: &str, contents: &[u8]) -> io::Result<()> {
        let p = self.root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, contents)
    }

    /// The device-tree `compatible` list (NUL-separated, as the kernel shows it).
    pub fn compatible(&mut self, list: &[&str]) -> io::Result<()> {
        let mut bytes = Vec::new();
        for s in list {
            bytes.extend_from_slice(s.as_bytes());
            bytes.push(0);
        }
        self.file("proc/device-tree/compatible", &bytes)
    }

    /// One `/sys/class/dmi/id/<field>` value.
    pub fn dmi(&mut self, field: &str, value: &str) -> io::Result<()> {
        self.file(
            &format!("sys/class/dmi/id/{field}"),
            format!("{value}\n").as_bytes(),
        )
    }
}

/// Ready-made boards, as the kernel would show them when booted from the flasher
/// card. Each returns the builder so a test can add mounts, flags or disks.
pub mod scenarios {
    use super::{FakeDisk, FakeRoot};
    use std::io;
    use std::path::Path;

    /// A 15.9 GB SD card: 15931539456 bytes.
    pub const SD_16G: u64 = 15_931_539_456;
    /// A BeagleBone's "4 GB" eMMC: 3.9 GB.
    pub const EMMC_4G: u64 = 3_909_091_328;

    /// The flasher card's partitions: boot FAT, payload, log.
    pub fn flasher_card(r: &mut FakeRoot, d: &FakeDisk) -> io::Result<()> {
        r.partition(d, 1, Some("flash-boot"), 64 << 20)?;
        r.partition(d, 2, Some("flasher-payload"), 1 << 30)?;
        r.partition(d, 3, Some("flasher-log"), 16 << 20)?;
        Ok(())
    }

    /// An old OS on the internal storage.
    pub fn old_os(r: &mut FakeRoot, d: &FakeDisk) -> io::Result<()> {
        r.partition(d, 1, None, 100 << 20)?;
        r.partition(d, 2, None, 1 << 30)?;
        Ok(())
    }

    const BBB_SD: &str = "platform/ocp/48000000.interconnect/48000000.interconnect:segment@0/48060000.target-module/48060000.mmc";
    const BBB_EMMC: &str = "platform/ocp/47c00000.interconnect/47c00000.interconnect:segment@0/481d8000.target-module/481d8000.mmc";

    /// BeagleBone Black booted from the microSD card. `emmc_index`: the eMMC's
    /// kernel index (1 on current kernels; 0 on old probe-order kernels, which
    /// also use the flat vendor path `platform/ocp/481d8000.mmc`); `None`: no eMMC.
    pub fn beaglebone(root: &Path, emmc_index: Option<u32>) -> io::Result<FakeRoot> {
        let mut r = FakeRoot::new(root)?;
        r.compatible(&["ti,am335x-bone-black", "ti,am335x-bone", "ti,am33xx"])?;
        let sd_index = if emmc_index == Some(0) { 1 } else { 0 };
        let (sd_path, emmc_path) = if emmc_index == Some(0) {
            ("platform/ocp/48060000.mmc", "platform/ocp/481d8000.mmc")
        } else {
            (BBB_SD, BBB_EMMC)
        };
        let sd = r.mmc(sd_path, sd_index, sd_index, "SD", SD_16G, false)?;
        flasher_card(&mut r, &sd)?;
        if let Some(i) = emmc_index {
            let emmc = r.mmc(emmc_path, i, i, "MMC", EMMC_4G, true)?;
            old_os(&mut r, &emmc)?;
        }
        Ok(r)
    }

    /// Intel Edison on the Arduino breakout, booted from its SD card. eMMC on the
    /// Merrifield SDHCI function 0000:00:01.0, SD on 0000:00:01.2; `sd_first`
    /// gives the SD card the lower index.
    pub fn edison(root: &Path, sd_first: bool) -> io::Result<FakeRoot> {
        let mut r = FakeRoot::new(root)?;
        let (sd_i, emmc_i) = if sd_first { (0, 1) } else { (1, 0) };
        let emmc = r.mmc(
            "pci0000:00/0000:00:01.0",
            emmc_i,
            emmc_i,
            "MMC",
            EMMC_4G,
            true,
        )?;
        old_os(&mut r, &emmc)?;
        let sd = r.mmc("pci0000:00/0000:00:01.2", sd_i, sd_i, "SD", SD_16G, false)?;
        flasher_card(&mut r, &sd)?;
        Ok(r)
    }

    /// Intel NUC booted from a USB stick (sda on xHCI 0000:00:14.0), with
    /// `nvme` NVMe drives (0000:3a:00.0, 0000:3b:00.0, ...) and optionally a SATA
    /// SSD (sdb on AHCI 0000:00:17.0).
    pub fn nuc(root: &Path, nvme: u32, sata: bool) -> io::Result<FakeRoot> {
        let mut r = FakeRoot::new(root)?;
        r.dmi("board_vendor", "Intel Corporation")?;
        r.dmi("product_name", "NUC8i5BEH")?;
        let stick = r.usb_stick("pci0000:00/0000:00:14.0", 2, 0, "sda", 30_752_636_928)?;
        flasher_card(&mut r, &stick)?;
        for i in 0..nvme {
            let bus = 0x3a + i;
            let d = r.nvme(
                &format!("pci0000:00/0000:00:1d.{i}/0000:{bus:02x}:00.0"),
                i,
                1,
                256_060_514_304,
            )?;
            old_os(&mut r, &d)?;
        }
        if sata {
            let d = r.sata("pci0000:00/0000:00:17.0", 1, 1, "sdb", 500_107_862_016)?;
            old_os(&mut r, &d)?;
        }
        Ok(r)
    }

    /// QEMU `qemu-x86_64-sd`: flasher SD card on sdhci-pci 0000:00:05.0 (mmc0),
    /// target SD card on 0000:00:06.0 (mmc1), a virtio disk for noise.
    pub fn qemu_sd(root: &Path, with_target: bool) -> io::Result<FakeRoot> {
        let mut r = FakeRoot::new(root)?;
        r.dmi("sys_vendor", "QEMU")?;
        r.dmi("product_name", "Standard PC (Q35 + ICH9, 2009)")?;
        r.file(
            "proc/cmdline",
            b"console=ttyS0 flasher.board=qemu-x86_64-sd\n",
        )?;
        let card = r.mmc("pci0000:00/0000:00:05.0", 0, 0, "SD", 256 << 20, false)?;
        flasher_card(&mut r, &card)?;
        if with_target {
            r.mmc("pci0000:00/0000:00:06.0", 1, 1, "SD", 128 << 20, false)?;
        }
        r.loop_device(0, 0)?;
        Ok(r)
    }

    /// QEMU `qemu-x86_64-nuc`: flasher USB stick (xHCI 0000:00:04.0) and an NVMe
    /// disk as Debian's multipath kernels show it (controller 0000:00:05.0).
    pub fn qemu_nuc(root: &Path) -> io::Result<FakeRoot> {
        let mut r = FakeRoot::new(root)?;
        r.dmi("sys_vendor", "QEMU")?;
        r.dmi("product_name", "Standard PC (Q35 + ICH9, 2009)")?;
        r.file(
            "proc/cmdline",
            b"console=ttyS0 flasher.board=qemu-x86_64-nuc\n",
        )?;
        let stick = r.usb_stick("pci0000:00/0000:00:04.0", 1, 0, "sda", 512 << 20)?;
        flasher_card(&mut r, &stick)?;
        r.nvme_multipath("pci0000:00/0000:00:05.0", 0, 0, 1, 1 << 30)?;
        Ok(r)
    }
}
