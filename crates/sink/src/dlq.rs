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

/// A DLQ file written under a temporary name and published by rename on [`finish`](Self::finish),
/// so a rerun of the same input replaces it instead of appending duplicates.
#[derive(Debug)]
pub struct DlqFile {
    path: PathBuf,
    temp_path: PathBuf,
    out: BufWriter<File>,
    records: u64,
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
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(SinkError::io("create directory", dir))?;
        }
        let file = File::create(&temp_path).map_err(SinkError::io("create", &temp_path))?;
        Ok(DlqFile {
            path: path.to_owned(),
            temp_path,
            out: BufWriter::new(file),
            records: 0,
        })
    }

    /// Appends a record.
    ///
    /// # Errors
    /// The write failed.
    pub fn write(&mut self, record: &DlqRecord<'_>) -> Result<(), SinkError> {
        let io = SinkError::io("write", &self.temp_path);
        serde_json::to_writer(&mut self.out, record)
            .map_err(std::io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"))
            .map_err(io)?;
        self.records += 1;
        Ok(())
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes, fsyncs and publishes the file at its final path.
    ///
    /// # Errors
    /// Flush, fsync or rename failed.
    pub fn finish(self) -> Result<PathBuf, SinkError> {
        let file = self.out.into_inner().map_err(|e| SinkError::Io {
            action: "flush",
            path: self.temp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(SinkError::io("fsync", &self.temp_path))?;
        fs::rename(&self.temp_path, &self.path)
            .map_err(SinkError::io("publish (rename)", &self.path))?;
        Ok(self.path)
    }
}
