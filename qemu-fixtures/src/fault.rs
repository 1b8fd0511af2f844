//! Fault injection specs (`mkflasher qemu --fault`, [`crate::QemuOptions::faults`]):
//! I/O errors through QEMU's blkdebug block driver, and a power cut when the
//! writing phase passes a percentage (the harness kills QEMU, see docs/qemu.md).

use super::Error;
use std::fmt::Write as _;

/// One injected fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Every guest write touching the 512-byte sector at this byte offset of the
    /// target fails with EIO (`io-error@OFFSET`).
    IoError { offset: u64 },
    /// Every guest read touching the 512-byte sector at this byte offset of
    /// the target fails (`read-error@OFFSET`); writes land. NVMe reports the
    /// error; QEMU's sd-card answers it with its previous transfer buffer and
    /// no error, which is a silent corruption of the read-back (docs/fail-closed.md,
    /// "What a read-back cannot see").
    ReadError { offset: u64 },
    /// Kill QEMU once the flasher reports writing progress `done/total` at or above
    /// this percentage (`power-cut-at=PERCENT`).
    PowerCutAt { percent: f64 },
}

impl std::str::FromStr for Fault {
    type Err = Error;
    fn from_str(spec: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::BadFault {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if let Some(off) = spec.strip_prefix("io-error@") {
            let offset = super::parse_size(off)
                .map_err(|_| bad("OFFSET must be bytes, e.g. 20971520 or 20M"))?;
            Ok(Fault::IoError { offset })
        } else if let Some(off) = spec.strip_prefix("read-error@") {
            let offset = super::parse_size(off)
                .map_err(|_| bad("OFFSET must be bytes, e.g. 20971520 or 20M"))?;
            Ok(Fault::ReadError { offset })
        } else if let Some(p) = spec.strip_prefix("power-cut-at=") {
            let percent: f64 = p
                .trim_end_matches('%')
                .parse()
                .map_err(|_| bad("PERCENT must be a number, e.g. 50"))?;
            if !(0.0..=100.0).contains(&percent) {
                return Err(bad("PERCENT must be between 0 and 100"));
            }
            Ok(Fault::PowerCutAt { percent })
        } else {
            Err(bad(
                "expected io-error@OFFSET, read-error@OFFSET or power-cut-at=PERCENT",
            ))
        }
    }
}

/// The blkdebug config for the I/O-error faults, or None when there are none.
/// Each fault fails every write and write-zeroes request touching its sector
/// (`iotype`), again and again (`once = "off"`), as a dying medium would;
/// reads of the sector still return what the medium holds. Without `iotype`
/// a rule, once armed, fails reads too, and QEMU's sd-card model answers a
/// failed read with its previous transfer buffer and no error: a read-back
/// that returns what was just written, whatever the medium holds (issue 22,
/// docs/fail-closed.md, "What a read-back cannot see"). A read fault fails
/// reads of its sector (`iotype = "read"`) from the first read on.
pub fn blkdebug_config(faults: &[Fault]) -> Option<String> {
    let mut out = String::new();
    for f in faults {
        let (event, iotypes, offset): (_, &[&str], _) = match f {
            Fault::IoError { offset } => ("write_aio", &["write", "write-zeroes"], offset),
            Fault::ReadError { offset } => ("read_aio", &["read"], offset),
            Fault::PowerCutAt { .. } => continue,
        };
        for iotype in iotypes {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "[inject-error]\nevent = \"{event}\"\niotype = \"{iotype}\"\nerrno = \"5\"\nsector = \"{}\"\nonce = \"off\"\n\n",
                offset / 512
            );
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The power-cut threshold, if any (the lowest wins).
pub fn power_cut(faults: &[Fault]) -> Option<f64> {
    faults
        .iter()
        .filter_map(|f| match f {
            Fault::PowerCutAt { percent } => Some(*percent),
            _ => None,
        })
        .reduce(f64::min)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "io-error@20M".parse::<Fault>().unwrap(),
            Fault::IoError { offset: 20 << 20 }
        );
        assert_eq!(
            "io-error@4096".parse::<Fault>().unwrap(),
            Fault::IoError { offset: 4096 }
        );
        assert_eq!(
            "power-cut-at=50%".parse::<Fault>().unwrap(),
            Fault::PowerCutAt { percent: 50.0 }
        );
        assert_eq!(
            "read-error@1M".parse::<Fault>().unwrap(),
            Fault::ReadError { offset: 1 << 20 }
        );
    }

    #[test]
    fn rejects_nonsense() {
        for s in [
            "io-error@",
            "read-error@x",
            "power-cut-at=150",
            "power-cut-at=x",
            "explode",
        ] {
            assert!(
                matches!(s.parse::<Fault>(), Err(Error::BadFault { .. })),
                "{s}"
            );
        }
    }

    #[test]
    fn blkdebug_rules_per_sector() {
        let cfg = blkdebug_config(&[
            Fault::IoError { offset: 20 << 20 },
            Fault::PowerCutAt { percent: 10.0 },
        ])
        .unwrap();
        assert!(cfg.contains("sector = \"40960\""));
        assert!(cfg.contains("event = \"write_aio\""));
        // Writes and write-zeroes fail; reads are left alone.
        assert_eq!(cfg.matches("[inject-error]").count(), 2);
        assert!(cfg.contains("iotype = \"write\""));
        assert!(cfg.contains("iotype = \"write-zeroes\""));
        assert!(!cfg.contains("iotype = \"read\""));
        assert_eq!(blkdebug_config(&[Fault::PowerCutAt { percent: 1.0 }]), None);
        // A read fault fails reads only.
        let cfg = blkdebug_config(&[Fault::ReadError { offset: 4096 }]).unwrap();
        assert_eq!(cfg.matches("[inject-error]").count(), 1);
        assert!(cfg.contains("event = \"read_aio\"\niotype = \"read\""));
        assert!(cfg.contains("sector = \"8\""));
    }

    #[test]
    fn lowest_power_cut_wins() {
        let f = [
            Fault::PowerCutAt { percent: 70.0 },
            Fault::PowerCutAt { percent: 30.0 },
        ];
        assert_eq!(power_cut(&f), Some(30.0));
        assert_eq!(power_cut(&[]), None);
    }
}
