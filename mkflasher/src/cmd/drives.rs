//! `mkflasher drives [--all] [--json]`: the drives a card could be written
//! to. Thin: `drives::survey` judges, this prints a table or JSON.

use crate::drives::{self, Drive};
use flasher_format::units::si;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also list the drives that are not offered (system disk, internal disks,
    /// loop and other virtual devices), marked unsafe with the reason.
    #[arg(long)]
    pub all: bool,
    /// Print the drives as a JSON array on stdout.
    #[arg(long)]
    pub json: bool,
    /// Root of /proc and /sys (for tests).
    #[arg(long, default_value = "/", hide = true)]
    pub root: PathBuf,
}

/// The drives `args` asks for.
pub fn list(args: &Args) -> crate::Result<Vec<Drive>> {
    let all =
        drives::survey(&args.root, &drives::Context::default()).map_err(flasher::Error::from)?;
    Ok(all
        .into_iter()
        .filter(|d| args.all || d.is_candidate())
        .collect())
}

/// A note for people when the system disk cannot be determined (a root on
/// ZFS, FUSE, an overlay): then no internal disk is ever offered, and the
/// table without `--all` would not say why.
pub fn note(root: &Path) -> crate::Result<Option<String>> {
    let holds = drives::system_unresolved(root).map_err(flasher::Error::from)?;
    Ok((!holds.is_empty()).then(|| format!(
        "note: the system disk cannot be determined ({}); only cards, USB sticks and removable drives are offered, and internal disks are never written (docs/host-safety.md)",
        holds.join("; ")
    )))
}

/// The human table.
pub fn table(list: &[Drive]) -> String {
    let mut rows = vec![[
        "DEVICE".to_string(),
        "TYPE".into(),
        "SIZE".into(),
        "MODEL".into(),
        "SERIAL".into(),
        "NOTES".into(),
    ]];
    for d in list {
        let mut notes = Vec::new();
        if let Some(u) = &d.unsafe_ {
            notes.push(format!("UNSAFE: {}", u.describe()));
        }
        if !d.mounted.is_empty() {
            notes.push(format!("mounted on {}", d.mounted.join(", ")));
        }
        if d.large {
            notes.push(format!(
                "WARNING: over {}, is this really a card?",
                si(drives::LARGE)
            ));
        }
        rows.push([
            d.path.display().to_string(),
            d.kind.clone(),
            si(d.size_bytes),
            d.model.clone().unwrap_or_else(|| "-".into()),
            d.serial.clone().unwrap_or_else(|| "-".into()),
            notes.join("; "),
        ]);
    }
    crate::hostwrite::columns(&rows, &[false, false, true, false, false, false])
}

pub fn run(args: Args) -> crate::Result<()> {
    let list = list(&args)?;
    if !args.json {
        if let Some(n) = note(&args.root)? {
            eprintln!("{n}");
        }
    }
    if args.json {
        let s = serde_json::to_string_pretty(&list)
            .map_err(|e| crate::Error::Usage(format!("drives to JSON: {e}")))?;
        println!("{s}");
        return Ok(());
    }
    if list.is_empty() {
        println!(
            "no card, USB or removable drive found; insert one, or pass --all to see every disk"
        );
        return Ok(());
    }
    print!("{}", table(&list));
    Ok(())
}
