"""Parquet straight to object storage, against a real S3 API server on loopback (moto's server
mode, brokers.S3Server): `replay`, the Kafka → Parquet stage and direct MQTT → Parquet write to
`s3://bucket/prefix` the same files they write to a directory, published by create-only PUTs;
kill -9 at any moment loses and duplicates nothing; `report` reads a bucket with ranged reads;
`tables` prints DDL that Spark runs over the files. Objects are read back with clients no one
here wrote: boto3 and pyarrow's S3 filesystem (and DuckDB and pyarrow on a downloaded copy)."""

import hashlib
import re
import signal
import subprocess

import pyarrow.parquet as pq
import pytest

from conftest import STARTED, jobstream_bin, run, wait_for
from test_parquet_readers import spark  # noqa: F401  (the module-scoped Spark fixture)
from test_bridge import generate as bridge_lines
from test_bridge import publish
from test_direct_parquet import Direct
from test_parquet_stage import (PARTITIONS, Sink, Topics, assert_exactly_once, generate, kill_at_random_moments,
                                produce)


def digests(files: dict) -> dict:
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def local_files(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def bucket_files(s3, bucket, prefix) -> dict:
    client = s3.client()
    return {key[len(prefix) + 1:]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in s3.objects(bucket, prefix)}


def replay_to(capture, target, env=None, *extra):
    return run("replay", "--input", capture, "--parquet", target, "--quiet", *extra, env=env)


def test_replay_writes_the_same_files_to_a_bucket_as_to_a_directory(capture, tmp_path, s3):
    env = {"PATH": "/usr/bin:/bin", **s3.env()}
    replay_to(capture, tmp_path / "out")
    replay_to(capture, "s3://jobstream/lake/jobs", env)
    on_disk, in_bucket = local_files(tmp_path / "out"), bucket_files(s3, "jobstream", "lake/jobs")
    assert len(on_disk) >= 2 and sorted(in_bucket) == sorted(on_disk)
    assert digests(in_bucket) == digests(on_disk), "byte for byte the same files"
    # pyarrow's own S3 client reads the dataset, partitions and all.
    table = pq.read_table("jobstream/lake/jobs/job_execution_events", filesystem=s3.filesystem(),
                          partitioning="hive")
    local = pq.read_table(tmp_path / "out" / "job_execution_events", partitioning="hive")
    assert table.num_rows == local.num_rows > 0
    assert sorted(table.column("event_id").to_pylist()) == sorted(local.column("event_id").to_pylist())
    assert not list((tmp_path / "out").rglob("*.inprogress"))

    # A rerun over the same input finds every file already published and adds nothing.
    before = s3.objects("jobstream", "lake/jobs")
    replay_to(capture, "s3://jobstream/lake/jobs", env)
    assert s3.objects("jobstream", "lake/jobs") == before


def test_report_reads_a_bucket_as_it_reads_a_directory_fetching_only_what_it_needs(capture, tmp_path, s3):
    env = {"PATH": "/usr/bin:/bin", **s3.env()}
    replay_to(capture, tmp_path / "out")
    replay_to(capture, "s3://jobstream/lake", env)
    local = run("report", "--parquet", tmp_path / "out", "--format", "csv", "--quiet")
    remote = run("report", "--parquet", "s3://jobstream/lake", "--format", "csv", "--quiet", env=env)
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) > 2
    # One day of two: the other day's partitions are never fetched, and of the files read only
    # the report's columns are.
    days = sorted(p.name[5:] for p in (tmp_path / "out" / "job_execution_events").iterdir())
    assert len(days) == 2
    pruned = run("report", "--parquet", "s3://jobstream/lake", "--until", days[1], env=env)
    found = re.search(r"read \((\d+) partitions, .*; (\d+) of (\d+) columns, ([\d.]+) of ([\d.]+) MiB",
                      pruned.stderr)
    assert found, pruned.stderr
    skipped, columns, all_columns, mib, all_mib = found.groups()
    assert int(skipped) >= 1 and int(columns) < int(all_columns), pruned.stderr
    assert float(mib) < float(all_mib), pruned.stderr


def test_kafka_stage_to_a_bucket_killed_at_random_moments_writes_every_event_exactly_once(tmp_path, kafka, s3):
    lines = generate(60_000, tmp_path)
    topics = Topics(kafka)
    produce(kafka, topics, lines)
    sink = Sink(tmp_path, kafka, topics, "s3://jobstream/stage", group="g-s3-kill", max_file_rows=3000,
                env=s3.env(), parquet_extra={"staging_dir": str(tmp_path / "staging")})
    temporaries = kill_at_random_moments(sink, tmp_path / "staging", rounds=4, seed=11, longest=2.5)
    sink.start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=600, what="the last run to catch up")
    sink.stop()
    assert temporaries, "at least one kill landed while a file was being written"
    assert not list((tmp_path / "staging").rglob("*.inprogress")), "the restart removed them"
    assert_exactly_once(s3.download("jobstream", "stage", tmp_path / "downloaded"), lines)


def test_a_crash_between_the_put_and_the_commit_duplicates_nothing_and_rewrites_no_object(tmp_path, kafka, s3,
                                                                                          crash_points):
    lines = generate(20_000, tmp_path)
    topics = Topics(kafka)
    produce(kafka, topics, lines)
    staging = {"staging_dir": str(tmp_path / "staging")}
    crashing = Sink(tmp_path, kafka, topics, "s3://jobstream/crash", group="g-s3-crash", name="crashing",
                    max_file_rows=2000, env={**s3.env(), "JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING": "3"},
                    parquet_extra=staging).start()
    crashing.proc.wait(timeout=300)
    assert crashing.proc.returncode == -signal.SIGABRT, crashing.text()[-2000:]
    published_before = s3.objects("jobstream", "crash")
    assert len(published_before) >= 3

    sink = Sink(tmp_path, kafka, topics, "s3://jobstream/crash", group="g-s3-crash", name="restarted",
                max_file_rows=2000, env=s3.env(), parquet_extra=staging).start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=300, what="the restart to catch up")
    sink.stop()
    after = s3.objects("jobstream", "crash")
    for key, (size, etag, modified) in published_before.items():
        assert after[key] == (size, etag, modified), f"{key} was rewritten"
    assert_exactly_once(s3.download("jobstream", "crash", tmp_path / "downloaded"), lines)


def test_mqtt_straight_to_a_bucket_crashing_between_put_and_ack_writes_nothing_twice(tmp_path, mosquitto, s3,
                                                                                     crash_points):
    """Direct MQTT → Parquet into a bucket: the file is published, the process dies before the
    PUBACKs, the broker redelivers; the restart reads the newest objects' event ids (ranged
    reads of that column) and drops the redeliveries as duplicates."""
    lines = bridge_lines(3000, tmp_path)
    env = {**s3.env(), "JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING": "1"}
    direct = Direct(tmp_path, mosquitto, "--max-file-rows", "500", env=env,
                    out="s3://jobstream/direct").start()
    publish(mosquitto.port, lines)
    direct.proc.wait(timeout=120)
    assert direct.proc.returncode == -signal.SIGABRT, "the fault injection fired"
    assert s3.objects("jobstream", "direct"), "the file was published before the abort"
    direct.env.pop("JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING")
    direct.args += ["--max-file-age-secs", "1"]
    direct.args[direct.args.index("--max-file-rows") + 1] = "1000000"
    direct.start()
    wait_for(lambda: direct.counter("acked") >= len(lines), timeout=300,
             what="the restart to acknowledge every redelivered message")
    duplicates = direct.counter("duplicates")
    code, _ = direct.stop()
    assert code == 0, direct.log.read_text()[-3000:]
    assert duplicates >= 500, "the redelivered rows of the published object were recognised"
    assert_exactly_once(s3.download("jobstream", "direct", tmp_path / "downloaded"), lines)


def replay_twice_at_once(capture, target, env, max_file_rows):
    """Two `replay`s of one capture into one prefix at the same moment (both list an empty
    prefix at start, so both write every name); both must succeed. How many objects the one
    found already created by the other (`kept`)."""
    env = {"PATH": "/usr/bin:/bin", "JOBSTREAM_LOG": "info", **env}
    procs = [subprocess.Popen([jobstream_bin(), "replay", "--input", str(capture), "--parquet", target,
                               "--quiet", "--max-file-rows", str(max_file_rows)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    STARTED.extend(procs)
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return sum(err.count("already published by an earlier run; kept") for _, err in outputs)


def test_two_writers_of_the_same_names_create_each_object_once_and_neither_overwrites(capture, tmp_path, s3):
    """Create-only PUTs: two replays of one capture into one prefix at the same time (both
    list an empty prefix at start, so both write every name) — each object is created by one
    of them, the other is told it exists and keeps it."""
    kept = replay_twice_at_once(capture, "s3://jobstream/twice", s3.env(), 1000)
    objects = s3.objects("jobstream", "twice")
    replay_to(capture, tmp_path / "out", None, "--max-file-rows", "1000")
    on_disk = local_files(tmp_path / "out")
    assert digests(bucket_files(s3, "jobstream", "twice")) == digests(on_disk)
    assert kept > 0, "the second writer met objects the first had created"
    assert len(objects) == len(on_disk)


def test_a_bad_store_url_or_option_is_refused_saying_what_to_fix(capture, tmp_path, s3):
    env = {"PATH": "/usr/bin:/bin", **s3.env()}
    for target, says in [
        ("ftp://bucket/x", "unknown scheme ftp://"),
        ("s3:///prefix", "names no bucket"),
    ]:
        refused = run("replay", "--input", capture, "--parquet", target, "--quiet", check=False, env=env)
        assert refused.returncode == 78, refused.stderr
        assert says in refused.stderr, refused.stderr
    # A missing bucket is the store's answer, named with the URL.
    missing = run("replay", "--input", capture, "--parquet", "s3://no-such-bucket/x", "--quiet", check=False, env=env)
    assert missing.returncode != 0 and "s3://no-such-bucket" in missing.stderr, missing.stderr
    assert s3.SECRET not in missing.stderr


def test_spark_runs_the_printed_ddl_over_the_written_files_and_reads_every_row_with_its_type(
        capture, tmp_path, spark):  # noqa: F811
    out = tmp_path / "lake"
    replay_to(capture, out)
    ddl = run("tables", "--engine", "spark", "--location", f"file://{out}").stdout
    for statement in filter(str.strip, ddl.split(";")):
        spark.sql(statement)
    expected = pq.read_table(out / "job_execution_events", partitioning="hive")
    frame = spark.table("job_execution_events")
    assert frame.count() == expected.num_rows > 0
    types = dict(frame.dtypes)
    assert types["event_time"] == "timestamp" and types["status_details"] == "map<string,string>", types
    assert types["date"] == "string"
    days = {r["date"] for r in spark.sql("select distinct `date` from job_execution_events").collect()}
    assert days == {p.name[5:] for p in (out / "job_execution_events").iterdir()}
    assert spark.table("job_events").count() == pq.read_table(out / "job_events").num_rows
    for table in ("job_events", "job_execution_events"):
        spark.sql(f"DROP TABLE {table}")


def test_azure_blob_storage_gets_the_same_files_the_same_report_and_create_only_puts(capture, tmp_path,
                                                                                      azurite):
    """az:// on Azurite, Azure's own emulator, read back with Microsoft's SDK: the same bytes as
    on disk, the same report, and two writers of one prefix never overwrite each other."""
    container = azurite.container("lake")
    env = {"PATH": "/usr/bin:/bin", **azurite.env()}
    replay_to(capture, tmp_path / "out", None, "--max-file-rows", "3000")
    assert replay_twice_at_once(capture, "az://lake/jobs", azurite.env(), 3000) > 0
    blobs = {b.name[len("jobs/"):]: container.download_blob(b.name).readall()
             for b in container.list_blobs(name_starts_with="jobs/")}
    assert digests(blobs) == digests(local_files(tmp_path / "out"))
    local = run("report", "--parquet", tmp_path / "out", "--format", "csv", "--quiet")
    remote = run("report", "--parquet", "az://lake/jobs", "--format", "csv", "--quiet", env=env)
    assert remote.stdout == local.stdout and len(remote.stdout.splitlines()) > 2
