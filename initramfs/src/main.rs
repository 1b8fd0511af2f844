//! The on-board `/init` (PID 1). It takes no arguments: its options come from
//! the kernel command line (`flasher.*`), its board from the initramfs. All the
//! work is in the library (`flasher_init`); this binary links none of the host
//! CLI, so it stays small enough for any board's initramfs.

mod static_libc;

fn main() {
    flasher_init::main()
}
