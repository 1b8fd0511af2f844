//! The event sink: one JSON line per phase or pattern change, e.g.
//! `{"phase":"writing","pattern":"running-light"}`, appended to a file or written
//! to a tty/serial console. It serves boards with no user LEDs (NUC, Edison
//! module, QEMU) and tests, which read the lines back.

use super::Announcement;
use crate::{Error, Result};
use flasher_format::io::IoContext;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes [`Announcement`]s as JSON lines.
#[derive(Debug)]
pub struct EventSink {
    path: PathBuf,
    file: File,
}

impl EventSink {
    /// Open `path` for appending. A missing file is created, except under `/dev`:
    /// a missing `/dev/ttyS1` means no such port, and creating a regular file
    /// there would hide the events in RAM.
    pub fn open(path: &Path) -> Result<EventSink> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(!path.starts_with("/dev"))
            .open(path)
            .with_context(|| path.display().to_string())?;
        Ok(EventSink {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one line. Each line goes out in one `write` so concurrent writers to
    /// the same console do not interleave inside it.
    pub fn write(&mut self, what: &Announcement) -> Result<()> {
        let mut line = serde_json::to_string(what).map_err(|e| Error::Config {
            context: "event line".into(),
            message: e.to_string(),
        })?;
        line.push('\n');
        Ok(self
            .file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| self.path.display().to_string())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Phase;

    #[test]
    fn writes_one_json_line_per_announcement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"earlier\":1}\n").unwrap();
        let mut sink = EventSink::open(&path).unwrap();
        sink.write(&Announcement {
            phase: Phase::Writing,
            pattern: "running-light".into(),
            error_class: None,
        })
        .unwrap();
        sink.write(&Announcement {
            phase: Phase::Failure,
            pattern: "blink-code".into(),
            error_class: Some(5),
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"earlier\":1}\n\
             {\"phase\":\"writing\",\"pattern\":\"running-light\"}\n\
             {\"phase\":\"failure\",\"pattern\":\"blink-code\",\"error_class\":5}\n"
        );
    }

    #[test]
    fn a_missing_device_is_not_created() {
        let path = Path::new("/dev/flasher-test-no-such-tty");
        assert!(matches!(EventSink::open(path), Err(Error::Io(_))));
        assert!(!path.exists());
        // An existing device is written as is.
        let mut sink = EventSink::open(Path::new("/dev/null")).unwrap();
        sink.write(&Announcement {
            phase: Phase::Success,
            pattern: "solid".into(),
            error_class: None,
        })
        .unwrap();
    }

    #[test]
    fn unopenable_path_is_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/dir/events");
        assert!(matches!(EventSink::open(&path), Err(Error::Io(_))));
    }
}
