//! What a source already published: the event ids in its newest files.
//!
//! Direct MQTT → Parquet (`jobstream run --mqtt … --parquet …` without Kafka) acknowledges a
//! message once the file holding it is published. A crash between the rename and the PUBACK
//! makes the broker redeliver messages that are already in a file; remembering the ids of the
//! newest files lets the next run drop those redeliveries as duplicates instead of writing
//! them twice.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow_array::{Array, StringArray};
use jobstream_parser::Family;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;

use parquet::file::reader::ChunkReader;

use crate::parquet::store::{Location, RemoteFile};
use crate::parquet::{parse_final_name, sanitize_source};
use crate::SinkError;

/// The `event_id`s of `source`'s published files under `location`, newest file first (by
/// last input position), at most `limit` of them (whole files, so it may run a file over). In
/// an object store only the `event_id` column chunks are fetched (ranged GETs).
///
/// # Errors
/// A directory or prefix cannot be listed, or a file cannot be read.
pub fn recent_event_ids(
    location: &Location,
    source: &str,
    limit: usize,
) -> Result<Vec<String>, SinkError> {
    let source = sanitize_source(source);
    let mut files: Vec<(u64, Published)> = Vec::new();
    for family in [Family::Job, Family::Execution] {
        match location {
            Location::Local(root) => {
                let table = root.join(family.table());
                let Ok(partitions) = fs::read_dir(&table) else {
                    continue; // nothing published yet
                };
                for partition in partitions.flatten() {
                    let dir = partition.path();
                    let entries = fs::read_dir(&dir).map_err(SinkError::io("list", &dir))?;
                    for entry in entries.flatten() {
                        let name = entry.file_name();
                        if let Some((_, last)) =
                            name.to_str().and_then(|n| parse_final_name(&source, n))
                        {
                            files.push((last, Published::Local(entry.path())));
                        }
                    }
                }
            }
            Location::Store(root) => {
                for (relative, size) in root.list(family.table())? {
                    let name = relative.rsplit('/').next().unwrap_or_default();
                    if let Some((_, last)) = parse_final_name(&source, name) {
                        let file = RemoteFile::new(root.clone(), relative, size);
                        files.push((last, Published::Remote(file)));
                    }
                }
            }
        }
    }
    files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
    let mut ids = Vec::new();
    for (_, file) in files {
        if ids.len() >= limit {
            break;
        }
        match file {
            Published::Local(path) => {
                let reader = File::open(&path).map_err(SinkError::io("open", &path))?;
                read_event_ids(reader, &path, &mut ids)?;
            }
            Published::Remote(remote) => {
                let path = PathBuf::from(remote.url());
                read_event_ids(remote, &path, &mut ids)?;
            }
        }
    }
    Ok(ids)
}

enum Published {
    Local(PathBuf),
    Remote(RemoteFile),
}

fn read_event_ids<R: ChunkReader + 'static>(
    reader: R,
    path: &Path,
    ids: &mut Vec<String>,
) -> Result<(), SinkError> {
    let parquet_error = |source| SinkError::Parquet {
        path: path.to_owned(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(parquet_error)?;
    let Some(index) = builder
        .schema()
        .fields()
        .iter()
        .position(|f| f.name() == jobstream_parser::columns::EVENT_ID)
    else {
        return Ok(());
    };
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(parquet_error)?;
    for batch in reader {
        let batch = batch.map_err(|e| parquet_error(e.into()))?;
        if let Some(column) = batch.column(0).as_any().downcast_ref::<StringArray>() {
            ids.extend(column.iter().flatten().map(str::to_owned));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parquet::{ParquetConfig, ParquetSink};
    use jobstream_parser::columnar::Provenance;
    use jobstream_parser::{Parser, ParserConfig};

    fn execution(id: &str, job: &str) -> String {
        format!(
            r#"{{"eventType":"JOB_EXECUTION","eventId":"{id}","timestamp":1700000000,"operation":"succeeded","jobId":"{job}","thingArn":"arn:aws:iot:eu-west-1:1:thing/t","status":"SUCCEEDED"}}"#
        )
    }

    #[test]
    fn newest_files_come_first_and_other_sources_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ParquetConfig::new(dir.path());
        config.max_file_rows = 2;
        let mut parser = Parser::new(ParserConfig::default());
        for (source, prefix) in [("mqtt-a", "a"), ("mqtt-b", "b")] {
            let mut sink = ParquetSink::new(config.clone(), source).expect("sink");
            for position in 0..5u64 {
                let id = format!("{prefix}{position}");
                let payload = execution(&id, "j1");
                let topic = "$aws/events/jobExecution/j1/succeeded";
                parser
                    .parse(topic, payload.as_bytes(), |outcome| {
                        let event = outcome.expect("valid");
                        let provenance = Provenance {
                            mqtt_topic: Some(topic),
                            received_at_ms: None,
                        };
                        sink.append(&event, &provenance, position).map(|_| ())
                    })
                    .expect("appended");
            }
            sink.finish().expect("published");
        }
        let local = Location::Local(dir.path().to_owned());
        let ids = recent_event_ids(&local, "mqtt-a", 3).expect("read");
        assert_eq!(
            ids,
            ["a4", "a2", "a3"],
            "newest file (a4), then the one before"
        );
        let all = recent_event_ids(&local, "mqtt-a", 100).expect("read");
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|id| id.starts_with('a')));
        let absent = Location::Local(dir.path().join("absent"));
        let none = recent_event_ids(&absent, "mqtt-a", 10).expect("empty");
        assert!(none.is_empty());
    }
}
