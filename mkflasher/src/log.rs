//! Log output of the host binaries (`mkflasher`, `flasher`): tracing lines on
//! stderr, `info` by default, `-v` debug, `-vv` trace, `RUST_LOG` overriding.

/// Install the stderr subscriber for a `-v` count.
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
