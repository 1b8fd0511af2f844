//! `/init` of the demo OS that `mkflasher demo` and the QEMU scenarios flash onto a
//! virtual disk. It proves the flashed OS booted: it prints a marker line to the
//! console and the first serial port, then powers the machine off.
//!
//! Built statically (see `scripts/build-init`), so the demo OS's initramfs holds
//! this one file. Only `libc` is used: nothing else in the initramfs.

/// The line the harness looks for on the console (`qemu::DEMO_MARKER`).
const MARKER: &[u8] = b"FLASHER-DEMO-OS: booted OK\n";

fn main() {
    // SAFETY (whole block): plain syscalls on constant, NUL-terminated paths.
    unsafe {
        // The kernel does not mount devtmpfs for an initramfs; without it there is
        // no /dev/ttyS0. Failure is harmless: then only stdout is tried.
        libc::mkdir(c"/dev".as_ptr(), 0o755);
        libc::mount(
            c"devtmpfs".as_ptr(),
            c"/dev".as_ptr(),
            c"devtmpfs".as_ptr(),
            0,
            std::ptr::null(),
        );
        // stdout first: the kernel hands /init the console as fds 0-2 when it can.
        libc::write(1, MARKER.as_ptr().cast(), MARKER.len());
        for path in [c"/dev/console", c"/dev/ttyS0"] {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_NOCTTY);
            if fd >= 0 {
                libc::write(fd, MARKER.as_ptr().cast(), MARKER.len());
                libc::fsync(fd);
                libc::close(fd);
            }
        }
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    // PID 1 must never exit (the kernel would panic): if power-off failed, idle.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
