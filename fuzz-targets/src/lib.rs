//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer), as plain
//! functions of the input bytes, so that `cargo test` replays the checked-in
//! corpus (`fuzz/corpus/<target>/`, `fuzz/regressions/<target>/`) on the stable
//! toolchain without cargo-fuzz (`tests/replay.rs`). docs/fuzzing.md says how to
//! fuzz and what each run found.
//!
//! Every target feeds hostile bytes to a parser that reads what a card or an
//! image carries, and checks more than "does not panic": what a parser accepts
//! must satisfy the invariants its callers rely on (extents in range and in
//! order, numbers that do not overflow), and parse → render → parse gives the
//! same value. A broken invariant panics, which libFuzzer reports as a crash and
//! the replay test as a failure.
//!
//! Checksums are what stop a mutated input at the first gate (the bundle's
//! manifest SHA-256, the GPT and unit-record CRCs), so each target runs the
//! input twice: as given, and with its checksums recomputed, which lets the
//! fuzzer reach the parsing behind them.

use std::io::Cursor;

mod targets;

pub use targets::{bmap, board, bundle, card, cmdline, disk, record};

/// A target: one function of the input bytes that panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus folder.
pub const TARGETS: &[(&str, Target)] = &[
    ("bundle", bundle),
    ("disk", disk),
    ("record", record),
    ("cmdline", cmdline),
    ("board", board),
    ("bmap", bmap),
    ("card", card),
];

/// A read-only in-memory device over the input.
fn cursor(data: &[u8]) -> Cursor<&[u8]> {
    Cursor::new(data)
}
