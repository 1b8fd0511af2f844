//! The eMMC health gate: before the first write, read the target's wear
//! registers from sysfs, keep them for the unit record, and say whether the
//! part is too worn to ship.
//!
//! The kernel shows them on the card device (`drivers/mmc/core/mmc.c`,
//! `MMC_DEV_ATTR`; the life-time attributes came with linux 4.10, commit
//! "mmc: core: Export device lifetime information through sysfs"):
//! `life_time` = `"0x%02x 0x%02x"` (EXT_CSD[268] DEVICE_LIFE_TIME_EST_TYP_A,
//! EXT_CSD[269] TYP_B), `pre_eol_info` = `"0x%02x"` (EXT_CSD[267]), `rev`
//! (EXT_CSD_REV), `date` (`MM/YYYY` from the CID), `manfid`; `cid` is read
//! with the disk by the storage scan and kept in the record's target identity.
//!
//! JEDEC JESD84-B51 (eMMC 5.1) defines the values: a life-time estimate of
//! 0x01..=0x0A means 0-10 % .. 90-100 % of the device's life used (10 % bands),
//! 0x0B that it is exceeded, 0x00 not defined; pre-EOL 0x01 normal, 0x02
//! warning (80 % of the reserved blocks used), 0x03 urgent, 0x00 not defined.
//! Devices older than eMMC 5.0 report 0x00, and kernels older than 4.10 have
//! no such files: both pass the gate with a note (nothing says the part is
//! worn), and the record keeps what was there. The policy (what refuses)
//! is in [`assess`]; docs/factory.md, "eMMC health gate", explains it.

use std::fmt;
use std::path::Path;

use flasher_format::record::StorageHealth;

/// A life-time estimate: "the device has exceeded its estimated life".
pub const LIFE_EXCEEDED: u8 = 0x0B;
/// Pre-EOL information: reserved blocks consumed, 80 % (warning), urgent.
pub const PRE_EOL_WARNING: u8 = 0x02;
pub const PRE_EOL_URGENT: u8 = 0x03;

/// Why the gate refuses a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Worn {
    /// Pre-EOL information is "urgent" (0x03).
    PreEolUrgent,
    /// A life-time estimate (`'A'` or `'B'`) is at or past the limit.
    LifeTime {
        estimate: char,
        value: u8,
        limit_percent: u8,
    },
}

impl fmt::Display for Worn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Worn::PreEolUrgent => write!(
                f,
                "pre-EOL information is 0x{PRE_EOL_URGENT:02x} (urgent: the eMMC has used up its reserved blocks)"
            ),
            Worn::LifeTime {
                estimate,
                value,
                limit_percent,
            } => write!(
                f,
                "life-time estimate type {estimate} is 0x{value:02x} ({}), at or past the board's limit of {limit_percent} % used",
                life_band(*value)
            ),
        }
    }
}

/// What was read from sysfs, raw (for the record) and parsed (for the gate).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// The attributes as the kernel showed them, trimmed; absent ones `None`.
    /// (The CID is read with the disk by the storage scan and recorded in the
    /// record's target identity.)
    pub health: StorageHealth,
    /// Type A and B estimates, when `life_time` has the kernel's shape.
    pub life_time: Option<(u8, u8)>,
    /// `pre_eol_info`, when it has the kernel's shape.
    pub pre_eol: Option<u8>,
}

/// The gate's verdict on a [`Reading`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assessment {
    /// One line for the console: what was read.
    pub summary: String,
    /// Why the gate could not judge part of the health (missing attributes,
    /// values the device does not define); informative, never a refusal.
    pub notes: Vec<String>,
    /// Wear worth a warning event that does not refuse (pre-EOL warning).
    pub warnings: Vec<String>,
    /// Why the target is refused, if it is.
    pub refusal: Option<Worn>,
}

/// Whether `<root>/sys/block/<name>` is an eMMC (the card type `MMC`): only
/// those have the registers, so only those are gated.
pub fn is_emmc(root: &Path, name: &str) -> bool {
    attr(root, name, "type").as_deref() == Some("MMC")
}

fn attr(root: &Path, name: &str, file: &str) -> Option<String> {
    let path = root.join("sys/block").join(name).join("device").join(file);
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Read the health attributes of `<root>/sys/block/<name>/device/`.
pub fn read(root: &Path, name: &str) -> Reading {
    let get = |file: &str| attr(root, name, file);
    let health = StorageHealth {
        life_time: get("life_time"),
        pre_eol_info: get("pre_eol_info"),
        rev: get("rev"),
        date: get("date"),
        manfid: get("manfid"),
    };
    let life_time = health.life_time.as_deref().and_then(|s| {
        let mut it = s.split_whitespace().map(hex_byte);
        match (it.next(), it.next(), it.next()) {
            (Some(Some(a)), Some(Some(b)), None) => Some((a, b)),
            _ => None,
        }
    });
    let pre_eol = health.pre_eol_info.as_deref().and_then(hex_byte);
    Reading {
        health,
        life_time,
        pre_eol,
    }
}

/// `0x0a` (or `0a`, as some older kernels print pre_eol_info) as a byte.
fn hex_byte(s: &str) -> Option<u8> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u8::from_str_radix(digits, 16).ok()
}

/// The band a life-time estimate stands for, in words.
pub fn life_band(v: u8) -> String {
    match v {
        0 => "not defined".into(),
        1..=10 => format!("{}-{} % of its life used", (v - 1) * 10, v * 10),
        LIFE_EXCEEDED => "past its estimated life".into(),
        _ => "a reserved value".into(),
    }
}

fn pre_eol_word(v: u8) -> &'static str {
    match v {
        0 => "not defined",
        1 => "normal",
        PRE_EOL_WARNING => "warning: 80 % of the reserved blocks used",
        PRE_EOL_URGENT => "urgent",
        _ => "a reserved value",
    }
}

/// Whether a life-time estimate is at or past `limit_percent`: its band
/// starts at or above the limit. With the default 90, 0x0A (90-100 %) and
/// 0x0B (exceeded) are; 0x09 (80-90 %) is not. Undefined (0x00) and reserved
/// values (above 0x0B) never are: they say nothing about wear.
pub fn past_limit(value: u8, limit_percent: u8) -> bool {
    match value {
        1..=10 => u16::from(value - 1) * 10 >= u16::from(limit_percent),
        LIFE_EXCEEDED => true,
        _ => false,
    }
}

/// Judge a reading against the board's life-time limit (percent, a multiple
/// of 10; `boards::Board::life_time_limit_percent`). Refuses on pre-EOL
/// urgent or an estimate past the limit; warns on pre-EOL warning; notes
/// whatever could not be judged.
pub fn assess(r: &Reading, limit_percent: u8) -> Assessment {
    let mut a = Assessment::default();
    let mut parts = Vec::new();
    match (r.life_time, &r.health.life_time) {
        (Some((ta, tb)), _) => {
            parts.push(format!(
                "life time A 0x{ta:02x} ({}), B 0x{tb:02x} ({})",
                life_band(ta),
                life_band(tb)
            ));
            for (estimate, value) in [('A', ta), ('B', tb)] {
                if past_limit(value, limit_percent) {
                    a.refusal.get_or_insert(Worn::LifeTime {
                        estimate,
                        value,
                        limit_percent,
                    });
                } else if value == 0 || value > LIFE_EXCEEDED {
                    a.notes.push(format!(
                        "life-time estimate type {estimate} is 0x{value:02x} ({}): not judged",
                        life_band(value)
                    ));
                }
            }
        }
        (None, Some(raw)) => a.notes.push(format!(
            "life_time {raw:?} is not two hex bytes: the life time is not judged"
        )),
        (None, None) => a.notes.push(
            "no life_time attribute (kernel before 4.10): the life time is not judged".into(),
        ),
    }
    match (r.pre_eol, &r.health.pre_eol_info) {
        (Some(v), _) => {
            parts.push(format!("pre-EOL 0x{v:02x} ({})", pre_eol_word(v)));
            match v {
                PRE_EOL_URGENT => {
                    // Pre-EOL urgent is the stronger reason; it is named first.
                    a.refusal = Some(Worn::PreEolUrgent);
                }
                PRE_EOL_WARNING => a.warnings.push(format!(
                    "eMMC pre-EOL information is 0x{v:02x} ({}); the part is wearing out",
                    pre_eol_word(v)
                )),
                1 => {}
                _ => a.notes.push(format!(
                    "pre-EOL information 0x{v:02x} ({}): not judged",
                    pre_eol_word(v)
                )),
            }
        }
        (None, Some(raw)) => a.notes.push(format!(
            "pre_eol_info {raw:?} is not a hex byte: pre-EOL is not judged"
        )),
        (None, None) => a
            .notes
            .push("no pre_eol_info attribute (kernel before 4.10): pre-EOL is not judged".into()),
    }
    let h = &r.health;
    for (label, v) in [
        ("EXT_CSD rev", &h.rev),
        ("manfid", &h.manfid),
        ("date", &h.date),
    ] {
        if let Some(v) = v {
            parts.push(format!("{label} {v}"));
        }
    }
    a.summary = if parts.is_empty() {
        "no health attributes in sysfs".into()
    } else {
        parts.join(", ")
    };
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testing::FakeRoot;

    /// A BeagleBone-shaped eMMC (mmcblk1 on 481d8000.mmc) whose card
    /// directory holds the kernel's attributes; `set` overrides them (an
    /// empty value removes the file, as on a kernel without it).
    fn emmc(set: &[(&str, &str)]) -> (tempfile::TempDir, Reading) {
        let t = tempfile::tempdir().unwrap();
        let mut r = FakeRoot::new(t.path()).unwrap();
        r.mmc("platform/ocp/481d8000.mmc", 1, 1, "MMC", 4 << 30, true)
            .unwrap();
        let dev = t.path().join("sys/block/mmcblk1/device");
        for (file, value) in set {
            if value.is_empty() {
                std::fs::remove_file(dev.join(file)).unwrap();
            } else {
                std::fs::write(dev.join(file), format!("{value}\n")).unwrap();
            }
        }
        let reading = read(t.path(), "mmcblk1");
        (t, reading)
    }

    #[test]
    fn healthy_part_passes_and_everything_is_kept() {
        let (t, r) = emmc(&[]);
        assert!(is_emmc(t.path(), "mmcblk1"));
        // What the fake (like the kernel) shows, raw for the record.
        assert_eq!(r.health.life_time.as_deref(), Some("0x01 0x02"));
        assert_eq!(r.health.pre_eol_info.as_deref(), Some("0x01"));
        assert_eq!(r.health.rev.as_deref(), Some("0x8"));
        assert_eq!(r.health.date.as_deref(), Some("06/2019"));
        assert_eq!(r.health.manfid.as_deref(), Some("0x000015"));
        assert_eq!((r.life_time, r.pre_eol), (Some((1, 2)), Some(1)));
        let a = assess(&r, 90);
        assert_eq!(a.refusal, None);
        assert!(a.notes.is_empty() && a.warnings.is_empty(), "{a:?}");
        assert!(
            a.summary.contains("10-20 % of its life used"),
            "{}",
            a.summary
        );
    }

    #[test]
    fn pre_eol_urgent_refuses_and_warning_only_warns() {
        let (_t, r) = emmc(&[("pre_eol_info", "0x03")]);
        assert_eq!(assess(&r, 90).refusal, Some(Worn::PreEolUrgent));
        // Urgent refuses even at the most lenient limit.
        assert_eq!(assess(&r, 100).refusal, Some(Worn::PreEolUrgent));
        let (_t, r) = emmc(&[("pre_eol_info", "0x02")]);
        let a = assess(&r, 90);
        assert_eq!(a.refusal, None);
        assert_eq!(a.warnings.len(), 1, "{a:?}");
    }

    #[test]
    fn either_life_time_estimate_past_the_limit_refuses() {
        for (life, estimate, value) in [
            ("0x0a 0x01", 'A', 0x0a),
            ("0x01 0x0a", 'B', 0x0a),
            ("0x0b 0x03", 'A', 0x0b),
            ("0x02 0x0b", 'B', 0x0b),
        ] {
            let (_t, r) = emmc(&[("life_time", life)]);
            assert_eq!(
                assess(&r, 90).refusal,
                Some(Worn::LifeTime {
                    estimate,
                    value,
                    limit_percent: 90
                }),
                "{life}"
            );
        }
        // 0x09 is 80-90 % used: not past 90.
        let (_t, r) = emmc(&[("life_time", "0x09 0x09")]);
        assert_eq!(assess(&r, 90).refusal, None);
    }

    #[test]
    fn a_board_set_limit_moves_the_line() {
        let (_t, r) = emmc(&[("life_time", "0x06 0x01")]);
        // 0x06 is 50-60 % used: past a limit of 50, not of 60 or the default.
        assert!(matches!(
            assess(&r, 50).refusal,
            Some(Worn::LifeTime {
                estimate: 'A',
                value: 6,
                limit_percent: 50
            })
        ));
        assert_eq!(assess(&r, 60).refusal, None);
        assert_eq!(assess(&r, 90).refusal, None);
        // 100: only "exceeded" refuses.
        assert!(!past_limit(0x0a, 100));
        assert!(past_limit(LIFE_EXCEEDED, 100));
        assert!(past_limit(0x02, 10) && !past_limit(0x01, 10));
    }

    #[test]
    fn missing_or_undefined_attributes_pass_with_a_note() {
        // A kernel before 4.10: no life_time, no pre_eol_info, no rev.
        let (_t, r) = emmc(&[("life_time", ""), ("pre_eol_info", ""), ("rev", "")]);
        assert_eq!(r.health.life_time, None);
        assert_eq!(r.health.pre_eol_info, None);
        assert_eq!(r.health.rev, None);
        // What exists is still recorded.
        assert_eq!(r.health.manfid.as_deref(), Some("0x000015"));
        let a = assess(&r, 90);
        assert_eq!(a.refusal, None);
        assert_eq!(a.notes.len(), 2, "{a:?}");
        // An eMMC before 5.0 shows zeros: not defined, not worn.
        let (_t, r) = emmc(&[("life_time", "0x00 0x00"), ("pre_eol_info", "0x00")]);
        let a = assess(&r, 90);
        assert_eq!(a.refusal, None);
        assert_eq!(a.notes.len(), 3, "{a:?}");
        // A value of another shape is kept raw and not judged.
        let (_t, r) = emmc(&[("life_time", "worn"), ("pre_eol_info", "03")]);
        assert_eq!(r.health.life_time.as_deref(), Some("worn"));
        let a = assess(&r, 90);
        // `03` (no 0x, as an old kernel printed it) still reads as urgent.
        assert_eq!(a.refusal, Some(Worn::PreEolUrgent));
        assert_eq!(a.notes.len(), 1, "{a:?}");
    }

    #[test]
    fn sd_cards_and_other_disks_are_not_gated() {
        let t = tempfile::tempdir().unwrap();
        let mut r = FakeRoot::new(t.path()).unwrap();
        r.mmc("pci0000:00/0000:00:05.0", 0, 0, "SD", 1 << 30, false)
            .unwrap();
        r.nvme("pci0000:00/0000:00:1d.0", 0, 1, 1 << 30).unwrap();
        assert!(!is_emmc(t.path(), "mmcblk0"));
        assert!(!is_emmc(t.path(), "nvme0n1"));
        assert!(!is_emmc(t.path(), "sda"));
    }
}
