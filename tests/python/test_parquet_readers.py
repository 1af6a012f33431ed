"""Parquet output checked by readers no one here wrote: DuckDB, pyarrow, polars and Spark."""

import json
import os
from datetime import datetime, timezone
import signal
import subprocess
from pathlib import Path

import duckdb
import polars
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, expected_row, jobstream_bin, read_capture, run, wait_for

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TIME_COLUMNS = {
    "job_events": ["event_time", "created_at", "last_updated_at", "completed_at", "received_at"],
    "job_execution_events": ["event_time", "received_at"],
}


def parquet_files(root: Path):
    return sorted(p for p in root.rglob("*.parquet"))


def glob(root: Path, table: str) -> str:
    return str(root / table / "*" / "*.parquet")


def replay(capture, out, *extra):
    result = run("replay", "--input", capture, "--parquet", out, "--dlq", out / "dlq.jsonl", *extra)
    return result.stdout


# Columns that `--encodings delta` (the default) writes with a delta encoding.
DELTA_ENCODED = {
    "event_id": "DELTA_LENGTH_BYTE_ARRAY",
    "thing_arn": "DELTA_BYTE_ARRAY",
    "thing_name": "DELTA_BYTE_ARRAY",
    "status_details.key_value.key": "DELTA_LENGTH_BYTE_ARRAY",
    "status_details.key_value.value": "DELTA_LENGTH_BYTE_ARRAY",
}


def column_encodings(path: Path) -> dict:
    """Each column's encodings over all the file's row groups."""
    metadata = pq.read_metadata(path)
    used = {}
    for rg in range(metadata.num_row_groups):
        for c in range(metadata.num_columns):
            column = metadata.row_group(rg).column(c)
            used.setdefault(column.path_in_schema, set()).update(column.encodings)
    return used


def normalise(row: dict) -> dict:
    """A reader's Python values → the oracle's shapes (ms ints, dicts, parsed JSON)."""
    out = {}
    for key, value in row.items():
        if key in ("received_at", "date"):
            continue
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            delta = value - EPOCH
            value = delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000
        if key == "status_details" and value is not None:
            value = dict(value)
        if key == "extra" and value is not None:
            value = json.loads(value)
        out[key] = value
    return out


def test_every_file_has_the_contract_types_in_pyarrow_and_duckdb(capture, tmp_path):
    out = tmp_path / "out"
    replay(capture, out)
    files = parquet_files(out)
    assert files
    for path in files:
        table = path.parent.parent.name
        schema = pq.read_schema(path)
        for column in TIME_COLUMNS[table]:
            assert schema.field(column).type == pa.timestamp("ms", tz="UTC"), (path, column)
        if table == "job_events":
            assert schema.field("targets").type == pa.list_(pa.string())
            assert schema.field("number_of_succeeded_things").type == pa.int64()
            assert schema.field("number_of_timed_out_things").type == pa.int64()
        else:
            assert pa.types.is_map(schema.field("status_details").type)
            assert schema.field("status_details").type.key_type == pa.string()
            assert schema.field("status_details").type.item_type == pa.string()
            assert schema.field("thing_name").type == pa.string()
        metadata = pq.read_metadata(path)
        for rg in range(metadata.num_row_groups):
            for c in range(metadata.num_columns):
                column = metadata.row_group(rg).column(c)
                assert column.compression == "ZSTD"
                assert column.is_stats_set, column.path_in_schema
        # The physical type is INT64 with a TIMESTAMP(MILLIS, UTC) logical type: never nanos.
        logical = str(metadata.schema.column(metadata.schema.names.index("event_time")).logical_type)
        assert "milliseconds" in logical.lower() and "isAdjustedToUTC=true" in logical.replace(" ", ""), logical

    con = duckdb.connect()

    def column_types(table):
        return dict(con.execute(
            f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet('{glob(out, table)}', hive_partitioning=true))"
        ).fetchall())

    types = column_types("job_events")
    assert types["event_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["completed_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["targets"] == "VARCHAR[]"
    assert types["number_of_failed_things"] == "BIGINT"
    assert types["date"] == "DATE"
    types = column_types("job_execution_events")
    assert types["status_details"] == "MAP(VARCHAR, VARCHAR)"
    assert types["event_time"] == "TIMESTAMP WITH TIME ZONE"


def check_values_equal_input(capture: Path, out: Path):
    lines = read_capture(capture)
    expected = {}
    for topic, payload in lines:
        if payload is not None:
            expected[(payload["eventId"], topic)] = expected_row(topic, payload)
    got = {}
    for path in parquet_files(out):
        for row in pq.read_table(path).to_pylist():
            row = normalise(row)
            key = (row["event_id"], row["mqtt_topic"])
            assert key not in got, f"duplicate row {key}"
            got[key] = row
    assert got.keys() == expected.keys()
    for key, want in expected.items():
        have = got[key]
        for column, value in want.items():
            assert have[column] == value, (key, column, have[column], value)
    # Lines read = rows + rejects.
    dlq = out / "dlq.jsonl"
    rejects = dlq.read_text().count("\n") if dlq.exists() else 0
    assert len(lines) == len(got) + rejects


@pytest.mark.parametrize("encodings", ["delta", "plain"])
def test_values_equal_the_input_for_a_generated_corpus(capture, tmp_path, encodings):
    out = tmp_path / "out"
    replay(capture, out, "--encodings", encodings)
    check_values_equal_input(capture, out)
    for path in parquet_files(out):
        used = column_encodings(path)
        for column, encoding in DELTA_ENCODED.items():
            if column in used:
                assert (encoding in used[column]) == (encodings == "delta"), (path, column, used[column])


def rows_by_key(rows) -> dict:
    keyed = {}
    for row in rows:
        row = normalise(row)
        keyed[(row["event_id"], row["mqtt_topic"])] = row
    return keyed


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    """A local Spark session (pyspark's own JVM), its clock on UTC, its warehouse (where
    CREATE TABLE keeps its metadata) in a temporary directory rather than the working one."""
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("jobstream-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def spark_rows(spark, directory: Path) -> list:
    """Every row Spark's (vectorized) reader reads from a table's directory, times as ms."""
    frame = spark.read.parquet(str(directory))
    times = [c for c in TIME_COLUMNS[directory.name] if c in frame.columns]
    frame = frame.selectExpr(*[f"unix_millis({c}) AS {c}" if c in times else c for c in frame.columns])
    return [row.asDict(recursive=True) for row in frame.collect()]


def test_duckdb_polars_and_spark_read_the_same_rows_as_pyarrow(capture, tmp_path, spark):
    out = tmp_path / "out"
    replay(capture, out)
    check_values_equal_input(capture, out)
    assert spark.conf.get("spark.sql.parquet.enableVectorizedReader") == "true"
    con = duckdb.connect()
    for table in ("job_events", "job_execution_events"):
        files = [str(p) for p in parquet_files(out / table)]
        want = rows_by_key(pq.read_table(out / table).to_pylist())
        assert want
        readers = {
            "duckdb": con.sql(f"SELECT * FROM read_parquet('{glob(out, table)}')").to_arrow_table().to_pylist(),
            "polars": polars.read_parquet(files).to_dicts(),
            "spark": spark_rows(spark, out / table),
        }
        for reader, rows in readers.items():
            assert len(rows) == len(want), (reader, table)
            got = rows_by_key(rows)
            assert got.keys() == want.keys(), (reader, table)
            for key, row in want.items():
                assert got[key] == row, (reader, table, key, got[key], row)


def test_values_equal_the_input_for_every_spec_example(tmp_path):
    out = tmp_path / "out"
    capture = ROOT / "tests" / "fixtures" / "spec-examples.tsv"
    # The fixture reuses the documentation's few eventIds for its different examples; real
    # copies share one, so the window (on by default) would take these for copies.
    replay(capture, out, "--dedup-window", 0)
    check_values_equal_input(capture, out)
    con = duckdb.connect()
    (completed,) = con.execute(
        f"SELECT completed_at FROM read_parquet('{glob(out, 'job_events')}') WHERE operation = 'completed'"
    ).fetchone()
    assert completed.isoformat().startswith("2009-02-13T23:31:30.123")
    names = con.execute(
        f"SELECT DISTINCT thing_name, status_details['key'] FROM read_parquet('{glob(out, 'job_execution_events')}')"
    ).fetchall()
    assert names == [("6d639fbc-8f85-4a90-924d-a2867f8366a7", "value")]


def test_hive_partition_pruning_skips_other_dates(capture, tmp_path):
    out = tmp_path / "out"
    replay(capture, out)
    dates = sorted(p.name for p in (out / "job_execution_events").iterdir())
    assert dates == ["date=2026-11-20", "date=2026-11-21"], dates
    con = duckdb.connect()
    pattern = glob(out, "job_execution_events")
    (total,) = con.execute(f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning=true)").fetchone()
    (day2,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning=true) WHERE date = DATE '2026-11-21'"
    ).fetchone()
    (by_time,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{pattern}') WHERE event_time >= TIMESTAMPTZ '2026-11-21 00:00:00+00'"
    ).fetchone()
    assert 0 < day2 < total and day2 == by_time
    # An unreadable file in the other partition: a pruned query never opens it.
    (out / "job_execution_events" / "date=2026-11-20" / "zz-corrupt.parquet").write_bytes(b"not parquet")
    (again,) = con.execute(
        f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning=true) WHERE date = DATE '2026-11-21'"
    ).fetchone()
    assert again == day2
    with pytest.raises(duckdb.Error):
        con.execute(f"SELECT count(*) FROM read_parquet('{pattern}', hive_partitioning=true)").fetchone()


def test_kill_9_mid_file_leaves_no_partial_file_and_rerun_writes_the_same_files(tmp_path):
    big = tmp_path / "src" / "capture.tsv"
    big.parent.mkdir()
    run("generate", "--events", 150_000, "--output", big)
    data = big.read_bytes()
    flags = ["--max-file-rows", "20000", "--quiet"]

    # Reference: one uninterrupted run.
    clean = tmp_path / "clean"
    run("replay", "--input", big, "--parquet", clean, *flags)
    reference = [p.relative_to(clean) for p in parquet_files(clean)]
    assert len(reference) > 4

    # Same file name, served through a FIFO so the test controls how far the run gets.
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    fifo = fifo_dir / "capture.tsv"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    proc = subprocess.Popen([jobstream_bin(), "replay", "--input", fifo, "--parquet", out, *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    writer = open(fifo, "wb")
    cut = data.index(b"\n", len(data) // 2) + 1
    writer.write(data[:cut])
    writer.flush()
    wait_for(lambda: parquet_files(out) and list(out.rglob(".*.inprogress")), timeout=120,
             what="a published file and an open temporary")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    writer.close()
    assert proc.returncode == -signal.SIGKILL

    survivors = parquet_files(out)
    assert list(out.rglob(".*.inprogress")), "the kill hit mid-file"
    for path in survivors:
        pq.read_table(path)  # every visible file is complete and readable
    assert {p.relative_to(out) for p in survivors} <= set(reference)

    rerun = run("replay", "--input", big, "--parquet", out, *flags).stdout
    assert "already published" in rerun
    assert [p.relative_to(out) for p in parquet_files(out)] == reference
    assert not list(out.rglob(".*.inprogress"))
    con = duckdb.connect()
    count, distinct = con.execute(
        f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{out}/*/*/*.parquet')"
    ).fetchone()
    assert count == distinct == data.count(b"\n")


def test_replay_writes_each_event_id_once_when_the_capture_holds_copies(tmp_path):
    source = tmp_path / "source.tsv"
    run("generate", "--events", 5000, "--output", source)
    lines = source.read_bytes().split(b"\n")[:-1]
    # Every 7th line again, up to 500 lines later, as a redelivery would land in a capture.
    keyed = [(i, line) for i, line in enumerate(lines)]
    keyed += [(i + 0.5 + (i * 37) % 500, lines[i]) for i in range(0, len(lines), 7)]
    capture = tmp_path / "with-copies.tsv"
    capture.write_bytes(b"".join(line + b"\n" for _, line in sorted(keyed, key=lambda k: k[0])))
    copies = len(keyed) - len(lines)

    out = tmp_path / "deduplicated"
    summary = replay(capture, out)
    assert f"duplicates dropped {copies} " in " ".join(summary.split()), summary
    for table in ("job_events", "job_execution_events"):
        total, distinct = duckdb.sql(
            f"select count(*), count(distinct event_id) from read_parquet('{glob(out, table)}')").fetchall()[0]
        assert total == distinct, table
    rows = sum(duckdb.sql(f"select count(*) from read_parquet('{glob(out, t)}')").fetchall()[0][0]
               for t in ("job_events", "job_execution_events"))
    assert rows == len(lines)

    kept = tmp_path / "every-copy"
    replay(capture, kept, "--dedup-window", 0)
    rows = sum(duckdb.sql(f"select count(*) from read_parquet('{glob(kept, t)}')").fetchall()[0][0]
               for t in ("job_events", "job_execution_events"))
    assert rows == len(keyed), "with the window off, every copy is a row"
