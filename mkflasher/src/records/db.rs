//! The station database: records imported into SQLite, idempotently. The
//! schema is documented in docs/factory.md ("Records and the station
//! database"); [`SCHEMA`] is the text it quotes.

use std::path::{Path, PathBuf};

use flasher_format::record::Outcome;
use rusqlite::{params, Connection, OptionalExtension};

use super::Entry;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Version 1 of the schema (docs/factory.md).
pub const SCHEMA: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);
CREATE TABLE records (
    id                INTEGER PRIMARY KEY,
    -- natural key: which card, where in its log, and the log up to this record
    card_id           TEXT    NOT NULL,
    log_offset        INTEGER NOT NULL,
    log_digest        TEXT    NOT NULL,
    -- where it was first imported from, and when (Unix seconds)
    card_path         TEXT    NOT NULL,
    imported_unix_s   INTEGER NOT NULL,
    seq               INTEGER NOT NULL,
    time_unix_s       INTEGER,           -- NULL: the board's clock was unknown
    flasher_version   TEXT    NOT NULL,
    board             TEXT    NOT NULL,
    device            TEXT    NOT NULL,
    size_bytes        INTEGER NOT NULL,
    cid               TEXT,
    serial            TEXT,
    model             TEXT,
    image_digest      TEXT    NOT NULL,
    signer            TEXT    NOT NULL,  -- '' when the run stopped before the check
    bytes_written     INTEGER NOT NULL,
    status            TEXT    NOT NULL CHECK (status IN ('ok', 'error', 'started')),
    error_class       INTEGER,           -- 1..8, the LED blink class; NULL when ok
    error_message     TEXT,
    unit_index        INTEGER,           -- NULL: no pool row claimed
    unit_pool_digest  TEXT,
    life_time         TEXT,              -- eMMC health, raw sysfs text
    pre_eol_info      TEXT,
    emmc_rev          TEXT,
    emmc_date         TEXT,
    manfid            TEXT,
    body              TEXT    NOT NULL,  -- the whole record as JSON
    UNIQUE (card_id, log_offset, log_digest)
);
CREATE INDEX records_cid ON records (cid);
CREATE INDEX records_serial ON records (serial);
CREATE INDEX records_time ON records (time_unix_s);
CREATE TABLE phases (
    record_id    INTEGER NOT NULL REFERENCES records (id),
    position     INTEGER NOT NULL,
    phase        TEXT    NOT NULL,
    duration_ms  INTEGER NOT NULL,
    PRIMARY KEY (record_id, position)
);
CREATE TABLE unit_values (
    record_id  INTEGER NOT NULL REFERENCES records (id),
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    PRIMARY KEY (record_id, key)
);
CREATE INDEX unit_values_key_value ON unit_values (key, value);
";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("station database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "station database {path} has schema version {found}; this mkflasher knows \
         version {known}; use the mkflasher that created it (or a newer one)"
    )]
    Version {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "{path} is an SQLite database without a schema_version table, not a station \
         database; give a new file name or an existing station database"
    )]
    Foreign { path: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Records read from the cards.
    pub read: usize,
    /// Records that were not in the database before.
    pub new: usize,
}

/// Open (creating when new) the station database at `path`, checking its
/// schema version.
pub fn open(path: &Path) -> Result<Connection> {
    let sql = |source| Error::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(sql)?;
    let tx = conn.transaction().map_err(sql)?;
    let has = |name: &str| -> rusqlite::Result<bool> {
        tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    if has("schema_version").map_err(sql)? {
        let found: Option<i64> = tx
            .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
            .optional()
            .map_err(sql)?
            .flatten();
        let found = found.unwrap_or(0);
        if found != SCHEMA_VERSION {
            return Err(Error::Version {
                path: path.to_path_buf(),
                found,
                known: SCHEMA_VERSION,
            });
        }
    } else if has("records").map_err(sql)? {
        return Err(Error::Foreign {
            path: path.to_path_buf(),
        });
    } else {
        tx.execute_batch(SCHEMA).map_err(sql)?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [SCHEMA_VERSION],
        )
        .map_err(sql)?;
    }
    tx.commit().map_err(sql)?;
    Ok(conn)
}

/// Import `entries` into the database at `path` in one transaction. A record
/// already there (same card id, log offset and log digest) is skipped.
pub fn import(path: &Path, entries: &[Entry], now_unix_s: u64) -> Result<Imported> {
    let sql = |source| Error::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = open(path)?;
    let tx = conn.transaction().map_err(sql)?;
    let mut new = 0;
    for e in entries {
        if insert(&tx, e, now_unix_s).map_err(sql)? {
            new += 1;
        }
    }
    tx.commit().map_err(sql)?;
    Ok(Imported {
        read: entries.len(),
        new,
    })
}

/// Insert one record and its child rows; false when it was already there.
fn insert(tx: &rusqlite::Transaction<'_>, e: &Entry, now_unix_s: u64) -> rusqlite::Result<bool> {
    let r = &e.record;
    let (class, message) = match &r.result {
        Outcome::Ok => (None, None),
        Outcome::Error { class, message } => (Some(class.blinks()), Some(message.as_str())),
    };
    let unit = r.unit_row.as_ref();
    let health = r.health.clone().unwrap_or_default();
    let body = serde_json::to_string(r)
        .map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))?;
    let changed = tx.execute(
        "INSERT OR IGNORE INTO records (
            card_id, log_offset, log_digest, card_path, imported_unix_s, seq, time_unix_s,
            flasher_version, board, device, size_bytes, cid, serial, model, image_digest,
            signer, bytes_written, status, error_class, error_message, unit_index,
            unit_pool_digest, life_time, pre_eol_info, emmc_rev, emmc_date, manfid, body
        ) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                  ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28)",
        params![
            e.card.id,
            e.offset,
            e.log_digest,
            e.card.path,
            now_unix_s,
            r.seq,
            r.timestamp_unix_s,
            r.flasher_version,
            r.board,
            r.target.device,
            r.target.size_bytes,
            r.target.cid,
            r.target.serial,
            r.target.model,
            r.image_digest,
            r.signer,
            r.bytes_written,
            super::status(r),
            class,
            message,
            unit.map(|u| u.index),
            unit.map(|u| u.pool_digest.as_str()),
            health.life_time,
            health.pre_eol_info,
            health.rev,
            health.date,
            health.manfid,
            body,
        ],
    )?;
    if changed == 0 {
        return Ok(false);
    }
    let id = tx.last_insert_rowid();
    for (i, p) in r.phases.iter().enumerate() {
        tx.execute(
            "INSERT INTO phases (record_id, position, phase, duration_ms) VALUES (?1, ?2, ?3, ?4)",
            params![id, i, p.phase, p.duration_ms],
        )?;
    }
    for (k, v) in unit.iter().flat_map(|u| &u.values) {
        tx.execute(
            "INSERT INTO unit_values (record_id, key, value) VALUES (?1, ?2, ?3)",
            params![id, k, v],
        )?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    /// docs/factory.md quotes the schema; keep the two the same.
    #[test]
    fn the_documented_schema_is_the_schema() {
        let doc = include_str!("../../../docs/factory.md");
        assert!(
            doc.contains(super::SCHEMA.trim()),
            "docs/factory.md's schema differs from records::db::SCHEMA"
        );
    }
}
