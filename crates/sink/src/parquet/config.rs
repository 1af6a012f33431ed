//! How files are written: codec, encodings, sizes, and the writer properties made of them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use jobstream_parser::columns;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use serde::Deserialize;

use crate::{config_fields, SinkError};

/// The Kafka → Parquet stage's consumer group unless configured.
pub const DEFAULT_GROUP_ID: &str = "jobstream-parquet";

/// Compression codec for Parquet pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// zstd at a level from 1 (fast) to 22 (small); 1 is the default: on job events level 3
    /// makes files no smaller (measured: 1.9 MiB either way for 50k events) and costs 11% more
    /// CPU.
    Zstd(i32),
    /// Snappy.
    Snappy,
    /// LZ4 (raw).
    Lz4,
    /// No compression.
    None,
}

impl FromStr for Codec {
    type Err = String;

    /// `zstd`, `zstd:LEVEL`, `snappy`, `lz4` or `none`.
    fn from_str(text: &str) -> Result<Self, String> {
        let (name, level) = match text.split_once(':') {
            Some((name, level)) => (name, Some(level)),
            None => (text, None),
        };
        match (name.to_ascii_lowercase().as_str(), level) {
            ("zstd", None) => Ok(Codec::Zstd(1)),
            ("zstd", Some(level)) => match level.parse::<i32>() {
                Ok(n) if (1..=22).contains(&n) => Ok(Codec::Zstd(n)),
                _ => Err(format!("zstd level must be 1..=22, got {level:?}")),
            },
            ("snappy", None) => Ok(Codec::Snappy),
            ("lz4", None) => Ok(Codec::Lz4),
            ("none" | "uncompressed", None) => Ok(Codec::None),
            _ => Err(format!(
                "unknown codec {text:?}: use zstd, zstd:LEVEL (1-22), snappy, lz4 or none"
            )),
        }
    }
}

impl Codec {
    pub(super) fn to_parquet(self) -> Result<Compression, SinkError> {
        Ok(match self {
            Codec::Zstd(level) => {
                Compression::ZSTD(ZstdLevel::try_new(level).map_err(|e| SinkError::Config {
                    setting: "parquet.compression",
                    value: format!("zstd:{level}"),
                    reason: e.to_string(),
                })?)
            }
            Codec::Snappy => Compression::SNAPPY,
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::None => Compression::UNCOMPRESSED,
        })
    }
}

/// How the high-cardinality string columns are encoded in the pages, before compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encodings {
    /// `DELTA_BYTE_ARRAY` for thing ARNs and names (each value stores only what differs from
    /// the one before: the ARN prefix is written once per run of the same account and
    /// region), `DELTA_LENGTH_BYTE_ARRAY` for event ids and `status_details` (the lengths go
    /// in a block of their own, so zstd sees the text alone). Smaller files, and on job
    /// events a quarter less encoding time than `Plain`: zstd has far fewer bytes to search.
    /// Read by every current reader (DuckDB, pyarrow/pandas, polars, Spark 3.3+, Trino and
    /// Athena engine 3).
    Delta,
    /// `PLAIN` for every column without a dictionary: for readers that predate the delta
    /// encodings (Spark's vectorized reader before 3.3, for one).
    Plain,
}

impl FromStr for Encodings {
    type Err = String;

    /// `delta` or `plain`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "delta" => Ok(Encodings::Delta),
            "plain" => Ok(Encodings::Plain),
            _ => Err(format!(
                "unknown encodings {text:?}: use delta (the default) or plain (for readers \
                 without the delta encodings, such as Spark before 3.3)"
            )),
        }
    }
}

/// Object-store settings (`[parquet.storage]`), under object_store's names. `Debug` shows the
/// keys only: a value may be a secret (`secret_access_key`).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// How Parquet files are written and when they roll: the `[parquet]` section of a
/// configuration file, which deserializes into it (durations as `*_secs` keys, unknown keys
/// refused). A key left out keeps the default of [`ParquetConfig::new`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ParquetConfig {
    /// Output root: a directory, or an object-store URL (`s3://bucket/prefix`, `gs://…`,
    /// `az://…`, `file://…`); tables go to `<root>/job_events/` and
    /// `<root>/job_execution_events/`.
    #[serde(rename = "dir")]
    pub root: PathBuf,
    /// Object-store settings under object_store's names (`endpoint`, `region`, `allow_http`,
    /// `virtual_hosted_style_request`, …), for a URL root; credentials are better left to the
    /// environment (see the README).
    pub storage: StorageOptions,
    /// Where files being written to an object store are encoded before their upload (default:
    /// `<system temp>/jobstream-staging/<bucket and prefix>`). Unused for a local root, whose
    /// temporaries sit beside the published files.
    pub staging_dir: Option<PathBuf>,
    /// Page compression: `zstd` (level 1), `zstd:LEVEL`, `lz4`, `snappy` or `none`.
    #[serde(rename = "compression", deserialize_with = "compression_setting")]
    pub codec: Codec,
    /// Page encoding of the high-cardinality string columns: `delta` or `plain`.
    #[serde(deserialize_with = "encodings_setting")]
    pub encodings: Encodings,
    /// Rows buffered in Arrow builders before they are encoded (bounds builder memory).
    pub batch_rows: usize,
    /// Encoded-but-unflushed bytes (`in_progress_size()`) at which a row group is flushed.
    pub row_group_bytes: usize,
    /// A file is published once it holds this many rows.
    pub max_file_rows: u64,
    /// A file is published once its size reaches this many bytes.
    pub max_file_bytes: u64,
    /// A file is published once it has been open this long (`None`: never by age).
    #[serde(
        rename = "max_file_age_secs",
        deserialize_with = "config_fields::some_seconds"
    )]
    pub max_file_age: Option<Duration>,
    /// A file is published once no row arrived for this long (`None`: never by inactivity).
    #[serde(
        rename = "idle_timeout_secs",
        deserialize_with = "config_fields::some_seconds"
    )]
    pub idle_timeout: Option<Duration>,
    /// Open files at most; the least recently written is published to make room. Each open
    /// file holds up to `batch_rows` rows and one row group in memory.
    pub max_open_files: usize,
    /// Kafka → Parquet stage: the consumer group; processes with the same group share the
    /// partitions. (Without Kafka there is no group and this is not used.)
    pub group_id: String,
    /// Kafka → Parquet stage: offsets per partition looked back at for an earlier copy of an
    /// event (same `eventId`), which is then not written ([`crate::recent`]); 0 writes every
    /// copy. (Without Kafka the bridge's own `dedup_window` applies.)
    pub dedup_window: u64,
}

impl Default for ParquetConfig {
    /// The defaults of [`ParquetConfig::new`] with no root yet (a configuration file may
    /// leave it to a flag).
    fn default() -> Self {
        ParquetConfig::new(PathBuf::new())
    }
}

impl ParquetConfig {
    /// Defaults for `root`: zstd level 1, delta encodings, 8192-row batches, 8 MiB row groups,
    /// files of up to 64 MiB or 5 million rows, published after 10 minutes open or 60 seconds
    /// idle.
    ///
    /// 8 MiB of encoded job executions is about 180,000 rows (DuckDB writes 122,880 to a row
    /// group): a day's file gets several row groups, which readers such as DuckDB scan in
    /// parallel, and an encoder with background write-back puts each on disk while the next
    /// is encoded, so publishing a file waits for one row group, not the whole file.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ParquetConfig {
            root: root.into(),
            storage: StorageOptions::default(),
            staging_dir: None,
            codec: Codec::Zstd(1),
            encodings: Encodings::Delta,
            batch_rows: 8192,
            row_group_bytes: 8 << 20,
            max_file_rows: 5_000_000,
            max_file_bytes: 64 << 20,
            max_file_age: Some(Duration::from_secs(600)),
            idle_timeout: Some(Duration::from_secs(60)),
            max_open_files: 32,
            group_id: DEFAULT_GROUP_ID.to_owned(),
            dedup_window: crate::recent::DEFAULT_WINDOW,
        }
    }

    /// The local directory files are written in: the root itself, or for an object-store URL
    /// the staging directory (`staging_dir`, else one per bucket and prefix under the system's
    /// temporary directory). Readiness checks that it is writable.
    pub fn local_dir(&self) -> PathBuf {
        let text = self.root.to_string_lossy();
        match text.split_once("://") {
            Some(("file", path)) => PathBuf::from(path),
            Some(_) => self.staging_dir.clone().unwrap_or_else(|| {
                std::env::temp_dir().join("jobstream-staging").join(
                    crate::parquet::sanitize_source(&text.replace("://", "_").replace('/', "_")),
                )
            }),
            None => self.root.clone(),
        }
    }

    /// Checks every setting is in range.
    ///
    /// # Errors
    /// The first setting out of range, named as users write it.
    pub fn validate(&self) -> Result<(), SinkError> {
        if self.root.as_os_str().is_empty() {
            return Err(SinkError::Config {
                setting: "parquet.dir",
                value: "\"\"".into(),
                reason: "must name the output directory".into(),
            });
        }
        if self.group_id.is_empty() {
            return Err(SinkError::Config {
                setting: "parquet.group_id",
                value: "\"\"".into(),
                reason: "must not be empty".into(),
            });
        }
        let positive = config_fields::at_least_one;
        // A zero duration is refused; a sub-second one (as tests use) is not.
        let seconds = |d: Option<Duration>| d.map_or(1, |d| u64::from(!d.is_zero()));
        positive("parquet.batch_rows", self.batch_rows as u64)?;
        positive("parquet.row_group_bytes", self.row_group_bytes as u64)?;
        positive("parquet.max_file_rows", self.max_file_rows)?;
        positive("parquet.max_file_bytes", self.max_file_bytes)?;
        positive("parquet.max_open_files", self.max_open_files as u64)?;
        positive("parquet.max_file_age_secs", seconds(self.max_file_age))?;
        positive("parquet.idle_timeout_secs", seconds(self.idle_timeout))?;
        self.codec.to_parquet()?;
        // A URL that names no usable store fails here, at `run --check`, not at the first file.
        crate::parquet::store::Location::parse(&self.root, &self.storage.0).map(drop)
    }
}

fn compression_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Codec, D::Error> {
    config_fields::parsed_as("parquet.compression", deserializer)
}

fn encodings_setting<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Encodings, D::Error> {
    config_fields::parsed_as("parquet.encodings", deserializer)
}

/// Target size of a data page before compression.
pub(super) const PAGE_BYTES: usize = 256 << 10;

/// The writer settings every file of `config` gets: the codec, page statistics, dictionaries
/// on the low-cardinality columns. Public so that benchmarks of other settings start from
/// exactly these (`benches/examples/encode_settings.rs`).
///
/// # Errors
/// An invalid codec level.
pub fn writer_properties(config: &ParquetConfig) -> Result<WriterProperties, SinkError> {
    let mut builder = WriterProperties::builder()
        .set_compression(config.codec.to_parquet()?)
        .set_created_by(format!("jobstream {}", env!("CARGO_PKG_VERSION")))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Row groups are cut by bytes (in_progress_size), not by a row count.
        .set_max_row_group_row_count(None)
        // Column writers take a batch in slices of this many values and do per-slice work
        // (page-size checks, level and statistics bookkeeping): one slice per batch instead
        // of the default 1,024 values. A small gain (callgrind: 0.5% fewer instructions in
        // benches/examples/encode_settings.rs; within noise in time); same pages and files.
        .set_write_batch_size(8192)
        // Pages of 256 KiB instead of parquet's 1 MiB, so that a page's buffers stay in the
        // core's L2 cache while parquet encodes, copies and compresses them (it copies a page
        // twice, and reserves twice its size for the compressed copy). A small gain at best:
        // encode_settings (300k events, 7 rounds) gave 0.91x and, on a busier machine, 0.99x
        // the encoding time; replays of 1M events 1.29 vs 1.35 s (7 interleaved runs). Same
        // file size, finer page statistics. (Large string columns still make pages of one
        // 8192-value write slice, up to 540 KB of thing ARNs.)
        .set_data_page_size_limit(PAGE_BYTES)
        // High-cardinality columns (ids, ARNs, JSON) gain nothing from a dictionary and cost
        // a fallback; the enumerations and per-job columns compress to almost nothing with one.
        .set_dictionary_enabled(false);
    for column in [
        "event_type",
        "operation",
        "status",
        "target_selection",
        "job_id",
        "description",
        "comment",
        "mqtt_topic",
    ] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), true);
    }
    if config.encodings == Encodings::Delta {
        // Prefix sharing only where values share prefixes: ARNs and names of the same fleet
        // do, random event ids do not, and DELTA_BYTE_ARRAY on them costs more than PLAIN
        // (encode_settings: 1.12x against 0.89x for DELTA_LENGTH_BYTE_ARRAY).
        for (column, encoding) in [
            (columns::THING_ARN, Encoding::DELTA_BYTE_ARRAY),
            (columns::THING_NAME, Encoding::DELTA_BYTE_ARRAY),
            (columns::EVENT_ID, Encoding::DELTA_LENGTH_BYTE_ARRAY),
            (
                "status_details.key_value.key",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
            (
                "status_details.key_value.value",
                Encoding::DELTA_LENGTH_BYTE_ARRAY,
            ),
        ] {
            let path = ColumnPath::new(column.split('.').map(str::to_owned).collect());
            builder = builder.set_column_encoding(path, encoding);
        }
    }
    Ok(builder.build())
}
