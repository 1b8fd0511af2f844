//! Turns the shipped TOML board files into JSON at build time, so the on-board
//! `/init` parses its built-in boards with `serde_json` (which it links anyway)
//! and carries no TOML parser. The TOML files stay the one source.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    let dir = Path::new("data");
    println!("cargo:rerun-if-changed=data");
    // The host tools (the `toml` feature) keep every table; the board binary
    // leaves out what only `mkflasher build` uses.
    let host = std::env::var_os("CARGO_FEATURE_TOML").is_some();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("boards/data is readable")
        .map(|e| e.expect("boards/data entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("/// The shipped boards as JSON: (file name, JSON text).\n");
    out.push_str("pub const BUILTIN_JSON: &[(&str, &str)] = &[\n");
    let mut toml_list = String::from("/// The shipped board files, as (file name, TOML text).\n");
    toml_list.push_str("pub const BUILTIN_FILES: &[(&str, &str)] = &[\n");
    for p in files {
        println!("cargo:rerun-if-changed={}", p.display());
        let text = std::fs::read_to_string(&p).expect("board file is UTF-8");
        // A TOML syntax error is reported by the crate's tests with the file
        // name (boards::parse); here it only has to not stop the build.
        let json = match text.parse::<toml::Table>() {
            Ok(mut t) => {
                if !host {
                    // The on-board /init never reads [card] (Board::card).
                    t.remove("card");
                }
                serde_json::to_string(&t).expect("TOML values are JSON values")
            }
            Err(_) => String::from("{}"),
        };
        let name = p
            .file_name()
            .and_then(|f| f.to_str())
            .expect("UTF-8 file name");
        writeln!(out, "    ({name:?}, {json:?}),").expect("writing to a String cannot fail");
        let abs = std::fs::canonicalize(&p).expect("board file path");
        writeln!(
            toml_list,
            "    ({name:?}, include_str!({:?})),",
            abs.display()
        )
        .expect("writing to a String cannot fail");
    }
    out.push_str("];\n");
    toml_list.push_str("];\n");
    out.push_str(&toml_list);
    let dest = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("builtin.rs");
    std::fs::write(dest, out).expect("OUT_DIR is writable");
}
