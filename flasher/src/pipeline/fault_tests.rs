//! Fail closed, proved: the fault matrix (a write error and a read-back
//! mismatch in every phase of a run, on a target that held an old, valid,
//! bootable image) and the power-cut property (a cut after any write, with a
//! volatile write cache that loses some or all unflushed writes). The images
//! are real: made with `sfdisk` and `mkfs.vfat`, files added with `mcopy`;
//! `sfdisk --dump` and `blkid -p` judge the result. The whole run is driven
//! as the init drives it: engine (commit deferred), raw bootloader, config
//! injection, table commit.

use super::commit::TableCommit;
use super::{post, write_to, Target, WriteOptions};
use crate::Error as CrateError;
use flasher_format::bundle::{BundleWriter, WriterOptions};
use std::io::{self, Cursor, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

const MIB: u64 = 1 << 20;
const IMAGE: u64 = 16 * MIB;
const TARGET: u64 = 20 * MIB;
/// The raw bootloader placement: in the gap before the first partition.
const BL_OFF: u64 = 256 << 10;
/// The boot FAT of every image here: 1 MiB .. 7 MiB.
const P1: (u64, u64) = (MIB, 6 * MIB);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Gpt,
    Mbr,
}

fn tools_present() -> bool {
    ["sfdisk", "mkfs.vfat", "mcopy", "blkid"].iter().all(|t| {
        Command::new("sh")
            .args([
                "-c",
                &format!("command -v {t} || test -x /usr/sbin/{t} || test -x /sbin/{t}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let path = "/usr/sbin:/sbin:/usr/bin:/bin";
    let mut c = Command::new(cmd);
    c.args(args).env("PATH", path).env("MTOOLS_SKIP_CHECK", "1");
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// A FAT filesystem image of `kib` KiB holding `files`.
fn fat(dir: &Path, name: &str, kib: u64, files: &[(&str, &str)]) -> Vec<u8> {
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    let ps = p.to_str().unwrap();
    assert!(run("mkfs.vfat", &["-C", ps, &kib.to_string()], None)
        .status
        .success());
    for (n, body) in files {
        let src = dir.join(format!("{name}.{n}"));
        std::fs::write(&src, body).unwrap();
        let o = run(
            "mcopy",
            &["-i", ps, src.to_str().unwrap(), &format!("::{n}")],
            None,
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    std::fs::read(&p).unwrap()
}

/// A bootable-looking disk image of `size` bytes: `label` table, a FAT boot
/// partition at 1 MiB with `files`, a Linux partition after it with `seed`
/// data at 8 MiB and zeros elsewhere.
fn image(
    dir: &Path,
    name: &str,
    size: u64,
    label: Label,
    files: &[(&str, &str)],
    seed: u8,
) -> Vec<u8> {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; size as usize]).unwrap();
    let script = match label {
        Label::Gpt => "label: gpt\nstart=2048, size=12288, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name=boot\nstart=14336, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n",
        Label::Mbr => "label: dos\nstart=2048, size=12288, type=c, bootable\nstart=14336, type=83\n",
    };
    let o = run(
        "sfdisk",
        &["--no-reread", "--no-tell-kernel", p.to_str().unwrap()],
        Some(script),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut img = std::fs::read(&p).unwrap();
    let f = fat(dir, &format!("{name}.fat"), P1.1 >> 10, files);
    img[P1.0 as usize..(P1.0 + P1.1) as usize].copy_from_slice(&f);
    for (i, b) in img[8 * MIB as usize..9 * MIB as usize]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(seed) | 1;
    }
    img
}

/// A bundle of `img` with 1 MiB chunks: zero 64 KiB blocks become
/// must-be-zero extents, so the run zeroes ranges too. The boot FAT's first
/// 4 KiB (boot sector, FSInfo, the backup boot sector) is a held-back
/// signature range, as libblkid reports it for a real image: the config step
/// must find and change it through the pending commit.
fn bundle(img: &[u8]) -> Vec<u8> {
    let opts = WriterOptions {
        chunk_size: MIB,
        level: 1,
        workers: 2,
        hold: vec![flasher_format::bundle::HoldRange {
            offset: P1.0,
            length: 4096,
            what: "vfat signature in partition 1".into(),
        }],
        ..Default::default()
    };
    let mut w = BundleWriter::new(opts, Cursor::new(Vec::new())).unwrap();
    for b in img.chunks(64 << 10) {
        if b.iter().all(|&x| x == 0) {
            w.push_zero(b.len() as u64).unwrap();
        } else {
            w.push_data(b).unwrap();
        }
    }
    let mut out = Vec::new();
    w.finish(&mut out).unwrap();
    out
}

fn blob() -> Vec<u8> {
    (0..8192u32).map(|i| (i % 253) as u8 | 0x40).collect()
}

/// Which part of the run a fault is armed for (set by [`full_run`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Engine,
    Bootloader,
    Config,
    Commit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Every matching write fails with EIO.
    Eio,
    /// The first two matching writes (the write and its retry) land with one
    /// byte changed; the medium says nothing.
    Corrupt,
    /// Every matching read (the read-back) fails with EIO.
    ReadEio,
    /// Every matching write is swallowed: it reports success and nothing
    /// lands (SD firmware, QEMU's `sd-card` on a host-side error).
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Fault {
    stage: Stage,
    /// Target bytes [start, end) the fault covers.
    range: (u64, u64),
    /// Matching writes let through first (the start-of-run wipe, say).
    skip: usize,
    kind: Kind,
    /// How many matching writes `Corrupt` changes (2: the write and its retry;
    /// more for config, which rewrites the same FAT sectors many times).
    times: usize,
}

/// A [`Target`] over a `Vec<u8>` that fails or corrupts writes per [`Fault`].
struct Faulty {
    data: Vec<u8>,
    fault: Option<Fault>,
    stage: Stage,
    hits: usize,
    pos: u64,
}

impl Faulty {
    fn new(data: Vec<u8>, fault: Option<Fault>) -> Self {
        Faulty {
            data,
            fault,
            stage: Stage::Engine,
            hits: 0,
            pos: 0,
        }
    }
}

impl Read for Faulty {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size().saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}
impl Write for Faulty {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
impl Seek for Faulty {
    fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
        self.pos = match p {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.size().checked_add_signed(d).unwrap(),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
        };
        Ok(self.pos)
    }
}

impl Target for Faulty {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let end = off + data.len() as u64;
        assert!(end <= self.size(), "write beyond the end");
        let hit = self
            .fault
            .filter(|f| f.stage == self.stage && off < f.range.1 && f.range.0 < end);
        if let Some(f) = hit {
            self.hits += 1;
            if self.hits > f.skip {
                match f.kind {
                    // A failed write is taken not to have landed at all.
                    Kind::Eio => return Err(io::Error::from_raw_os_error(libc::EIO)),
                    Kind::Corrupt if self.hits <= f.skip + f.times => {
                        self.data[off as usize..end as usize].copy_from_slice(data);
                        self.data[off.max(f.range.0) as usize] ^= 0x5a;
                        return Ok(());
                    }
                    Kind::Lost => return Ok(()),
                    Kind::Corrupt | Kind::ReadEio => {}
                }
            }
        }
        self.data[off as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = off as usize + buf.len();
        if end as u64 > self.size() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        if let Some(f) = self.fault {
            let (a, b) = (off, end as u64);
            if f.kind == Kind::ReadEio && f.stage == self.stage && a < f.range.1 && f.range.0 < b {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        buf.copy_from_slice(&self.data[off as usize..end]);
        Ok(())
    }
    fn zero_range(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.write_at(off, &vec![0u8; len as usize])
    }
    fn sync(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A target that can be told which stage of the run is next.
trait Staged: Target {
    fn stage(&mut self, s: Stage);
}
impl Staged for Faulty {
    fn stage(&mut self, s: Stage) {
        self.stage = s;
        self.hits = 0;
    }
}

/// The run as the init does it: engine (commit deferred), raw bootloader,
/// config injection, then the table commit.
fn full_run<T: Staged>(t: &mut T, bundle: &[u8], card: &[u8], expand: bool) -> crate::Result<()> {
    let opts = WriteOptions {
        workers: 2,
        defer_commit: true,
        require_boot_fat: true,
        expand_data: expand,
        ..Default::default()
    };
    let r = write_to(Cursor::new(bundle), t, &opts, &crate::progress::Null)?;
    let mut c: TableCommit = r.commit.clone().expect("deferred commit");
    t.stage(Stage::Bootloader);
    post::place_raw(t, &mut c, BL_OFF, &blob(), "u-boot.bin")?;
    t.stage(Stage::Config);
    let span = post::target_fat(t, &c)
        .map_err(|e| {
            CrateError::Io(flasher_format::io::IoError::new(
                "read the table to be committed",
                e,
            ))
        })?
        .ok_or_else(|| CrateError::Usage("no FAT in the table to be committed".into()))?;
    assert_eq!(span, P1);
    let card = crate::config_inject::CardConfig::read(Cursor::new(card.to_vec()))?;
    post::inject_config(t, &mut c, span, &card, None)?;
    t.stage(Stage::Commit);
    c.apply(t)?;
    Ok(())
}

/// What `sfdisk --dump` and `blkid -p` see in `bytes`: (sfdisk found a
/// table, blkid found a PTTYPE).
fn tools_see_table(dir: &Path, bytes: &[u8]) -> (bool, bool) {
    let p = dir.join("after.img");
    std::fs::write(&p, bytes).unwrap();
    let ps = p.to_str().unwrap();
    let dump = run("sfdisk", &["--dump", ps], None);
    let sfdisk = dump.status.success() && String::from_utf8_lossy(&dump.stdout).contains("start=");
    let blkid = run("blkid", &["-p", "-o", "export", ps], None);
    (
        sfdisk,
        String::from_utf8_lossy(&blkid.stdout).contains("PTTYPE="),
    )
}

fn gpt_header_at(bytes: &[u8], off: u64) -> bool {
    &bytes[off as usize..off as usize + 8] == flasher_disk::gpt::SIGNATURE
}

struct Setup {
    dir: tempfile::TempDir,
    card: Vec<u8>,
}

fn setup() -> Option<Setup> {
    if !tools_present() {
        eprintln!("skipped: sfdisk, mkfs.vfat, mcopy or blkid missing");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let card = fat(
        dir.path(),
        "card.fat",
        2048,
        &[
            ("config.json", "{\"hostname\":\"unit\"}"),
            ("hostname", "unit-42\n"),
        ],
    );
    Some(Setup { dir, card })
}

/// The phases of a run with the fault that hits each (see the module docs).
fn faults(label: Label, kind: Kind) -> Vec<(&'static str, Fault)> {
    let f = |stage, a: u64, skip| Fault {
        stage,
        range: (a, a + 512),
        skip,
        kind,
        times: 2,
    };
    let mut v = vec![
        // Partition 1's FAT, past its held-back first 4 KiB, streamed.
        ("stream", f(Stage::Engine, P1.0 + 8192, 0)),
        // A must-be-zero range of partition 2, outside the held-back parts.
        ("zero ranges", f(Stage::Engine, 12 * MIB, 0)),
        // Inside the image's last MiB (the target's last MiB is wiped elsewhere).
        ("held-back tail", f(Stage::Engine, IMAGE - 8192, 0)),
        // Inside the first MiB, after the wipe (the first matching write).
        ("held-back head", f(Stage::Engine, 64 << 10, 1)),
        ("bootloader", f(Stage::Bootloader, BL_OFF + 4096, 0)),
        (
            "config",
            Fault {
                stage: Stage::Config,
                range: P1,
                skip: 0,
                kind,
                times: usize::MAX,
            },
        ),
        // The FAT's boot sector: a held-back signature, written by the commit.
        ("held-back signature", f(Stage::Commit, P1.0, 0)),
        ("sector 0", f(Stage::Commit, 0, 0)),
    ];
    if label == Label::Gpt {
        // The backup entry array at the target's real end, after the wipe.
        v.push(("fix-up", f(Stage::Engine, TARGET - 33 * 512, 1)));
        v.push(("primary GPT header", f(Stage::Commit, 512, 0)));
        v.push(("backup GPT header", f(Stage::Commit, TARGET - 512, 0)));
    }
    v
}

/// Each case: a target holding an old image (GPT or MBR), a new image (GPT
/// or MBR), a fault in one phase (write EIO, silent corruption, read-back EIO); the run fails with the variant the fault
/// implies, and afterwards sector 0 is zero and neither `sfdisk` nor `blkid`
/// finds a partition table. Then the same target without a fault: the image
/// lands bit-exact outside what fix-ups, bootloader and config change.
/// Issue 22, finding 1: a write swallowed in a must-be-zero range of the
/// image's last MiB, on a target full of noise, must not end in a verified
/// success over noise. Every sector of that last MiB, and of the first MiB,
/// is tried (the held-back regions), with GPT and MBR images.
#[test]
fn a_swallowed_write_in_a_held_back_zero_range_never_verifies() {
    let Some(s) = setup() else { return };
    let d = s.dir.path();
    let noise: Vec<u8> = (0..TARGET)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1)
        .collect();
    for label in [Label::Gpt, Label::Mbr] {
        let new = image(d, "new.img", IMAGE, label, &[("kernel.img", "k")], 7);
        let b = bundle(&new);
        let sectors = (IMAGE - MIB..IMAGE)
            .step_by(64 << 10)
            .chain((0..MIB).step_by(64 << 10));
        for at in sectors {
            let fault = Fault {
                stage: Stage::Engine,
                range: (at + 4096, at + 4096 + 512),
                skip: 0,
                kind: Kind::Lost,
                times: 0,
            };
            let mut t = Faulty::new(noise.clone(), Some(fault));
            let r = full_run(&mut t, &b, &s.card, label == Label::Mbr);
            let case = format!("{label:?}, swallowed write at byte {}", at + 4096);
            match r {
                Ok(()) => {
                    let (a, z) = ((at + 4096) as usize, (at + 4096 + 512) as usize);
                    assert!(
                        t.data[a..z] == new[a..z] || (a < 1024),
                        "{case}: success reported, the target differs from the image there"
                    );
                }
                Err(e) => assert!(
                    matches!(e, CrateError::Pipeline(super::Error::VerifyMismatch { .. })),
                    "{case}: {e:?}"
                ),
            }
        }
    }
}

#[test]
fn fault_matrix_leaves_no_table() {
    let Some(s) = setup() else { return };
    let d = s.dir.path();
    let old_files = [
        ("kernel.img", "old kernel"),
        ("cmdline.txt", "root=/dev/old"),
    ];
    let new_files = [("kernel.img", "new kernel"), ("config.txt", "arm_64bit=1")];
    let mut cases = 0;
    for new_label in [Label::Gpt, Label::Mbr] {
        let new = image(d, "new.img", IMAGE, new_label, &new_files, 7);
        let b = bundle(&new);
        for old_label in [Label::Gpt, Label::Mbr] {
            let old = image(d, "old.img", TARGET, old_label, &old_files, 3);
            assert_eq!(
                tools_see_table(d, &old),
                (true, true),
                "the old image is bootable"
            );
            for kind in [Kind::Eio, Kind::Corrupt, Kind::ReadEio] {
                for (phase, fault) in faults(new_label, kind) {
                    let case = format!("{new_label:?} over {old_label:?}, {kind:?} in {phase}");
                    let mut t = Faulty::new(old.clone(), Some(fault));
                    let e =
                        full_run(&mut t, &b, &s.card, new_label == Label::Mbr).expect_err(&case);
                    let expected = match kind {
                        Kind::Eio => matches!(
                            e,
                            CrateError::Pipeline(
                                super::Error::Write { .. } | super::Error::Zero { .. }
                            ) | CrateError::ConfigInject(_)
                        ),
                        Kind::Corrupt | Kind::Lost => {
                            matches!(e, CrateError::Pipeline(super::Error::VerifyMismatch { .. }))
                                || (phase == "config" && matches!(e, CrateError::ConfigInject(_)))
                        }
                        // Config reads its own FAT while writing: any error there.
                        Kind::ReadEio => {
                            phase == "config"
                                || matches!(e, CrateError::Pipeline(super::Error::Read { .. }))
                        }
                    };
                    assert!(expected, "{case}: unexpected error {e:?}");
                    assert!(
                        t.data[..512].iter().all(|&x| x == 0),
                        "{case}: sector 0 not zero"
                    );
                    let boot = P1.0 as usize..P1.0 as usize + 512;
                    assert_ne!(
                        t.data[boot.clone()],
                        new[boot],
                        "{case}: the image's FAT boot sector is on the target"
                    );
                    assert_eq!(tools_see_table(d, &t.data), (false, false), "{case}");
                    assert!(!gpt_header_at(&t.data, 512), "{case}: primary GPT header");
                    assert!(
                        !gpt_header_at(&t.data, TARGET - 512),
                        "{case}: backup GPT header"
                    );
                    cases += 1;
                }
            }
            // The happy path over the same old image.
            let mut t = Faulty::new(old.clone(), None);
            full_run(&mut t, &b, &s.card, new_label == Label::Mbr).unwrap();
            assert_eq!(tools_see_table(d, &t.data), (true, true));
            let out = &t.data;
            // Bit-exact except: sector 0 (protective MBR size / grown MBR entry),
            // the GPT header (new backup location), the image's own backup header
            // (moved to the target's end), the bootloader and partition 1 (config).
            let mut skip: Vec<(u64, u64)> = vec![(0, 512), (BL_OFF, 8192), P1];
            if new_label == Label::Gpt {
                skip.push((512, 512));
                skip.push((IMAGE - 512, 512));
            }
            for (i, (a, b)) in out[..IMAGE as usize].iter().zip(&new).enumerate() {
                let i = i as u64;
                if a != b && !skip.iter().any(|&(o, n)| o <= i && i < o + n) {
                    panic!("{new_label:?} over {old_label:?}: byte {i} differs from the image");
                }
            }
            assert_eq!(&out[BL_OFF as usize..BL_OFF as usize + 8192], &blob()[..]);
        }
    }
    assert_eq!(cases, 3 * 2 * (11 + 8), "{cases} cases");
}

/// A refusal before the first write leaves the target byte for byte as it was:
/// a corrupt GPT in the image, `--expand-data` on an extended last partition,
/// an image with no FAT where config needs one.
#[test]
fn refusals_leave_the_target_untouched() {
    let Some(s) = setup() else { return };
    let d = s.dir.path();
    let old = image(d, "old.img", TARGET, Label::Gpt, &[("a", "b")], 3);
    // A corrupt primary GPT header CRC (byte 16..20 of LBA 1).
    let mut bad = image(d, "new.img", IMAGE, Label::Gpt, &[("k", "v")], 7);
    bad[512 + 16] ^= 0xff;
    // An MBR whose last partition is extended.
    let p = d.join("ext.img");
    std::fs::write(&p, vec![0u8; IMAGE as usize]).unwrap();
    let o = run(
        "sfdisk",
        &["--no-reread", "--no-tell-kernel", p.to_str().unwrap()],
        Some("label: dos\nstart=2048, size=12288, type=c\nstart=14336, size=8192, type=5\n"),
    );
    assert!(o.status.success());
    let ext = std::fs::read(&p).unwrap();
    // No FAT-typed partition.
    let p = d.join("nofat.img");
    std::fs::write(&p, vec![0u8; IMAGE as usize]).unwrap();
    run(
        "sfdisk",
        &["--no-reread", "--no-tell-kernel", p.to_str().unwrap()],
        Some("label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n"),
    );
    let nofat = std::fs::read(&p).unwrap();
    for (name, img, expand, is) in [
        ("corrupt GPT", bad, false, 0),
        ("expand extended", ext, true, 1),
        ("no boot FAT", nofat, false, 2),
    ] {
        let mut t = Faulty::new(old.clone(), None);
        let e = full_run(&mut t, &bundle(&img), &s.card, expand).expect_err(name);
        let ok = match is {
            0 => matches!(
                e,
                CrateError::Pipeline(super::Error::Refused(crate::fixup::Error::Table(_)))
            ),
            1 => matches!(
                e,
                CrateError::Pipeline(super::Error::Refused(
                    crate::fixup::Error::ExpandUnsupported { .. }
                ))
            ),
            _ => matches!(e, CrateError::Pipeline(super::Error::NoBootFat { .. })),
        };
        assert!(ok, "{name}: {e:?}");
        let class = match &e {
            CrateError::Pipeline(p) => p.class(),
            _ => flasher_format::ErrorClass::Internal,
        };
        assert_eq!(class, flasher_format::ErrorClass::PayloadInvalid, "{name}");
        assert!(t.data == old, "{name}: the target was written");
    }
}

/// A target with a volatile write cache: writes since the last flush sit in
/// the cache (reads see them) until `sync`. Power is cut after write number
/// `cut`; then every unflushed write is lost (`keep` = None) or a
/// pseudo-random subset of them survives (`keep` = Some(seed)).
struct Cached {
    durable: Vec<u8>,
    cache: Vec<(u64, Vec<u8>)>,
    writes: usize,
    cut: usize,
    dead: bool,
    stage: Stage,
    pos: u64,
}

impl Cached {
    fn new(data: Vec<u8>, cut: usize) -> Self {
        Cached {
            durable: data,
            cache: Vec::new(),
            writes: 0,
            cut,
            dead: false,
            stage: Stage::Engine,
            pos: 0,
        }
    }
    fn dead() -> io::Error {
        io::Error::new(io::ErrorKind::BrokenPipe, "power cut")
    }
    /// The medium after the cut.
    fn after_cut(mut self, keep: Option<u64>) -> Vec<u8> {
        let mut x = keep.unwrap_or(0) | 1;
        for (off, d) in std::mem::take(&mut self.cache) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if keep.is_some() && x % 2 == 0 {
                self.durable[off as usize..off as usize + d.len()].copy_from_slice(&d);
            }
        }
        self.durable
    }
}

impl Read for Cached {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.size().saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}
impl Write for Cached {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sync()
    }
}
impl Seek for Cached {
    fn seek(&mut self, p: SeekFrom) -> io::Result<u64> {
        self.pos = match p {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => self.size().checked_add_signed(d).unwrap(),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
        };
        Ok(self.pos)
    }
}
impl Target for Cached {
    fn size(&self) -> u64 {
        self.durable.len() as u64
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        if self.dead {
            return Err(Self::dead());
        }
        self.cache.push((off, data.to_vec()));
        self.writes += 1;
        if self.writes == self.cut {
            self.dead = true;
        }
        Ok(())
    }
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        if self.dead {
            return Err(Self::dead());
        }
        let end = off + buf.len() as u64;
        buf.copy_from_slice(&self.durable[off as usize..end as usize]);
        for (o, d) in &self.cache {
            let (a, b) = ((*o).max(off), (o + d.len() as u64).min(end));
            if a < b {
                buf[(a - off) as usize..(b - off) as usize]
                    .copy_from_slice(&d[(a - o) as usize..(b - o) as usize]);
            }
        }
        Ok(())
    }
    fn zero_range(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.write_at(off, &vec![0u8; len as usize])
    }
    fn sync(&mut self) -> io::Result<()> {
        if self.dead {
            return Err(Self::dead());
        }
        for (off, d) in std::mem::take(&mut self.cache) {
            self.durable[off as usize..off as usize + d.len()].copy_from_slice(&d);
        }
        Ok(())
    }
}
impl Staged for Cached {
    fn stage(&mut self, s: Stage) {
        self.stage = s;
    }
}

/// Cut after every write N of a whole run (old GPT image on the target, new
/// GPT image, bootloader, config, commit), losing all unflushed writes or a
/// random subset (4 seeds): the target is then the clean run's result, or its
/// sector 0 is zero; and a cut before the table commit leaves no GPT header
/// at LBA 1 or at the end either.
#[test]
fn power_cut_after_any_write_leaves_complete_or_unbootable() {
    let Some(s) = setup() else { return };
    let d = s.dir.path();
    let old = image(d, "old.img", TARGET, Label::Gpt, &[("a", "old")], 3);
    let new = image(d, "new.img", IMAGE, Label::Gpt, &[("k", "new")], 7);
    let b = bundle(&new);
    let mut clean = Cached::new(old.clone(), usize::MAX);
    full_run(&mut clean, &b, &s.card, false).unwrap();
    let total = clean.writes;
    let clean = clean.after_cut(None);
    assert!(total > 20, "{total} writes");
    // Writes from here on belong to the table commit (3 sectors + rewrites).
    let mut cuts = 0;
    for cut in 1..=total {
        for keep in [None, Some(1), Some(2), Some(3), Some(4)] {
            let mut t = Cached::new(old.clone(), cut);
            let r = full_run(&mut t, &b, &s.card, false);
            let stage = t.stage;
            let out = t.after_cut(keep);
            // Complete, or nothing of the new run durable (the cut came before
            // the wipe was flushed: old bytes, some of them wiped).
            if out == clean || out.iter().zip(&old).all(|(a, o)| a == o || *a == 0) {
                continue;
            }
            assert!(r.is_err() || cut == total, "cut {cut}: run claimed success");
            assert!(
                out[..512].iter().all(|&x| x == 0),
                "cut {cut} {keep:?}: sector 0 not zero"
            );
            if stage != Stage::Commit {
                assert!(
                    !gpt_header_at(&out, 512),
                    "cut {cut}: primary header before the commit"
                );
                assert!(
                    !gpt_header_at(&out, TARGET - 512),
                    "cut {cut}: backup header before the commit"
                );
            }
            cuts += 1;
        }
    }
    eprintln!("{total} writes in a run; {cuts} interrupted outcomes checked");
    assert!(cuts > total, "{cuts} interrupted outcomes checked");
}
