//! `jobstream tables`: the `CREATE EXTERNAL TABLE` statements for a Parquet root.

use jobstream_sink::parquet::ddl::{create_tables, Engine};

use crate::Failure;

#[derive(Debug, clap::Args)]
pub struct TablesArgs {
    /// The Parquet root the tables live under, as the engine names it: `s3://bucket/prefix`
    /// (Athena, Spark on EMR or Glue, Trino), `s3a://…` (Spark elsewhere), or a path.
    #[arg(long, value_name = "URL")]
    location: String,
    /// The engine the statements are for.
    #[arg(long, value_enum, default_value_t = EngineArg::Athena)]
    engine: EngineArg,
    /// First day of Athena's projected `date` partitions (`YYYY-MM-DD`); queries name days from
    /// it to today.
    #[arg(long, default_value = "2020-01-01", value_name = "DAY")]
    first_day: String,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    /// Amazon Athena, with partition projection on `date`.
    Athena,
    /// Spark SQL.
    Spark,
    /// Trino (Hive connector).
    Trino,
    /// Apache Hive.
    Hive,
}

pub fn run(args: TablesArgs) -> Result<(), Failure> {
    if jobstream_sink::time::parse_date(&args.first_day).is_none() {
        return Err(Failure::new(
            crate::EXIT_CONFIG,
            anyhow::anyhow!(
                "--first-day {:?} is not a date: write YYYY-MM-DD",
                args.first_day
            ),
        ));
    }
    let engine = match args.engine {
        EngineArg::Athena => Engine::Athena,
        EngineArg::Spark => Engine::Spark,
        EngineArg::Trino => Engine::Trino,
        EngineArg::Hive => Engine::Hive,
    };
    print!("{}", create_tables(engine, &args.location, &args.first_day));
    Ok(())
}
