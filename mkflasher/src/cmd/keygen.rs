//! `mkflasher keygen NAME`: a new Ed25519 signing key pair, `NAME.key` (the
//! secret seed, mode 0600) and `NAME.pub` (for `--trust`). Never overwrites a
//! key: losing the old secret would strand every card that trusts it.

use flasher_format::bundle::SecretKey;
use flasher_format::io::IoContext;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Path prefix of the key pair: writes NAME.key and NAME.pub.
    pub name: PathBuf,
}

/// The two files `keygen` writes for `name`.
pub fn key_paths(name: &Path) -> (PathBuf, PathBuf) {
    let with = |ext: &str| {
        let mut s = name.as_os_str().to_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".key"), with(".pub"))
}

pub fn run(args: Args) -> crate::Result<()> {
    let (secret_path, public_path) = key_paths(&args.name);
    for p in [&secret_path, &public_path] {
        if p.exists() {
            return Err(crate::Error::Usage(format!(
                "{} already exists; keygen never overwrites a key (pick another NAME, or remove it if you are sure)",
                p.display()
            )));
        }
    }
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("read 32 random bytes from /dev/urandom")?;
    let key = SecretKey::from_seed(&seed);
    seed.fill(0);
    let comment = args
        .name
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    write_new(&secret_path, 0o600, key.to_text().as_bytes())?;
    write_new(
        &public_path,
        0o644,
        key.public().to_text(&comment).as_bytes(),
    )?;
    println!(
        "key {}: secret {} (keep it offline), public {} (give it to --trust)",
        key.public().fingerprint(),
        secret_path.display(),
        public_path.display()
    );
    Ok(())
}

/// Create `path` exclusively (a race with another keygen fails, not clobbers).
fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> crate::Result<()> {
    let ctx = |what: &str| format!("{what} {}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| ctx("create"))?;
    Ok(f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| ctx("write"))?)
}
