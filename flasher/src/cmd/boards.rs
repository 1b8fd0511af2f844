//! `flasher boards` (placeholder: to be filled in by the work that owns it).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> crate::Result<()> {
    Err(crate::Error::Usage(
        "`flasher boards` is not implemented yet".into(),
    ))
}
