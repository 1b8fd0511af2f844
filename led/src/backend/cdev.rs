//! An LED on a GPIO character-device line (`/dev/gpiochipN`, line L), driven
//! through the kernel's line-handle ioctls (GPIO chardev ABI v1, Linux 4.8+, the
//! ABI the `gpio-cdev` crate speaks; that crate pins `nix` 0.27, a second copy of
//! `nix` in the board binary, so the three ioctls are here: docs/building.md).
//!
//! Active-low is handled here, not by the kernel: the line is requested without
//! the ACTIVE_LOW flag and we compute the physical level ourselves
//! ([`physical_high`]). Should the line info still say active-low, the value
//! written is inverted back, so "high" is always the physical level whatever the
//! device tree says about the line. A line has no brightness: at or above half
//! brightness it is on.

use super::Led;
use crate::{Error, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

/// The consumer name the kernel shows for our lines (`gpioinfo`).
const CONSUMER: &str = "flasher-led";

/// Where `chip` lives under `root`.
pub fn chip_path(root: &Path, chip: &str) -> PathBuf {
    if chip.contains('/') {
        root.join(chip.trim_start_matches('/'))
    } else {
        root.join("dev").join(chip)
    }
}

/// Whether the line must be driven high for the LED to be `on`.
pub fn physical_high(on: bool, active_low: bool) -> bool {
    on != active_low
}

/// Whether a brightness counts as on for a plain on/off line.
pub fn is_on(brightness: f32) -> bool {
    brightness >= 0.5
}

/// The v1 line-handle ABI of `<linux/gpio.h>`.
// The casts are no-ops where the ioctl request type is u64 (glibc) but not on
// musl (c_int), so they stay.
#[allow(clippy::unnecessary_cast)]
mod abi {
    /// GPIOHANDLES_MAX.
    pub const MAX: usize = 64;
    pub const REQUEST_OUTPUT: u32 = 1 << 1;
    pub const LINE_FLAG_ACTIVE_LOW: u32 = 1 << 2;

    /// struct gpiochip_info.
    #[repr(C)]
    pub struct ChipInfo {
        pub name: [u8; 32],
        pub label: [u8; 32],
        pub lines: u32,
    }

    /// struct gpioline_info.
    #[repr(C)]
    pub struct LineInfo {
        pub line_offset: u32,
        pub flags: u32,
        pub name: [u8; 32],
        pub consumer: [u8; 32],
    }

    /// struct gpiohandle_request.
    #[repr(C)]
    pub struct HandleRequest {
        pub lineoffsets: [u32; MAX],
        pub flags: u32,
        pub default_values: [u8; MAX],
        pub consumer_label: [u8; 32],
        pub lines: u32,
        pub fd: libc::c_int,
    }

    /// struct gpiohandle_data.
    #[repr(C)]
    pub struct HandleData {
        pub values: [u8; MAX],
    }

    pub const GET_CHIPINFO: u64 = nix::request_code_read!(0xB4, 0x01, size_of::<ChipInfo>()) as u64;
    pub const GET_LINEINFO: u64 =
        nix::request_code_readwrite!(0xB4, 0x02, size_of::<LineInfo>()) as u64;
    pub const GET_LINEHANDLE: u64 =
        nix::request_code_readwrite!(0xB4, 0x03, size_of::<HandleRequest>()) as u64;
    pub const SET_LINE_VALUES: u64 =
        nix::request_code_readwrite!(0xB4, 0x09, size_of::<HandleData>()) as u64;
}

/// `ioctl(fd, req, arg)`, the error as the OS gave it.
fn ioctl<T>(fd: &impl AsRawFd, req: u64, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: every call site passes the `abi` struct its request is declared
    // with, borrowed mutably for the call; the kernel writes at most its size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One LED on a GPIO character-device line.
pub struct CdevLed {
    chip: PathBuf,
    line: u32,
    active_low: bool,
    /// The line handle: values are set through it.
    handle: File,
    /// The line info said active-low after the request: write inverted values.
    kernel_inverts: bool,
    last: Option<bool>,
}

impl CdevLed {
    /// Request `line` of `chip` as an output, initially off. `chip` is a device
    /// path (`/dev/gpiochip2`) or a bare name (`gpiochip2`, meaning `/dev/gpiochip2`),
    /// taken under `root`.
    pub fn open(root: &Path, chip: &str, line: u32, active_low: bool) -> Result<CdevLed> {
        let chip_path = chip_path(root, chip);
        let err = |message: String| Error::Gpio {
            chip: chip_path.clone(),
            line,
            message,
        };
        if !chip_path.exists() {
            return Err(err("no such GPIO chip".into()));
        }
        let dev = File::open(&chip_path).map_err(|e| err(e.to_string()))?;
        // SAFETY (all three structs): plain integers and byte arrays, for which
        // all zeroes is a valid value.
        let mut info: abi::ChipInfo = unsafe { std::mem::zeroed() };
        ioctl(&dev, abi::GET_CHIPINFO, &mut info)
            .map_err(|e| err(format!("not a GPIO chip (GPIO_GET_CHIPINFO_IOCTL): {e}")))?;
        if line >= info.lines {
            return Err(err(format!(
                "the chip has {} lines (0 to {})",
                info.lines,
                info.lines.saturating_sub(1)
            )));
        }
        let mut req: abi::HandleRequest = unsafe { std::mem::zeroed() };
        req.lineoffsets[0] = line;
        req.flags = abi::REQUEST_OUTPUT;
        req.default_values[0] = u8::from(physical_high(false, active_low));
        req.consumer_label[..CONSUMER.len()].copy_from_slice(CONSUMER.as_bytes());
        req.lines = 1;
        ioctl(&dev, abi::GET_LINEHANDLE, &mut req)
            .map_err(|e| err(format!("GPIO_GET_LINEHANDLE_IOCTL: {e}")))?;
        // SAFETY: the kernel returned a new descriptor that nothing else owns.
        let handle = unsafe { File::from_raw_fd(req.fd) };
        let mut info: abi::LineInfo = unsafe { std::mem::zeroed() };
        info.line_offset = line;
        ioctl(&dev, abi::GET_LINEINFO, &mut info)
            .map_err(|e| err(format!("GPIO_GET_LINEINFO_IOCTL: {e}")))?;
        Ok(CdevLed {
            chip: chip_path,
            line,
            active_low,
            handle,
            kernel_inverts: info.flags & abi::LINE_FLAG_ACTIVE_LOW != 0,
            last: Some(false),
        })
    }
}

impl Led for CdevLed {
    fn set(&mut self, brightness: f32) -> Result<()> {
        let on = is_on(brightness);
        if self.last == Some(on) {
            return Ok(());
        }
        let high = physical_high(on, self.active_low);
        // SAFETY: plain bytes.
        let mut data: abi::HandleData = unsafe { std::mem::zeroed() };
        data.values[0] = u8::from(high != self.kernel_inverts);
        ioctl(&self.handle, abi::SET_LINE_VALUES, &mut data).map_err(|e| Error::Gpio {
            chip: self.chip.clone(),
            line: self.line,
            message: e.to_string(),
        })?;
        self.last = Some(on);
        Ok(())
    }

    fn label(&self) -> String {
        format!("{}:{}", self.chip.display(), self.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_and_struct_sizes_match_linux_gpio_h() {
        // The values <linux/gpio.h> gives on every Linux architecture with the
        // generic _IOC layout (x86, ARM).
        assert_eq!(abi::GET_CHIPINFO, 0x8044_b401);
        assert_eq!(abi::GET_LINEINFO, 0xc048_b402);
        assert_eq!(abi::GET_LINEHANDLE, 0xc16c_b403);
        assert_eq!(abi::SET_LINE_VALUES, 0xc040_b409);
    }

    #[test]
    fn active_low_inverts_the_physical_level() {
        assert!(physical_high(true, false));
        assert!(!physical_high(false, false));
        assert!(!physical_high(true, true));
        assert!(physical_high(false, true));
    }

    #[test]
    fn half_brightness_and_up_is_on() {
        assert!(is_on(1.0));
        assert!(is_on(0.5));
        assert!(!is_on(0.49));
        assert!(!is_on(0.0));
    }

    #[test]
    fn chip_paths_are_taken_under_the_root() {
        let r = Path::new("/fake");
        assert_eq!(
            chip_path(r, "/dev/gpiochip2"),
            Path::new("/fake/dev/gpiochip2")
        );
        assert_eq!(chip_path(r, "gpiochip2"), Path::new("/fake/dev/gpiochip2"));
    }

    #[test]
    fn missing_chip_is_a_gpio_error_naming_chip_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let err = CdevLed::open(dir.path(), "/dev/gpiochip0", 17, false)
            .err()
            .unwrap();
        match err {
            Error::Gpio { chip, line, .. } => {
                assert_eq!(chip, dir.path().join("dev/gpiochip0"));
                assert_eq!(line, 17);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_file_that_is_not_a_chip_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/gpiochip0"), "").unwrap();
        assert!(matches!(
            CdevLed::open(dir.path(), "/dev/gpiochip0", 1, true),
            Err(Error::Gpio { line: 1, .. })
        ));
    }
}
