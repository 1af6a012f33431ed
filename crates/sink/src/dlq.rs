//! The dead-letter file: one JSON object per rejected input, so nothing is dropped silently.
//!
//! Record shape: `{"topic", "payload" | "payload_base64", "error_kind", "error", "line"}` —
//! `payload` when the bytes are UTF-8, `payload_base64` otherwise; `line` is the input line
//! (capture files) or absent.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Serialize;

use crate::SinkError;

/// One rejected input.
#[derive(Debug, Clone, Serialize)]
pub struct DlqRecord<'a> {
    /// The MQTT topic (lossily decoded if it was not UTF-8).
    pub topic: &'a str,
    /// The payload when it is UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<&'a str>,
    /// The payload, base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
    /// The stable reject label (`not_json`, `missing_field`, …).
    pub error_kind: &'a str,
    /// The human-readable reason.
    pub error: &'a str,
    /// The 1-based input line, for capture files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
}

impl<'a> DlqRecord<'a> {
    /// A record for `payload`, choosing `payload` or `payload_base64` by whether it is UTF-8.
    pub fn new(
        topic: &'a str,
        payload: &'a [u8],
        error_kind: &'a str,
        error: &'a str,
        line: Option<u64>,
    ) -> Self {
        let (text, base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        DlqRecord {
            topic,
            payload: text,
            payload_base64: base64,
            error_kind,
            error,
            line,
        }
    }
}

/// JSON lines of [`DlqRecord`]s going into one file: what both DLQ files share.
#[derive(Debug)]
struct JsonLines {
    path: PathBuf,
    out: BufWriter<File>,
    records: u64,
}

impl JsonLines {
    fn new(path: PathBuf, file: File) -> Self {
        JsonLines {
            path,
            out: BufWriter::new(file),
            records: 0,
        }
    }

    fn write(&mut self, record: &DlqRecord<'_>) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(SinkError::io("write DLQ file", &self.path))?;
        self.records += 1;
        Ok(())
    }
}

fn create_parent(path: &Path) -> Result<(), SinkError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => fs::create_dir_all(dir).map_err(SinkError::io("create directory", dir)),
        None => Ok(()),
    }
}

/// A DLQ file written under a temporary name and published by rename on [`finish`](Self::finish),
/// so a rerun of the same input replaces it instead of appending duplicates (`replay`).
#[derive(Debug)]
pub struct DlqFile {
    path: PathBuf,
    lines: JsonLines,
}

impl DlqFile {
    /// Starts a DLQ file at `path`.
    ///
    /// # Errors
    /// The temporary cannot be created.
    pub fn create(path: &Path) -> Result<Self, SinkError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "dlq.jsonl".to_owned());
        let temp_path = path.with_file_name(format!(".{file_name}.inprogress"));
        create_parent(path)?;
        let file = File::create(&temp_path).map_err(SinkError::io("create", &temp_path))?;
        Ok(DlqFile {
            path: path.to_owned(),
            lines: JsonLines::new(temp_path, file),
        })
    }

    /// Appends a record.
    ///
    /// # Errors
    /// The write failed.
    pub fn write(&mut self, record: &DlqRecord<'_>) -> Result<(), SinkError> {
        self.lines.write(record)
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.lines.records
    }

    /// Flushes, fsyncs and publishes the file at its final path.
    ///
    /// # Errors
    /// Flush, fsync or rename failed.
    pub fn finish(self) -> Result<PathBuf, SinkError> {
        let temp_path = self.lines.path;
        let file = self.lines.out.into_inner().map_err(|e| SinkError::Io {
            action: "flush",
            path: temp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(SinkError::io("fsync", &temp_path))?;
        fs::rename(&temp_path, &self.path)
            .map_err(SinkError::io("publish (rename)", &self.path))?;
        Ok(self.path)
    }
}

/// An append-only DLQ file for a stream that never ends (direct MQTT → Parquet): records are
/// appended across runs, and [`sync`](Self::sync) makes them durable before the rejects they
/// hold are acknowledged.
#[derive(Debug)]
pub struct DlqLog {
    lines: JsonLines,
}

impl DlqLog {
    /// Opens `path` for appending, creating it and its directory if need be.
    ///
    /// # Errors
    /// The directory or the file cannot be created or opened.
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        create_parent(path)?;
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(SinkError::io("open DLQ file", path))?;
        Ok(DlqLog {
            lines: JsonLines::new(path.to_owned(), file),
        })
    }

    /// Appends a record (durable only after the next [`sync`](Self::sync)).
    ///
    /// # Errors
    /// The write failed.
    pub fn write(&mut self, record: &DlqRecord<'_>) -> Result<(), SinkError> {
        self.lines.write(record)
    }

    /// Flushes and fsyncs what was appended.
    ///
    /// # Errors
    /// Flush or fsync failed.
    pub fn sync(&mut self) -> Result<(), SinkError> {
        let lines = &mut self.lines;
        lines
            .out
            .flush()
            .and_then(|()| lines.out.get_ref().sync_data())
            .map_err(SinkError::io("fsync DLQ file", &lines.path))
    }
}
