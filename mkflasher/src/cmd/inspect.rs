//! `mkflasher inspect FILE`: say what a file is and what is in it: a card
//! image (table, partitions, flash-boot files, payload manifest, unit log), a
//! bundle (manifest summary), a unit log, or an initramfs (archive listing).

use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use flasher_format::bundle::{self, ExtentKind};
use flasher_format::card as layout;
use flasher_format::record;
use flasher_format::units::iec;

use crate::card;
use crate::cpio;
use crate::disk;
use crate::fat;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A card image, bundle, unit log (raw flasher-log contents) or initramfs.
    pub file: PathBuf,
}

fn io_err(ctx: String) -> impl FnOnce(std::io::Error) -> crate::Error {
    move |e| crate::Error::Io(flasher_format::io::IoError::new(ctx, e))
}

/// Describe a bundle manifest.
pub fn describe_bundle(o: &bundle::Opened, out: &mut String) {
    let m = &o.manifest;
    let _ = writeln!(out, "bundle version {}", m.version);
    let _ = writeln!(
        out,
        "  image size     {} ({})",
        m.image_size,
        iec(m.image_size)
    );
    let _ = writeln!(out, "  image sha256   {}", m.image_sha256);
    let _ = writeln!(
        out,
        "  data {} / must-be-zero {} / dont-care {}",
        iec(m.bytes_of(ExtentKind::Data)),
        iec(m.bytes_of(ExtentKind::MustBeZero)),
        iec(m.bytes_of(ExtentKind::DontCare))
    );
    let _ = writeln!(
        out,
        "  {} extents, {} chunks of {} ({}), {} compressed",
        m.extents.len(),
        m.chunks.len(),
        iec(m.chunk_size),
        m.compression,
        iec(m.data_len())
    );
    if let Some(n) = &m.source.name {
        let _ = writeln!(out, "  source         {n}");
    }
    if !m.created_by.is_empty() {
        let _ = writeln!(out, "  created by     {}", m.created_by);
    }
    // The signature checked on its own (no trusted keys): who signed, and
    // whether it still verifies.
    let signature = match bundle::Trust::default().check(o) {
        Ok(bundle::Signer::Unsigned) => "none (unsigned)".to_string(),
        Ok(bundle::Signer::Key(fp)) => format!("ed25519, valid, signed by {fp}"),
        Err(e) => format!("INVALID: {e}"),
    };
    let _ = writeln!(out, "  signature      {signature}");
    for f in &m.files {
        let _ = writeln!(
            out,
            "  pinned file    {} ({} bytes, sha256 {})",
            f.name, f.size, f.sha256
        );
    }
}

/// Describe the unit records in a log region of `capacity` bytes.
pub fn describe_log<R: Read + Seek>(
    dev: &mut R,
    capacity: u64,
    out: &mut String,
) -> crate::Result<()> {
    let scan = record::scan(dev, capacity).map_err(flasher::Error::from)?;
    let _ = writeln!(
        out,
        "unit log: {} record(s), {} of {} bytes used, tail: {:?}",
        scan.records.len(),
        scan.end,
        capacity,
        scan.tail
    );
    for (off, r) in &scan.records {
        // A claim written before the first write carries a placeholder
        // result; without a later record it means the run never finished.
        let result = match (&r.result, r.attempt_started) {
            (_, true) => "attempt started (its result is a later record, if any)".to_string(),
            (record::Outcome::Ok, false) => "ok".to_string(),
            (record::Outcome::Error { class, message }, false) => {
                format!("error {class}: {message}")
            }
        };
        let _ = writeln!(
            out,
            "  #{} @{off}: board {} target {} ({}{}) image {}{} wrote {}{} -> {result}",
            r.seq,
            r.board,
            r.target.device,
            iec(r.target.size_bytes),
            r.target
                .serial
                .as_ref()
                .map(|s| format!(", serial {s}"))
                .unwrap_or_default(),
            r.image_digest.get(..16).unwrap_or(&r.image_digest),
            if r.signer.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.signer)
            },
            iec(r.bytes_written),
            r.unit_row
                .as_ref()
                .map(|u| format!(", unit row {}", u.index))
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Describe a card image.
pub fn describe_card(path: &Path, out: &mut String) -> crate::Result<()> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .or_else(|_| std::fs::File::open(path))
            .map_err(io_err(format!("opening {}", path.display())))
    };
    let mut f = open()?;
    let (table, parts) = disk::read_table(&mut f)?;
    let _ = writeln!(
        out,
        "{}: card image, {:?} partition table",
        path.display(),
        table
    );
    for p in &parts {
        let _ = writeln!(
            out,
            "  #{} {:<16} type {:<38} offset {:>11} size {:>10}{}",
            p.number,
            p.name,
            p.part_type.id(),
            p.offset,
            iec(p.size),
            if p.bootable { " bootable" } else { "" }
        );
    }
    let by = |name: &str, num: u32| disk::find_partition(table, &parts, name, Some(num));
    if let Some(p) = by(card::BOOT_NAME, card::BOOT_NUMBER) {
        let mut vol = disk::PartitionSlice::new(open()?, p.offset, p.size);
        match fat::describe(&mut vol) {
            Ok((label, ty)) => {
                let _ = writeln!(out, "flash-boot: {ty:?} volume {label:?}");
                for e in fat::list(&mut vol)? {
                    if !e.is_dir {
                        let _ = writeln!(out, "  {:<36} {:>10}", e.path, iec(e.size));
                    }
                }
                for name in [layout::CMDLINE_FILE, layout::CONFIG_JSON] {
                    if let Ok(b) = fat::read_file(&mut vol, name) {
                        let _ = writeln!(out, "  {name}: {}", String::from_utf8_lossy(&b).trim());
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "flash-boot: not a readable FAT volume ({e})");
            }
        }
    }
    if let Some(p) = by(card::PAYLOAD_NAME, card::PAYLOAD_NUMBER) {
        let mut s = disk::PartitionSlice::new(open()?, p.offset, p.size);
        match bundle::read_manifest(&mut s) {
            Ok(o) => {
                let _ = write!(out, "flasher-payload: ");
                describe_bundle(&o, out);
            }
            Err(e) => {
                let _ = writeln!(out, "flasher-payload: no valid bundle ({e})");
            }
        }
    }
    if let Some(p) = card::find_log(table, &parts) {
        let mut s = disk::PartitionSlice::new(open()?, p.offset, p.size);
        let _ = write!(out, "flasher-log: ");
        describe_log(&mut s, p.size, out)?;
    }
    Ok(())
}

/// Describe any supported file.
pub fn describe(path: &Path) -> crate::Result<String> {
    let mut f = std::fs::File::open(path).map_err(io_err(format!("opening {}", path.display())))?;
    let len = f
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?
        .len();
    let mut head = vec![0u8; 512.min(len as usize)];
    f.read_exact(&mut head)
        .map_err(io_err(format!("reading {}", path.display())))?;
    let mut out = String::new();
    if head.starts_with(&bundle::MAGIC) {
        let o = bundle::read_manifest_file(path).map_err(flasher::Error::from)?;
        let _ = write!(out, "{}: ", path.display());
        describe_bundle(&o, &mut out);
    } else if head.starts_with(&record::MAGIC) {
        f.seek(SeekFrom::Start(0))
            .map_err(io_err(format!("seeking {}", path.display())))?;
        let _ = write!(out, "{}: ", path.display());
        describe_log(&mut f, len, &mut out)?;
    } else if disk::read_table(&mut f).is_ok() {
        describe_card(path, &mut out)?;
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || head.starts_with(&[0x1f, 0x8b])
        || head.starts_with(b"070701")
    {
        let data = std::fs::read(path).map_err(io_err(format!("reading {}", path.display())))?;
        let raw = cpio::decompress(&data)?;
        let Some(recs) = cpio::parse(&raw) else {
            let _ = writeln!(
                out,
                "{}: compressed data, not a newc cpio archive",
                path.display()
            );
            return Ok(out);
        };
        let _ = writeln!(
            out,
            "{}: initramfs, {} entries, {} uncompressed",
            path.display(),
            recs.len(),
            iec(raw.len() as u64)
        );
        for r in recs {
            let _ = writeln!(
                out,
                "  {:06o} {:>10} {}",
                r.header.mode,
                r.data.len(),
                r.name
            );
        }
    } else {
        return Err(crate::Error::Usage(format!(
            "{}: not a card image, bundle, unit log or initramfs (first bytes {:02x?})",
            path.display(),
            &head[..head.len().min(8)]
        )));
    }
    Ok(out)
}

pub fn run(args: Args) -> crate::Result<()> {
    print!("{}", describe(&args.file)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_log_and_unknown() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("log.bin");
        let mut c = std::io::Cursor::new(vec![0u8; 64 << 10]);
        let rec = record::UnitRecord {
            seq: 0,
            timestamp_unix_s: None,
            flasher_version: "0.1.0".into(),
            board: "qemu-x86_64-sd".into(),
            target: record::TargetIdentity {
                device: "mmcblk1".into(),
                size_bytes: 1 << 30,
                ..Default::default()
            },
            image_digest: "ab".repeat(32),
            signer: "unsigned".into(),
            bytes_written: 123,
            phases: vec![],
            result: record::Outcome::Ok,
            attempt_started: false,
            unit_row: None,
            health: None,
        };
        record::append(&mut c, 64 << 10, &record::attempt_started(&rec)).unwrap();
        record::append(&mut c, 64 << 10, &rec).unwrap();
        std::fs::write(&p, c.into_inner()).unwrap();
        let d = describe(&p).unwrap();
        assert!(d.contains("2 record(s)") && d.contains("mmcblk1"), "{d}");
        let lines: Vec<&str> = d.lines().filter(|l| l.contains("mmcblk1")).collect();
        assert!(
            lines[0].ends_with("-> attempt started (its result is a later record, if any)"),
            "{d}"
        );
        assert!(lines[1].ends_with("-> ok"), "{d}");
        let q = t.path().join("junk");
        std::fs::write(&q, b"hello").unwrap();
        assert!(matches!(describe(&q), Err(crate::Error::Usage(_))));
    }
}
