//! The eMMC's EXT_CSD register, for making a hardware boot partition the one
//! the eMMC boots from (what `mmc bootpart enable` of mmc-utils does).
//!
//! The [`ExtCsd`] trait is the whole interface: read the 512-byte register,
//! switch one byte. [`MmcIoctl`] implements it with the MMC block driver's
//! `MMC_IOC_CMD` ioctl on the whole-disk node (`/dev/mmcblkN`), as mmc-utils
//! does (`read_extcsd`, `write_extcsd_value` in its `mmc_cmds.c`): CMD8
//! SEND_EXT_CSD with one 512-byte data block, and CMD6 SWITCH in write-byte
//! mode with an R1b response. The kernel switches to the user area before
//! running the command on the whole-disk node, so PARTITION_ACCESS is 0 there
//! and is written back as 0. [`enable_boot`] is the logic, tested on
//! [`fake::FakeExtCsd`]: QEMU's `emmc` device is not user-creatable, so no
//! QEMU board has a register to set, and the fake is the test.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use boards::BootEnable;

use super::{Error, Result};

/// EXT_CSD is one 512-byte block (JESD84-B51, section 7.4).
pub const EXT_CSD_LEN: usize = 512;
/// EXT_CSD[179] PARTITION_CONFIG: BOOT_ACK (bit 6), BOOT_PARTITION_ENABLE
/// (bits 5:3), PARTITION_ACCESS (bits 2:0).
pub const PARTITION_CONFIG: u8 = 179;
/// PARTITION_CONFIG bit 6: the eMMC sends the boot acknowledge pattern.
pub const BOOT_ACK: u8 = 1 << 6;

/// The register, read whole and written a byte at a time.
pub trait ExtCsd {
    /// The whole EXT_CSD (CMD8 SEND_EXT_CSD).
    fn read(&mut self) -> io::Result<[u8; EXT_CSD_LEN]>;
    /// Set byte `index` to `value` (CMD6 SWITCH, write-byte mode).
    fn switch(&mut self, index: u8, value: u8) -> io::Result<()>;
}

/// `struct mmc_ioc_cmd` of `<linux/mmc/ioctl.h>`. The kernel pads before
/// `data_ptr` so the layout is the same on 32- and 64-bit: 72 bytes, the
/// pointer at 64 (checked below at compile time, for every target built).
#[repr(C)]
#[derive(Default)]
struct MmcIocCmd {
    /// Nonzero: data goes to the card.
    write_flag: libc::c_int,
    /// Precede with CMD55 (SD application commands); 0 here.
    is_acmd: libc::c_int,
    opcode: u32,
    arg: u32,
    response: [u32; 4],
    flags: libc::c_uint,
    blksz: libc::c_uint,
    blocks: libc::c_uint,
    postsleep_min_us: libc::c_uint,
    postsleep_max_us: libc::c_uint,
    data_timeout_ns: libc::c_uint,
    /// 0: the driver's default busy timeout.
    cmd_timeout_ms: libc::c_uint,
    pad: u32,
    data_ptr: u64,
}

const _: () = assert!(std::mem::size_of::<MmcIocCmd>() == 72);
const _: () = assert!(std::mem::offset_of!(MmcIocCmd, data_ptr) == 64);

/// `MMC_BLOCK_MAJOR` (`<linux/major.h>`): the ioctl's type byte.
const MMC_BLOCK_MAJOR: u8 = 179;
// MMC_IOC_CMD = _IOWR(MMC_BLOCK_MAJOR, 0, struct mmc_ioc_cmd) = 0xc048b300.
nix::ioctl_readwrite!(mmc_ioc_cmd, MMC_BLOCK_MAJOR, 0, MmcIocCmd);

// Command numbers and response flags, from the kernel's <linux/mmc/mmc.h>
// and <linux/mmc/core.h> (as mmc-utils' mmc.h copies them).
const MMC_SWITCH: u32 = 6;
const MMC_SEND_EXT_CSD: u32 = 8;
const MMC_SWITCH_MODE_WRITE_BYTE: u32 = 0x03;
const EXT_CSD_CMD_SET_NORMAL: u32 = 1;
const MMC_RSP_PRESENT: u32 = 1 << 0;
const MMC_RSP_CRC: u32 = 1 << 2;
const MMC_RSP_BUSY: u32 = 1 << 3;
const MMC_RSP_OPCODE: u32 = 1 << 4;
const MMC_CMD_AC: u32 = 0;
const MMC_CMD_ADTC: u32 = 1 << 5;
const MMC_RSP_SPI_S1: u32 = 1 << 7;
const MMC_RSP_SPI_BUSY: u32 = 1 << 10;
const MMC_RSP_R1: u32 = MMC_RSP_PRESENT | MMC_RSP_CRC | MMC_RSP_OPCODE;
const MMC_RSP_R1B: u32 = MMC_RSP_R1 | MMC_RSP_BUSY;
/// R1 card status bit 7: the card did not take the SWITCH.
const R1_SWITCH_ERROR: u32 = 1 << 7;

/// EXT_CSD through `MMC_IOC_CMD` on a whole-disk eMMC node.
pub struct MmcIoctl {
    file: File,
}

impl MmcIoctl {
    /// Open `dev` (`/dev/mmcblkN`, never a partition or `bootN`) read-write,
    /// as mmc-utils does; the kernel also wants CAP_SYS_RAWIO (PID 1 has it).
    pub fn open(dev: &Path) -> io::Result<Self> {
        Ok(MmcIoctl {
            file: OpenOptions::new().read(true).write(true).open(dev)?,
        })
    }

    fn run(&self, cmd: &mut MmcIocCmd) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `cmd` is a live, correctly laid out mmc_ioc_cmd (size and
        // offset asserted above); its data_ptr is 0 or points at a buffer of
        // blksz * blocks bytes that outlives the call (see `read`).
        unsafe { mmc_ioc_cmd(self.file.as_raw_fd(), cmd) }
            .map(drop)
            .map_err(io::Error::from)
    }
}

impl ExtCsd for MmcIoctl {
    fn read(&mut self) -> io::Result<[u8; EXT_CSD_LEN]> {
        let mut buf = [0u8; EXT_CSD_LEN];
        let mut cmd = MmcIocCmd {
            opcode: MMC_SEND_EXT_CSD,
            flags: MMC_RSP_SPI_S1 | MMC_RSP_R1 | MMC_CMD_ADTC,
            blksz: EXT_CSD_LEN as u32,
            blocks: 1,
            data_ptr: buf.as_mut_ptr() as usize as u64,
            ..MmcIocCmd::default()
        };
        self.run(&mut cmd)?;
        Ok(buf)
    }

    fn switch(&mut self, index: u8, value: u8) -> io::Result<()> {
        let mut cmd = MmcIocCmd {
            write_flag: 1,
            opcode: MMC_SWITCH,
            arg: (MMC_SWITCH_MODE_WRITE_BYTE << 24)
                | (u32::from(index) << 16)
                | (u32::from(value) << 8)
                | EXT_CSD_CMD_SET_NORMAL,
            flags: MMC_RSP_SPI_S1 | MMC_RSP_SPI_BUSY | MMC_RSP_R1B | MMC_CMD_AC,
            ..MmcIocCmd::default()
        };
        self.run(&mut cmd)?;
        if cmd.response[0] & R1_SWITCH_ERROR != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the card set SWITCH_ERROR in its status (0x{:08x})",
                    cmd.response[0]
                ),
            ));
        }
        Ok(())
    }
}

/// PARTITION_CONFIG for booting from `enable`: BOOT_PARTITION_ENABLE set,
/// BOOT_ACK as the board wants (`None`: as it is in `current`),
/// PARTITION_ACCESS 0 (the user area, where the kernel keeps it) and the
/// reserved bit 7 clear.
pub fn partition_config(current: u8, enable: BootEnable, ack: Option<bool>) -> u8 {
    let ack = match ack {
        Some(true) => BOOT_ACK,
        Some(false) => 0,
        None => current & BOOT_ACK,
    };
    ack | (enable.field() << 3)
}

/// PARTITION_CONFIG before and after [`enable_boot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootConfig {
    pub before: u8,
    pub after: u8,
}

/// Make the eMMC behind `regs` (the node `device`, for messages) boot from
/// `enable`: read EXT_CSD, switch PARTITION_CONFIG unless it already holds
/// the value, and read EXT_CSD again to confirm.
pub fn enable_boot(
    regs: &mut dyn ExtCsd,
    device: &Path,
    enable: BootEnable,
    ack: Option<bool>,
) -> Result<BootConfig> {
    let device_name = || device.display().to_string();
    let read = |regs: &mut dyn ExtCsd| {
        regs.read().map_err(|source| Error::ExtCsdRead {
            device: device_name(),
            source,
        })
    };
    let before = read(regs)?[usize::from(PARTITION_CONFIG)];
    let want = partition_config(before, enable, ack);
    if before != want {
        regs.switch(PARTITION_CONFIG, want)
            .map_err(|source| Error::ExtCsdSwitch {
                device: device_name(),
                enable,
                value: want,
                source,
            })?;
    }
    let after = read(regs)?[usize::from(PARTITION_CONFIG)];
    if after != want {
        return Err(Error::ExtCsdNotSet {
            device: device_name(),
            enable,
            wanted: want,
            read: after,
        });
    }
    Ok(BootConfig { before, after })
}

/// A register in memory, for tests here and in the init's end-to-end tests.
#[cfg(any(test, feature = "testing"))]
pub mod fake {
    use super::*;
    use std::sync::{Arc, Mutex, MutexGuard};

    /// How the fake device answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Behaviour {
        /// Reads and switches work.
        Obey,
        /// The SWITCH fails (EIO), as a device that refuses the command.
        RefuseSwitch,
        /// The SWITCH "succeeds" but the register keeps its value.
        IgnoreSwitch,
        /// No MMC ioctl at all (ENOTTY), as on a disk that is no eMMC.
        NoIoctl,
    }

    #[derive(Debug)]
    pub struct State {
        pub regs: [u8; EXT_CSD_LEN],
        pub behaviour: Behaviour,
        /// Every (index, value) switched, in order.
        pub switches: Vec<(u8, u8)>,
        pub reads: usize,
    }

    /// Cloning shares the state, so a test keeps a handle on what the code
    /// under test did.
    #[derive(Debug, Clone)]
    pub struct FakeExtCsd(Arc<Mutex<State>>);

    impl FakeExtCsd {
        pub fn new(partition_config: u8, behaviour: Behaviour) -> Self {
            let mut regs = [0u8; EXT_CSD_LEN];
            regs[usize::from(PARTITION_CONFIG)] = partition_config;
            // EXT_CSD_REV 8 (eMMC 5.1), as a real part would show.
            regs[192] = 8;
            FakeExtCsd(Arc::new(Mutex::new(State {
                regs,
                behaviour,
                switches: Vec::new(),
                reads: 0,
            })))
        }

        pub fn state(&self) -> MutexGuard<'_, State> {
            self.0.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl ExtCsd for FakeExtCsd {
        fn read(&mut self) -> io::Result<[u8; EXT_CSD_LEN]> {
            let mut s = self.state();
            if s.behaviour == Behaviour::NoIoctl {
                return Err(io::Error::from_raw_os_error(libc::ENOTTY));
            }
            s.reads += 1;
            Ok(s.regs)
        }

        fn switch(&mut self, index: u8, value: u8) -> io::Result<()> {
            let mut s = self.state();
            s.switches.push((index, value));
            match s.behaviour {
                Behaviour::Obey => {
                    s.regs[usize::from(index)] = value;
                    Ok(())
                }
                Behaviour::IgnoreSwitch => Ok(()),
                Behaviour::RefuseSwitch => Err(io::Error::from_raw_os_error(libc::EIO)),
                Behaviour::NoIoctl => Err(io::Error::from_raw_os_error(libc::ENOTTY)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Behaviour, FakeExtCsd};
    use super::*;

    const DEV: &str = "/dev/mmcblk1";

    #[test]
    fn the_ioctl_struct_and_request_match_the_kernel() {
        // _IOWR(179, 0, 72 bytes), the value in the kernel's uapi header on
        // every architecture with the generic ioctl encoding (x86, ARM).
        assert_eq!(
            nix::request_code_readwrite!(MMC_BLOCK_MAJOR, 0, std::mem::size_of::<MmcIocCmd>())
                as u64,
            0xc048_b300
        );
        // mmc-utils' argument for "PARTITION_CONFIG := 0x48".
        let arg = (MMC_SWITCH_MODE_WRITE_BYTE << 24) | (179 << 16) | (0x48 << 8) | 1;
        assert_eq!(arg, 0x03b3_4801);
        assert_eq!(MMC_RSP_R1B | MMC_RSP_SPI_S1 | MMC_RSP_SPI_BUSY, 0x49d);
    }

    #[test]
    fn the_value_mmc_utils_would_write() {
        use BootEnable::*;
        // Enable field in bits 5:3, access bits cleared, ack as wanted.
        assert_eq!(partition_config(0x00, Boot0, Some(true)), 0x48);
        assert_eq!(partition_config(0x00, Boot1, Some(false)), 0x10);
        assert_eq!(partition_config(0x00, User, None), 0x38);
        // BOOT_ACK kept when the board does not say; the old enable and the
        // access bits do not survive.
        assert_eq!(partition_config(0x52, Boot0, None), 0x48);
        assert_eq!(partition_config(0x49, Boot1, Some(false)), 0x10);
        assert_eq!(partition_config(0xff, Boot0, None), 0x48);
    }

    #[test]
    fn enables_and_reads_back() {
        let fake = FakeExtCsd::new(0x00, Behaviour::Obey);
        let mut regs = fake.clone();
        let c = enable_boot(&mut regs, Path::new(DEV), BootEnable::Boot0, Some(true)).unwrap();
        assert_eq!(
            c,
            BootConfig {
                before: 0x00,
                after: 0x48
            }
        );
        let s = fake.state();
        assert_eq!(s.switches, [(PARTITION_CONFIG, 0x48)]);
        assert_eq!(s.reads, 2, "read, switch, read back");
        assert_eq!(s.regs[179], 0x48);
    }

    #[test]
    fn an_already_enabled_part_is_only_read() {
        let fake = FakeExtCsd::new(0x50, Behaviour::Obey);
        let c = enable_boot(&mut fake.clone(), Path::new(DEV), BootEnable::Boot1, None).unwrap();
        assert_eq!((c.before, c.after), (0x50, 0x50));
        assert!(fake.state().switches.is_empty());
    }

    #[test]
    fn a_device_that_refuses_is_a_clear_error() {
        let refuse = FakeExtCsd::new(0x00, Behaviour::RefuseSwitch);
        let err =
            enable_boot(&mut refuse.clone(), Path::new(DEV), BootEnable::Boot0, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ExtCsdSwitch {
                    value: 0x08,
                    enable: BootEnable::Boot0,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.class(), flasher_format::ErrorClass::PostWrite);
        assert!(err.to_string().contains("0x08"), "{err}");

        let ignore = FakeExtCsd::new(0x00, Behaviour::IgnoreSwitch);
        let err =
            enable_boot(&mut ignore.clone(), Path::new(DEV), BootEnable::Boot0, None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::ExtCsdNotSet {
                    wanted: 0x08,
                    read: 0x00,
                    ..
                }
            ),
            "{err:?}"
        );

        let none = FakeExtCsd::new(0x00, Behaviour::NoIoctl);
        let err =
            enable_boot(&mut none.clone(), Path::new(DEV), BootEnable::User, None).unwrap_err();
        assert!(matches!(err, Error::ExtCsdRead { .. }), "{err:?}");
    }

    #[test]
    fn the_real_ioctl_on_a_file_fails_cleanly() {
        // A regular file has no MMC ioctl: an error, no crash, nothing written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mmcblk1");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let mut dev = MmcIoctl::open(&path).unwrap();
        let err = enable_boot(&mut dev, &path, BootEnable::Boot0, None).unwrap_err();
        assert!(matches!(err, Error::ExtCsdRead { .. }), "{err:?}");
        assert!(std::fs::read(&path).unwrap().iter().all(|b| *b == 0));
    }
}
