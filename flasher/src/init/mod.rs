//! (placeholder: PID 1 mode; to be filled in by the init work)

/// Errors from PID-1 mode.
#[derive(Debug, thiserror::Error)]
pub enum Error {}

/// Run as PID 1. Never returns.
pub fn main() -> ! {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
