//! `CREATE EXTERNAL TABLE` statements for the two tables, for the query engines analysts point
//! at a data lake: Athena (with partition projection on `date`, so no crawler and no
//! `MSCK REPAIR` are needed as days are added), and Spark SQL, Trino or Hive over the same
//! location. The column list comes from the schema the sink writes, so it cannot drift.

use arrow_schema::{DataType, Field};
use jobstream_parser::Family;

/// The engine a statement is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Amazon Athena (Hive DDL with partition projection on `date`).
    Athena,
    /// Spark SQL (a data-source table; `MSCK REPAIR TABLE` then finds the partitions).
    Spark,
    /// Trino's Hive connector.
    Trino,
    /// Apache Hive (and Spark with Hive support): Hive DDL, then `MSCK REPAIR TABLE`.
    Hive,
}

/// The statements creating both tables over `location` (the Parquet root: a URL such as
/// `s3://bucket/prefix`, or a path), each followed by what the engine needs to see the
/// partitions. `first_day` (`YYYY-MM-DD`) starts Athena's projected date range.
pub fn create_tables(engine: Engine, location: &str, first_day: &str) -> String {
    let location = location.trim_end_matches('/');
    let mut out = String::new();
    for family in [Family::Job, Family::Execution] {
        out.push_str(&create_table(engine, family, location, first_day));
        out.push('\n');
    }
    out
}

fn create_table(engine: Engine, family: Family, root: &str, first_day: &str) -> String {
    let table = family.table();
    let location = format!("{root}/{table}/");
    let schema = jobstream_parser::columnar::schema(family);
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            format!(
                "  {} {}",
                quote(engine, f.name()),
                sql_type(engine, f.data_type())
            )
        })
        .collect();
    match engine {
        Engine::Athena => format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{table}` (\n{columns}\n)\n\
             PARTITIONED BY (`date` string)\n\
             STORED AS PARQUET\n\
             LOCATION '{location}'\n\
             TBLPROPERTIES (\n\
             \x20 'projection.enabled' = 'true',\n\
             \x20 'projection.date.type' = 'date',\n\
             \x20 'projection.date.format' = 'yyyy-MM-dd',\n\
             \x20 'projection.date.range' = '{first_day},NOW',\n\
             \x20 'projection.date.interval' = '1',\n\
             \x20 'projection.date.interval.unit' = 'DAYS',\n\
             \x20 'storage.location.template' = '{location}date=${{date}}/'\n\
             );\n",
            columns = columns.join(",\n"),
        ),
        Engine::Spark => format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{columns},\n  `date` STRING\n)\n\
             USING PARQUET\n\
             PARTITIONED BY (`date`)\n\
             LOCATION '{location}';\n\
             MSCK REPAIR TABLE {table};\n",
            columns = columns.join(",\n"),
        ),
        Engine::Trino => format!(
            "CREATE TABLE IF NOT EXISTS {table} (\n{columns},\n  \"date\" varchar\n)\n\
             WITH (\n\
             \x20 format = 'PARQUET',\n\
             \x20 external_location = '{location}',\n\
             \x20 partitioned_by = ARRAY['date']\n\
             );\n\
             CALL system.sync_partition_metadata(CURRENT_SCHEMA, '{table}', 'ADD');\n",
            columns = columns.join(",\n"),
        ),
        Engine::Hive => format!(
            "CREATE EXTERNAL TABLE IF NOT EXISTS `{table}` (\n{columns}\n)\n\
             PARTITIONED BY (`date` string)\n\
             STORED AS PARQUET\n\
             LOCATION '{location}';\n\
             MSCK REPAIR TABLE `{table}`;\n",
            columns = columns.join(",\n"),
        ),
    }
}

fn quote(engine: Engine, name: &str) -> String {
    match engine {
        Engine::Trino => format!("\"{name}\""),
        _ => format!("`{name}`"),
    }
}

fn sql_type(engine: Engine, data_type: &DataType) -> String {
    let trino = engine == Engine::Trino;
    match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            if trino { "varchar" } else { "string" }.to_owned()
        }
        DataType::Int64 => "bigint".to_owned(),
        DataType::Int32 => if trino { "integer" } else { "int" }.to_owned(),
        DataType::Boolean => "boolean".to_owned(),
        DataType::Float64 => "double".to_owned(),
        // Trino's Hive connector reads Parquet's UTC-adjusted milliseconds into timestamp(3).
        DataType::Timestamp(..) => if trino { "timestamp(3)" } else { "timestamp" }.to_owned(),
        DataType::List(item) | DataType::LargeList(item) => {
            let item = sql_type(engine, item.data_type());
            if trino {
                format!("array({item})")
            } else {
                format!("array<{item}>")
            }
        }
        DataType::Map(entries, _) => {
            let (key, value) = match entries.data_type() {
                DataType::Struct(fields) if fields.len() == 2 => (
                    sql_type(engine, fields[0].data_type()),
                    sql_type(engine, fields[1].data_type()),
                ),
                _ => ("string".to_owned(), "string".to_owned()),
            };
            if trino {
                format!("map({key}, {value})")
            } else {
                format!("map<{key},{value}>")
            }
        }
        DataType::Struct(fields) => {
            let members: Vec<String> = fields.iter().map(|f| member(engine, f)).collect();
            if trino {
                format!("row({})", members.join(", "))
            } else {
                format!("struct<{}>", members.join(","))
            }
        }
        other => other.to_string().to_lowercase(),
    }
}

fn member(engine: Engine, field: &Field) -> String {
    let data_type = sql_type(engine, field.data_type());
    if engine == Engine::Trino {
        format!("\"{}\" {data_type}", field.name())
    } else {
        format!("`{}`:{data_type}", field.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_of_the_written_schema_is_declared_with_its_type() {
        let sql = create_tables(Engine::Athena, "s3://lake/jobs/", "2026-01-01");
        for family in [Family::Job, Family::Execution] {
            for field in jobstream_parser::columnar::schema(family).fields() {
                assert!(
                    sql.contains(&format!("`{}` ", field.name())),
                    "{}",
                    field.name()
                );
            }
        }
        assert!(
            sql.contains("LOCATION 's3://lake/jobs/job_events/'"),
            "{sql}"
        );
        assert!(
            sql.contains(
                "'storage.location.template' = 's3://lake/jobs/job_execution_events/date=${date}/'"
            ),
            "{sql}"
        );
        assert!(
            sql.contains("'projection.date.range' = '2026-01-01,NOW'"),
            "{sql}"
        );
        assert!(sql.contains("timestamp"), "{sql}");
        assert!(sql.contains("map<string,string>"), "{sql}");
        let trino = create_tables(Engine::Trino, "s3://lake/jobs", "2026-01-01");
        assert!(
            trino.contains("map(varchar, varchar)") && trino.contains("timestamp(3)"),
            "{trino}"
        );
    }
}
