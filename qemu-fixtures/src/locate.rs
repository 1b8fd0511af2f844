//! Where the host side (`mkflasher`, this harness, the tests) finds what it was
//! not given on the command line: the static board binaries (`flasher-init`,
//! `demo-os-init`), the QEMU fixture cache (Debian's amd64 kernel, its
//! modules, systemd-boot) that `qemu-fixtures/setup` fills, and the Debian
//! parts cache (the armhf armmp kernel, its modules and device trees, U-Boot
//! from `u-boot-omap`/`u-boot-imx`) that `scripts/fetch-debian-parts` fills
//! (docs/qemu.md, "Set-up"). Board binaries and kernels are per architecture:
//! the board file's `arch` picks them.
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

/// Debian's armhf boot parts (`scripts/fetch-debian-parts`):
/// `$FLASHER_DEBIAN_PARTS`, else the checkout's `debian-parts`.
pub fn debian_parts() -> PathBuf {
    if let Some(c) = std::env::var_os("FLASHER_DEBIAN_PARTS") {
        return PathBuf::from(c);
    }
    checkout().unwrap_or_default().join("debian-parts")
}

/// The cache holding Debian's kernel for `arch`: the QEMU fixture cache for
/// amd64, the Debian parts cache for armhf (real boards and the i.MX6 twin).
pub fn kernel_cache(arch: boards::Arch) -> PathBuf {
    match arch {
        boards::Arch::Armv7 => debian_parts(),
        _ => fixture_cache(),
    }
}

/// A file of Debian's U-Boot packages, `rel` under `/usr/lib/u-boot/`
/// (`mx6cuboxi/SPL`), in the Debian parts cache `parts`.
pub fn uboot_file(parts: &Path, rel: &str) -> PathBuf {
    parts.join("u-boot/usr/lib/u-boot").join(rel)
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

/// Where a cache holds Debian's kernel for `arch`: the amd64 kernel under
/// `kernel/` (fixture cache), the armhf armmp kernel under `armmp/` (Debian
/// parts cache, [`kernel_cache`]).
fn kernel_root(cache: &Path, arch: boards::Arch) -> Option<PathBuf> {
    match arch {
        boards::Arch::X86_64 => Some(cache.join("kernel")),
        boards::Arch::Armv7 => Some(cache.join("armmp")),
        boards::Arch::X86 | boards::Arch::Aarch64 => None,
    }
}

/// The cached Debian amd64 kernel's module tree (`lib/modules/VERSION`).
pub fn qemu_modules_dir(cache: &Path) -> Option<PathBuf> {
    qemu_modules_dir_for(cache, boards::Arch::X86_64)
}

/// The cached Debian amd64 kernel (`boot/vmlinuz-*`).
pub fn qemu_kernel(cache: &Path) -> Option<PathBuf> {
    qemu_kernel_for(cache, boards::Arch::X86_64)
}

/// The cached Debian kernel's module tree for `arch`.
pub fn qemu_modules_dir_for(cache: &Path, arch: boards::Arch) -> Option<PathBuf> {
    first_entry(&kernel_root(cache, arch)?.join("lib/modules"), "")
}

/// The cached Debian kernel for `arch`.
pub fn qemu_kernel_for(cache: &Path, arch: boards::Arch) -> Option<PathBuf> {
    first_entry(&kernel_root(cache, arch)?.join("boot"), "vmlinuz-")
}

/// A device tree (`imx6q-nitrogen6x.dtb`) of the armmp kernel in `cache`
/// (the Debian parts cache).
pub fn armmp_dtb(cache: &Path, name: &str) -> Option<PathBuf> {
    let dir = first_entry(&cache.join("armmp/usr/lib"), "linux-image-")?;
    Some(dir.join(name)).filter(|p| p.is_file())
}

/// The cached systemd-boot EFI binary (it may not exist).
pub fn qemu_systemd_boot(cache: &Path) -> PathBuf {
    cache.join("systemd-boot/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
}

/// The Rust target a board binary for `arch` is built for (scripts/build-init,
/// scripts/build-init-armv7); None where the project builds none yet.
pub fn rust_target(arch: boards::Arch) -> Option<&'static str> {
    match arch {
        boards::Arch::X86_64 => Some("x86_64-unknown-linux-gnu"),
        boards::Arch::Armv7 => Some("armv7-unknown-linux-gnueabihf"),
        boards::Arch::X86 | boards::Arch::Aarch64 => None,
    }
}

/// Where a static board binary `name` may be, in order: `$env_var`, the
/// checkout's static build (`scripts/build-init`, honouring `$CARGO_TARGET_DIR`),
/// then next to the running executable (an installed tool).
pub fn static_binary_candidates(name: &str, env_var: &str) -> Vec<PathBuf> {
    static_binary_candidates_for(name, env_var, boards::Arch::X86_64)
}

/// [`static_binary_candidates`] for `arch`. Next to the executable, a binary
/// for another architecture than x86_64 is `NAME-ARCH` (`flasher-init-armv7`).
pub fn static_binary_candidates_for(name: &str, env_var: &str, arch: boards::Arch) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(env_var) {
        out.push(PathBuf::from(p));
    }
    // The checkout's static build comes before the executable's folder: in a
    // checkout, `target/debug/` next to mkflasher holds a dynamic dev build.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| checkout().map(|c| c.join("target")));
    if let (Some(t), Some(triple)) = (target, rust_target(arch)) {
        out.push(t.join(triple).join("release").join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            out.push(match arch {
                boards::Arch::X86_64 => dir.join(name),
                other => dir.join(format!("{name}-{other}")),
            });
        }
    }
    out
}

/// The static x86_64 `/init` for cards (see [`init_for`]).
pub fn init() -> PathBuf {
    init_for(boards::Arch::X86_64)
}

/// The static `/init` for a board of `arch`: the first candidate that exists,
/// else the first one (so the error names where the build script puts it).
/// `$FLASHER_INIT` overrides x86_64, `$FLASHER_INIT_ARMV7` armv7.
pub fn init_for(arch: boards::Arch) -> PathBuf {
    let var = match arch {
        boards::Arch::X86_64 => "FLASHER_INIT".to_string(),
        other => format!("FLASHER_INIT_{}", other.to_string().to_uppercase()),
    };
    let c = static_binary_candidates_for("flasher-init", &var, arch);
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
        // The armmp kernel and its device trees sit apart from the amd64 one.
        let arm = boards::Arch::Armv7;
        assert_eq!(qemu_kernel_for(t.path(), arm), None);
        std::fs::create_dir_all(t.path().join("armmp/boot")).unwrap();
        std::fs::create_dir_all(t.path().join("armmp/usr/lib/linux-image-6.1.0-9-armmp")).unwrap();
        std::fs::write(t.path().join("armmp/boot/vmlinuz-6.1.0-9-armmp"), "").unwrap();
        assert_eq!(
            qemu_kernel_for(t.path(), arm),
            Some(t.path().join("armmp/boot/vmlinuz-6.1.0-9-armmp"))
        );
        assert_eq!(armmp_dtb(t.path(), "imx6q-nitrogen6x.dtb"), None);
        let dtb = t
            .path()
            .join("armmp/usr/lib/linux-image-6.1.0-9-armmp/imx6q-nitrogen6x.dtb");
        std::fs::write(&dtb, "").unwrap();
        assert_eq!(armmp_dtb(t.path(), "imx6q-nitrogen6x.dtb"), Some(dtb));
        assert_eq!(qemu_kernel_for(t.path(), boards::Arch::Aarch64), None);
    }

    #[test]
    fn board_binaries_are_looked_up_per_architecture() {
        let c =
            static_binary_candidates_for("flasher-init", "FLASHER_TEST_UNSET", boards::Arch::Armv7);
        assert!(
            c.iter()
                .any(|p| p.ends_with("armv7-unknown-linux-gnueabihf/release/flasher-init")),
            "{c:?}"
        );
        assert!(c.last().unwrap().ends_with("flasher-init-armv7"), "{c:?}");
        let c = static_binary_candidates("flasher-init", "FLASHER_TEST_UNSET");
        assert!(c.last().unwrap().ends_with("flasher-init"), "{c:?}");
        assert_eq!(rust_target(boards::Arch::X86), None);
    }
}
