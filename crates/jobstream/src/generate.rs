//! `jobstream generate`: a simulated fleet as a capture file.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use jobstream_fleet::{Fleet, FleetConfig};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// About how many events to write (whole jobs are generated, so a few more may follow).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Things targeted by each job (one execution event per thing).
    #[arg(long, default_value_t = 100)]
    things_per_job: usize,
    /// Jobs in progress at once (their events interleave).
    #[arg(long, default_value_t = 4)]
    concurrent_jobs: usize,
    /// Topic prefix.
    #[arg(long, default_value = "$aws/events/")]
    topic_prefix: String,
    /// RNG seed: the same seed and sizes give the same bytes.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Epoch seconds of the first event (events are ~150 ms apart on average).
    #[arg(long, default_value_t = FleetConfig::default().start_epoch_s)]
    start_epoch_s: i64,
    /// Add an unknown field to about one event in 40 (exercises the `extra` column).
    #[arg(long)]
    unknown_fields: bool,
    /// Output file; `-` for standard output.
    #[arg(long, short, default_value = "-")]
    output: PathBuf,
}

pub fn run(args: GenerateArgs) -> Result<(), Failure> {
    if args.things_per_job == 0 {
        return Err(Failure::new(
            crate::EXIT_CONFIG,
            anyhow::anyhow!("--things-per-job must be at least 1"),
        ));
    }
    let per_job = args.things_per_job + 3;
    let config = FleetConfig {
        seed: args.seed,
        jobs: args.events.div_ceil(per_job).max(1),
        things_per_job: args.things_per_job,
        concurrent_jobs: args.concurrent_jobs.max(1),
        topic_prefix: args.topic_prefix,
        unknown_fields: args.unknown_fields,
        start_epoch_s: args.start_epoch_s,
    };
    let out: Box<dyn Write> = if args.output.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(
            File::create(&args.output)
                .with_context(|| format!("cannot create {}", args.output.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let mut fleet = Fleet::new(config);
    for message in fleet.by_ref() {
        message
            .write_capture(&mut out)
            .context("writing the capture")?;
    }
    out.flush().context("writing the capture")?;
    let tally = fleet.tally();
    eprintln!(
        "generated {} events ({} bytes of payload)",
        tally.total, tally.bytes
    );
    for (kind, count) in &tally.by_kind {
        eprintln!("  {kind:<40} {count:>10}");
    }
    Ok(())
}
