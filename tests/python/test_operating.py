"""Operating `jobstream run` on real brokers: /metrics read with the Prometheus project's own
parser (prometheus-client), /health and /ready, SIGTERM mid-stream, JSON logs without secrets,
throttled warnings, and configuration mistakes caught before connecting anywhere."""

import collections
import json
import re
import signal
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest

from brokers import free_port
from conftest import http_get, jobstream_bin, metric_samples, run, wait_for
from test_bridge import BAD_LINES, Bridge, KafkaReader, generate, header, publish

# What the parser makes of each of BAD_LINES (test_bridge checks the same kinds in the DLQ),
# plus an operation the job family does not have.
UNKNOWN_OPERATION = ("$aws/events/job/j-x/exploded",
                     b'{"eventType":"JOB","eventId":"u-1","timestamp":1,"operation":"exploded","jobId":"j-x","status":"IN_PROGRESS"}')
REJECT_KINDS = {"event_type_mismatch": 1, "not_json": 2, "unknown_operation": 1}


def paced_publish(port, messages, per_second):
    """Publishes QoS 1 at about `per_second` through one paho client, so that a signal lands
    while messages still flow; waits until the broker took every one."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paced-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    began = time.monotonic()
    infos = collections.deque()
    for i, (topic, payload) in enumerate(messages):
        infos.append(client.publish(topic, payload, qos=1))
        if len(infos) >= 1000:
            infos.popleft().wait_for_publish(timeout=120)
        ahead = began + (i + 1) / per_second - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    for info in infos:
        info.wait_for_publish(timeout=120)
    client.loop_stop()
    client.disconnect()


class ObservedBridge(Bridge):
    """A bridge with its metrics endpoint on a free port."""

    def __init__(self, tmp_path, mosquitto, kafka, **extra):
        super().__init__(tmp_path, mosquitto, kafka, **extra)
        self.metrics_port = free_port()
        self.config.write_text(self.config.read_text()
                               + f'\n[metrics]\nlisten = "127.0.0.1:{self.metrics_port}"\n')

    def get(self, path):
        """(status, body) of a GET on the endpoint."""
        return http_get(self.metrics_port, path)

    def metrics(self, strict=True):
        """{(sample name, frozenset(labels)): value}, parsed by prometheus-client."""
        status, body = self.get("/metrics")
        if not strict and status != 200:
            return {}
        assert status == 200, body
        return metric_samples(body)

    def value(self, name, **labels):
        """A sample's value; None while the endpoint is not answering."""
        return self.metrics(strict=False).get((name, frozenset(labels.items())))


def test_metrics_scraped_during_a_run_match_what_was_sent(tmp_path, mosquitto, kafka):
    events = generate(2000, tmp_path)
    duplicates = events[:50]
    bad = BAD_LINES + [UNKNOWN_OPERATION]
    sent = events + duplicates + bad
    bridge = ObservedBridge(tmp_path, mosquitto, kafka).start()

    assert bridge.get("/health") == (200, "ok\n")
    ready = wait_for(lambda: bridge.get("/ready")[0] == 200 and bridge.get("/ready"), timeout=30,
                     what="/ready to answer 200")
    assert "mqtt ok" in ready[1] and "kafka ok" in ready[1], ready

    publish(mosquitto.port, sent)
    wait_for(lambda: bridge.value("jobstream_mqtt_acknowledged_total") == len(sent), timeout=300,
             what=f"{len(sent)} acknowledgements in /metrics")
    m = bridge.metrics()

    def v(name, **labels):
        return m.get((name, frozenset(labels.items())))

    families = collections.Counter(json.loads(p)["eventType"] for _, p in events + duplicates)
    unique = collections.Counter(json.loads(p)["eventType"] for _, p in events)
    assert v("jobstream_mqtt_reconnects_total") == 0
    assert v("jobstream_mqtt_messages_received_total") == len(sent)
    assert v("jobstream_events_received_total", family="job") == families["JOB"]
    assert v("jobstream_events_received_total", family="execution") == families["JOB_EXECUTION"]
    assert v("jobstream_duplicates_dropped_total") == len(duplicates)
    assert v("jobstream_kafka_produced_total", topic=bridge.topics["jobs"]) == unique["JOB"]
    assert v("jobstream_kafka_produced_total", topic=bridge.topics["executions"]) == unique["JOB_EXECUTION"]
    assert v("jobstream_kafka_produced_total", topic=bridge.topics["dlq"]) == len(bad)
    rejects = {dict(labels)["kind"]: value for (name, labels), value in m.items()
               if name == "jobstream_rejects_total" and value}
    assert rejects == REJECT_KINDS
    assert v("jobstream_kafka_delivery_failures_total") == 0

    # Every record Kafka confirmed has one latency observation; buckets are cumulative.
    produced = len(events) + len(bad)
    assert v("jobstream_kafka_delivery_seconds_count") == produced
    buckets = sorted(((float(dict(l)["le"]), value) for (n, l), value in m.items()
                      if n == "jobstream_kafka_delivery_seconds_bucket"))
    assert buckets[-1] == (float("inf"), produced)
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert 0 < v("jobstream_kafka_delivery_seconds_sum") < produced * 300

    assert v("jobstream_mqtt_connections_up") == 1
    assert v("jobstream_mqtt_inflight_messages", connection="0") == 0, "everything acknowledged"
    for queue in ("handoff_batches", "kafka_producer"):
        assert v("jobstream_queue_depth", queue=queue) is not None, queue

    code, out = bridge.stop()
    assert code == 0, out
    assert f"acked {len(sent)}" in out


def test_ready_names_the_mqtt_broker_while_it_is_down_and_recovers(tmp_path, mosquitto, kafka):
    bridge = ObservedBridge(tmp_path, mosquitto, kafka).start()
    wait_for(lambda: bridge.get("/ready")[0] == 200, timeout=30, what="ready")
    mosquitto.stop()
    status, body = wait_for(lambda: (r := bridge.get("/ready"))[0] == 503 and r, timeout=60,
                            what="/ready to report the broker down")
    assert "mqtt not ready: 0 of 1 connection(s)" in body and "kafka ok" in body, body
    assert bridge.get("/health")[0] == 200, "alive while not ready"
    mosquitto.start()
    wait_for(lambda: bridge.get("/ready")[0] == 200, timeout=90, what="ready again after the broker is back")
    assert bridge.value("jobstream_mqtt_reconnects_total") >= 1
    code, out = bridge.stop()
    assert code == 0, out


def test_sigterm_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path, mosquitto, kafka):
    events = generate(5000, tmp_path)
    bridge = ObservedBridge(tmp_path, mosquitto, kafka).start()
    publisher = threading.Thread(target=paced_publish, args=(mosquitto.port, events, 1000))
    publisher.start()
    wait_for(lambda: (bridge.value("jobstream_mqtt_acknowledged_total") or 0) >= 1000, timeout=300,
             what="1000 acknowledgements")
    code, out = bridge.stop()
    first_acked = int(out.split("acked ")[1].split()[0])
    log = bridge.log.read_text()
    assert code == 0, log[-3000:]
    assert "draining" in log and "drained" in log, log[-3000:]
    assert first_acked < len(events), "the signal landed mid-stream"

    # The rest was queued for the persistent session (or never acknowledged): a new run gets it.
    bridge.start()
    publisher.join()
    wait_for(lambda: first_acked + (bridge.value("jobstream_mqtt_acknowledged_total") or 0) >= len(events),
             timeout=300, what="the second run to acknowledge the rest")
    code, out = bridge.stop()
    assert code == 0, out

    reader = KafkaReader(kafka.brokers, [bridge.topics["jobs"], bridge.topics["executions"]])
    records = reader.read_until(lambda r: len(r) >= len(events), timeout=300)
    reader.read_until(lambda r: True, timeout=2)  # a late duplicate would show up here
    ids = collections.Counter(header(m, "event_id").decode() for m in records)
    assert set(ids) == {json.loads(p)["eventId"] for _, p in events}, "nothing lost"
    assert max(ids.values()) == 1, "nothing acknowledged twice or produced twice"


def test_json_logs_never_show_secrets_and_bad_input_warnings_are_throttled(tmp_path, mosquitto, kafka):
    url = f"mqtt://jobstream:hunter2-mqtt@127.0.0.1:{mosquitto.port}"
    bridge = ObservedBridge(tmp_path, mosquitto, kafka, url=url,
                            kafka_options={"sasl.password": "s3cret-kafka", "sasl.username": "kafka-user"})
    check = run("run", "--check", "--config", bridge.config)
    assert "hunter2" not in check.stdout and "s3cret" not in check.stdout, check.stdout
    assert "sasl.password=***" in check.stdout

    bridge.proc = subprocess.Popen(
        [jobstream_bin(), "--log-format", "json", "run", "--config", bridge.config,
         "--stats-every-secs", "1"],
        stdout=subprocess.PIPE, stderr=open(bridge.log, "ab"), text=True,
        env={"JOBSTREAM_LOG": "debug", "PATH": "/usr/bin:/bin"})
    bridge.starts = 1
    wait_for(lambda: "subscribed" in bridge.log.read_text(), timeout=60, what="subscribed")
    flood = [("$aws/events/job/j-bad/completed", b"{not json")] * 300
    publish(mosquitto.port, flood)
    wait_for(lambda: (bridge.value("jobstream_rejects_total", kind="not_json") or 0) == 300,
             timeout=120, what="300 rejects counted")
    # The stats line comes once a second: a run that got this far in under a second has none.
    wait_for(lambda: '"message":"received ' in bridge.log.read_text(), timeout=30,
             what="a periodic stats line in the log")
    code, out = bridge.stop()
    assert code == 0, out

    log = bridge.log.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert lines and all({"timestamp", "level", "fields"} <= line.keys() for line in lines)
    for secret in ("hunter2", "s3cret", "kafka-user"):
        assert secret not in log and secret not in out, f"{secret} leaked"
    warnings = [l for l in lines if l["fields"].get("message") == "rejected input sent to the DLQ"]
    assert 1 <= len(warnings) <= 3, "one warning per kind per 10 s, not one per message"
    assert warnings[0]["fields"]["kind"] == "not_json"
    assert any(l["fields"].get("message", "").startswith("received ") for l in lines), "stats go through tracing"


def test_configuration_mistakes_name_file_key_and_value_before_connecting(tmp_path):
    config = tmp_path / "jobstream.toml"
    # The brokers are unreachable: an error about them would mean something connected first.
    base = '[mqtt]\nurl = "mqtt://127.0.0.1:1"\n[kafka]\nbrokers = "127.0.0.1:9"\n'
    config.write_text(base + '[metrics]\nlisten = "localhost"\n')
    result = run("run", "--config", config, check=False)
    assert result.returncode == 78
    assert str(config) in result.stderr and "[metrics] listen" in result.stderr and '"localhost"' in result.stderr

    config.write_text(base + '[metrics]\nlisen = "127.0.0.1:9464"\n')
    result = run("run", "--config", config, check=False)
    assert result.returncode == 78 and "lisen" in result.stderr and "line 6" in result.stderr, result.stderr

    # A value checked after loading: named by key and value, and the file added.
    config.write_text(base.replace('[kafka]', 'qos = 2\n[kafka]'))
    result = run("run", "--config", config, check=False)
    assert result.returncode == 78, result.stderr
    assert str(config) in result.stderr and "qos" in result.stderr and "got 2" in result.stderr, result.stderr

    config.write_text(base + '[log]\nformat = "xml"\n')
    result = run("run", "--config", config, check=False)
    assert result.returncode == 78 and "xml" in result.stderr and "line 6" in result.stderr, result.stderr

    with socket_taken() as port:
        config.write_text(base + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
        started = time.monotonic()
        result = run("run", "--config", config, check=False)
        assert result.returncode == 78, result.stderr
        assert f"127.0.0.1:{port}" in result.stderr and "mqtt" not in result.stderr.lower(), result.stderr
        assert time.monotonic() - started < 20, "failed at once, not after a connect timeout"

    config.write_text(base + '[metrics]\nlisten = "localhost"\n')
    result = run("--log-format", "json", "run", "--config", config, check=False)
    (line,) = [json.loads(l) for l in result.stderr.splitlines()]
    assert line["level"] == "ERROR" and line["fields"]["exit_code"] == 78, line
    assert "[metrics] listen" in line["fields"]["message"], line

    result = run("--log-format", "yaml", "run", "--check", check=False)
    assert result.returncode == 2 and "json" in result.stderr


class socket_taken:
    """A listening socket on a free loopback port, for the duration of a `with`."""

    def __enter__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return self.sock.getsockname()[1]

    def __exit__(self, *exc):
        self.sock.close()


def test_parquet_stage_metrics_match_its_files_and_sigterm_leaves_only_complete_files(tmp_path, kafka):
    # The Parquet stage's helpers (topics, a contract-following producer, the stage process).
    from test_parquet_stage import Sink, Topics, assert_exactly_once, produce
    import pyarrow.parquet as pq

    lines = generate(6000, tmp_path)
    topics = Topics(kafka)
    # The second half is produced only after the signal, so the signal lands mid-stream by
    # construction: waiting for a count and then signalling raced a fast stage (CI once saw
    # every row in before the signal).
    half = len(lines) // 2
    produce(kafka, topics, lines[:half])
    out = tmp_path / "out"
    sink = Sink(tmp_path, kafka, topics, out, f"group-{uuid.uuid4().hex[:6]}", max_file_rows=300)
    port = free_port()
    sink.config.write_text(sink.config.read_text() + f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    endpoint = ObservedBridge.__new__(ObservedBridge)
    endpoint.metrics_port = port

    def files():
        return {p: pq.ParquetFile(p).metadata.num_rows for p in out.rglob("*.parquet")}

    sink.start()
    wait_for(lambda: (endpoint.value("jobstream_parquet_files_published_total") or 0) >= 2, timeout=300,
             what="two files published")
    status, body = endpoint.get("/ready")
    assert status == 200 and "parquet ok" in body and "kafka ok" in body and "mqtt" not in body, body
    sink.stop()
    first = files()
    assert 0 < sum(first.values()) <= half, "only what was produced before the signal"
    assert [p.name for p in out.rglob(".*")] == [], "no temporary left behind"

    produce(kafka, topics, lines[half:])
    sink.start()
    wait_for(lambda: sum(files().values()) >= len(lines), timeout=600, what="every event in Parquet")

    def lags(samples):
        return {(dict(l)["topic"], dict(l)["partition"]): value for (n, l), value in samples.items()
                if n == "jobstream_consumer_lag_records"}

    # librdkafka reports lag once a second, for the partitions it has fetched from: the
    # execution topic's three must show 0.
    def caught_up():
        reported = lags(endpoint.metrics(strict=False))
        executions = [lag for (topic, _), lag in reported.items() if topic == topics.executions]
        return len(executions) == 3 and set(reported.values()) == {0}
    wait_for(caught_up, timeout=60,
             what=f"lag 0 in /metrics (at {lags(endpoint.metrics(strict=False))})")
    m = endpoint.metrics()

    def v(name, **labels):
        return m.get((name, frozenset(labels.items())))

    second = {p: rows for p, rows in files().items() if p not in first}
    assert v("jobstream_parquet_files_published_total") == len(second)
    assert v("jobstream_parquet_rows_published_total") == sum(second.values())
    assert v("jobstream_parquet_bytes_published_total") == sum(p.stat().st_size for p in second)
    written = sum(v("jobstream_parquet_rows_written_total", table=t) for t in ("job_events", "job_execution_events"))
    assert written == sum(second.values())
    assert {topic for topic, _ in lags(m)} <= {topics.jobs, topics.executions}
    assert v("jobstream_consumer_assigned_partitions") == 6
    sink.stop()
    assert_exactly_once(out, lines)


def test_a_drain_past_its_deadline_exits_75_and_names_what_hung(tmp_path, mosquitto, own_kafka):
    events = generate(300, tmp_path)
    bridge = ObservedBridge(tmp_path, mosquitto, own_kafka)
    bridge.config.write_text(bridge.config.read_text().replace("drain_timeout_secs = 60", "drain_timeout_secs = 3"))
    bridge.start()
    publish(mosquitto.port, events[:200])
    wait_for(lambda: bridge.value("jobstream_mqtt_acknowledged_total") == 200, timeout=120, what="200 acked")
    own_kafka.proc.send_signal(signal.SIGSTOP)  # Kafka stops answering mid-stream
    try:
        publish(mosquitto.port, events[200:])
        wait_for(lambda: (bridge.value("jobstream_queue_depth", queue="kafka_producer") or 0) > 0,
                 timeout=60, what="records waiting in the producer")
        started = time.monotonic()
        bridge.proc.send_signal(signal.SIGTERM)
        out, _ = bridge.proc.communicate(timeout=60)
        took = time.monotonic() - started
    finally:
        own_kafka.proc.send_signal(signal.SIGCONT)
    log = bridge.log.read_text()
    assert bridge.proc.returncode == 75, log[-3000:]
    assert took < 30, f"the deadline (3 s) held: exited after {took:.1f}s"
    hung = re.search(r"drain did not finish within 3s: (.*)", log)
    assert hung, log[-3000:]
    assert re.search(rf"Kafka at {re.escape(own_kafka.brokers)} had not confirmed \d+ record", hung.group(1)) \
        or "parser workers were still handing records to Kafka" in hung.group(1), hung.group(1)
    assert "acked 200 " in out, "nothing unconfirmed was acknowledged"


def test_a_second_signal_exits_130_at_once_while_a_drain_waits_on_kafka(tmp_path, mosquitto, own_kafka):
    events = generate(150, tmp_path)
    bridge = ObservedBridge(tmp_path, mosquitto, own_kafka).start()  # drain deadline: 60 s
    publish(mosquitto.port, events[:100])
    wait_for(lambda: bridge.value("jobstream_mqtt_acknowledged_total") == 100, timeout=120, what="100 acked")
    own_kafka.proc.send_signal(signal.SIGSTOP)
    try:
        publish(mosquitto.port, events[100:])
        wait_for(lambda: (bridge.value("jobstream_queue_depth", queue="kafka_producer") or 0) > 0,
                 timeout=60, what="records waiting for Kafka")
        bridge.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "draining" in bridge.log.read_text(), timeout=10, what="the drain to start")
        acked = bridge.value("jobstream_mqtt_acknowledged_total")
        started = time.monotonic()
        bridge.proc.send_signal(signal.SIGTERM)
        bridge.proc.wait(timeout=10)
        took = time.monotonic() - started
    finally:
        own_kafka.proc.send_signal(signal.SIGCONT)
    assert bridge.proc.returncode == 130 and took < 5, (bridge.proc.returncode, took)
    assert "second signal" in bridge.log.read_text()
    assert acked == 100, "nothing Kafka had not confirmed was acknowledged"
