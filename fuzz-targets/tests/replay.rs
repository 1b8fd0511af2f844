//! Replays the checked-in fuzz corpus through the target functions: every file
//! in `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/`. A parser that
//! panics or breaks an invariant on any of them fails this test. This is what
//! CI runs instead of fuzzing (docs/fuzzing.md).

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = rd
        .map(|e| e.expect("read a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Run every input of `name` and return how many there were.
fn replay(name: &str) -> usize {
    let (_, target) = fuzz_targets::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let mut n = 0;
    for sub in ["corpus", "regressions"] {
        for path in inputs(&fuzz_dir().join(sub).join(name)) {
            let data = std::fs::read(&path).expect("read a corpus file");
            let r = std::panic::catch_unwind(|| target(&data));
            assert!(r.is_ok(), "fuzz target {name} fails on {}", path.display());
            n += 1;
        }
    }
    n
}

macro_rules! replay_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            let n = replay(stringify!($name));
            // A missing or emptied corpus must not pass silently.
            assert!(n >= 3, "only {n} corpus files for {}", stringify!($name));
        }
    )*};
}

replay_tests!(bundle, disk, record, cmdline, board, bmap, card);

/// Every target has a test above, a fuzz binary and a corpus folder.
#[test]
fn every_target_is_replayed_and_fuzzable() {
    for (name, _) in fuzz_targets::TARGETS {
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{name}.rs"
        );
        assert!(
            fuzz_dir().join("corpus").join(name).is_dir(),
            "no fuzz/corpus/{name}/"
        );
    }
}

/// The hand-made seeds are valid inputs, so fuzzing starts from inputs that
/// reach the parsing behind the magic numbers and checksums (and this replay
/// exercises the round trips, not only the early refusals).
#[test]
fn seeds_are_accepted_by_their_parsers() {
    let seed = |t: &str, f: &str| std::fs::read(fuzz_dir().join("corpus").join(t).join(f)).unwrap();
    for (f, version) in [
        ("bundle-3extents", 1),
        ("bundle-tiny", 1),
        ("bundle-bmap-dontcare", 1),
        ("bundle-v2-blake3", 2),
    ] {
        let data = seed("bundle", f);
        let mut r = std::io::Cursor::new(&data[..]);
        let opened = flasher_format::bundle::read_manifest(&mut r).expect(f);
        let m = &opened.manifest;
        assert_eq!(m.version, version, "{f}");
        for raw in flasher_format::bundle::ChunkReader::new(&mut r, m) {
            let raw = raw.expect(f);
            let mut out = vec![0u8; raw.chunk.length as usize];
            flasher_format::bundle::decode_chunk(&raw, &mut out).expect(f);
        }
    }
    for (f, n, gpt) in [
        ("gpt-512-3-partitions", 3, true),
        ("gpt-512-damaged-primary", 3, true),
        ("gpt-512-128-entries", 1, true),
        ("gpt-4096-primary-only", 1, true),
        ("mbr-4-partitions", 4, false),
    ] {
        let t = flasher_disk::Table::from_bytes(&seed("disk", f)).expect(f);
        assert_eq!((t.partitions.len(), t.is_gpt()), (n, gpt), "{f}");
    }
    for (f, n) in [("three-records-then-erased", 3), ("torn-second-record", 1)] {
        let data = seed("record", f);
        let s =
            flasher_format::record::scan(&mut std::io::Cursor::new(&data[..]), data.len() as u64)
                .expect(f);
        assert_eq!(s.records.len(), n, "{f}");
    }
    let o = flasher_format::cmdline::Options::parse(
        &String::from_utf8(seed("cmdline", "every-option")).unwrap(),
    )
    .unwrap();
    assert_eq!(o.board.as_deref(), Some("a board"));
    for e in std::fs::read_dir(fuzz_dir().join("corpus/board")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        let f = p.file_name().unwrap().to_str().unwrap();
        let b = if f.ends_with(".json") {
            boards::parse_json(f, &text)
        } else {
            boards::parse(f, &text)
        };
        b.unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    for e in std::fs::read_dir(fuzz_dir().join("corpus/bmap")).unwrap() {
        let p = e.unwrap().path();
        let text = std::fs::read_to_string(&p).unwrap();
        mkflasher::source::bmap::Bmap::parse(&p, &text, true)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// The card corpus is what its names say: the plain card's config is read
/// (so the fuzzer starts from inputs that reach the copy), and each hostile
/// name is refused as a bad name.
#[test]
fn card_seeds_are_read_or_refused_as_named() {
    use flasher::config_inject::{CardConfig, Error};
    let dir = fuzz_dir().join("corpus/card");
    let read = |name: &str| CardConfig::read(std::fs::File::open(dir.join(name)).unwrap());
    let plain = read("plain-config.img").expect("the plain card");
    assert_eq!(plain.files().len(), 3, "{:?}", plain.files());
    assert_eq!(
        read("empty-connections.img").unwrap().connections,
        Some(vec![])
    );
    for hostile in [
        "duplicate-long-name.img",
        "slash-in-name.img",
        "dotdot-in-name.img",
        "control-char.img",
    ] {
        assert!(
            matches!(read(hostile), Err(Error::BadCardName { .. })),
            "{hostile}"
        );
    }
}
