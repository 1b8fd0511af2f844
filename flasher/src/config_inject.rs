//! Configuration injection: after the image is written and verified, copy the
//! operator's configuration from the card's `flash-boot` FAT partition onto the
//! target's boot FAT partition, entirely in user space with the `fatfs` crate (no vfat
//! module, no mount: the init binary is the whole userspace).
//!
//! What is copied (balenaOS boot-partition layout; the names are
//! `flasher_format::card`'s):
//! * `config.json`, with its top-level `installer` section removed: that section
//!   configures the flasher itself and must not follow the OS onto the device;
//! * every file in `system-connections/` (NetworkManager connection profiles), into
//!   `system-connections/` on the target, created if missing; same-named files on the
//!   target are replaced, others are kept;
//! * `hostname`, if present.
//!
//! With a per-unit data row claimed from the card's pool (`flasher_format::pool`),
//! also: the row's values merged into `config.json` as strings (on top of the
//! card's `config.json`, or the image's own when the card has none), the row as
//! `flasher-unit.json`, the row's files into `units/`, and the row's `hostname`
//! (if it has that column) into `hostname` instead of the card's.
//!
//! Every file goes through `flasher_disk::fat` (the one FAT file API): the card
//! is only ever read (its reads open it read-only, so the card stays pristine,
//! docs/architecture.md rule 10), and the target's files are written in one
//! mount, with the dot-entry repair `fatfs` needs when a directory is created.
//! [`PartitionSlice`] is re-exported here for callers.

use flasher_format::io::IoContext;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::{self, Read, Seek, Write};

use flasher_disk::fat;
pub use flasher_disk::PartitionSlice;
use flasher_format::card::{CONFIG_JSON, CONNECTIONS_DIR, HOSTNAME_FILE};
use flasher_format::pool::{UNITS_DIR, UNIT_FILE};
use flasher_format::record::UnitRow;

/// The largest `config.json` we parse. Real ones are a few KiB; the bound keeps a
/// corrupt directory entry from making PID 1 allocate gigabytes. [`CardConfig::read`]
/// holds every card file it returns to the same bound.
pub const MAX_CONFIG_JSON: u64 = 1 << 20;
/// Top-level key removed from `config.json` on the way to the target.
pub const INSTALLER_KEY: &str = "installer";

/// Which FAT a problem is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The card's `flash-boot` partition.
    Card,
    /// The target's boot partition.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Card => "the card's flash-boot partition",
            Side::Target => "the target's boot partition",
        })
    }
}

/// Errors from `config_inject`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{side} is not a FAT filesystem ({source}); check the image's partition layout")]
    NotFat {
        side: Side,
        #[source]
        source: io::Error,
    },
    #[error("config.json on the card is not valid JSON ({source}); rewrite it with `mkflasher configure`")]
    ConfigJson {
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json on the card is a JSON {found}, expected an object; rewrite it with `mkflasher configure`")]
    ConfigNotObject { found: &'static str },
    #[error("{path} on the card is {size} bytes, over the {max}-byte limit")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("card entry {name:?} in {dir} {reason}; a card written by mkflasher never has one: rewrite the card")]
    BadCardName {
        dir: String,
        name: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What the operator is shown: a card whose config cannot be used is an
    /// invalid payload (refused before the first write, by [`CardConfig::read`]);
    /// a failure on the target's side is a post-write failure.
    pub fn class(&self) -> flasher_format::ErrorClass {
        use flasher_format::ErrorClass as C;
        match self {
            Error::BadCardName { .. }
            | Error::TooLarge { .. }
            | Error::ConfigJson { .. }
            | Error::ConfigNotObject { .. }
            | Error::NotFat {
                side: Side::Card, ..
            } => C::PayloadInvalid,
            Error::NotFat { .. } | Error::Io(_) => C::PostWrite,
        }
    }
}

/// What was copied.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConfigReport {
    /// Each file written on the target, with its size in bytes.
    pub files: Vec<(String, u64)>,
    /// `config.json` had an `installer` section, which was dropped.
    pub installer_removed: bool,
    /// Card entries not copied, with the reason (e.g. a sub-directory).
    pub skipped: Vec<String>,
}

impl ConfigReport {
    pub fn bytes_written(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }
}

/// Copy configuration from `card_boot` (the card's `flash-boot` FAT) to `target_boot`
/// (the target's boot FAT). Each argument is a whole FAT filesystem, e.g. a
/// [`PartitionSlice`] of a device; pass `&mut x` to keep using it afterwards. The card
/// is never written.
pub fn copy_config<S: Read + Seek, T: Read + Write + Seek>(
    card_boot: S,
    target_boot: T,
) -> Result<ConfigReport> {
    copy_config_with(&CardConfig::read(card_boot)?, target_boot, None)
}

/// A claimed row of the card's per-unit data pool and its files (already
/// checked against the pool), to write with the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitData {
    pub row: UnitRow,
    /// (name in `units/`, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

/// The card's configuration, read once: the bytes checked against the
/// manifest's pins before the first write are the bytes copied after it
/// (docs/fail-closed.md). Every entry of the card's root and of
/// `system-connections/` has a plain, unique name ([`Error::BadCardName`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CardConfig {
    pub config_json: Option<Vec<u8>>,
    pub hostname: Option<Vec<u8>>,
    /// `system-connections/`: `None` without the directory, else its files
    /// as (name, bytes), in directory order.
    pub connections: Option<Vec<(String, Vec<u8>)>>,
    /// Entries not copied (sub-directories), with the reason.
    pub skipped: Vec<String>,
}

/// The most bytes of card configuration read in all (each file is also held
/// to [`MAX_CONFIG_JSON`]): a few KiB in practice, a bound on PID 1's memory.
pub const MAX_CARD_CONFIG: u64 = 4 << 20;

impl CardConfig {
    /// Read the card's config from its `flash-boot` FAT, refusing odd or
    /// duplicate names and files over the bounds before anything is copied.
    pub fn read<S: Read + Seek>(card_boot: S) -> Result<CardConfig> {
        let mut card = card_boot;
        check_fat(&mut card, Side::Card)?;
        let is_config =
            |n: &str| n.eq_ignore_ascii_case(CONFIG_JSON) || n.eq_ignore_ascii_case(HOSTNAME_FILE);
        let root = read_dir(&mut card, "", &is_config)?.unwrap_or_default();
        check_names("the card's root", &root)?;
        let mut cfg = CardConfig::default();
        let mut total = 0u64;
        for e in root {
            if e.name.eq_ignore_ascii_case(CONNECTIONS_DIR) && e.is_dir {
                cfg.connections = Some(Vec::new());
            }
            let Some(data) = e.data else { continue };
            total += data.len() as u64;
            if e.name.eq_ignore_ascii_case(CONFIG_JSON) {
                // Refused now, before the first write, rather than when copied.
                parse_object(&data)?;
                cfg.config_json = Some(data);
            } else {
                cfg.hostname = Some(data);
            }
        }
        if cfg.connections.is_some() {
            let dir = format!("{CONNECTIONS_DIR}/");
            let entries = read_dir(&mut card, CONNECTIONS_DIR, &|_| true)?.unwrap_or_default();
            check_names(&dir, &entries)?;
            let mut files = Vec::new();
            for e in entries {
                match e.data {
                    Some(data) => {
                        total += data.len() as u64;
                        if total > MAX_CARD_CONFIG {
                            return Err(Error::TooLarge {
                                path: dir,
                                size: total,
                                max: MAX_CARD_CONFIG,
                            });
                        }
                        files.push((e.name, data));
                    }
                    None => cfg
                        .skipped
                        .push(format!("{dir}{}: not a regular file", e.name)),
                }
            }
            cfg.connections = Some(files);
        }
        Ok(cfg)
    }

    /// No config at all: nothing to copy (and no boot FAT needed for it). An
    /// empty `system-connections/` still counts: it is created on the target.
    pub fn is_empty(&self) -> bool {
        self.config_json.is_none() && self.hostname.is_none() && self.connections.is_none()
    }

    /// Every file, as (path on the card, bytes): what the manifest must pin
    /// when keys are trusted.
    pub fn files(&self) -> Vec<(String, &[u8])> {
        let mut out = Vec::new();
        if let Some(d) = &self.config_json {
            out.push((CONFIG_JSON.to_string(), d.as_slice()));
        }
        if let Some(d) = &self.hostname {
            out.push((HOSTNAME_FILE.to_string(), d.as_slice()));
        }
        for (name, d) in self.connections.iter().flatten() {
            out.push((format!("{CONNECTIONS_DIR}/{name}"), d.as_slice()));
        }
        out
    }
}

/// Refuse names a card written by mkflasher never has: a path separator,
/// `..`, a control character, or a name equal (ignoring ASCII case) to
/// another entry's long or short name, which would make "the file named X"
/// mean two files.
fn check_names(dir: &str, entries: &[fat::DirFile]) -> Result<()> {
    let bad = |name: &str, reason| Error::BadCardName {
        dir: dir.to_string(),
        name: name.to_string(),
        reason,
    };
    // Every name an entry answers to, lower-cased; sorted below so that equal
    // names sit side by side (a sort already in /init, not a hash set's code).
    let mut keys: Vec<String> = Vec::with_capacity(entries.len() * 2);
    for e in entries {
        if e.name.contains(['/', '\\']) {
            return Err(bad(&e.name, "contains a path separator"));
        }
        if e.name.contains("..") {
            return Err(bad(&e.name, "contains `..`"));
        }
        if e.name.chars().any(char::is_control) {
            return Err(bad(&e.name, "contains a control character"));
        }
        let long = e.name.to_ascii_lowercase();
        let short = e.short_name.to_ascii_lowercase();
        if short != long {
            keys.push(short);
        }
        keys.push(long);
    }
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(bad(
            &w[0],
            "has the same name as another entry (long and short names, any case)",
        )),
        None => Ok(()),
    }
}

/// [`copy_config`] from config already read, and the unit's row when `unit`
/// is given (module docs).
pub fn copy_config_with<T: Read + Write + Seek>(
    card: &CardConfig,
    target_boot: T,
    unit: Option<&UnitData>,
) -> Result<ConfigReport> {
    let mut target = target_boot;
    check_fat(&mut target, Side::Target)?;
    let mut report = ConfigReport {
        skipped: card.skipped.clone(),
        ..ConfigReport::default()
    };
    // What goes onto the target, in this order: (path, bytes).
    let mut out: Vec<(String, Cow<[u8]>)> = Vec::new();

    // Without config on the card, a row merges into the image's own.
    let base = match (&card.config_json, unit) {
        (Some(raw), _) => Some((Cow::Borrowed(raw.as_slice()), Side::Card)),
        (None, Some(_)) => read(&mut target, Side::Target, CONFIG_JSON, MAX_CONFIG_JSON)?
            .map(|raw| (Cow::Owned(raw), Side::Target)),
        (None, None) => None,
    };
    if base.is_some() || unit.is_some() {
        // Members are kept as written (raw JSON text), so nothing in them is
        // reformatted; only the installer key goes, and the row's keys are set.
        let mut obj: std::collections::BTreeMap<String, Box<RawValue>> = match base {
            Some((raw, Side::Card)) => parse_object(&raw)?,
            // The image's own config.json: replaced when it is not an object.
            Some((raw, Side::Target)) => parse_object(&raw).unwrap_or_default(),
            None => Default::default(),
        };
        report.installer_removed = obj.remove(INSTALLER_KEY).is_some();
        for (k, v) in unit.iter().flat_map(|u| &u.row.values) {
            // Through the compact string writer /init already has, not
            // `to_raw_value`'s own serializer (board binary size).
            let v = serde_json::to_string(v)
                .and_then(RawValue::from_string)
                .map_err(|source| Error::ConfigJson { source })?;
            obj.insert(k.clone(), v);
        }
        let json = serde_json::to_vec(&obj).map_err(|source| Error::ConfigJson { source })?;
        out.push((CONFIG_JSON.into(), json.into()));
    }

    if let Some(files) = &card.connections {
        // The directory goes onto the target even when it holds no file.
        out.push((format!("{CONNECTIONS_DIR}/"), Cow::Borrowed(&[][..])));
        for (name, data) in files {
            out.push((format!("{CONNECTIONS_DIR}/{name}"), data.as_slice().into()));
        }
    }

    if let Some(data) = &card.hostname {
        // One identity: the row's host name wins over the card's.
        let data = match unit.and_then(|u| u.row.values.get("hostname")) {
            Some(host) => Cow::Owned(format!("{host}\n").into_bytes()),
            None => Cow::Borrowed(data.as_slice()),
        };
        out.push((HOSTNAME_FILE.into(), data));
    }

    if let Some(u) = unit {
        let mut row = serde_json::to_vec(&u.row).map_err(|source| Error::ConfigJson { source })?;
        row.push(b'\n');
        out.push((UNIT_FILE.into(), row.into()));
        for (name, data) in &u.files {
            out.push((format!("{UNITS_DIR}/{name}"), data.as_slice().into()));
        }
    }

    if !out.is_empty() {
        let files = out
            .iter()
            .map(|(path, data)| (path.as_str(), data.as_ref()));
        fat::write_files(&mut target, files, fatfs::FsOptions::new()).map_err(target_write)?;
    }
    report.files = out
        .into_iter()
        .filter(|(path, _)| !path.ends_with('/'))
        .map(|(path, data)| (path, data.len() as u64))
        .collect();
    target
        .flush()
        .with_context(|| format!("flush {}", Side::Target))?;
    Ok(report)
}

/// The card's `config.json` as an object of raw members.
fn parse_object(raw: &[u8]) -> Result<std::collections::BTreeMap<String, Box<RawValue>>> {
    serde_json::from_slice(raw).map_err(|source| {
        match serde_json::from_slice::<Box<RawValue>>(raw) {
            Ok(v) => Error::ConfigNotObject {
                found: json_kind(v.get()),
            },
            Err(_) => Error::ConfigJson { source },
        }
    })
}

/// Refuse a side that holds no FAT filesystem before anything is read or
/// written (listing the root mounts the volume).
fn check_fat<D: Read + Seek>(vol: &mut D, side: Side) -> Result<()> {
    fat::list_dir(vol, "")
        .map(drop)
        .map_err(|source| Error::NotFat { side, source })
}

/// `path` from one side's FAT, `None` if it is not there; a file over `max`
/// bytes is [`Error::TooLarge`].
fn read<D: Read + Seek>(vol: &mut D, side: Side, path: &str, max: u64) -> Result<Option<Vec<u8>>> {
    fat::read_file(vol, path, max).map_err(|source| match disk_error(&source) {
        Some(flasher_disk::Error::FileTooLarge { path, size, max }) => Error::TooLarge {
            path: path.clone(),
            size: *size,
            max: *max,
        },
        _ => Error::Io(flasher_format::io::IoError::new(
            format!("read {path} on {side}"),
            source,
        )),
    })
}

/// The entries of `dir` on the card, with the bytes of the files `want`
/// accepts (each at most [`MAX_CONFIG_JSON`]).
fn read_dir<D: Read + Seek>(
    card: &mut D,
    dir: &str,
    want: &dyn Fn(&str) -> bool,
) -> Result<Option<Vec<fat::DirFile>>> {
    fat::read_dir(card, dir, MAX_CONFIG_JSON, want).map_err(|source| match disk_error(&source) {
        Some(flasher_disk::Error::FileTooLarge { path, size, max }) => Error::TooLarge {
            path: path.clone(),
            size: *size,
            max: *max,
        },
        _ => Error::Io(flasher_format::io::IoError::new(
            format!(
                "read {} of {}",
                if dir.is_empty() { "the root" } else { dir },
                Side::Card
            ),
            source,
        )),
    })
}

/// A failed write on the target, naming the file `flasher_disk` names.
fn target_write(source: io::Error) -> Error {
    let file = match disk_error(&source) {
        Some(
            flasher_disk::Error::FatFile { path, .. } | flasher_disk::Error::IsDirectory { path },
        ) => path.clone(),
        _ => "config".to_string(),
    };
    Error::Io(flasher_format::io::IoError::new(
        format!("write {file} to {}", Side::Target),
        source,
    ))
}

/// The typed `flasher_disk` error inside an I/O error, if there is one.
fn disk_error(e: &io::Error) -> Option<&flasher_disk::Error> {
    e.get_ref().and_then(|i| i.downcast_ref())
}

/// What a valid JSON text is, from its first character.
fn json_kind(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'n') => "null",
        Some(b't' | b'f') => "boolean",
        Some(b'"') => "string",
        Some(b'[') => "array",
        Some(b'{') => "object",
        _ => "number",
    }
}

/// Card tampering for tests, here and in the init's end-to-end tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    /// Replace the first five characters of a long name in a FAT image
    /// (they sit together in the name's first long-name slot, UTF-16LE), the
    /// way a hand-edited card could; the slot's checksum covers the short
    /// name only, so the entry stays valid.
    pub fn rename_lfn(img: &mut [u8], from: &str, to: &str) {
        assert_eq!(from.chars().count(), 5);
        assert_eq!(to.chars().count(), 5);
        let utf16 = |s: &str| {
            s.encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect::<Vec<u8>>()
        };
        let (from, to) = (utf16(from), utf16(to));
        let at = img
            .windows(from.len())
            .position(|w| w == from)
            .expect("long name in the image");
        img[at..at + to.len()].copy_from_slice(&to);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::rename_lfn;
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    const MIB: usize = 1 << 20;

    fn fat(size: usize) -> Cursor<Vec<u8>> {
        let mut c = Cursor::new(vec![0u8; size]);
        fatfs::format_volume(&mut c, fatfs::FormatVolumeOptions::new()).unwrap();
        c.set_position(0);
        c
    }

    /// Put files (path, contents) into a FAT image; directories are created as needed.
    fn put(dev: &mut Cursor<Vec<u8>>, files: &[(&str, &[u8])]) {
        dev.set_position(0);
        let fs = fatfs::FileSystem::new(&mut *dev, fatfs::FsOptions::new()).unwrap();
        for (path, data) in files {
            let root = fs.root_dir();
            if let Some((d, _)) = path.rsplit_once('/') {
                let mut at = String::new();
                for part in d.split('/') {
                    at = if at.is_empty() {
                        part.to_string()
                    } else {
                        format!("{at}/{part}")
                    };
                    if root.open_dir(&at).is_err() {
                        root.create_dir(&at).unwrap();
                    }
                }
            }
            let mut f = root.create_file(path).unwrap();
            f.truncate().unwrap();
            f.write_all(data).unwrap();
        }
        fs.unmount().unwrap();
        dev.set_position(0);
    }

    fn get<D: Read + Write + Seek>(dev: D, path: &str) -> Option<Vec<u8>> {
        let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new()).unwrap();
        let mut f = fs.root_dir().open_file(path).ok()?;
        let mut v = vec![];
        f.read_to_end(&mut v).unwrap();
        Some(v)
    }

    fn list<D: Read + Write + Seek>(dev: D, dir: &str) -> Vec<String> {
        let fs = fatfs::FileSystem::new(dev, fatfs::FsOptions::new()).unwrap();
        let mut v: Vec<String> = fs
            .root_dir()
            .open_dir(dir)
            .unwrap()
            .iter()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort_unstable();
        v
    }

    const CONFIG: &str = r#"{"applicationId":1234,"deviceType":"beaglebone-black",
        "installer":{"secureboot":true,"migrate":{"force":false}},
        "persistentLogging":true,"hostname":"unit"}"#;
    const WIFI: &[u8] = b"[connection]\nid=My Home WiFi\ntype=wifi\n\n[wifi]\nssid=factory\n";

    fn card() -> Cursor<Vec<u8>> {
        let mut c = fat(8 * MIB);
        put(
            &mut c,
            &[
                ("config.json", CONFIG.as_bytes()),
                ("system-connections/My Home WiFi.nmconnection", WIFI),
                ("system-connections/eth0", b"[connection]\ntype=ethernet\n"),
                ("hostname", b"line-7-unit\n"),
                ("bzImage", &[0x4Du8; 3000]),
            ],
        );
        c
    }

    #[test]
    fn copies_config_without_installer_and_leaves_card_untouched() {
        let mut card = card();
        let card_before = card.get_ref().clone();
        let mut target = fat(16 * MIB);
        // The OS image ships its own, longer config.json and an unrelated connection.
        let long = format!("{{\"old\":\"{}\"}}", "z".repeat(5000));
        put(
            &mut target,
            &[
                ("config.json", long.as_bytes()),
                ("system-connections/keep-me", b"x"),
            ],
        );

        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(card.get_ref(), &card_before, "card FAT must not change");
        assert!(r.installer_removed);
        let mut names: Vec<&str> = r.files.iter().map(|(p, _)| p.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "config.json",
                "hostname",
                "system-connections/My Home WiFi.nmconnection",
                "system-connections/eth0"
            ]
        );

        target.set_position(0);
        let cfg: serde_json::Value =
            serde_json::from_slice(&get(&mut target, "config.json").unwrap()).unwrap();
        let mut want: serde_json::Value = serde_json::from_str(CONFIG).unwrap();
        want.as_object_mut().unwrap().remove("installer");
        assert_eq!(cfg, want);
        assert!(cfg.get("installer").is_none());
        target.set_position(0);
        assert_eq!(
            get(&mut target, "system-connections/My Home WiFi.nmconnection").unwrap(),
            WIFI
        );
        target.set_position(0);
        assert_eq!(get(&mut target, "hostname").unwrap(), b"line-7-unit\n");
        target.set_position(0);
        assert_eq!(
            list(&mut target, "system-connections"),
            ["My Home WiFi.nmconnection", "eth0", "keep-me"]
        );
        target.set_position(0);
        assert!(
            get(&mut target, "bzImage").is_none(),
            "only config is copied"
        );
        assert_eq!(r.bytes_written(), r.files.iter().map(|f| f.1).sum::<u64>());
    }

    #[test]
    fn card_without_config_copies_nothing_and_changes_nothing() {
        let mut card = fat(4 * MIB);
        put(&mut card, &[("bzImage", b"kernel")]);
        let mut target = fat(4 * MIB);
        let before = target.get_ref().clone();
        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(r, ConfigReport::default());
        assert_eq!(target.get_ref(), &before);
    }

    /// A claimed row on a card without config.json: merged into the image's
    /// own config.json (its other keys kept), written whole as
    /// flasher-unit.json, its files into units/.
    #[test]
    fn unit_row_merges_into_the_images_config_and_brings_its_files() {
        let mut card = fat(4 * MIB);
        put(&mut card, &[("bzImage", b"kernel")]);
        let mut target = fat(8 * MIB);
        put(
            &mut target,
            &[(
                "config.json",
                br#"{"deviceType":"fincm3","hostname":"old","n":1}"#,
            )],
        );
        let row = UnitRow {
            index: 7,
            pool_digest: "ab".repeat(32),
            values: [("hostname", "bay-ü"), ("note", "a, \"b\"")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let unit = UnitData {
            row: row.clone(),
            files: vec![("dev.key".into(), b"key".to_vec())],
        };
        let r = copy_config_with(
            &CardConfig::read(&mut card).unwrap(),
            &mut target,
            Some(&unit),
        )
        .unwrap();
        let names: Vec<&str> = r.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["config.json", UNIT_FILE, "units/dev.key"]);
        target.set_position(0);
        let cfg: serde_json::Value =
            serde_json::from_slice(&get(&mut target, "config.json").unwrap()).unwrap();
        assert_eq!(
            cfg,
            serde_json::json!({"deviceType":"fincm3","hostname":"bay-ü","n":1,"note":"a, \"b\""})
        );
        target.set_position(0);
        let back: UnitRow = serde_json::from_slice(&get(&mut target, UNIT_FILE).unwrap()).unwrap();
        assert_eq!(back, row);
        target.set_position(0);
        assert_eq!(get(&mut target, "units/dev.key").unwrap(), b"key");
        target.set_position(0);
        assert!(get(&mut target, "hostname").is_none(), "the card has none");
    }

    #[test]
    fn config_without_installer_is_copied_as_is() {
        let mut card = fat(4 * MIB);
        put(
            &mut card,
            &[("config.json", br#"{"a":[1,2],"b":{"installer":1}}"#)],
        );
        let mut target = fat(4 * MIB);
        let r = copy_config(&mut card, &mut target).unwrap();
        assert!(!r.installer_removed);
        target.set_position(0);
        let v: serde_json::Value =
            serde_json::from_slice(&get(&mut target, "config.json").unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,2],"b":{"installer":1}}));
    }

    #[test]
    fn subdirectories_in_connections_are_skipped_and_reported() {
        let mut card = fat(4 * MIB);
        put(&mut card, &[("system-connections/wired", b"w")]);
        card.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut card, fatfs::FsOptions::new()).unwrap();
            fs.root_dir()
                .create_dir("system-connections/nested")
                .unwrap();
            fs.unmount().unwrap();
        }
        let mut target = fat(4 * MIB);
        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(r.files, vec![("system-connections/wired".to_string(), 1)]);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].contains("nested"));
    }

    /// An empty `system-connections/` on the card (which makes the init
    /// require a boot FAT) makes the directory on the target, fsck-clean dot
    /// entries included, and reports no file.
    #[test]
    fn an_empty_connections_directory_is_made_on_the_target() {
        let mut card = fat(4 * MIB);
        card.set_position(0);
        {
            let fs = fatfs::FileSystem::new(&mut card, fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("system-connections").unwrap();
            fs.unmount().unwrap();
        }
        let mut target = fat(4 * MIB);
        let r = copy_config(&mut card, &mut target).unwrap();
        assert_eq!(r, ConfigReport::default());
        target.set_position(0);
        assert!(list(&mut target, "system-connections").is_empty());
        assert_eq!(fat::repair_dot_entries(&mut target).unwrap(), 0);
    }

    #[test]
    fn invalid_config_json_is_refused() {
        let mut target = fat(4 * MIB);
        let mut card = fat(4 * MIB);
        put(&mut card, &[("config.json", b"{not json")]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(matches!(e, Error::ConfigJson { .. }), "{e}");

        let mut card = fat(4 * MIB);
        put(&mut card, &[("config.json", b"[1,2]")]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(e, Error::ConfigNotObject { found: "array" }),
            "{e}"
        );

        let mut card = fat(8 * MIB);
        let big = vec![b' '; MAX_CONFIG_JSON as usize + 10];
        put(&mut card, &[("config.json", &big)]);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(e, Error::TooLarge { size, .. } if size == MAX_CONFIG_JSON + 1),
            "{e}"
        );
    }

    #[test]
    fn not_a_fat_names_the_side() {
        let mut card = card();
        let e = copy_config(Cursor::new(vec![0u8; MIB]), fat(MIB)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotFat {
                    side: Side::Card,
                    ..
                }
            ),
            "{e}"
        );
        let e = copy_config(&mut card, Cursor::new(vec![0u8; MIB])).unwrap_err();
        assert!(
            matches!(
                e,
                Error::NotFat {
                    side: Side::Target,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// Issue 22, finding 2: a second `system-connections/` entry whose long
    /// name equals the pinned file's was checked under the genuine file's
    /// bytes and then copied over it. Such cards, and names that lead
    /// elsewhere, are refused when the card is read, before anything is copied.
    #[test]
    fn hostile_card_names_are_refused_when_the_card_is_read() {
        let genuine = b"[connection]\nid=factory\n".as_slice();
        let attacker = b"[connection]\nid=attacker\n".as_slice();
        let cases: [(&str, &str, &str); 5] = [
            ("wifx.", "wifi.", "same name"),
            ("wifx.", "w/fx.", "path separator"),
            ("wifx.", "w\\fx.", "path separator"),
            ("wifx.", "..fx.", "`..`"),
            ("wifx.", "wi\u{1}x.", "control character"),
        ];
        for (from, to, reason) in cases {
            let mut card = fat(8 * MIB);
            put(
                &mut card,
                &[
                    ("system-connections/wifi.nmconnection", genuine),
                    ("system-connections/wifx.nmconnection", attacker),
                ],
            );
            rename_lfn(card.get_mut(), from, to);
            let e = CardConfig::read(&mut card).unwrap_err();
            match &e {
                Error::BadCardName { dir, reason: r, .. } => {
                    assert_eq!(dir, "system-connections/");
                    assert!(r.contains(reason), "{to}: {e}");
                }
                e => panic!("{to}: expected BadCardName, got {e}"),
            }
            assert_eq!(e.class(), flasher_format::ErrorClass::PayloadInvalid);
        }
        // A long name equal to another entry's short name (WIFI~1.NMC), and
        // a duplicate in the card's root.
        let mut card = fat(8 * MIB);
        put(
            &mut card,
            &[
                ("system-connections/wifi.nmconnection", genuine),
                ("system-connections/abcd~1.nmc", attacker),
            ],
        );
        rename_lfn(card.get_mut(), "abcd~", "wifi~");
        assert!(matches!(
            CardConfig::read(&mut card),
            Err(Error::BadCardName { .. })
        ));
        let mut card = fat(8 * MIB);
        put(&mut card, &[("hostname", b"a\n"), ("hostnamx", b"b\n")]);
        // The second entry's 8.3 name made HOSTNAME too (its long-name slot's
        // checksum no longer matches, so readers see the short name alone).
        let img = card.get_mut();
        let at = img
            .windows(11)
            .position(|w| w == b"HOSTNAMX   ")
            .expect("short entry");
        img[at..at + 11].copy_from_slice(b"HOSTNAME   ");
        let e = CardConfig::read(&mut card).unwrap_err();
        assert!(
            matches!(&e, Error::BadCardName { dir, .. } if dir == "the card's root"),
            "{e}"
        );
    }

    /// What is checked is what is copied: the bytes `CardConfig` holds are the
    /// bytes written, whatever happens to the card in between.
    #[test]
    fn the_config_read_once_is_what_is_copied() {
        let mut card = fat(8 * MIB);
        put(
            &mut card,
            &[
                ("hostname", b"unit-1\n"),
                ("system-connections/wifi.nmconnection", b"genuine"),
            ],
        );
        let cfg = CardConfig::read(&mut card).unwrap();
        assert_eq!(
            cfg.files(),
            vec![
                ("hostname".to_string(), &b"unit-1\n"[..]),
                (
                    "system-connections/wifi.nmconnection".to_string(),
                    &b"genuine"[..]
                ),
            ]
        );
        // The card changes after the check (a second reader, a swapped card).
        put(
            &mut card,
            &[("system-connections/wifi.nmconnection", b"swapped")],
        );
        let mut target = fat(8 * MIB);
        copy_config_with(&cfg, &mut target, None).unwrap();
        assert_eq!(
            fat::read_file(&mut target, "system-connections/wifi.nmconnection", 1 << 20).unwrap(),
            Some(b"genuine".to_vec())
        );
    }

    /// Card files are bounded one by one and in all, before anything is held
    /// for long (issue 22, finding 4).
    #[test]
    fn card_config_is_bounded() {
        let mut card = fat(8 * MIB);
        put(&mut card, &[("config.json", &vec![b' '; MIB + 1])]);
        assert!(matches!(
            CardConfig::read(&mut card),
            Err(Error::TooLarge { max, .. }) if max == MAX_CONFIG_JSON
        ));
        let mut card = fat(8 * MIB);
        put(&mut card, &[("config.json", b"[1]")]);
        let e = CardConfig::read(&mut card).unwrap_err();
        assert!(matches!(e, Error::ConfigNotObject { .. }), "{e}");
        assert_eq!(e.class(), flasher_format::ErrorClass::PayloadInvalid);
    }

    #[test]
    fn full_target_is_an_io_error() {
        let mut card = fat(8 * MIB);
        // Each card file is within its 1 MiB bound; together they overfill
        // the 1 MiB target.
        let big = vec![b'h'; 700 << 10];
        put(
            &mut card,
            &[
                ("system-connections/a.nmconnection", &big),
                ("system-connections/b.nmconnection", &big),
            ],
        );
        let mut target = fat(MIB);
        let e = copy_config(&mut card, &mut target).unwrap_err();
        assert!(
            matches!(&e, Error::Io(flasher_format::io::IoError { context, .. }) if context.contains(".nmconnection")),
            "{e}"
        );
    }

    #[test]
    fn fsck_vfat_accepts_the_target_after_the_copy() {
        for fat_bits in ["16", "32"] {
            let dir = tempfile::tempdir().unwrap();
            let part = dir.path().join("part.img");
            let size = 64 * MIB as u64;
            std::fs::File::create(&part).unwrap().set_len(size).unwrap();
            let out = Command::new("mkfs.vfat")
                .args(["-F", fat_bits, "-n", "RESIN-BOOT"])
                .arg(&part)
                .output()
                .expect(
                    "mkfs.vfat not found: run scripts/setup-host (apt-get install -y dosfstools)",
                );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Embed it at 1 MiB in a "disk", as a partition would be.
            let fs_bytes = std::fs::read(&part).unwrap();
            let mut disk = vec![0x5Au8; MIB];
            disk.extend_from_slice(&fs_bytes);
            disk.extend_from_slice(&[0x5A; 4096]);
            let mut disk = Cursor::new(disk);

            let mut card = card();
            let r =
                copy_config(&mut card, PartitionSlice::new(&mut disk, MIB as u64, size)).unwrap();
            assert_eq!(r.files.len(), 4);
            let d = disk.get_ref();
            assert!(d[..MIB].iter().all(|&b| b == 0x5A));
            assert!(d[MIB + size as usize..].iter().all(|&b| b == 0x5A));

            std::fs::write(&part, &d[MIB..MIB + size as usize]).unwrap();
            let out = Command::new("fsck.vfat")
                .arg("-n")
                .arg(&part)
                .output()
                .expect(
                    "fsck.vfat not found: run scripts/setup-host (apt-get install -y dosfstools)",
                );
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "FAT{fat_bits}: {text}");
            let mut slice = PartitionSlice::new(&mut disk, MIB as u64, size);
            assert_eq!(get(&mut slice, "hostname").unwrap(), b"line-7-unit\n");
        }
    }
}
