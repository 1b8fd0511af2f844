//! `flasher detect`: detect the board, list every disk with its classification,
//! and show the internal target the board's rules choose (or why it refuses).
//! Reads only; on a host, `--root` points it at a captured or fake tree.

use flasher::storage::{self, BootMedium, Choice, Disk};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Root of the system to inspect: `/` on the board, a fake tree in tests.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Use this board instead of detecting it (beats flasher.board= on the cmdline).
    #[arg(long)]
    pub board: Option<String>,
    /// The disk we booted from (e.g. `mmcblk0`), instead of looking for the
    /// `flasher-payload` partition.
    #[arg(long)]
    pub boot_disk: Option<String>,
    /// A board file overriding the built-in board of the same name; it is also
    /// the board used, unless `--board` names another.
    #[arg(long)]
    pub board_file: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Everything `detect` found. A failure is kept, not returned, so the report can
/// still show what was seen.
#[derive(Debug)]
pub struct Report {
    pub board: Option<boards::Detected>,
    pub disks: Vec<Disk>,
    pub boot: Option<BootMedium>,
    pub choice: Option<Choice>,
    pub error: Option<flasher::Error>,
}

/// Run the detection without printing.
pub fn report(args: &Args) -> Report {
    let mut r = Report {
        board: None,
        disks: Vec::new(),
        boot: None,
        choice: None,
        error: None,
    };
    let detected = (|| -> flasher::Result<boards::Detected> {
        let mut list = boards::builtin()?;
        let mut named = args.board.clone();
        if let Some(path) = &args.board_file {
            let b = boards::load_file(path)?;
            named.get_or_insert_with(|| b.name.clone());
            list = boards::with_override(list, b);
        }
        Ok(boards::detect(&args.root, named.as_deref(), &list)?)
    })();
    match storage::scan(&args.root) {
        Ok(d) => r.disks = d,
        Err(e) => {
            r.error = Some(e.into());
            r.board = detected.ok();
            return r;
        }
    }
    match storage::find_boot_medium(&r.disks, args.boot_disk.as_deref()) {
        Ok(b) => r.boot = b,
        Err(e) => {
            r.error = Some(e.into());
            r.board = detected.ok();
            return r;
        }
    }
    match detected {
        Ok(d) => {
            match storage::choose_target(&d.board, &r.disks, r.boot.as_ref()) {
                Ok(c) => r.choice = Some(c),
                Err(e) => r.error = Some(e.into()),
            }
            r.board = Some(d);
        }
        Err(e) => r.error = Some(e),
    }
    r
}

impl Report {
    /// Why each disk is not the target: from the choice, or, after a refusal,
    /// recomputed per disk so the report still explains every disk.
    pub fn rejected(&self) -> Vec<storage::Rejection> {
        if let Some(c) = &self.choice {
            return c.rejected.clone();
        }
        let Some(d) = &self.board else {
            return Vec::new();
        };
        self.disks
            .iter()
            .filter_map(|disk| {
                storage::why_not(&d.board, disk, self.boot.as_ref()).map(|why| storage::Rejection {
                    disk: disk.name.clone(),
                    why,
                })
            })
            .collect()
    }

    /// Things that look wrong without being refusals.
    pub fn warnings(&self) -> Vec<String> {
        let (Some(d), Some(b)) = (&self.board, &self.boot) else {
            return Vec::new();
        };
        self.disks
            .iter()
            .filter(|disk| disk.dev == b.dev)
            .filter_map(|disk| storage::boot_medium_note(&d.board, disk))
            .collect()
    }

    /// Human-readable lines.
    pub fn text(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; the results are ignored below.
        match &self.board {
            Some(d) => {
                let _ = writeln!(
                    out,
                    "board:  {} ({}; selected by {})",
                    d.board.name, d.board.status, d.how
                );
                let _ = writeln!(out, "rules:  {}", d.board.target.describe());
            }
            None => {
                let _ = writeln!(out, "board:  not detected");
            }
        }
        let _ = writeln!(out, "disks:");
        for d in &self.disks {
            let _ = writeln!(out, "  {}  [{}]", d.summary(self.boot.as_ref()), d.dev);
            for p in &d.partitions {
                let _ = writeln!(
                    out,
                    "      {} {} {}",
                    p.name,
                    flasher_format::units::si(p.size_bytes),
                    p.partname.as_deref().unwrap_or("")
                );
            }
        }
        if self.disks.is_empty() {
            let _ = writeln!(out, "  (none)");
        }
        match &self.boot {
            Some(b) => {
                let _ = writeln!(out, "boot medium: {} [{}]", b.disk, b.dev);
            }
            None => {
                let _ = writeln!(
                    out,
                    "boot medium: none found (no flasher-payload partition)"
                );
            }
        }
        for w in self.warnings() {
            let _ = writeln!(out, "warning: {w}");
        }
        if let Some(c) = &self.choice {
            let _ = writeln!(out, "target: {} ({})", c.disk.name, c.reason);
            for r in &c.rejected {
                let _ = writeln!(out, "  not {}: {}", r.disk, r.why);
            }
        }
        if self.choice.is_none() {
            for r in self.rejected() {
                let _ = writeln!(out, "  not {}: {}", r.disk, r.why);
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "refused: {e}");
        }
        out
    }

    /// One JSON object: `board` (name or null), `target` (object with `name`, or
    /// null), `disks`, `boot_medium`, `rejected`, `error`.
    pub fn json(&self) -> serde_json::Value {
        let disks: Vec<serde_json::Value> = self
            .disks
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                v["summary"] = d.summary(self.boot.as_ref()).into();
                v
            })
            .collect();
        serde_json::json!({
            "board": self.board.as_ref().map(|d| d.board.name.clone()),
            "how": self.board.as_ref().map(|d| d.how.to_string()),
            "expected": self.board.as_ref().map(|d| d.board.target.describe()),
            "disks": disks,
            "boot_medium": self.boot,
            "target": self.choice.as_ref().map(|c| serde_json::json!({
                "name": c.disk.name,
                "dev": c.disk.dev.to_string(),
                "dev_path": c.disk.dev_path,
                "size_bytes": c.disk.size_bytes,
                "reason": c.reason,
            })),
            "warnings": self.warnings(),
            "rejected": self.rejected(),
            "error": self.error.as_ref().map(|e| serde_json::json!({
                "message": e.to_string(),
                "class": e.class(),
            })),
        })
    }
}

pub fn run(args: Args) -> flasher::Result<()> {
    let mut report = report(&args);
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    match report.error.take() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flasher::storage::testing::scenarios;

    fn args(root: &std::path::Path) -> Args {
        Args {
            root: root.to_path_buf(),
            board: None,
            boot_disk: None,
            board_file: None,
            json: true,
        }
    }

    #[test]
    fn beaglebone_json_names_board_and_target() {
        let t = tempfile::tempdir().unwrap();
        scenarios::beaglebone(t.path(), Some(1)).unwrap();
        let r = report(&args(t.path()));
        assert!(r.error.is_none(), "{:?}", r.error);
        let j = r.json();
        assert_eq!(j["board"], "beaglebone-black");
        assert_eq!(j["target"]["name"], "mmcblk1");
        assert_eq!(j["boot_medium"]["disk"], "mmcblk0");
        assert_eq!(j["disks"].as_array().unwrap().len(), 2);
        assert!(r.text().contains("target: mmcblk1"));
        run(args(t.path())).unwrap();
    }

    #[test]
    fn refusal_is_an_error_with_what_was_seen() {
        let t = tempfile::tempdir().unwrap();
        scenarios::beaglebone(t.path(), None).unwrap();
        let r = report(&args(t.path()));
        assert!(matches!(
            r.error,
            Some(flasher::Error::Storage(storage::Error::NoMatch { .. }))
        ));
        let j = r.json();
        assert_eq!(j["board"], "beaglebone-black");
        assert!(j["target"].is_null());
        assert_eq!(j["error"]["class"], 1);
        assert_eq!(j["rejected"][0]["disk"], "mmcblk0");
        assert!(j["rejected"][0]["why"]
            .as_str()
            .unwrap()
            .starts_with("boot medium"));
        assert!(r
            .text()
            .contains("mmcblk0: SD 15.9 GB on 48060000.mmc (boot medium)"));
        assert!(run(args(t.path())).is_err());
    }

    #[test]
    fn qemu_boards_by_cmdline_and_board_override() {
        let t = tempfile::tempdir().unwrap();
        scenarios::qemu_sd(t.path(), true).unwrap();
        let j = report(&args(t.path())).json();
        assert_eq!(
            (j["board"].as_str(), j["target"]["name"].as_str()),
            (Some("qemu-x86_64-sd"), Some("mmcblk1"))
        );

        let t = tempfile::tempdir().unwrap();
        scenarios::qemu_nuc(t.path()).unwrap();
        let j = report(&args(t.path())).json();
        assert_eq!(
            (j["board"].as_str(), j["target"]["name"].as_str()),
            (Some("qemu-x86_64-nuc"), Some("nvme0n1"))
        );

        // --board beats the cmdline; the SD board finds no mmc disk here, and the
        // USB boot medium is not where that board expects its card.
        let mut a = args(t.path());
        a.board = Some("qemu-x86_64-sd".into());
        let r = report(&a);
        assert_eq!(r.warnings().len(), 1);
        assert_eq!(r.board.as_ref().unwrap().how, boards::How::Named);
        assert!(matches!(
            r.error,
            Some(flasher::Error::Storage(storage::Error::NoMatch { .. }))
        ));
    }

    #[test]
    fn board_file_and_boot_disk_options() {
        let t = tempfile::tempdir().unwrap();
        scenarios::nuc(t.path(), 1, true).unwrap();
        // A board file preferring SATA is used and changes the choice.
        let text = boards::to_toml(&boards::find("intel-nuc").unwrap())
            .unwrap()
            .replace(
                "transports = [\"nvme\", \"sata\", \"mmc\"]",
                "transports = [\"sata\", \"nvme\", \"mmc\"]",
            );
        let file = t.path().join("nuc-sata.toml");
        std::fs::write(&file, text).unwrap();
        let mut a = args(t.path());
        a.board_file = Some(file);
        let j = report(&a).json();
        assert_eq!(j["target"]["name"], "sdb");

        // Naming the NVMe as the boot disk excludes it: SATA is next.
        let mut a = args(t.path());
        a.boot_disk = Some("nvme0n1".into());
        let j = report(&a).json();
        assert_eq!(j["target"]["name"], "sdb");
        assert!(j["rejected"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["disk"] == "nvme0n1" && r["why"] == "boot medium"));

        // With no SATA disk, the boot medium was the only candidate.
        let t2 = tempfile::tempdir().unwrap();
        scenarios::nuc(t2.path(), 1, false).unwrap();
        let mut a = args(t2.path());
        a.boot_disk = Some("/dev/nvme0n1".into());
        let r = report(&a);
        assert!(
            matches!(
                r.error,
                Some(flasher::Error::Storage(
                    storage::Error::OnlyBootMedium { .. }
                ))
            ),
            "{:?}",
            r.error
        );

        let mut a = args(t.path());
        a.boot_disk = Some("sdq".into());
        assert!(matches!(
            report(&a).error,
            Some(flasher::Error::Storage(
                storage::Error::BootDiskNotFound { .. }
            ))
        ));
    }

    #[test]
    fn undetected_board_still_lists_disks() {
        let t = tempfile::tempdir().unwrap();
        scenarios::beaglebone(t.path(), Some(1)).unwrap();
        std::fs::remove_file(t.path().join("proc/device-tree/compatible")).unwrap();
        let r = report(&args(t.path()));
        assert!(matches!(
            r.error,
            Some(flasher::Error::Board(boards::Error::NotDetected { .. }))
        ));
        let j = r.json();
        assert!(j["board"].is_null());
        assert_eq!(j["disks"].as_array().unwrap().len(), 2);
        assert_eq!(j["error"]["class"], 6);
    }
}
