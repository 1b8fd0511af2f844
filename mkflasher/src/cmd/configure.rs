//! `mkflasher configure`: settings the init copies onto the flashed board,
//! written into the card's `flash-boot` FAT in place (no mount, no mtools):
//!
//! - `config.json`: a JSON object; `hostname` and `persistentLogging` are set,
//!   other keys already there are kept;
//! - `hostname`: the host name on one line (the init copies it as is);
//! - `system-connections/wifi`: a NetworkManager keyfile for the Wi-Fi network.

use flasher_format::io::IoContext;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

use sha2::Digest;

use flasher_format::card::{CONFIG_JSON, CONNECTIONS_DIR, HOSTNAME_FILE};

use crate::card;
use crate::fat;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The card image made by `mkflasher build`.
    pub card: PathBuf,
    #[arg(long)]
    pub hostname: Option<String>,
    /// Wi-Fi network name (SSID).
    #[arg(long, requires = "wifi_psk")]
    pub wifi_ssid: Option<String>,
    /// WPA2 passphrase (8 to 63 characters).
    #[arg(long, requires = "wifi_ssid")]
    pub wifi_psk: Option<String>,
    #[arg(long, value_enum)]
    pub persistent_logging: Option<OnOff>,
}

/// What to write. `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub hostname: Option<String>,
    pub wifi: Option<(String, String)>,
    pub persistent_logging: Option<bool>,
}

/// The NetworkManager profile `configure` writes, in the card's connections
/// directory: `system-connections/wifi`.
pub fn wifi_connection() -> String {
    format!("{CONNECTIONS_DIR}/wifi")
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("hostname {0:?} is not valid: use 1 to 63 letters, digits and '-', not starting or ending with '-'")]
    BadHostname(String),
    #[error("Wi-Fi SSID {0:?} is not valid: it must be 1 to 32 bytes without control characters (newline, tab, ...)")]
    BadSsid(String),
    #[error("Wi-Fi passphrase is {0} characters; WPA2 needs 8 to 63 printable ASCII characters")]
    BadPsk(usize),
    #[error("config.json on the card is not a JSON object ({0}); fix or delete it")]
    BadConfig(String),
    #[error(
        "nothing to configure: give --hostname, --wifi-ssid/--wifi-psk or --persistent-logging"
    )]
    Nothing,
}

pub fn validate(s: &Settings) -> Result<(), Error> {
    if s == &Settings::default() {
        return Err(Error::Nothing);
    }
    if let Some(h) = &s.hostname {
        let ok = !h.is_empty()
            && h.len() <= 63
            && !h.starts_with('-')
            && !h.ends_with('-')
            && h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(Error::BadHostname(h.clone()));
        }
    }
    if let Some((ssid, psk)) = &s.wifi {
        // A control character (a newline above all) would end the `ssid=` line in
        // the keyfile and let the rest add keys or sections; no real SSID typed on
        // a command line needs one.
        if ssid.is_empty() || ssid.len() > 32 || ssid.chars().any(char::is_control) {
            return Err(Error::BadSsid(ssid.clone()));
        }
        let n = psk.chars().count();
        if !(8..=63).contains(&n) || !psk.chars().all(|c| (' '..='~').contains(&c)) {
            return Err(Error::BadPsk(n));
        }
    }
    Ok(())
}

/// The `ssid=` value. Plain text when NetworkManager reads it back unchanged;
/// otherwise the byte-list form NetworkManager also accepts (`120;59;...;`), for
/// SSIDs with `;` (NM would read `1;2;` as a byte list), `\` (a GLib keyfile
/// escape), or spaces at either end (GLib drops leading whitespace). Callers
/// have already refused control characters, so a value is always one line.
pub fn ssid_value(ssid: &str) -> String {
    let plain = !ssid.contains([';', '\\'])
        && !ssid.starts_with(' ')
        && !ssid.ends_with(' ')
        && !ssid.chars().any(char::is_control);
    if plain {
        ssid.to_string()
    } else {
        ssid.bytes().map(|b| format!("{b};")).collect()
    }
}

/// The `psk=` value: GLib keyfile escapes for `\` and a leading space, so the
/// passphrase reads back exactly. (It is printable ASCII, checked by
/// [`validate`], so it cannot hold a newline; `[`, `]`, `=`, `;` and `#` are
/// plain characters inside a value.)
pub fn psk_value(psk: &str) -> String {
    let mut out = String::with_capacity(psk.len());
    for (i, c) in psk.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            ' ' if i == 0 => out.push_str("\\s"),
            c => out.push(c),
        }
    }
    out
}

/// The NetworkManager keyfile for a WPA2-PSK network. The uuid is derived from
/// the SSID so that configuring twice gives the same bytes. The SSID and PSK are
/// encoded by [`ssid_value`] and [`psk_value`]: neither can add a line.
pub fn nm_keyfile(ssid: &str, psk: &str) -> String {
    let (ssid_v, psk_v) = (ssid_value(ssid), psk_value(psk));
    let d = sha2::Sha256::digest(format!("flasher-wifi:{ssid}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    let uuid = uuid::Builder::from_random_bytes(b).into_uuid();
    format!(
        "[connection]\nid=wifi\nuuid={uuid}\ntype=wifi\nautoconnect=true\n\n\
         [wifi]\nmode=infrastructure\nssid={ssid_v}\n\n\
         [wifi-security]\nkey-mgmt=wpa-psk\npsk={psk_v}\n\n\
         [ipv4]\nmethod=auto\n\n[ipv6]\naddr-gen-mode=stable-privacy\nmethod=auto\n"
    )
}

/// Apply settings to a flash-boot FAT volume (any Read+Write+Seek).
pub fn apply<D: Read + Write + Seek>(mut vol: D, s: &Settings) -> crate::Result<()> {
    validate(s)?;
    let mut config = match fat::read_file(&mut vol, CONFIG_JSON) {
        Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(other) => return Err(Error::BadConfig(format!("found {other}")).into()),
            Err(e) => return Err(Error::BadConfig(e.to_string()).into()),
        },
        Err(fat::Error::NotFound { .. }) => serde_json::Map::new(),
        Err(e) => return Err(e.into()),
    };
    if let Some(h) = &s.hostname {
        config.insert("hostname".into(), h.clone().into());
    }
    if let Some(p) = s.persistent_logging {
        config.insert("persistentLogging".into(), p.into());
    }
    if s.hostname.is_some() || s.persistent_logging.is_some() {
        let mut text = serde_json::to_string_pretty(&serde_json::Value::Object(config))
            .map_err(|e| Error::BadConfig(e.to_string()))?;
        text.push('\n');
        fat::write_file(&mut vol, CONFIG_JSON, text.as_bytes())?;
    }
    if let Some(h) = &s.hostname {
        fat::write_file(&mut vol, HOSTNAME_FILE, format!("{h}\n").as_bytes())?;
    }
    if let Some((ssid, psk)) = &s.wifi {
        fat::write_file(
            &mut vol,
            &wifi_connection(),
            nm_keyfile(ssid, psk).as_bytes(),
        )?;
    }
    Ok(())
}

pub fn settings_from_args(args: &Args) -> Settings {
    Settings {
        hostname: args.hostname.clone(),
        wifi: args.wifi_ssid.clone().zip(args.wifi_psk.clone()),
        persistent_logging: args.persistent_logging.map(|o| o == OnOff::On),
    }
}

pub fn run(args: Args) -> crate::Result<()> {
    let s = settings_from_args(&args);
    validate(&s)?;
    let vol = card::open_boot(&args.card)?;
    apply(vol, &s)?;
    for w in unpinned_on_signed_card(&args.card)? {
        tracing::warn!("{w}");
    }
    println!(
        "configured {} (flash-boot: {CONFIG_JSON}{})",
        args.card.display(),
        if s.wifi.is_some() {
            format!(", {}", wifi_connection())
        } else {
            String::new()
        }
    );
    Ok(())
}

/// A board that trusts signing keys writes only card files the signed
/// manifest pins (docs/SECURITY.md), so config written after signing would be
/// refused there: say so, per file, when the card's bundle is signed.
pub fn unpinned_on_signed_card(card_path: &std::path::Path) -> crate::Result<Vec<String>> {
    use flasher_format::{bundle, card as layout};
    let f = std::fs::File::open(card_path)
        .with_context(|| format!("opening {}", card_path.display()))?;
    let (mut payload, _) =
        crate::disk::open_partition(f, layout::PAYLOAD_NAME, Some(layout::PAYLOAD_NUMBER))?;
    let Ok(opened) = bundle::read_manifest(&mut payload) else {
        return Ok(Vec::new());
    };
    if opened.signature.is_none() {
        return Ok(Vec::new());
    }
    let mut vol = card::open_boot(card_path)?;
    let mut out = Vec::new();
    let wifi = wifi_connection();
    for name in [CONFIG_JSON, HOSTNAME_FILE, wifi.as_str()] {
        if let Ok(data) = fat::read_file(&mut vol, name) {
            let problem = match bundle::check_pin(&opened.manifest, name, &data) {
                Ok(true) => continue,
                Ok(false) => bundle::Error::UnpinnedFile { name: name.into() },
                Err(e) => e,
            };
            out.push(format!(
                "{}: the card's bundle is signed and {problem}; a board whose initramfs trusts keys will refuse this card",
                card_path.display()
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn err(e: crate::Error) -> Error {
        match e {
            crate::Error::Configure(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_config_and_keeps_other_keys() {
        let mut vol = Cursor::new(
            fat::make_fat(
                8 << 20,
                "b",
                &[fat::FatFile::new("config.json", r#"{"installer":{"x":1}}"#)],
            )
            .unwrap(),
        );
        let s = Settings {
            hostname: Some("unit-7".into()),
            wifi: Some(("Factory Net".into(), "correct horse".into())),
            persistent_logging: Some(true),
        };
        apply(&mut vol, &s).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&fat::read_file(&mut vol, "config.json").unwrap()).unwrap();
        assert_eq!(cfg["hostname"], "unit-7");
        assert_eq!(cfg["persistentLogging"], true);
        assert_eq!(cfg["installer"]["x"], 1);
        assert_eq!(fat::read_file(&mut vol, "hostname").unwrap(), b"unit-7\n");
        let nm = String::from_utf8(fat::read_file(&mut vol, "system-connections/wifi").unwrap())
            .unwrap();
        assert!(nm.contains("ssid=Factory Net\n") && nm.contains("psk=correct horse\n"));
        assert!(nm.contains("key-mgmt=wpa-psk"));
        // Only logging changes: hostname stays.
        apply(
            &mut vol,
            &Settings {
                persistent_logging: Some(false),
                ..Default::default()
            },
        )
        .unwrap();
        let cfg: serde_json::Value =
            serde_json::from_slice(&fat::read_file(&mut vol, "config.json").unwrap()).unwrap();
        assert_eq!(cfg["hostname"], "unit-7");
        assert_eq!(cfg["persistentLogging"], false);
    }

    #[test]
    fn rejects_bad_values() {
        let vol = || Cursor::new(fat::make_fat(8 << 20, "b", &[]).unwrap());
        let bad = |s: Settings| err(apply(vol(), &s).unwrap_err());
        assert!(matches!(bad(Settings::default()), Error::Nothing));
        assert!(matches!(
            bad(Settings {
                hostname: Some("-x".into()),
                ..Default::default()
            }),
            Error::BadHostname(_)
        ));
        assert!(matches!(
            bad(Settings {
                wifi: Some(("n".into(), "short".into())),
                ..Default::default()
            }),
            Error::BadPsk(5)
        ));
        assert!(matches!(
            bad(Settings {
                wifi: Some(("".into(), "longenough".into())),
                ..Default::default()
            }),
            Error::BadSsid(_)
        ));
        let mut v = Cursor::new(
            fat::make_fat(8 << 20, "b", &[fat::FatFile::new("config.json", "[1]")]).unwrap(),
        );
        assert!(matches!(
            err(apply(
                &mut v,
                &Settings {
                    hostname: Some("a".into()),
                    ..Default::default()
                }
            )
            .unwrap_err()),
            Error::BadConfig(_)
        ));
    }

    /// Issue 10 item 7: an SSID with a newline cannot add a section or a key;
    /// keyfile metacharacters that are legal in an SSID or PSK stay on their line.
    #[test]
    fn ssid_and_psk_cannot_inject_lines() {
        let vol = || Cursor::new(fat::make_fat(8 << 20, "b", &[]).unwrap());
        for ssid in ["x\n[connection]\nid=evil", "x\r\nid=evil", "tab\there"] {
            let s = Settings {
                wifi: Some((ssid.into(), "longenough".into())),
                ..Default::default()
            };
            assert!(
                matches!(err(apply(vol(), &s).unwrap_err()), Error::BadSsid(_)),
                "{ssid:?}"
            );
        }
        let s = Settings {
            wifi: Some(("n".into(), "pass\nword!".to_string())),
            ..Default::default()
        };
        assert!(matches!(
            err(apply(vol(), &s).unwrap_err()),
            Error::BadPsk(_)
        ));
        // Legal but meaningful to a keyfile: one line each, nothing added.
        let benign = nm_keyfile("plain", "longenough");
        let lines = |k: &str| k.lines().map(str::to_string).collect::<Vec<_>>();
        for (ssid, psk) in [
            ("a;b", "#[x]=y;z\\n"),
            (" [wifi-security]", " key-mgmt=none"),
            ("=#[]", "\\\\\\s"),
        ] {
            let k = nm_keyfile(ssid, psk);
            let (got, want) = (lines(&k), lines(&benign));
            assert_eq!(got.len(), want.len(), "{k}");
            for (g, w) in got.iter().zip(&want) {
                // Every line but the two values is unchanged.
                if !(w.starts_with("ssid=") || w.starts_with("psk=") || w.starts_with("uuid=")) {
                    assert_eq!(g, w, "{k}");
                }
            }
        }
        assert_eq!(ssid_value("a;b"), "97;59;98;");
        assert_eq!(ssid_value(" x"), "32;120;");
        assert_eq!(ssid_value("Factory Net"), "Factory Net");
        assert_eq!(psk_value(" a\\b"), "\\sa\\\\b");
        assert_eq!(psk_value("#[x]=y;z"), "#[x]=y;z");
    }
}
