//! Kernel-module closure for the initramfs: given a kernel's module tree
//! (`lib/modules/VERSION`) and the board's module names, find every `.ko` they
//! need, dependencies first.
//!
//! Dependencies come from `modules.dep` when the tree has one, else from each
//! module's `.modinfo` ELF section (`depends=`, `name=`): Debian's kernel
//! package ships no `modules.dep` and `depmod` may not be installed. Names are
//! compared with '-' and '_' treated as equal, as the kernel does. Modules the
//! kernel has built in (`modules.builtin`) are satisfied without a file.

use flasher_format::io::IoContext;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "kernel module {name:?} (needed by {needed_by}) is not in {dir} (looked for \
         {name}.ko under kernel/ and in modules.builtin); use the modules of the kernel \
         you boot (--kernel-modules DIR)"
    )]
    NotFound {
        name: String,
        needed_by: String,
        dir: PathBuf,
    },
    #[error("{dir} is not a kernel module tree (no kernel/ directory and no .ko files); give lib/modules/VERSION")]
    NotAModuleTree { dir: PathBuf },
    #[error(transparent)]
    Io(#[from] flasher_format::io::IoError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Kernel module names treat '-' and '_' as the same character.
pub fn normalise(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name of a file name: `sdhci-pci.ko.xz` -> `sdhci_pci`.
pub fn name_of_file(file: &str) -> Option<String> {
    let base = file.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|s| base.strip_suffix(s))?;
    Some(normalise(stem))
}

/// What `.modinfo` says about a module.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
}

/// Find the `.modinfo` section of an ELF file (32/64-bit, either byte order).
pub fn elf_section<'a>(elf: &'a [u8], want: &str) -> Option<&'a [u8]> {
    if elf.len() < 52 || &elf[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = elf[4] == 2;
    let le = elf[5] == 1;
    let u16_at = |o: usize| -> Option<u64> {
        let b: [u8; 2] = elf.get(o..o + 2)?.try_into().ok()?;
        Some(u64::from(if le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }))
    };
    let u32_at = |o: usize| -> Option<u64> {
        let b: [u8; 4] = elf.get(o..o + 4)?.try_into().ok()?;
        Some(u64::from(if le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }))
    };
    let u64_at = |o: usize| -> Option<u64> {
        let b: [u8; 8] = elf.get(o..o + 8)?.try_into().ok()?;
        Some(if le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    };
    let word = |o: usize| if is64 { u64_at(o) } else { u32_at(o) };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (u64_at(0x28)?, u16_at(0x3a)?, u16_at(0x3c)?, u16_at(0x3e)?)
    } else {
        (u32_at(0x20)?, u16_at(0x2e)?, u16_at(0x30)?, u16_at(0x32)?)
    };
    let sh = |i: u64| -> Option<(u64, u64, u64)> {
        let base = usize::try_from(shoff + i * shentsize).ok()?;
        let name = u32_at(base)?;
        let (off, size) = if is64 {
            (word(base + 0x18)?, word(base + 0x20)?)
        } else {
            (word(base + 0x10)?, word(base + 0x14)?)
        };
        Some((name, off, size))
    };
    let slice = |off: u64, size: u64| -> Option<&'a [u8]> {
        elf.get(usize::try_from(off).ok()?..usize::try_from(off.checked_add(size)?).ok()?)
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = slice(stroff, strsize)?;
    (0..shnum).find_map(|i| {
        let (name, off, size) = sh(i)?;
        let n = strtab.get(usize::try_from(name).ok()?..)?;
        let n = &n[..n.iter().position(|c| *c == 0)?];
        (n == want.as_bytes()).then(|| slice(off, size)).flatten()
    })
}

/// Parse `.modinfo`: NUL-separated `key=value` strings. Without an ELF
/// section table, scan the whole file (good enough for odd inputs).
pub fn parse_modinfo(ko: &[u8]) -> ModInfo {
    let sec = elf_section(ko, ".modinfo").unwrap_or(ko);
    let mut info = ModInfo::default();
    for s in sec.split(|c| *c == 0) {
        let Ok(s) = std::str::from_utf8(s) else {
            continue;
        };
        if let Some(v) = s.strip_prefix("depends=") {
            info.depends = v
                .split(',')
                .filter(|d| !d.is_empty())
                .map(normalise)
                .collect();
        } else if let Some(v) = s.strip_prefix("name=") {
            info.name = Some(normalise(v));
        }
    }
    info
}

/// Read a module file, decompressing `.xz`, `.zst` and `.gz` modules.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let ctx = || format!("decompressing {}", path.display());
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(ctx)?;
    } else if name.ends_with(".zst") {
        out = zstd::stream::decode_all(&raw[..]).with_context(ctx)?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .with_context(ctx)?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// One module of the closure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name (`sdhci_pci`).
    pub name: String,
    /// The file in the module tree.
    pub path: PathBuf,
    /// Its file name once uncompressed (`sdhci-pci.ko`).
    pub file_name: String,
}

/// A kernel module tree, indexed.
#[derive(Debug, Clone)]
pub struct ModuleTree {
    dir: PathBuf,
    /// name -> file
    files: BTreeMap<String, PathBuf>,
    /// name -> dependencies, from modules.dep (None: read .modinfo lazily)
    dep: Option<BTreeMap<String, Vec<String>>>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Index `dir` (`lib/modules/VERSION`): every module file under `kernel/`
    /// (or under `dir` itself if there is no `kernel/`), plus `modules.dep` and
    /// `modules.builtin` when present.
    pub fn open(dir: &Path) -> Result<Self> {
        let root = if dir.join("kernel").is_dir() {
            dir.join("kernel")
        } else {
            dir.to_path_buf()
        };
        let mut files = BTreeMap::new();
        let mut stack = vec![root];
        while let Some(d) = stack.pop() {
            let rd = std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))?;
            for e in rd {
                let e = e.with_context(|| format!("listing {}", d.display()))?;
                let p = e.path();
                let ft = e
                    .file_type()
                    .with_context(|| format!("stat {}", p.display()))?;
                if ft.is_dir() {
                    stack.push(p);
                } else if let Some(n) = p
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(name_of_file)
                {
                    // Keep the lexically first path if a name repeats, so the
                    // choice does not depend on directory order.
                    files
                        .entry(n)
                        .and_modify(|old: &mut PathBuf| {
                            if p < *old {
                                *old = p.clone();
                            }
                        })
                        .or_insert(p);
                }
            }
        }
        if files.is_empty() {
            return Err(Error::NotAModuleTree {
                dir: dir.to_path_buf(),
            });
        }
        let dep = match std::fs::read_to_string(dir.join("modules.dep")) {
            Ok(text) => Some(parse_modules_dep(&text)),
            Err(_) => None,
        };
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map(|t| t.lines().filter_map(name_of_file).collect())
            .unwrap_or_default();
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            dep,
            builtin,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalise(name))
    }

    fn depends(&self, name: &str, path: &Path) -> Result<Vec<String>> {
        if let Some(dep) = &self.dep {
            return Ok(dep.get(name).cloned().unwrap_or_default());
        }
        Ok(parse_modinfo(&read_module(path)?).depends)
    }

    /// The modules needed to load `wanted`, each after its dependencies.
    /// Order is deterministic: depth first, in the order names are listed.
    pub fn closure<S: AsRef<str>>(&self, wanted: &[S]) -> Result<Vec<Module>> {
        let mut out = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(
                &normalise(w.as_ref()),
                "the board",
                &mut done,
                &mut Vec::new(),
                &mut out,
            )?;
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        needed_by: &str,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<Module>,
    ) -> Result<()> {
        if done.contains(name) || path.iter().any(|p| p == name) {
            return Ok(()); // already placed, or a (broken) cycle
        }
        let Some(file) = self.files.get(name) else {
            if self.is_builtin(name) {
                done.insert(name.to_string());
                return Ok(());
            }
            return Err(Error::NotFound {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
                dir: self.dir.clone(),
            });
        };
        path.push(name.to_string());
        for d in self.depends(name, file)? {
            self.visit(&d, name, done, path, out)?;
        }
        path.pop();
        done.insert(name.to_string());
        let base = file
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file_name = match base.find(".ko") {
            Some(i) => format!("{}.ko", &base[..i]),
            None => base,
        };
        out.push(Module {
            name: name.to_string(),
            path: file.clone(),
            file_name,
        });
        Ok(())
    }
}

/// `kernel/a/x.ko: kernel/b/y.ko kernel/c/z.ko.xz` -> { x: [y, z] }
pub fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                name_of_file(m.trim())?,
                deps.split_whitespace().filter_map(name_of_file).collect(),
            ))
        })
        .collect()
}

/// Test support: a minimal ELF64 relocatable with a `.modinfo` section, like
/// a real `.ko` as far as this module looks at it.
pub fn fake_ko(name: &str, depends: &[&str]) -> Vec<u8> {
    let modinfo = format!(
        "license=GPL\0depends={}\0name={}\0vermagic=6.1.0 SMP mod_unload\0",
        depends.join(","),
        name
    );
    let shstrtab = b"\0.modinfo\0.shstrtab\0";
    let mut elf = vec![0u8; 64];
    elf[..4].copy_from_slice(b"\x7fELF");
    elf[4] = 2; // 64-bit
    elf[5] = 1; // little endian
    elf[6] = 1;
    elf[16] = 1; // ET_REL
    let modinfo_off = elf.len() as u64;
    elf.extend_from_slice(modinfo.as_bytes());
    let str_off = elf.len() as u64;
    elf.extend_from_slice(shstrtab);
    while elf.len() % 8 != 0 {
        elf.push(0);
    }
    let shoff = elf.len() as u64;
    // Section headers: null, .modinfo, .shstrtab
    let mut sh = |name: u32, ty: u32, off: u64, size: u64| {
        let mut h = [0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
        h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
        elf.extend_from_slice(&h);
    };
    sh(0, 0, 0, 0);
    sh(1, 1, modinfo_off, modinfo.len() as u64);
    sh(10, 3, str_off, shstrtab.len() as u64);
    elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
    elf[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
    elf
}

/// Test support: a fake `lib/modules/VERSION` tree with the MMC stack of the
/// Debian 6.1 kernel and the NVMe/USB-storage stack (names and `depends=` as
/// in the real linux-image-6.1.0-*-amd64 package).
#[cfg(any(test, feature = "testing"))]
pub fn fake_tree(dir: &Path) -> std::io::Result<()> {
    let mods: &[(&str, &str, &[&str])] = &[
        ("drivers/mmc/core", "mmc_core", &[]),
        ("drivers/mmc/core", "mmc_block", &["mmc_core"]),
        ("drivers/mmc/host", "sdhci", &["mmc_core"]),
        ("drivers/mmc/host", "cqhci", &["mmc_core"]),
        (
            "drivers/mmc/host",
            "sdhci-pci",
            &["sdhci", "cqhci", "mmc_core"],
        ),
        ("drivers/mmc/host", "sdhci-pltfm", &["sdhci"]),
        // The BeagleBone's MMC host (beaglebone-black.toml).
        (
            "drivers/mmc/host",
            "sdhci-omap",
            &["sdhci-pltfm", "sdhci", "cqhci", "mmc_core"],
        ),
        ("drivers/usb/common", "usb-common", &[]),
        ("drivers/usb/core", "usbcore", &["usb-common"]),
        ("drivers/usb/host", "xhci-hcd", &["usbcore", "usb-common"]),
        ("drivers/usb/host", "xhci-pci", &["xhci-hcd", "usbcore"]),
        ("drivers/scsi", "scsi_common", &[]),
        ("drivers/scsi", "scsi_mod", &["scsi_common"]),
        ("drivers/scsi", "sd_mod", &["scsi_mod", "t10-pi"]),
        (
            "drivers/usb/storage",
            "usb-storage",
            &["usbcore", "scsi_mod", "scsi_common"],
        ),
        ("drivers/nvme/host", "nvme-core", &["t10-pi"]),
        ("drivers/nvme/host", "nvme", &["nvme-core"]),
        ("block", "t10-pi", &["crc-t10dif", "crc64-rocksoft"]),
        ("lib", "crc64-rocksoft", &["crc64"]),
        ("lib", "crc64", &[]),
        ("lib", "crc-t10dif", &["crct10dif_common"]),
        ("crypto", "crct10dif_common", &[]),
    ];
    for (sub, name, deps) in mods {
        let d = dir.join("kernel").join(sub);
        std::fs::create_dir_all(&d)?;
        std::fs::write(
            d.join(format!("{name}.ko")),
            fake_ko(&normalise(name), deps),
        )?;
    }
    std::fs::write(
        dir.join("modules.builtin"),
        "kernel/drivers/block/loop.ko\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_from_elf_section() {
        let ko = fake_ko("sdhci_pci", &["sdhci", "cqhci"]);
        assert!(elf_section(&ko, ".modinfo").is_some());
        let info = parse_modinfo(&ko);
        assert_eq!(info.name.as_deref(), Some("sdhci_pci"));
        assert_eq!(info.depends, ["sdhci", "cqhci"]);
        assert_eq!(
            parse_modinfo(&fake_ko("x", &[])).depends,
            Vec::<String>::new()
        );
    }

    #[test]
    fn closure_from_modinfo_is_dependency_first() {
        let t = tempfile::tempdir().unwrap();
        fake_tree(t.path()).unwrap();
        let tree = ModuleTree::open(t.path()).unwrap();
        let c = tree
            .closure(&["mmc_core", "sdhci", "sdhci-pci", "mmc_block", "loop"])
            .unwrap();
        let names: Vec<_> = c.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["mmc_core", "sdhci", "cqhci", "sdhci_pci", "mmc_block"]
        );
        assert_eq!(c[3].file_name, "sdhci-pci.ko");
        for (i, m) in c.iter().enumerate() {
            let deps = parse_modinfo(&std::fs::read(&m.path).unwrap()).depends;
            for d in deps {
                let j = names.iter().position(|n| *n == d).unwrap();
                assert!(j < i, "{d} must come before {}", m.name);
            }
        }
    }

    #[test]
    fn modules_dep_wins_over_modinfo() {
        let t = tempfile::tempdir().unwrap();
        fake_tree(t.path()).unwrap();
        std::fs::write(
            t.path().join("modules.dep"),
            "kernel/drivers/nvme/host/nvme.ko: kernel/drivers/mmc/core/mmc_core.ko\n\
             kernel/drivers/mmc/core/mmc_core.ko:\n",
        )
        .unwrap();
        let tree = ModuleTree::open(t.path()).unwrap();
        let names: Vec<_> = tree
            .closure(&["nvme"])
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["mmc_core", "nvme"]);
    }

    #[test]
    fn missing_module_names_who_needed_it() {
        let t = tempfile::tempdir().unwrap();
        fake_tree(t.path()).unwrap();
        std::fs::write(
            t.path().join("kernel/drivers/mmc/host/sdhci.ko"),
            fake_ko("sdhci", &["led_class"]),
        )
        .unwrap();
        let tree = ModuleTree::open(t.path()).unwrap();
        match tree.closure(&["sdhci-pci"]) {
            Err(Error::NotFound {
                name, needed_by, ..
            }) => {
                assert_eq!(name, "led_class");
                assert_eq!(needed_by, "sdhci");
            }
            other => panic!("{other:?}"),
        }
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            ModuleTree::open(empty.path()),
            Err(Error::NotAModuleTree { .. })
        ));
    }

    #[test]
    fn compressed_modules_are_read() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("kernel");
        std::fs::create_dir_all(&d).unwrap();
        let ko = fake_ko("a", &[]);
        std::fs::write(d.join("a.ko.zst"), zstd::bulk::compress(&ko, 3).unwrap()).unwrap();
        let tree = ModuleTree::open(t.path()).unwrap();
        let c = tree.closure(&["a"]).unwrap();
        assert_eq!(c[0].file_name, "a.ko");
        assert_eq!(read_module(&c[0].path).unwrap(), ko);
    }
}
