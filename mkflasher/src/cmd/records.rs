//! `mkflasher records CARD… [--json|--csv|--db FILE]`: the runs recorded on
//! one or more cards (see `crate::records`).

use std::path::PathBuf;

use crate::records::{self, db};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Cards to read: block devices (/dev/sdX, opened read-only) or card
    /// images. Their records are merged in time order.
    #[arg(required = true, value_name = "CARD")]
    pub cards: Vec<PathBuf>,
    /// One JSON array, one object per run, every field.
    #[arg(long, conflicts_with_all = ["csv", "db"])]
    pub json: bool,
    /// CSV: a header row, one row per run; unit-row values as unit.KEY columns.
    #[arg(long, conflicts_with = "db")]
    pub csv: bool,
    /// Import into this SQLite station database (created when missing;
    /// docs/factory.md); importing a card again adds nothing.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
}

/// What `records` prints for `args`.
pub fn render(args: &Args) -> crate::Result<String> {
    let entries = records::read_cards(&args.cards)?;
    if let Some(path) = &args.db {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let n = db::import(path, &entries, now).map_err(records::Error::from)?;
        return Ok(format!(
            "{} new record(s) of {} read from {} card(s) into {}\n",
            n.new,
            n.read,
            args.cards.len(),
            path.display()
        ));
    }
    Ok(if args.json {
        records::json(&entries)
    } else if args.csv {
        records::csv(&entries)?
    } else {
        records::table(&entries)
    })
}

pub fn run(args: Args) -> crate::Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}
