//! `jobstream replay`: a capture through the parser into Parquet and the DLQ.

use std::io::IsTerminal;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};
use jobstream_parser::ParserConfig;
use jobstream_sink::parquet::{Codec, Encodings, ParquetConfig};
use jobstream_sink::replay::{replay, ReplayConfig, ReplayInput, ReplayStats};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Capture file (`TOPIC<TAB>PAYLOAD` per line, as `mosquitto_sub -F '%t\t%p'` writes);
    /// `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,
    /// Write the two tables as Parquet under this directory.
    #[arg(long)]
    parquet: Option<PathBuf>,
    /// Write rejected lines to this file as JSON lines.
    #[arg(long)]
    dlq: Option<PathBuf>,
    /// Also produce events to Kafka (and rejects to the DLQ topic) at these brokers.
    #[arg(long, env = "JOBSTREAM_KAFKA_BROKERS")]
    kafka: Option<String>,
    /// A librdkafka option KEY=VALUE passed through (repeatable).
    #[arg(long = "kafka-option", value_parser = jobstream_sink::kafka::parse_option)]
    kafka_options: Vec<(String, String)>,
    /// Topic prefix before `job/` and `jobExecution/`.
    #[arg(long, default_value = jobstream_parser::DEFAULT_PREFIX)]
    topic_prefix: String,
    /// Payloads larger than this many bytes are rejected (AWS IoT's limit is 128 KiB).
    #[arg(long, default_value_t = jobstream_parser::DEFAULT_MAX_PAYLOAD_BYTES)]
    max_payload_bytes: usize,
    /// Lines looked back at for an earlier copy of an event (same eventId), which is then
    /// neither written nor produced; 0 keeps every copy.
    #[arg(long, default_value_t = jobstream_sink::recent::DEFAULT_WINDOW)]
    dedup_window: u64,
    /// Parquet compression: zstd, zstd:LEVEL (1-22), snappy, lz4 or none.
    #[arg(long, default_value = "zstd")]
    compression: Codec,
    /// Page encoding of ids, ARNs and status details: delta (smaller, faster) or plain (for
    /// readers without the delta encodings, such as Spark before 3.3).
    #[arg(long, default_value = "delta")]
    encodings: Encodings,
    /// Publish a Parquet file once it holds this many rows.
    #[arg(long, default_value_t = 5_000_000)]
    max_file_rows: u64,
    /// Publish a Parquet file once it reaches this many MiB.
    #[arg(long, default_value_t = 64)]
    max_file_mib: u64,
    /// Flush a row group once this many MiB are encoded in memory.
    #[arg(long, default_value_t = 8)]
    row_group_mib: usize,
    /// Publish a file idle this many seconds (standard input only; capture files roll on
    /// size alone so reruns write the same file names).
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// Publish a file open this many seconds (standard input only).
    #[arg(long, default_value_t = 600)]
    max_file_age_secs: u64,
    /// Don't show a progress bar even on a terminal.
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: ReplayArgs) -> Result<(), Failure> {
    let input = if args.input.as_os_str() == "-" {
        ReplayInput::Stdin
    } else {
        ReplayInput::File(args.input.clone())
    };
    let parquet = args.parquet.as_ref().map(|root| ParquetConfig {
        codec: args.compression,
        encodings: args.encodings,
        max_file_rows: args.max_file_rows,
        max_file_bytes: args.max_file_mib.saturating_mul(1 << 20),
        row_group_bytes: args.row_group_mib.saturating_mul(1 << 20),
        idle_timeout: Some(std::time::Duration::from_secs(args.idle_secs.max(1))),
        max_file_age: Some(std::time::Duration::from_secs(
            args.max_file_age_secs.max(1),
        )),
        ..ParquetConfig::new(root)
    });
    if parquet.is_none() && args.dlq.is_none() && args.kafka.is_none() {
        eprintln!("jobstream: note: neither --parquet nor --dlq given; validating only");
    }
    let total_bytes = match &input {
        ReplayInput::File(path) => std::fs::metadata(path).map(|m| m.len()).ok(),
        ReplayInput::Stdin => None,
    };
    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        let bar = match total_bytes {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            ),
            None => ProgressBar::new_spinner(),
        };
        Some(bar)
    } else {
        None
    };
    let config = ReplayConfig {
        input,
        parquet,
        dlq: args.dlq,
        kafka: args.kafka.map(|brokers| {
            let mut kafka = jobstream_sink::kafka::KafkaConfig::new(brokers);
            kafka.options.extend(args.kafka_options.iter().cloned());
            kafka
        }),
        parser: ParserConfig {
            topic_prefix: args.topic_prefix,
            max_payload_bytes: args.max_payload_bytes,
        },
        dedup_window: args.dedup_window,
    };
    let stats = replay(config, &mut |stats: &ReplayStats| {
        if let Some(bar) = &bar {
            bar.set_position(stats.bytes);
            bar.set_message(format!(
                "{} lines, {} rejected",
                stats.lines,
                stats.rejected()
            ));
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print_summary(&stats);
    if stats.kafka_failed > 0 {
        return Err(Failure::new(
            crate::EXIT_IO,
            anyhow::anyhow!("{} records did not reach Kafka", stats.kafka_failed),
        ));
    }
    Ok(())
}

fn print_summary(stats: &ReplayStats) {
    let secs = stats.elapsed.as_secs_f64().max(1e-9);
    outln!("replay finished in {:.2} s", stats.elapsed.as_secs_f64());
    outln!("  lines read               {:>12}", stats.lines);
    outln!("  job_events rows          {:>12}", stats.job_rows);
    outln!("  job_execution_events rows{:>12}", stats.execution_rows);
    if stats.duplicates > 0 {
        outln!(
            "  duplicates dropped       {:>12}  (same eventId within the dedup window)",
            stats.duplicates
        );
    }
    if stats.already_published > 0 {
        outln!(
            "  already published        {:>12}  (in files from an earlier run)",
            stats.already_published
        );
    }
    outln!("  rejected                 {:>12}", stats.rejected());
    for (kind, count) in &stats.rejects {
        outln!("    {kind:<23}{count:>12}");
    }
    let bytes: u64 = stats.files.iter().map(|f| f.bytes).sum();
    outln!(
        "  files written            {:>12}  ({:.1} MiB)",
        stats.files.len(),
        bytes as f64 / (1u64 << 20) as f64
    );
    if stats.kafka_delivered + stats.kafka_failed > 0 {
        outln!(
            "  kafka records            {:>12}  ({} failed)",
            stats.kafka_delivered,
            stats.kafka_failed
        );
    }
    if let Some(path) = &stats.dlq_path {
        outln!("  dlq                      {}", path.display());
    }
    outln!(
        "  rate                     {:>12.0} lines/s  ({:.1} MB/s)",
        stats.lines as f64 / secs,
        stats.bytes as f64 / secs / 1e6
    );
}
