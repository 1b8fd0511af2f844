//! Where `mkflasher` finds what it was not given on the command line: the static
//! board binaries (`flasher-init`, `demo-os-init`) and the QEMU fixture cache
//! (Debian's kernel, its modules, systemd-boot) that `qemu-fixtures/setup` fills.
//!
//! Lookups happen at run time only (environment, the running executable's
//! folder, the source checkout around the current directory); no build-machine
//! path is compiled into the tool.

use std::path::{Path, PathBuf};

/// The source checkout the tool runs in: `$FLASHER_ROOT`, else the nearest
/// ancestor of the current directory holding `qemu-fixtures/`.
pub fn checkout() -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("FLASHER_ROOT") {
        return Some(PathBuf::from(r));
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|d| d.join("qemu-fixtures").is_dir())
        .map(Path::to_path_buf)
}

/// The QEMU fixture cache: `$FLASHER_QEMU_CACHE`, else the checkout's
/// `qemu-fixtures/cache`.
pub fn fixture_cache() -> PathBuf {
    if let Some(c) = std::env::var_os("FLASHER_QEMU_CACHE") {
        return PathBuf::from(c);
    }
    checkout().unwrap_or_default().join("qemu-fixtures/cache")
}

/// The first entry (sorted) of `dir` whose name starts with `prefix`.
fn first_entry(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(prefix))
        })
        .collect();
    v.sort();
    v.into_iter().next()
}

/// The cached Debian kernel's module tree (`lib/modules/VERSION`).
pub fn qemu_modules_dir(cache: &Path) -> Option<PathBuf> {
    first_entry(&cache.join("kernel/lib/modules"), "")
}

/// The cached Debian kernel (`boot/vmlinuz-*`).
pub fn qemu_kernel(cache: &Path) -> Option<PathBuf> {
    first_entry(&cache.join("kernel/boot"), "vmlinuz-")
}

/// The cached systemd-boot EFI binary (it may not exist).
pub fn qemu_systemd_boot(cache: &Path) -> PathBuf {
    cache.join("systemd-boot/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
}

/// Where a static board binary `name` may be, in order: `$env_var`, the
/// checkout's static build (`scripts/build-init`, honouring `$CARGO_TARGET_DIR`),
/// then next to the running executable (an installed tool).
pub fn static_binary_candidates(name: &str, env_var: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(env_var) {
        out.push(PathBuf::from(p));
    }
    // The checkout's static build comes before the executable's folder: in a
    // checkout, `target/debug/` next to mkflasher holds a dynamic dev build.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| checkout().map(|c| c.join("target")));
    if let Some(t) = target {
        out.push(t.join("x86_64-unknown-linux-gnu/release").join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(dir.join(name));
        }
    }
    out
}

/// The static `/init` for cards: the first candidate that exists, else the
/// first one (so the error names where `scripts/build-init` puts it).
pub fn init() -> PathBuf {
    let c = static_binary_candidates("flasher-init", "FLASHER_INIT");
    c.iter()
        .find(|p| p.is_file())
        .or(c.first())
        .cloned()
        .unwrap_or_else(|| PathBuf::from("flasher-init"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_found_by_prefix_and_missing_ones_are_none() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(qemu_kernel(t.path()), None);
        assert_eq!(qemu_modules_dir(t.path()), None);
        std::fs::create_dir_all(t.path().join("kernel/boot")).unwrap();
        std::fs::create_dir_all(t.path().join("kernel/lib/modules/6.1.0-9-amd64")).unwrap();
        std::fs::write(t.path().join("kernel/boot/config-6.1"), "").unwrap();
        std::fs::write(t.path().join("kernel/boot/vmlinuz-6.1.0-9-amd64"), "").unwrap();
        assert_eq!(
            qemu_kernel(t.path()),
            Some(t.path().join("kernel/boot/vmlinuz-6.1.0-9-amd64"))
        );
        assert_eq!(
            qemu_modules_dir(t.path()),
            Some(t.path().join("kernel/lib/modules/6.1.0-9-amd64"))
        );
    }
}
