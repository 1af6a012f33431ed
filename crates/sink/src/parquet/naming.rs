//! What a published file says about itself: its name (source, first and last position) and
//! the resume point in its footer.

use std::fs::File;
use std::path::Path;

use crate::SinkError;

/// Makes a source name safe as a file-name component (`[A-Za-z0-9._-]`, others become `_`).
pub fn sanitize_source(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = cleaned.trim_start_matches('.');
    if trimmed.is_empty() {
        "input".to_owned()
    } else {
        trimmed.to_owned()
    }
}

pub(super) fn final_name(source: &str, first: u64, last: u64) -> String {
    format!("{source}+{first:012}+{last:012}.parquet")
}

/// The temporary name carries the process id: should two processes ever write the same
/// source at once (a consumer-group member that lost its partitions without noticing), their
/// temporaries stay apart instead of interleaving into one corrupt file.
pub(super) fn temp_name(source: &str, first: u64) -> String {
    format!(".{source}+{first:012}.{}.inprogress", std::process::id())
}

/// The key-value metadata entry naming the input position from which a rerun may resume.
pub const RESUME_FROM_KEY: &str = "jobstream.resume_from";

/// `(first, last)` of a published file name of `source`.
pub(crate) fn parse_final_name(source: &str, name: &str) -> Option<(u64, u64)> {
    let rest = name.strip_prefix(source)?.strip_prefix('+')?;
    let rest = rest.strip_suffix(".parquet")?;
    let (first, last) = rest.split_once('+')?;
    Some((first.parse().ok()?, last.parse().ok()?))
}

pub(super) fn read_resume_from(path: &Path) -> Result<Option<u64>, SinkError> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = File::open(path).map_err(SinkError::io("open", path))?;
    let reader = SerializedFileReader::new(file).map_err(|source| SinkError::Parquet {
        path: path.to_owned(),
        source,
    })?;
    Ok(resume_from_metadata(reader.metadata().file_metadata()))
}

/// The resume point a file's footer records, if any.
pub(super) fn resume_from_metadata(
    metadata: &parquet::file::metadata::FileMetaData,
) -> Option<u64> {
    metadata
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|e| e.key == RESUME_FROM_KEY))
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
}
