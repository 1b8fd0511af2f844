//! Supervising one QEMU process: spawning it with the console piped (and
//! optionally echoed), tailing the events file, and ending the run on the
//! guest's power-off, the firmware giving up, the twin's halt, a power-cut
//! fault or the timeout (killing QEMU where it would not exit itself).

use crate::events::{drain_events, writing_fraction, BadLine, EventHook};
use crate::{Error, Result};
use flasher_format::event::Event;
use flasher_format::io::IoContext;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the ARM kernel prints when the guest has stopped for good: sabrelite
/// has no power switch QEMU models, and a reboot after a panic fails.
const GUEST_STOPPED: [&str; 3] = [
    "reboot: Power down",
    "reboot: System halted",
    "Reboot failed -- System halted",
];
/// OVMF prints this when it found nothing bootable and fell back to its shell:
/// the run can stop there instead of waiting for the timeout.
pub const FIRMWARE_GAVE_UP: &str = "UEFI Interactive Shell";

pub(crate) struct Running {
    child: Child,
    console: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

pub(crate) fn spawn(qemu: &str, args: &[String], stream: bool) -> Result<Running> {
    tracing::debug!("{qemu} {}", args.join(" "));
    let mut child = Command::new(qemu)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::QemuMissing {
                binary: qemu.into(),
            },
            _ => Error::Io(flasher_format::io::IoError::new(
                format!("starting {qemu}"),
                e,
            )),
        })?;
    let console = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    let pipes: Vec<(Box<dyn Read + Send>, bool)> = [
        child
            .stdout
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, stream)),
        child
            .stderr
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, false)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (mut pipe, echo) in pipes {
        let console = Arc::clone(&console);
        readers.push(std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if echo {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                }
                console
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend_from_slice(&buf[..n]);
            }
        }));
    }
    Ok(Running {
        child,
        console,
        readers,
    })
}

/// How a VM run ended.
pub(crate) struct Ended {
    pub(crate) status: Option<std::process::ExitStatus>,
    pub(crate) timed_out: bool,
    pub(crate) power_cut: bool,
    pub(crate) gave_up: bool,
    /// The guest stopped for good but QEMU kept running (the i.MX6 twin); the
    /// harness then ended QEMU.
    pub(crate) guest_stopped: bool,
    pub(crate) console: String,
    pub(crate) events: Vec<Event>,
    pub(crate) bad_lines: Vec<BadLine>,
    pub(crate) elapsed: Duration,
}

/// Run QEMU to its end, the timeout, or a power cut; tail the events file.
/// `exits_itself`: QEMU ends when the guest powers off (x86); otherwise the
/// kernel's last words ([`GUEST_STOPPED`]) end the run.
pub(crate) fn supervise(
    mut run: Running,
    events_path: &Path,
    timeout: Duration,
    cut_at: Option<f64>,
    hook: Option<&EventHook>,
    exits_itself: bool,
) -> Result<Ended> {
    let start = Instant::now();
    let mut events = Vec::new();
    let mut bad_lines = Vec::new();
    let mut pending = Vec::new();
    let mut offset = 0u64;
    let read_new = |offset: &mut u64, pending: &mut Vec<u8>| {
        use std::io::{Seek, SeekFrom};
        if let Ok(mut f) = std::fs::File::open(events_path) {
            if f.seek(SeekFrom::Start(*offset)).is_ok() {
                let mut more = Vec::new();
                if f.read_to_end(&mut more).is_ok() {
                    *offset += more.len() as u64;
                    pending.extend_from_slice(&more);
                }
            }
        }
    };
    let (mut timed_out, mut power_cut, mut gave_up) = (false, false, false);
    let mut guest_stopped = false;
    let status = loop {
        let st = run.child.try_wait().context("waiting for QEMU")?;
        let before = events.len();
        read_new(&mut offset, &mut pending);
        drain_events(&mut pending, &mut events, &mut bad_lines, hook);
        if let Some(st) = st {
            break Some(st);
        }
        if let Some(cut) = cut_at {
            if events[before..]
                .iter()
                .filter_map(writing_fraction)
                .any(|p| p >= cut)
            {
                tracing::warn!("power cut: killing the VM at {cut}% of writing");
                power_cut = true;
                let _ = run.child.kill();
                let _ = run.child.wait();
                break None;
            }
        }
        let tail = {
            let c = run.console.lock().unwrap_or_else(|e| e.into_inner());
            // The banners are short; look only at the tail so this stays cheap.
            String::from_utf8_lossy(&c[c.len().saturating_sub(8192)..]).into_owned()
        };
        if tail.contains(FIRMWARE_GAVE_UP) {
            gave_up = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        if !exits_itself && GUEST_STOPPED.iter().any(|m| tail.contains(m)) {
            // Everything the guest wrote went out before the kernel's last line.
            guest_stopped = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        if start.elapsed() >= timeout {
            timed_out = true;
            let _ = run.child.kill();
            let _ = run.child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for r in run.readers.drain(..) {
        let _ = r.join();
    }
    read_new(&mut offset, &mut pending);
    if status.is_some() || guest_stopped {
        // The guest ended by itself: each event went out in one write, so a
        // last line without its newline is still a whole line, or a real fault.
        pending.push(b'\n');
    } else {
        // Killed (power cut, timeout): the line being written when QEMU died is
        // cut short by the harness, not by the flasher; drop it.
        drain_events(&mut pending, &mut events, &mut bad_lines, hook);
        pending.clear();
    }
    drain_events(&mut pending, &mut events, &mut bad_lines, hook);
    let console = String::from_utf8_lossy(&run.console.lock().unwrap_or_else(|e| e.into_inner()))
        .into_owned();
    Ok(Ended {
        status,
        timed_out,
        power_cut,
        gave_up,
        guest_stopped,
        console,
        events,
        bad_lines,
        elapsed: start.elapsed(),
    })
}

/// Fail on QEMU's own errors (bad arguments, missing files): it exited non-zero
/// by itself before the guest could do anything.
pub(crate) fn qemu_error(end: &Ended) -> Option<Error> {
    let st = end.status?;
    if st.success() {
        return None;
    }
    let stderr: Vec<&str> = end
        .console
        .lines()
        .filter(|l| l.contains("qemu-system"))
        .collect();
    Some(Error::QemuFailed {
        status: st.to_string(),
        stderr: if stderr.is_empty() {
            end.console
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        } else {
            stderr.join(" | ")
        },
    })
}
