//! `jobstream demo`: the pipeline on embedded defaults, zero setup.
//!
//! Until the MQTT bridge lands, the demo runs the offline half of the pipeline: a simulated
//! fleet's events → parser → Parquet (+ DLQ), then prints what went where.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use jobstream_fleet::{Fleet, FleetConfig};
use jobstream_parser::ParserConfig;
use jobstream_sink::parquet::ParquetConfig;
use jobstream_sink::replay::{replay, ReplayConfig, ReplayInput};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the demo writes its capture, Parquet files and DLQ.
    #[arg(long, default_value = "jobstream-demo")]
    dir: PathBuf,
    /// About how many events the simulated fleet publishes.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let capture = args.dir.join("capture.tsv");
    let mut fleet = Fleet::new(FleetConfig {
        unknown_fields: true,
        ..FleetConfig::with_events(args.events)
    });
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&capture)
            .with_context(|| format!("cannot create {}", capture.display()))?,
    );
    for m in fleet.by_ref() {
        crate::generate::write_capture_line(&mut out, &m).context("writing the demo capture")?;
    }
    // Two lines AWS would never send, to show where bad input goes.
    out.write_all(
        b"$aws/events/job/j-1/completed\t{\"eventType\":\"JOB\"\n$aws/events/other/topic\t{}\n",
    )
    .context("writing the demo capture")?;
    out.flush().context("writing the demo capture")?;
    println!(
        "simulated fleet: {} events ({} jobs' lifecycles) → {}",
        fleet.tally().total,
        fleet
            .tally()
            .by_kind
            .iter()
            .filter(|(k, _)| k.starts_with("job/") && !k.ends_with("_in_progress"))
            .map(|(_, n)| n)
            .sum::<u64>(),
        capture.display()
    );
    let parquet_root = args.dir.join("parquet");
    let dlq = args.dir.join("dlq.jsonl");
    let stats = replay(
        ReplayConfig {
            input: ReplayInput::File(capture),
            parquet: Some(ParquetConfig::new(&parquet_root)),
            dlq: Some(dlq.clone()),
            kafka: None,
            parser: ParserConfig::default(),
        },
        &mut |_| {},
    )?;
    println!(
        "parsed {} lines in {:.2} s: {} job events, {} job execution events, {} rejected → {}",
        stats.lines,
        stats.elapsed.as_secs_f64(),
        stats.job_rows + stats.already_published,
        stats.execution_rows,
        stats.rejected(),
        dlq.display()
    );
    for file in &stats.files {
        println!("  published {} ({} rows)", file.path.display(), file.rows);
    }
    println!(
        "query it: duckdb -c \"SELECT operation, count(*) FROM read_parquet('{}/job_execution_events/*/*.parquet', hive_partitioning=true) GROUP BY 1\"",
        parquet_root.display()
    );
    println!("(the live MQTT → Kafka half of the demo arrives with the bridge; see the README)");
    Ok(())
}
