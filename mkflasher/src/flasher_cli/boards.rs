//! `flasher boards`: list the built-in boards with their status, or print one
//! board's full description.

use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print this board's full description (TOML) instead of the list.
    pub name: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The text the command prints.
pub fn render(args: &Args) -> flasher::Result<String> {
    let boards = boards::builtin()?;
    if let Some(name) = &args.name {
        let b = boards::find_in(&boards, name)?;
        return Ok(if args.json {
            serde_json::to_string_pretty(b).map_err(|e| flasher::Error::Usage(e.to_string()))?
        } else {
            boards::to_toml(b)?
        });
    }
    if args.json {
        let list: Vec<serde_json::Value> = boards
            .iter()
            .map(|b| {
                serde_json::json!({
                    "name": b.name,
                    "status": b.status.to_string(),
                    "arch": b.arch.to_string(),
                    "description": b.description,
                })
            })
            .collect();
        return serde_json::to_string_pretty(&list)
            .map_err(|e| flasher::Error::Usage(e.to_string()));
    }
    let width = boards.iter().map(|b| b.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for b in &boards {
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "{:width$}  {:12}  {:7}  {}",
            b.name,
            b.status.to_string(),
            b.arch.to_string(),
            b.description
        );
    }
    Ok(out)
}

pub fn run(args: Args) -> flasher::Result<()> {
    print!("{}", render(&args)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_every_board_with_status() {
        let out = render(&Args {
            name: None,
            json: false,
        })
        .unwrap();
        assert_eq!(out.lines().count(), boards::BUILTIN_FILES.len());
        let line = out
            .lines()
            .find(|l| l.starts_with("qemu-x86_64-sd "))
            .unwrap();
        assert!(line.contains("supported"));
        let json: serde_json::Value = serde_json::from_str(
            &render(&Args {
                name: None,
                json: true,
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(json.as_array().unwrap().len(), boards::BUILTIN_FILES.len());
    }

    #[test]
    fn shows_one_board_and_rejects_unknown() {
        let out = render(&Args {
            name: Some("beaglebone-black".into()),
            json: false,
        })
        .unwrap();
        assert!(out.contains("481d8000.mmc"));
        assert!(matches!(
            render(&Args {
                name: Some("nope".into()),
                json: false
            }),
            Err(flasher::Error::Board(boards::Error::UnknownBoard { .. }))
        ));
    }
}
