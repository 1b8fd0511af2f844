//! The `flasher.*` options on the kernel command line (`/proc/cmdline`), parsed into
//! a typed [`Options`] with defaults. Splitting follows the kernel's own rules
//! (`lib/cmdline.c: next_arg`): words are separated by spaces, double quotes group
//! spaces into a word and are removed around the whole word or around the value,
//! and `--` ends the kernel's arguments. In option names `-` and `_` are the same,
//! as the kernel treats them for module parameters.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The option names, as `mkflasher` writes them and `/init` reads them.
pub mod key {
    pub const BOARD: &str = "flasher.board";
    pub const TARGET: &str = "flasher.target";
    pub const VERIFY: &str = "flasher.verify";
    pub const AFTER: &str = "flasher.after";
    pub const ON_FAILURE: &str = "flasher.on-failure";
    pub const DRY_RUN: &str = "flasher.dry-run";
    pub const EVENTS: &str = "flasher.events";
    pub const EXPAND_DATA: &str = "flasher.expand-data";
    pub const BOOT_DISK: &str = "flasher.boot-disk";
    pub const TIMEOUT: &str = "flasher.timeout";
    pub const RETRY_UNIT: &str = "flasher.retry-unit";
    pub const HEALTH: &str = "flasher.health";
    pub const SKIP_EQUAL: &str = "flasher.skip-equal";
}

/// `key=value`, one kernel command-line word (values with spaces are quoted).
pub fn arg(key: &str, value: impl fmt::Display) -> String {
    let v = value.to_string();
    if v.contains(char::is_whitespace) {
        format!("{key}=\"{v}\"")
    } else {
        format!("{key}={v}")
    }
}

/// Whether a list of kernel arguments already sets `key` (as `key` or `key=...`).
pub fn sets(args: &[String], key: &str) -> bool {
    args.iter()
        .flat_map(|a| split(a))
        .any(|(p, _)| p.replace('_', "-") == key)
}

/// A `flasher.*` option whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("kernel command line: {option}={value:?} is not valid ({reason}); fix the card's cmdline.txt (mkflasher configure) or the boot entry")]
pub struct Error {
    pub option: String,
    pub value: String,
    pub reason: String,
}

impl Error {
    pub fn class(&self) -> crate::ErrorClass {
        crate::ErrorClass::BoardConfig
    }
}

/// What to do when the run is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    PowerOff,
    Reboot,
    Halt,
    /// Stay on forever (PID 1 never exits).
    Wait,
}

impl fmt::Display for After {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            After::PowerOff => "poweroff",
            After::Reboot => "reboot",
            After::Halt => "halt",
            After::Wait => "wait",
        })
    }
}

impl FromStr for After {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "poweroff" => Ok(After::PowerOff),
            "reboot" => Ok(After::Reboot),
            "halt" => Ok(After::Halt),
            "wait" => Ok(After::Wait),
            _ => Err(()),
        }
    }
}

/// How much of the written image is read back and compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Verify {
    /// Read back and compare every byte written or zeroed (docs/architecture.md rule 4).
    #[default]
    Full,
    /// Skip the read-back (faster; for development only).
    None,
}

/// The PID-1 options, as given on the kernel command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// `flasher.board=NAME`: skip detection and use this board.
    pub board: Option<String>,
    /// `flasher.target=DEV`: the target disk (e.g. `mmcblk1` or `/dev/nvme0n1`).
    pub target: Option<String>,
    /// `flasher.verify=full|none`.
    pub verify: Verify,
    /// `flasher.after=poweroff|reboot|halt|wait`: what to do after success.
    pub after: After,
    /// `flasher.on-failure=wait|poweroff|reboot|halt`: what to do after a failure.
    /// Defaults to `wait`, so the board stays on showing the blink code.
    pub on_failure: After,
    /// `flasher.dry-run` (or `=1`): do everything up to choosing the target, write nothing.
    pub dry_run: bool,
    /// `flasher.events=PATH`: JSON event lines to a tty (`/dev/ttyS1`) or a file.
    pub events: Option<PathBuf>,
    /// `flasher.expand-data`: grow the last (data) partition to the end of the target.
    pub expand_data: bool,
    /// `flasher.boot-disk=DEV`: the boot medium, when the payload search cannot tell.
    pub boot_disk: Option<String>,
    /// `flasher.timeout=SECONDS`: how long to wait for block devices to appear.
    pub timeout: Duration,
    /// `flasher.retry-unit`: write the target even though the unit log shows
    /// `record::MAX_ATTEMPTS` failed or unfinished attempts on it.
    pub retry_unit: bool,
    /// `flasher.health=off`: the eMMC health gate reads and records the
    /// target's wear but does not refuse a worn one (lab use). On by default.
    pub health: bool,
    /// `flasher.skip-equal`: read the target first and write only the blocks
    /// that differ (re-flashing); every byte is still read from the device and compared once.
    pub skip_equal: bool,
    /// Unknown `flasher.*` options, as warnings to show on the console.
    pub warnings: Vec<String>,
}

/// The block-device wait when `flasher.timeout=` is not given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Options {
    fn default() -> Self {
        Options {
            board: None,
            target: None,
            verify: Verify::Full,
            after: After::PowerOff,
            on_failure: After::Wait,
            dry_run: false,
            events: None,
            expand_data: false,
            boot_disk: None,
            timeout: DEFAULT_TIMEOUT,
            retry_unit: false,
            health: true,
            skip_equal: false,
            warnings: Vec::new(),
        }
    }
}

const KNOWN: &str =
    "board, target, verify, after, on-failure, dry-run, events, expand-data, boot-disk, timeout, retry-unit, health, skip-equal";

impl Options {
    /// Parse a kernel command line. Options not starting with `flasher.` are ignored.
    pub fn parse(cmdline: &str) -> Result<Options, Error> {
        let mut o = Options::default();
        for (param, value) in split(cmdline) {
            let Some(name) = param.strip_prefix("flasher.") else {
                continue;
            };
            let name = name.replace('_', "-");
            let bad = |reason: &str| Error {
                option: format!("flasher.{name}"),
                value: value.clone().unwrap_or_default(),
                reason: reason.to_string(),
            };
            let required = || -> Result<String, Error> {
                match &value {
                    Some(v) if !v.is_empty() => Ok(v.clone()),
                    _ => Err(bad("needs a value")),
                }
            };
            match name.as_str() {
                "board" => o.board = Some(required()?),
                "target" => o.target = Some(required()?),
                "boot-disk" => o.boot_disk = Some(required()?),
                "events" => o.events = Some(PathBuf::from(required()?)),
                "verify" => {
                    o.verify = match required()?.as_str() {
                        "full" => Verify::Full,
                        "none" => Verify::None,
                        _ => return Err(bad("expected full or none")),
                    }
                }
                "after" => {
                    o.after = required()?
                        .parse()
                        .map_err(|_| bad("expected poweroff, reboot, halt or wait"))?
                }
                "on-failure" => {
                    o.on_failure = required()?
                        .parse()
                        .map_err(|_| bad("expected wait, poweroff, reboot or halt"))?
                }
                "dry-run" => o.dry_run = flag(value.as_deref()).ok_or_else(|| bad(BOOL))?,
                "expand-data" => o.expand_data = flag(value.as_deref()).ok_or_else(|| bad(BOOL))?,
                "retry-unit" => o.retry_unit = flag(value.as_deref()).ok_or_else(|| bad(BOOL))?,
                "health" => o.health = flag(value.as_deref()).ok_or_else(|| bad(BOOL))?,
                "skip-equal" => o.skip_equal = flag(value.as_deref()).ok_or_else(|| bad(BOOL))?,
                "timeout" => o.timeout = seconds(&required()?).ok_or_else(|| bad(SECS))?,
                _ => o.warnings.push(format!(
                    "unknown option flasher.{name} ignored; known options: {KNOWN}"
                )),
            }
        }
        Ok(o)
    }
}

const BOOL: &str = "expected 1/0, y/n, yes/no, true/false or on/off (or no value for on)";
const SECS: &str = "expected whole seconds, e.g. 30 or 30s";

/// A boolean option: present without a value means on; values as the kernel's kstrtobool.
fn flag(value: Option<&str>) -> Option<bool> {
    match value.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Some(true),
        Some("1" | "y" | "yes" | "true" | "on") => Some(true),
        Some("0" | "n" | "no" | "false" | "off") => Some(false),
        _ => None,
    }
}

fn seconds(v: &str) -> Option<Duration> {
    let n = v.strip_suffix('s').unwrap_or(v);
    n.parse::<u64>().ok().map(Duration::from_secs)
}

/// Split a command line into `(param, value)` pairs the way the kernel's `next_arg`
/// does. Stops at a bare `--` (what follows belongs to init's argv).
pub fn split(cmdline: &str) -> Vec<(String, Option<String>)> {
    let chars: Vec<char> = cmdline.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let mut in_quote = false;
        let mut quoted = false;
        if chars[i] == '"' {
            i += 1;
            in_quote = true;
            quoted = true;
        }
        let start = i;
        let mut equals = None;
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() && !in_quote {
                break;
            }
            if equals.is_none() && c == '=' {
                equals = Some(i);
            }
            if c == '"' {
                in_quote = !in_quote;
            }
            i += 1;
        }
        let mut end = i;
        // The kernel drops a closing quote when the word (or its value) was opened by one.
        let (param, value) = match equals {
            None => {
                if quoted && end > start && chars[end - 1] == '"' {
                    end -= 1;
                }
                (chars[start..end].iter().collect::<String>(), None)
            }
            Some(eq) => {
                let mut vstart = eq + 1;
                if vstart < end && chars[vstart] == '"' {
                    vstart += 1;
                    if end > vstart && chars[end - 1] == '"' {
                        end -= 1;
                    }
                } else if quoted && end > vstart && chars[end - 1] == '"' {
                    end -= 1;
                }
                let vend = end.max(vstart);
                (
                    chars[start..eq].iter().collect::<String>(),
                    Some(chars[vstart..vend].iter().collect::<String>()),
                )
            }
        };
        if param == "--" && value.is_none() && !quoted {
            break;
        }
        out.push((param, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: &str, v: Option<&str>) -> (String, Option<String>) {
        (p.to_string(), v.map(str::to_string))
    }

    #[test]
    fn splits_like_the_kernel() {
        let got =
            split(r#"  console=ttyS0,115200 quiet foo="a b" "bar=c d" x= -- flasher.board=no"#);
        assert_eq!(
            got,
            vec![
                pair("console", Some("ttyS0,115200")),
                pair("quiet", None),
                pair("foo", Some("a b")),
                pair("bar", Some("c d")),
                pair("x", Some("")),
            ]
        );
    }

    #[test]
    fn what_the_host_renders_the_board_parses() {
        let line = [
            arg(key::BOARD, "a board"),
            arg(key::EVENTS, "/dev/ttyS1"),
            arg(key::ON_FAILURE, After::PowerOff),
            arg(key::TIMEOUT, "45"),
        ]
        .join(" ");
        let o = Options::parse(&line).unwrap();
        assert_eq!(o.board.as_deref(), Some("a board"));
        assert_eq!(o.events, Some(PathBuf::from("/dev/ttyS1")));
        assert_eq!(o.on_failure, After::PowerOff);
        assert_eq!(o.timeout, Duration::from_secs(45));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        let args: Vec<String> = line.split(' ').map(String::from).collect();
        assert!(sets(&args, key::EVENTS));
        assert!(!sets(&args, key::VERIFY));
        assert!(sets(&["flasher.on_failure=wait".into()], key::ON_FAILURE));
    }

    #[test]
    fn defaults_when_no_flasher_options() {
        let o = Options::parse("root=/dev/ram0 console=ttyS0 quiet\n").unwrap();
        assert_eq!(o, Options::default());
        assert_eq!(o.after, After::PowerOff);
        assert_eq!(o.on_failure, After::Wait);
        assert_eq!(o.verify, Verify::Full);
        assert_eq!(o.timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn parses_every_option() {
        let o = Options::parse(
            "quiet flasher.board=beaglebone-black flasher.target=mmcblk1 flasher.verify=none \
             flasher.after=reboot flasher.on-failure=poweroff flasher.dry-run \
             flasher.events=/dev/ttyS1 flasher.expand_data=yes flasher.boot-disk=sda \
             flasher.timeout=45s\n",
        )
        .unwrap();
        assert_eq!(o.board.as_deref(), Some("beaglebone-black"));
        assert_eq!(o.target.as_deref(), Some("mmcblk1"));
        assert_eq!(o.verify, Verify::None);
        assert_eq!(o.after, After::Reboot);
        assert_eq!(o.on_failure, After::PowerOff);
        assert!(o.dry_run);
        assert_eq!(o.events, Some(PathBuf::from("/dev/ttyS1")));
        assert!(o.expand_data);
        assert_eq!(o.boot_disk.as_deref(), Some("sda"));
        assert_eq!(o.timeout, Duration::from_secs(45));
        assert!(o.warnings.is_empty());
    }

    #[test]
    fn flags_take_values() {
        assert!(Options::parse("flasher.dry-run=1").unwrap().dry_run);
        assert!(Options::parse("flasher.retry-unit").unwrap().retry_unit);
        assert!(!Options::parse("flasher.retry_unit=0").unwrap().retry_unit);
        assert!(!Options::default().retry_unit);
        // The eMMC health gate is on unless turned off.
        assert!(Options::default().health);
        assert!(!Options::parse("flasher.health=off").unwrap().health);
        assert!(Options::parse("flasher.health=on").unwrap().health);
        assert!(Options::parse(&arg(key::HEALTH, "off")).is_ok_and(|o| !o.health));
        assert!(Options::parse("flasher.health=sometimes").is_err());
        assert!(Options::parse("flasher.skip-equal").unwrap().skip_equal);
        assert!(Options::parse("flasher.skip_equal=yes").unwrap().skip_equal);
        assert!(!Options::parse("flasher.skip-equal=0").unwrap().skip_equal);
        assert!(!Options::default().skip_equal);
        assert!(!Options::parse("flasher.dry-run=0").unwrap().dry_run);
        assert!(
            !Options::parse("flasher.dry-run flasher.dry-run=off")
                .unwrap()
                .dry_run
        );
        for a in ["poweroff", "reboot", "halt", "wait"] {
            let o = Options::parse(&format!("flasher.after={a}")).unwrap();
            assert_eq!(o.after.to_string(), a);
        }
    }

    #[test]
    fn quoted_values() {
        let o =
            Options::parse(r#"flasher.events="/run/my events.jsonl" "flasher.board=a b""#).unwrap();
        assert_eq!(o.events, Some(PathBuf::from("/run/my events.jsonl")));
        assert_eq!(o.board.as_deref(), Some("a b"));
    }

    #[test]
    fn unknown_options_warn() {
        let o = Options::parse("flasher.colour=blue flasher.board=x").unwrap();
        assert_eq!(o.board.as_deref(), Some("x"));
        assert_eq!(o.warnings.len(), 1);
        assert!(o.warnings[0].contains("flasher.colour"));
    }

    #[test]
    fn bad_values_name_option_and_value() {
        for (line, opt, val) in [
            ("flasher.verify=some", "flasher.verify", "some"),
            ("flasher.after=explode", "flasher.after", "explode"),
            ("flasher.dry-run=maybe", "flasher.dry-run", "maybe"),
            ("flasher.timeout=soon", "flasher.timeout", "soon"),
            ("flasher.board=", "flasher.board", ""),
            ("flasher.target", "flasher.target", ""),
        ] {
            match Options::parse(line) {
                Err(Error { option, value, .. }) => {
                    assert_eq!((option.as_str(), value.as_str()), (opt, val), "{line}")
                }
                other => panic!("{line}: expected Cmdline error, got {other:?}"),
            }
        }
    }
}
