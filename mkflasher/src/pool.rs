//! `mkflasher build --unit-data FILE.csv [--unit-files DIR]`: the per-unit
//! data pool, read from a CSV on the host, checked, and turned into what the
//! card carries: `units.json` (`flasher_format::pool`, which the board parses
//! with the serde_json it already links) and the files rows name, under
//! `units/` on flash-boot (docs/factory.md, "Per-unit data pool").
//!
//! The CSV is parsed with the `csv` crate (RFC 4180 quoting: commas, quotes
//! and newlines inside quoted fields, CRLF, a UTF-8 byte-order mark): a
//! hand-rolled splitter gets exactly those cases wrong, and they are what a
//! spreadsheet export contains. It is a host-only dependency; `/init` never
//! sees CSV.

use std::path::{Path, PathBuf};

use flasher_format::pool::{self, PinnedFile, Pool};

use crate::fat::FatFile;

/// Errors in a pool CSV or its files; each names the file and, where there is
/// one, the line (1-based, the header is line 1).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}, line {line}: {source}; the unit data must be UTF-8 CSV")]
    Csv {
        path: PathBuf,
        line: u64,
        #[source]
        source: csv::Error,
    },
    #[error("{path}, line 1: column {column} has no name; every column needs a header name")]
    EmptyHeader { path: PathBuf, column: usize },
    #[error("{path}, line 1: column name {name:?} is used by columns {first} and {second}; names must be unique")]
    DuplicateHeader {
        path: PathBuf,
        name: String,
        first: usize,
        second: usize,
    },
    #[error("{path}, line 1: column name {name:?} is reserved (it configures the flasher and is removed from config.json); rename the column")]
    ReservedHeader { path: PathBuf, name: String },
    #[error("{path}, line {line}: {found} fields, the header has {expected}; quote values that contain commas")]
    FieldCount {
        path: PathBuf,
        line: u64,
        found: usize,
        expected: usize,
    },
    #[error("{path}: no data rows after the header; a pool needs at least one unit")]
    NoRows { path: PathBuf },
    #[error("{path}, line {line}: the row is {size} bytes as JSON, over the {max}-byte limit")]
    RowTooLarge {
        path: PathBuf,
        line: u64,
        size: u64,
        max: u64,
    },
    #[error("{path} is {size} bytes, over the {max}-byte limit for a unit file")]
    FileTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}: the pool is {size} bytes as JSON, over the {max}-byte limit the board reads; split it over several cards")]
    PoolTooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("--unit-files {dir} is not a directory")]
    NotADir { dir: PathBuf },
}

/// A pool ready for the card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolFiles {
    pub pool: Pool,
    /// `units.json` as the card carries it.
    pub bytes: Vec<u8>,
    /// The files rows name: (name in `units/`, bytes), in name order.
    pub files: Vec<(String, Vec<u8>)>,
    /// The largest row as a claim (`record::UnitRow` JSON), for log sizing.
    pub max_row_json: u64,
}

impl PoolFiles {
    /// The files on flash-boot: the pool, then `units/NAME` for each file.
    pub fn card_files(&self) -> Vec<FatFile> {
        let mut out = vec![FatFile::new(pool::POOL_FILE, self.bytes.clone())];
        out.extend(
            self.files
                .iter()
                .map(|(n, d)| FatFile::new(format!("{}/{n}", pool::UNITS_DIR), d.clone())),
        );
        out
    }

    /// The `flasher-log` size this pool needs (`pool::log_size_for`).
    pub fn log_size(&self) -> u64 {
        pool::log_size_for(self.pool.rows.len() as u64, self.max_row_json)
    }
}

/// Read and check the CSV at `csv_path`. With `files_dir`, a value that is a
/// plain file name (no `/`) of a regular file in that directory names a unit
/// file: the file is copied to the card's `units/` and onto the unit's target.
pub fn read(csv_path: &Path, files_dir: Option<&Path>) -> Result<PoolFiles, Error> {
    let text = std::fs::read(csv_path).map_err(|source| Error::Read {
        path: csv_path.to_path_buf(),
        source,
    })?;
    if let Some(d) = files_dir.filter(|d| !d.is_dir()) {
        return Err(Error::NotADir {
            dir: d.to_path_buf(),
        });
    }
    let path = || csv_path.to_path_buf();
    let csv_err = |source: csv::Error| Error::Csv {
        path: path(),
        line: source.position().map(|p| p.line()).unwrap_or(1),
        source,
    };
    // Field counts are checked here, with the line named, rather than by the
    // reader (`flexible`), whose error does not say which count it expected.
    let mut rd = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(text.as_slice());
    let columns: Vec<String> = rd
        .headers()
        .map_err(csv_err)?
        .iter()
        // Spreadsheet exports often pad header names: `hostname, serial`.
        .map(|h| h.trim().to_string())
        .collect();
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            return Err(Error::EmptyHeader {
                path: path(),
                column: i + 1,
            });
        }
        if let Some(first) = columns[..i].iter().position(|o| o == c) {
            return Err(Error::DuplicateHeader {
                path: path(),
                name: c.clone(),
                first: first + 1,
                second: i + 1,
            });
        }
        if pool::RESERVED_COLUMNS.contains(&c.as_str()) {
            return Err(Error::ReservedHeader {
                path: path(),
                name: c.clone(),
            });
        }
    }
    let mut rows = Vec::new();
    let mut files: std::collections::BTreeMap<String, Vec<u8>> = Default::default();
    let mut max_row_json = 0u64;
    for rec in rd.records() {
        let rec = rec.map_err(csv_err)?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.len() != columns.len() {
            return Err(Error::FieldCount {
                path: path(),
                line,
                found: rec.len(),
                expected: columns.len(),
            });
        }
        let values: Vec<String> = rec.iter().map(str::to_string).collect();
        if let Some(dir) = files_dir {
            for v in &values {
                let f = dir.join(v);
                if pool::is_file_name(v) && !files.contains_key(v) && f.is_file() {
                    files.insert(v.clone(), read_unit_file(&f)?);
                }
            }
        }
        let row = Pool {
            version: pool::VERSION,
            columns: columns.clone(),
            rows: vec![values.clone()],
            files: Vec::new(),
        }
        .row(0, &"0".repeat(64));
        rows.push(values);
        let size = serde_json::to_vec(&row)
            .map(|v| v.len() as u64)
            .unwrap_or(0);
        if size > pool::MAX_ROW_BYTES {
            return Err(Error::RowTooLarge {
                path: path(),
                line,
                size,
                max: pool::MAX_ROW_BYTES,
            });
        }
        max_row_json = max_row_json.max(size);
    }
    if rows.is_empty() {
        return Err(Error::NoRows { path: path() });
    }
    let p = Pool {
        version: pool::VERSION,
        columns,
        rows,
        files: files
            .iter()
            .map(|(n, d)| PinnedFile::new(n.clone(), d))
            .collect(),
    };
    let bytes = p.to_bytes();
    if bytes.len() as u64 > pool::MAX_POOL_BYTES {
        return Err(Error::PoolTooLarge {
            path: path(),
            size: bytes.len() as u64,
            max: pool::MAX_POOL_BYTES,
        });
    }
    if files_dir.is_some() && files.is_empty() {
        tracing::warn!(
            "--unit-files given, but no value in {} names a file in it",
            csv_path.display()
        );
    }
    Ok(PoolFiles {
        pool: p,
        bytes,
        files: files.into_iter().collect(),
        max_row_json,
    })
}

fn read_unit_file(f: &Path) -> Result<Vec<u8>, Error> {
    let data = std::fs::read(f).map_err(|source| Error::Read {
        path: f.to_path_buf(),
        source,
    })?;
    if data.len() as u64 > pool::MAX_UNIT_FILE {
        return Err(Error::FileTooLarge {
            path: f.to_path_buf(),
            size: data.len() as u64,
            max: pool::MAX_UNIT_FILE,
        });
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("units.csv");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    fn err(text: &str) -> Error {
        let (_d, p) = csv(text);
        read(&p, None).unwrap_err()
    }

    #[test]
    fn quoted_fields_utf8_crlf_and_bom_parse_exactly() {
        let (_d, p) = csv(
            "\u{feff}hostname, serial ,note\r\nbay-1,\"S,001\",\"said \"\"hi\"\"\"\r\n\n\
             straße-2,S002,\"two\nlines\"\r\n",
        );
        let got = read(&p, None).unwrap();
        assert_eq!(got.pool.columns, ["hostname", "serial", "note"]);
        assert_eq!(
            got.pool.rows,
            [
                ["bay-1", "S,001", "said \"hi\""],
                ["straße-2", "S002", "two\nlines"]
            ]
        );
        assert!(got.files.is_empty());
        // What the board reads back is the same pool.
        assert_eq!(Pool::parse(&got.bytes).unwrap(), got.pool);
        assert_eq!(got.log_size(), 1 << 20, "two small rows fit in 1 MiB");
    }

    #[test]
    fn header_problems_are_named() {
        assert!(matches!(
            err("hostname,,key\na,b,c\n"),
            Error::EmptyHeader { column: 2, .. }
        ));
        assert!(matches!(
            err("hostname,serial,hostname\na,b,c\n"),
            Error::DuplicateHeader { first: 1, second: 3, ref name, .. } if name == "hostname"
        ));
        assert!(matches!(
            err("hostname,installer\na,b\n"),
            Error::ReservedHeader { .. }
        ));
        assert!(matches!(err("hostname,serial\n"), Error::NoRows { .. }));
        assert!(matches!(err(""), Error::NoRows { .. }));
    }

    #[test]
    fn field_count_and_encoding_errors_name_the_line() {
        let e = err("hostname,serial\na,1\nb,2,extra\n");
        assert!(
            matches!(
                e,
                Error::FieldCount {
                    line: 3,
                    found: 3,
                    expected: 2,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = err("hostname,serial\na,1\n\"b,2\n");
        assert!(
            matches!(e, Error::FieldCount { .. } | Error::Csv { .. }),
            "{e}"
        );
        let (_d, p) = csv("");
        std::fs::write(&p, b"hostname,serial\na,1\nb,\xff\n").unwrap();
        let e = read(&p, None).unwrap_err();
        assert!(matches!(e, Error::Csv { line: 3, .. }), "{e}");
        let big = format!("hostname\n{}\n", "x".repeat(pool::MAX_ROW_BYTES as usize));
        assert!(matches!(err(&big), Error::RowTooLarge { line: 2, .. }));
    }

    #[test]
    fn values_naming_files_in_the_folder_are_unit_files() {
        let (d, p) = csv("hostname,key,cert\nu1,u1.pem,shared.crt\nu2,u2.pem,shared.crt\nu3,missing.pem,../u1.pem\n");
        let files = d.path().join("files");
        std::fs::create_dir(&files).unwrap();
        std::fs::write(files.join("u1.pem"), b"one").unwrap();
        std::fs::write(files.join("u2.pem"), b"two").unwrap();
        std::fs::write(files.join("shared.crt"), b"ca").unwrap();
        std::fs::write(files.join("unused.pem"), b"no").unwrap();
        let got = read(&p, Some(&files)).unwrap();
        let names: Vec<&str> = got.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["shared.crt", "u1.pem", "u2.pem"]);
        assert_eq!(got.pool.row_files(0), ["u1.pem", "shared.crt"]);
        // A missing file and a path out of the folder are plain values.
        assert!(got.pool.row_files(2).is_empty());
        got.pool.check_file("u2.pem", b"two").unwrap();
        let card: Vec<String> = got.card_files().into_iter().map(|f| f.path).collect();
        assert_eq!(
            card,
            [
                "units.json",
                "units/shared.crt",
                "units/u1.pem",
                "units/u2.pem"
            ]
        );
        assert!(matches!(
            read(&p, Some(&files.join("u1.pem"))),
            Err(Error::NotADir { .. })
        ));
    }
}
