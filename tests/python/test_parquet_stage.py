"""Kafka → Parquet with exactly-once files, on Apache Kafka, checked by DuckDB and pyarrow.

Records are produced by confluent-kafka following the Kafka contract of DESIGN.md (value = the
MQTT payload, key = jobId, event time as timestamp, headers), so the stage is also checked
against records no jobstream code wrote; the whole-pipeline test covers jobstream's own."""

import json
import random
import re
import signal
import subprocess
import time
import uuid
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from brokers import Mosquitto
from conftest import STARTED, expected_row, jobstream_bin, run, wait_for
from test_bridge import publish
from test_parquet_readers import normalise

PARTITIONS = 3
def generate(count, tmp_path, *extra):
    path = tmp_path / "capture.tsv"
    run("generate", "--events", count, "--output", path, *extra)
    lines = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        topic, _, payload = raw.partition(b"\t")
        lines.append((topic.decode(), payload))
    return lines


class Topics:
    def __init__(self, kafka):
        suffix = uuid.uuid4().hex[:8]
        # Tests share one broker: consumer groups get the same suffix as the topics, so no
        # test meets another's (or a killed run's) members.
        self.suffix = suffix
        self.jobs = f"jobs-{suffix}"
        self.executions = f"executions-{suffix}"
        self.dlq = f"dlq-{suffix}"
        admin = AdminClient({"bootstrap.servers": kafka.brokers})
        futures = admin.create_topics([NewTopic(t, PARTITIONS, 1) for t in (self.jobs, self.executions, self.dlq)])
        for future in futures.values():
            future.result(timeout=30)


def produce(kafka, topics, lines, extra_records=()):
    """Produces capture lines as the bridge would (DESIGN.md's Kafka contract)."""
    producer = Producer({
        "bootstrap.servers": kafka.brokers,
        "enable.idempotence": True,
        "linger.ms": 5,
    })
    received_at = str(int(time.time() * 1000)).encode()
    for topic, payload in lines:
        body = json.loads(payload)
        kafka_topic = topics.jobs if body["eventType"] == "JOB" else topics.executions
        record = dict(
            value=payload, key=body["jobId"].encode(),
            timestamp=body["timestamp"] * 1000,
            headers=[("mqtt_topic", topic.encode()), ("event_type", body["eventType"].encode()),
                     ("operation", body["operation"].encode()), ("event_id", body["eventId"].encode()),
                     ("received_at", received_at)])
        while True:
            try:
                producer.produce(kafka_topic, **record)
                break
            except BufferError:
                producer.poll(0.1)
    for kafka_topic, record in extra_records:
        producer.produce(getattr(topics, kafka_topic), **record)
    assert producer.flush(120) == 0


class Sink:
    """One `jobstream run --kafka --parquet` process (a consumer-group member)."""

    def __init__(self, tmp_path, kafka, topics, out, group, name="sink", max_file_rows=5000, env=None,
                 instance_id=None, brokers=None, kafka_options=None, parquet_extra=None):
        self.log = tmp_path / f"{name}.log"
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(f"""
[kafka]
brokers = "{brokers or kafka.brokers}"
job_topic = "{topics.jobs}"
execution_topic = "{topics.executions}"
dlq_topic = "{topics.dlq}"

[kafka.options]
# A killed member is noticed in seconds rather than the default 45.
"consumer.session.timeout.ms" = "6000"
"consumer.heartbeat.interval.ms" = "500"
{f'"consumer.group.instance.id" = "{instance_id}"' if instance_id else ""}
{"".join(f'{json.dumps(k)} = {json.dumps(v)}' + chr(10) for k, v in (kafka_options or {}).items())}
[parquet]
dir = "{out}"
group_id = "{group}-{topics.suffix}"
max_file_rows = {max_file_rows}
{"".join(f'{k} = {json.dumps(v)}' + chr(10) for k, v in (parquet_extra or {}).items())}""")
        self.env = {"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin", **(env or {})}
        self.proc = None
        self.offset = 0

    def start(self):
        # Stats of this run only: earlier runs' lines stay in the same log.
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.proc = subprocess.Popen(
            [jobstream_bin(), "run", "--config", self.config, "--stats-every-secs", "1"],
            stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True, env=self.env)
        STARTED.append(self.proc)
        return self

    def text(self):
        with open(self.log, "rb") as f:
            f.seek(self.offset)
            return f.read().decode(errors="replace")

    def stat(self, pattern):
        """The latest value of a field of this run's once-a-second stats line."""
        value = None
        for line in self.text().splitlines():
            if "parquet: read" in line:
                found = re.search(pattern, line)
                if found:
                    value = found.group(1)
        return value

    def caught_up(self, partitions=None):
        """Assigned partitions all read to their end (librdkafka's statistics, every second)."""
        lag = self.stat(r"\| lag (\w+)")
        assigned = self.stat(r"\| partitions (\d+)")
        return (lag == "0" and assigned is not None
                and (partitions is None or int(assigned) == partitions))

    def assigned(self):
        return "partition assigned" in self.text()

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.text()[-3000:]}"
        return out


def read_tables(out: Path):
    """DuckDB's counts and pyarrow's rows of both tables."""
    counts, rows = {}, {}
    for table in ("job_events", "job_execution_events"):
        pattern = str(out / table / "*" / "*.parquet")
        if not list(out.glob(f"{table}/*/*.parquet")):
            counts[table] = (0, 0)
            continue
        counts[table] = duckdb.sql(
            f"select count(*), count(distinct event_id) from read_parquet('{pattern}', hive_partitioning = true)"
        ).fetchall()[0]
        for path in out.glob(f"{table}/*/*.parquet"):
            for row in pq.read_table(path).to_pylist():
                rows.setdefault(row["event_id"], []).append(normalise(row))
    return counts, rows


def assert_exactly_once(out: Path, lines):
    counts, rows = read_tables(out)
    total = sum(c[0] for c in counts.values())
    distinct = sum(c[1] for c in counts.values())
    assert (total, distinct) == (len(lines), len(lines)), counts
    for topic, payload in lines:
        body = json.loads(payload)
        (row,) = rows[body["eventId"]]
        assert row == expected_row(topic, body), body["eventId"]
    assert not list(out.rglob("*.inprogress")), "a clean stop leaves no temporaries"


def test_sink_stage_writes_each_kafka_event_to_parquet_once_and_rejects_to_the_dlq(tmp_path, kafka):
    lines = generate(20_000, tmp_path, "--unknown-fields")
    topics = Topics(kafka)
    bad = [
        ("executions", dict(value=b'{"eventType":', key=b"j", headers=[("mqtt_topic", b"$aws/events/jobExecution/j/failed")])),
        ("jobs", dict(value=lines[0][1], key=b"j")),  # no mqtt_topic header
    ]
    produce(kafka, topics, lines, bad)
    out = tmp_path / "out"
    sink = Sink(tmp_path, kafka, topics, out, group="g1").start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=300, what="the sink to read everything")
    final = sink.stop()
    assert "rejected 2" in final, final
    assert_exactly_once(out, lines)
    names = {p.name for p in out.rglob("*.parquet")}
    assert any(n.startswith(f"{topics.executions}-0+") for n in names), names
    # Each name is <topic>-<partition>+<first offset>+<last offset>, and ranges never overlap.
    ranges = {}
    for name in names:
        source, first, last = name.removesuffix(".parquet").split("+")
        assert int(first) <= int(last)
        ranges.setdefault(source, []).append((int(first), int(last)))
    for spans in ranges.values():
        spans.sort()
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans

    from test_bridge import KafkaReader, header
    dlq = KafkaReader(kafka.brokers, [topics.dlq]).read_until(lambda r: len(r) >= 2)
    kinds = sorted(header(m, "error_kind").decode() for m in dlq)
    assert kinds == ["missing_mqtt_topic_header", "not_json"], kinds

    # A rerun of the same group finds nothing new: no file is written twice.
    before = sorted(p.name for p in out.rglob("*.parquet"))
    again = Sink(tmp_path, kafka, topics, out, group="g1", name="again").start()
    wait_for(lambda: again.caught_up(partitions=2 * PARTITIONS), timeout=120, what="the rerun to catch up")
    again.stop()
    assert sorted(p.name for p in out.rglob("*.parquet")) == before


def kill_at_random_moments(sink, temporaries_under, rounds, seed, longest):
    """Starts and SIGKILLs `sink` `rounds` times; the temporaries each kill left behind. The
    first kill lands as soon as a file is being written, so that at least one kill hits a file
    mid-write whatever the machine's speed; the others at a random moment after assignment."""
    rng = random.Random(seed)
    left = set()
    for round in range(rounds):
        sink.start()
        wait_for(sink.assigned, timeout=120, what="an assignment")
        if round == 0:
            wait_for(lambda: list(temporaries_under.rglob("*.inprogress")), timeout=120,
                     what="a file being written")
        else:
            time.sleep(rng.uniform(0.2, longest))
        sink.kill()
        left |= set(temporaries_under.rglob("*.inprogress"))
    return left


def test_sink_killed_at_random_moments_still_writes_every_event_exactly_once(tmp_path, kafka):
    lines = generate(200_000, tmp_path)
    topics = Topics(kafka)
    produce(kafka, topics, lines)
    out = tmp_path / "out"
    sink = Sink(tmp_path, kafka, topics, out, group="g-kill", max_file_rows=4000)
    temporaries = kill_at_random_moments(sink, out, rounds=5, seed=5, longest=3.0)
    sink.start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=600, what="the last run to catch up")
    sink.stop()
    assert temporaries, "at least one kill landed while a file was being written"
    assert_exactly_once(out, lines)


def test_copies_of_an_event_at_other_offsets_become_one_row_and_a_kill_changes_no_file(tmp_path, kafka, crash_points):
    lines = generate(30_000, tmp_path)
    # Every 10th event again, from right behind it (an AWS duplicate) to 3000 events later (a
    # bridge's redelivery after a crash): copies share the jobId, so they share a partition.
    rng = random.Random(11)
    keyed = [(i, line) for i, line in enumerate(lines)]
    keyed += [(i + rng.uniform(0.5, 3000), lines[i]) for i in range(0, len(lines), 10)]
    with_copies = [line for _, line in sorted(keyed, key=lambda k: k[0])]
    topics = Topics(kafka)
    produce(kafka, topics, with_copies)
    # Files roll on rows only, so that a run's files are a function of what it wrote.
    steady = {"max_file_age_secs": 3600, "idle_timeout_secs": 3600}

    reference = tmp_path / "reference"
    sink = Sink(tmp_path, kafka, topics, reference, group="g-ref", name="ref", max_file_rows=2000,
                parquet_extra=steady).start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=300, what="the reference run")
    final = sink.stop()
    assert f"duplicates {len(with_copies) - len(lines)} " in final, final

    out = tmp_path / "out"
    crashing = Sink(tmp_path, kafka, topics, out, group="g-killed", name="crashing", max_file_rows=2000,
                    parquet_extra=steady, env={"JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING": "4"}).start()
    crashing.proc.wait(timeout=300)
    assert crashing.proc.returncode == -signal.SIGABRT, crashing.text()[-2000:]
    sink = Sink(tmp_path, kafka, topics, out, group="g-killed", name="killed", max_file_rows=2000,
                parquet_extra=steady)
    for _ in range(3):
        sink.start()
        wait_for(sink.assigned, timeout=120, what="an assignment")
        time.sleep(rng.uniform(0.5, 2.0))
        sink.kill()
    sink.start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=300, what="the last run to catch up")
    sink.stop()

    for run_out in (reference, out):
        assert_exactly_once(run_out, lines)
    names = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
    assert names(out) == names(reference), "the same files as a run without crashes"


def two_members(tmp_path, kafka, interrupt):
    lines = generate(60_000, tmp_path)
    topics = Topics(kafka)
    produce(kafka, topics, lines)
    out = tmp_path / "out"
    a = Sink(tmp_path, kafka, topics, out, group="g-two", name="a", max_file_rows=3000).start()
    b = Sink(tmp_path, kafka, topics, out, group="g-two", name="b", max_file_rows=3000).start()
    wait_for(lambda: a.assigned() and b.assigned(), timeout=120, what="both members assigned")
    time.sleep(random.uniform(0.5, 2.0))
    interrupt(a)
    # b takes over a's partitions (at once after a graceful leave, after the session timeout
    # after a kill), then the restarted a takes its share back.
    wait_for(lambda: b.stat(r"\| partitions (\d+)") == str(2 * PARTITIONS), timeout=120,
             what="b to take over a's partitions")
    a.start()
    wait_for(lambda: a.stat(r"\| partitions (\d+)") not in (None, "0"), timeout=120,
             what="the restarted a to get partitions back")

    def both_done():
        return (a.caught_up() and b.caught_up()
                and int(a.stat(r"\| partitions (\d+)")) + int(b.stat(r"\| partitions (\d+)")) == 2 * PARTITIONS)
    wait_for(both_done, timeout=600, what="the group to read everything")
    a.stop()
    b.stop()
    assert_exactly_once(out, lines)
    sources = {p.name.split("+")[0] for p in out.rglob("*.parquet")}
    assert len(sources) == 2 * PARTITIONS


def test_two_members_of_one_group_share_partitions_across_a_stop_and_restart(tmp_path, kafka):
    two_members(tmp_path, kafka, Sink.stop)


def test_two_members_of_one_group_share_partitions_and_survive_a_kill(tmp_path, kafka):
    two_members(tmp_path, kafka, Sink.kill)


def test_a_crash_between_rename_and_commit_duplicates_nothing(tmp_path, kafka, crash_points):
    lines = generate(30_000, tmp_path)
    topics = Topics(kafka)
    produce(kafka, topics, lines)
    out = tmp_path / "out"
    crashing = Sink(tmp_path, kafka, topics, out, group="g-crash", name="crashing", max_file_rows=2000,
                    env={"JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING": "3"}).start()
    crashing.proc.wait(timeout=300)
    assert crashing.proc.returncode == -signal.SIGABRT, crashing.text()[-2000:]
    published_before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    assert len(published_before) >= 3

    sink = Sink(tmp_path, kafka, topics, out, group="g-crash", name="restarted", max_file_rows=2000).start()
    wait_for(lambda: sink.caught_up(partitions=2 * PARTITIONS), timeout=300, what="the restart to catch up")
    final = sink.stop()
    # The restart resumed past the published files although the commit never happened.
    def offset(text):
        found = re.fullmatch(r"Some\((\d+)\)", text)
        return int(found.group(1)) if found else 0
    resumed = re.findall(r"partition assigned.*committed=(\S+) resume=(\S+)", sink.text())
    assert any(offset(r) > offset(c) for c, r in resumed), resumed
    assert "already published 0 " in final, final
    for name, mtime in published_before.items():
        found = list(out.rglob(name))
        assert len(found) == 1 and found[0].stat().st_mtime_ns == mtime, "published files are never rewritten"
    assert_exactly_once(out, lines)


def start_pipeline(tmp_path, mosquitto, kafka, topics, out, extra=""):
    """One `jobstream run` with MQTT, Kafka and Parquet sections (bridge and Parquet stage in one
    process), `extra` TOML appended; returns (process, log) once it has subscribed."""
    config = tmp_path / "pipeline.toml"
    config.write_text(f"""
[mqtt]
url = "{mosquitto.url}"
client_id = "pipeline-{topics.suffix}"

[kafka]
brokers = "{kafka.brokers}"
job_topic = "{topics.jobs}"
execution_topic = "{topics.executions}"
dlq_topic = "{topics.dlq}"

[parquet]
dir = "{out}"
group_id = "pipeline-{topics.suffix}"
{extra}""")
    log = tmp_path / "pipeline.log"
    proc = subprocess.Popen([jobstream_bin(), "run", "--config", config, "--stats-every-secs", "1"],
                            stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                            env={"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin"})
    STARTED.append(proc)
    wait_for(lambda: "subscribed" in log.read_text(errors="replace"), timeout=60, what="subscription")
    return proc, log


def test_events_published_to_mqtt_arrive_in_parquet_exactly_once(tmp_path, kafka):
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    try:
        lines = generate(3000, tmp_path)
        topics = Topics(kafka)
        out = tmp_path / "out"
        proc, log = start_pipeline(tmp_path, mosquitto, kafka, topics, out)
        publish(mosquitto.port, lines)

        def stage_read():
            reads = re.findall(r"parquet: read (\d+)", log.read_text(errors="replace"))
            return reads and int(reads[-1]) >= len(lines)
        wait_for(stage_read, timeout=300, what="the Parquet stage to read every event")
        proc.send_signal(signal.SIGTERM)
        out_text, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert f"acked {len(lines)}" in out_text, out_text
        assert_exactly_once(out, lines)
    finally:
        mosquitto.stop()
