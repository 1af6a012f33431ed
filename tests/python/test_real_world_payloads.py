"""Events as AWS and the code around it are known to send them, beyond the spec file's examples:
each is kept (a row in its table, nothing in the DLQ) with what is unusual about it flagged in
the `anomalies` column and counted by code in the metrics.

The corpus is written here from the descriptions of issue 22 and from what AWS's Jobs events
documentation has shown over its revisions; each entry says which variation it stands for.
The oracle (conftest.expected_row / expected_anomalies) derives rows and anomalies with
Python's json module, not with jobstream's parser.
"""

import json
import signal
import uuid
from collections import Counter

import duckdb
import polars as pl
import pyarrow.parquet as pq

from brokers import Mosquitto, free_port
from conftest import (ANOMALY_ORDER, expected_anomalies, expected_row, http_get, metric_samples,
                      run, wait_for)
from test_bridge import KafkaReader, publish
from test_parquet_readers import normalise
from test_parquet_stage import Topics, start_pipeline

JOB = "$aws/events/job/{}/{}"
EXECUTION = "$aws/events/jobExecution/{}/{}"
ARN = "arn:aws:iot:us-east-1:123456789012:thing/"
MASKED = "arn:aws:iot:us-east-1:xxxxxxxxxxxx:thing/"


def variations():
    """(what it stands for, topic, payload bytes exactly as sent)."""
    jid = ["example-job-01", "OTA-firmware-2.4.1", "job-3f2e9a", "fleet-config-7"]
    out = []

    def add(what, topic, payload):
        out.append((what, topic, payload.encode()))

    add("completed with SUCCEEDED, as an earlier revision of AWS's Jobs events page showed it",
        JOB.format(jid[0], "completed"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1563483201,"operation":"completed",'
        '"jobId":"%s","status":"SUCCEEDED","targetSelection":"SNAPSHOT","targets":["%sthing1"],'
        '"description":"example job","completedAt":1563483201234,'
        '"jobProcessDetails":{"numberOfCanceledThings":0,"numberOfFailedThings":0,'
        '"numberOfRejectedThings":0,"numberOfRemovedThings":0,"numberOfSucceededThings":1,'
        '"numberOfTimedOutThings":0}}' % (uuid.uuid4(), jid[0], ARN))
    add("statusDetails with numbers and a boolean, as device code and Lambda tests send",
        EXECUTION.format(jid[1], "succeeded"),
        '{"eventType":"JOB_EXECUTION","eventId":"%s","timestamp":1700000000,'
        '"operation":"succeeded","jobId":"%s","thingArn":"%sgateway-17","status":"SUCCEEDED",'
        '"statusDetails":{"downloadTime":120,"retryCount":4,"verified":true,"step":"done"}}'
        % (uuid.uuid4(), jid[1], ARN))
    add("statusDetails holding an object and a fraction (a relay that kept the device's JSON)",
        EXECUTION.format(jid[1], "failed"),
        '{"eventType":"JOB_EXECUTION","eventId":"%s","timestamp":1700000100,'
        '"operation":"failed","jobId":"%s","thingArn":"%sgateway-18","status":"FAILED",'
        '"statusDetails":{"error":{"code":507,"reason":"disk full"},"progress":0.5}}'
        % (uuid.uuid4(), jid[1], ARN))
    add("a targets element that is not a string",
        JOB.format(jid[2], "completed"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1700000200,"operation":"completed",'
        '"jobId":"%s","status":"COMPLETED","targets":["%sa",42],"completedAt":1700000200000}'
        % (uuid.uuid4(), jid[2], ARN))
    add("canceled with forceCanceled, a comment and jobProcessDetails (fields the spec lacks)",
        JOB.format(jid[2], "canceled"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1700000300,"operation":"canceled",'
        '"jobId":"%s","status":"CANCELED","forceCanceled":true,"comment":"stopped by operator",'
        '"jobProcessDetails":{"numberOfCanceledThings":3,"numberOfTimedOutThings":1,'
        '"numberOfQueuedThings":0}}' % (uuid.uuid4(), jid[2]))
    add("completed with a comment and numberOfTimedOutThings, timestamp in seconds beside "
        "milliseconds in the ...At fields",
        JOB.format(jid[3], "completed"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1700000400,"operation":"completed",'
        '"jobId":"%s","status":"COMPLETED","comment":"rolled out","createdAt":1699990000000,'
        '"lastUpdatedAt":1700000399000,"completedAt":1700000400000,'
        '"jobProcessDetails":{"numberOfSucceededThings":9,"numberOfTimedOutThings":2}}'
        % (uuid.uuid4(), jid[3]))
    add("masked account id in the ARNs and the documentation's placeholder SNAPSHOT|CONTINUOUS",
        JOB.format(jid[3], "deletion_in_progress"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1700000500,'
        '"operation":"deletion_in_progress","jobId":"%s","status":"DELETION_IN_PROGRESS",'
        '"targetSelection":"SNAPSHOT|CONTINUOUS","targets":["%sdevice-1",'
        '"arn:aws:iot:us-east-1:xxxxxxxxxxxx:thinggroup/plant-a"],"comment":"cleanup"}'
        % (uuid.uuid4(), jid[3], MASKED))
    add("an execution with a masked account id, '\"key\" : value' spacing and a newline-free "
        "pretty print",
        EXECUTION.format(jid[0], "timed_out"),
        '{ "eventType" : "JOB_EXECUTION" , "eventId" : "%s" , "timestamp" : 1700000600 , '
        '"operation" : "timed_out" , "jobId" : "%s" , "thingArn" : "%sthing-9" , '
        '"status" : "TIMED_OUT" , "statusDetails" : { "lastStep" : "download" } }'
        % (uuid.uuid4(), jid[0], MASKED))
    add("a status AWS does not document, kept as given",
        EXECUTION.format(jid[0], "rejected"),
        '{"eventType":"JOB_EXECUTION","eventId":"%s","timestamp":1700000700,'
        '"operation":"rejected","jobId":"%s","thingArn":"%sthing-10","status":"REJECTED_BY_DEVICE"}'
        % (uuid.uuid4(), jid[0], ARN))
    add("an execution status that does not fit the operation",
        EXECUTION.format(jid[3], "canceled"),
        '{"eventType":"JOB_EXECUTION","eventId":"%s","timestamp":1700000800,'
        '"operation":"canceled","jobId":"%s","thingArn":"%sthing-11","status":"IN_PROGRESS",'
        '"statusDetails":{"reason":"superseded"}}' % (uuid.uuid4(), jid[3], ARN))
    add("a description that is a number (a templated job whose description is a build number)",
        JOB.format(jid[1], "completed"),
        '{"eventType":"JOB","eventId":"%s","timestamp":1700000900,"operation":"completed",'
        '"jobId":"%s","status":"COMPLETED","description":20241107,"completedAt":1700000900000}'
        % (uuid.uuid4(), jid[1]))
    add("a timestamp a relay already converted to milliseconds",
        EXECUTION.format(jid[2], "removed"),
        '{"eventType":"JOB_EXECUTION","eventId":"%s","timestamp":1700001000000,'
        '"operation":"removed","jobId":"%s","thingArn":"%sthing-12","status":"REMOVED"}'
        % (uuid.uuid4(), jid[2], ARN))
    return out


def write_capture(path, corpus):
    path.write_bytes(b"".join(t.encode() + b"\t" + p + b"\n" for _, t, p in corpus))
    return path


def expected_counts(corpus):
    counts = Counter()
    for _, _, payload in corpus:
        counts.update(expected_anomalies(json.loads(payload)))
    return counts


def rows_of(out):
    rows = {}
    for path in sorted(out.rglob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            row = normalise(row)
            assert row["event_id"] not in rows, row["event_id"]
            rows[row["event_id"]] = row
    return rows


def assert_rows_match(corpus, rows):
    assert len(rows) == len(corpus)
    for what, topic, payload in corpus:
        body = json.loads(payload)
        row = rows[body["eventId"]]
        want = expected_row(topic, body)
        for column, value in want.items():
            assert row[column] == value, (what, column, row[column], value)


def test_the_corpus_covers_every_anomaly_and_events_without_one():
    counts = expected_counts(variations())
    assert set(counts) == set(ANOMALY_ORDER), counts
    clean = [w for w, _, p in variations() if not expected_anomalies(json.loads(p))]
    assert len(clean) >= 4, clean


def test_real_world_variations_replay_into_the_tables_with_anomalies_flagged_and_nothing_in_the_dlq(tmp_path):
    corpus = variations()
    capture = write_capture(tmp_path / "variations.tsv", corpus)
    out = tmp_path / "out"
    dlq = tmp_path / "dlq.jsonl"
    run("replay", "--input", capture, "--parquet", out, "--dlq", dlq)
    rejected = dlq.read_text().splitlines() if dlq.exists() else []
    assert rejected == [], rejected
    assert_rows_match(corpus, rows_of(out))

    # An analyst counts by code in DuckDB, and a completion with an odd status still counts.
    con = duckdb.connect()
    pattern = lambda table: str(out / table / "*" / "*.parquet")
    by_code = dict(con.execute(f"""
        SELECT code, count(*) FROM (
            SELECT unnest(anomalies) AS code FROM read_parquet('{pattern("job_events")}', union_by_name = true)
            UNION ALL
            SELECT unnest(anomalies) FROM read_parquet('{pattern("job_execution_events")}', union_by_name = true))
        GROUP BY code""").fetchall())
    assert by_code == dict(expected_counts(corpus))
    completed = con.execute(f"""
        SELECT count(*) FILTER (WHERE len(anomalies) > 0), count(*)
        FROM read_parquet('{pattern("job_events")}') WHERE operation = 'completed'""").fetchone()
    want = [json.loads(p) for _, t, p in corpus if t.endswith("/completed")]
    assert completed == (sum(1 for b in want if expected_anomalies(b)), len(want))

    # `jobstream report` counts the flagged events, and the completion with SUCCEEDED still
    # completes its job.
    report = json.loads(run("report", "--parquet", out, "--format", "json").stdout)
    flagged = sum(1 for _, _, p in corpus if expected_anomalies(json.loads(p)))
    assert report["summary"]["events_with_anomalies"] == flagged
    states = {j["job_id"]: j["state"] for j in report["jobs"]}
    assert states["example-job-01"] == "completed", states

    # polars sees the column as a list of strings, and the JSON text of a number.
    frame = pl.read_parquet(str(out / "job_execution_events" / "*" / "*.parquet"))
    assert frame.schema["anomalies"] == pl.List(pl.String)
    assert frame.schema["status_details"] == pl.Map(pl.String, pl.String)
    details = {k: v for row in frame["status_details"].to_list() if row for k, v in row.items()}
    assert details["downloadTime"] == "120" and details["verified"] == "true"
    assert details["error"] == '{"code":507,"reason":"disk full"}'


def test_the_pipeline_keeps_variations_byte_for_byte_in_kafka_and_counts_anomalies_by_code(tmp_path, kafka):
    corpus = variations()
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    try:
        topics = Topics(kafka)
        out = tmp_path / "out"
        metrics_port = free_port()
        proc, log = start_pipeline(tmp_path, mosquitto, kafka, topics, out,
                                   extra=f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n')
        publish(mosquitto.port, [(t, p) for _, t, p in corpus])

        def metrics():
            status, body = http_get(metrics_port, "/metrics")
            return metric_samples(body) if status == 200 else {}

        def sample(name, **labels):
            return metrics().get((name, frozenset(labels.items())))

        def stage_wrote_all():
            rows = sum(sample("jobstream_parquet_rows_written_total", table=t) or 0
                       for t in ("job_events", "job_execution_events"))
            return rows >= len(corpus)
        wait_for(stage_wrote_all, timeout=300, what="the Parquet stage to write every event")
        want = expected_counts(corpus)
        for code in ANOMALY_ORDER:
            assert sample("jobstream_anomalies_total", code=code) == want[code], code
            assert sample("jobstream_consumer_anomalies_total", code=code) == want[code], code
        rejects = sum(v for (name, _), v in metrics().items() if name == "jobstream_rejects_total")
        assert rejects == 0

        reader = KafkaReader(kafka.brokers, [topics.jobs, topics.executions, topics.dlq])
        records = reader.read_until(lambda r: len(r) >= len(corpus))
        assert sorted(m.value() for m in records) == sorted(p for _, _, p in corpus), \
            "the Kafka value is the payload byte for byte, and nothing went to the DLQ topic"
        proc.send_signal(signal.SIGTERM)
        out_text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert_rows_match(corpus, rows_of(out))
    finally:
        mosquitto.stop()
