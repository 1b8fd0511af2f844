//! The kernel command-line parser (`flasher_format::cmdline`): `/init` reads
//! `/proc/cmdline`, which the card's cmdline.txt (editable by anyone) sets.

use flasher_format::cmdline::{arg, key, split, Options, Verify};

pub fn cmdline(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let words = split(text);
    for (k, v) in &words {
        word_round_trip(k, v.as_deref());
    }
    if let Ok(o) = Options::parse(text) {
        options_round_trip(&o);
    }
}

/// `arg(k, v)` splits back into `(k, v)` for any key and value it can
/// represent (no quotes; a key without spaces or `=`).
fn word_round_trip(k: &str, v: Option<&str>) {
    let Some(v) = v else { return };
    if k.contains(['"', '=']) || k.contains(char::is_whitespace) || v.contains('"') || k == "--" {
        return;
    }
    let w = arg(k, v);
    assert_eq!(
        split(&w),
        vec![(k.to_string(), Some(v.to_string()))],
        "{w:?} splits back"
    );
}

/// Options rendered with `arg` parse back to the same options.
fn options_round_trip(o: &Options) {
    let events = o.events.as_ref().map(|p| p.to_string_lossy().into_owned());
    let texts = [&o.board, &o.target, &o.boot_disk, &events];
    // `arg` does not escape quotes (the kernel has no escape for them).
    if texts
        .iter()
        .any(|t| t.as_deref().is_some_and(|t| t.contains('"')))
    {
        return;
    }
    let mut words = Vec::new();
    let mut text = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            words.push(arg(k, v));
        }
    };
    text(key::BOARD, &o.board);
    text(key::TARGET, &o.target);
    text(key::BOOT_DISK, &o.boot_disk);
    text(key::EVENTS, &events);
    let verify = match o.verify {
        Verify::Full => "full",
        Verify::None => "none",
    };
    words.push(arg(key::VERIFY, verify));
    words.push(arg(key::AFTER, o.after));
    words.push(arg(key::ON_FAILURE, o.on_failure));
    words.push(arg(key::DRY_RUN, u8::from(o.dry_run)));
    words.push(arg(key::EXPAND_DATA, u8::from(o.expand_data)));
    words.push(arg(key::RETRY_UNIT, u8::from(o.retry_unit)));
    words.push(arg(key::HEALTH, u8::from(o.health)));
    words.push(arg(key::SKIP_EQUAL, u8::from(o.skip_equal)));
    words.push(arg(key::TIMEOUT, o.timeout.as_secs()));
    let line = words.join(" ");
    let back = Options::parse(&line).expect("rendered options parse");
    assert_eq!(
        back,
        Options {
            warnings: Vec::new(),
            ..o.clone()
        },
        "options round trip through {line:?}"
    );
}
