"""`jobstream simulate` checked by a raw paho subscriber, and a small `jobstream bench` on real
brokers (mosquitto, Apache Kafka) checked for the structure of its result and for a lossless jobstream.
Speed is never asserted here: that is the benchmark's job."""

import collections
import json
import os
import shutil
import sys
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest

from conftest import ROOT, run, wait_for

FILTERS = ["$aws/events/job/+/+", "$aws/events/jobExecution/+/+"]
OUTCOMES = {"succeeded", "failed", "timed_out", "rejected", "removed"}
COUNTER_OF = {
    "succeeded": "numberOfSucceededThings",
    "failed": "numberOfFailedThings",
    "timed_out": "numberOfTimedOutThings",
    "rejected": "numberOfRejectedThings",
    "removed": "numberOfRemovedThings",
}


class Subscriber:
    """A raw paho subscriber (QoS 1) that keeps every message it gets."""

    def __init__(self, port, filters):
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"check-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self.on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(20), "the checking subscriber could not subscribe"

    def on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload))

    def count(self):
        with self.lock:
            return len(self.messages)

    def stop(self):
        self.client.loop_stop()
        self.client.disconnect()


def kind(topic):
    family, _job, operation = topic.rsplit("/", 3)[-3:]
    return f"{family}/{operation}"


def test_simulate_reports_per_kind_exactly_what_a_raw_subscriber_received_with_consistent_lifecycles(mosquitto):
    subscriber = Subscriber(mosquitto.port, FILTERS)
    result = run("simulate", "--mqtt", mosquitto.url, "--jobs", 60, "--things-per-job", 40,
                 "--connections", 3, "--seed", 11, "--report", "-", "--quiet")
    report = json.loads(result.stdout)
    wait_for(lambda: subscriber.count() >= report["events"], timeout=60,
             what=f"{report['events']} messages at the subscriber (at {subscriber.count()})")
    subscriber.stop()
    messages = subscriber.messages

    assert len(messages) == report["events"]
    assert dict(collections.Counter(kind(t) for t, _ in messages)) == report["by_kind"]
    assert sum(len(p) for _, p in messages) == report["bytes"]
    assert report["qos"] == 1 and report["connections"] == 3 and report["seed"] == 11

    events = [(t, json.loads(p)) for t, p in messages]
    ids = [e["eventId"] for _, e in events]
    assert len(set(ids)) == len(ids), "event ids are unique"
    for topic, event in events:
        assert topic.endswith(f"/{event['jobId']}/{event['operation']}")

    executions = collections.defaultdict(collections.Counter)
    finals = collections.defaultdict(list)
    for topic, event in events:
        if event["eventType"] == "JOB_EXECUTION":
            executions[event["jobId"]][event["operation"]] += 1
        elif event["operation"] in ("completed", "canceled", "deleted"):
            finals[event["jobId"]].append(event)
    assert len(finals) == 60 and all(len(f) == 1 for f in finals.values()), "every job ends once"
    assert set(executions) <= set(finals)
    mix = collections.Counter()
    for job_id, (final,) in finals.items():
        mix.update(executions[job_id])
        if final["operation"] == "completed":
            details = final["jobProcessDetails"]
            for outcome, counter in COUNTER_OF.items():
                assert details[counter] == executions[job_id][outcome], (job_id, outcome)
    assert set(mix) >= OUTCOMES, f"a realistic mix of outcomes, got {dict(mix)}"
    endings = collections.Counter(f[0]["operation"] for f in finals.values())
    assert endings["completed"] > endings["canceled"] + endings["deleted"] > 0


def test_simulate_at_qos_0_with_a_rate_and_another_prefix_delivers_what_it_reports(mosquitto):
    subscriber = Subscriber(mosquitto.port, ["relay/events/job/+/+", "relay/events/jobExecution/+/+"])
    result = run("simulate", "--mqtt", mosquitto.url, "--events", 600, "--things-per-job", 20,
                 "--qos", 0, "--rate", 3000, "--topic-prefix", "relay/events/", "--report", "-", "--quiet")
    report = json.loads(result.stdout)
    wait_for(lambda: subscriber.count() >= report["events"], timeout=60,
             what=f"{report['events']} messages (at {subscriber.count()})")
    subscriber.stop()
    assert report["qos"] == 0 and report["events"] >= 500
    assert dict(collections.Counter(kind(t) for t, _ in subscriber.messages)) == report["by_kind"]
    assert all(t.startswith("relay/events/") for t, _ in subscriber.messages)


def test_simulate_refuses_bad_flags_and_an_absent_broker_with_clear_messages(tmp_path):
    qos = run("simulate", "--mqtt", "mqtt://127.0.0.1:1", "--qos", "2", check=False)
    assert qos.returncode == 78 and "--qos" in qos.stderr
    url = run("simulate", "--mqtt", "http://127.0.0.1:1", check=False)
    assert url.returncode == 78 and "mqtt://" in url.stderr
    tls = run("simulate", "--mqtt", "mqtts://127.0.0.1:1", "--mqtt-ca", tmp_path / "nope.pem", check=False)
    assert tls.returncode == 78 and "nope.pem" in tls.stderr
    absent = run("simulate", "--mqtt", "mqtt://127.0.0.1:1", "--connect-timeout-secs", "2", check=False)
    assert absent.returncode == 69 and "127.0.0.1:1" in absent.stderr
    for r in (qos, url, tls, absent):
        assert "panicked" not in r.stderr


def need(binary):
    path = shutil.which(binary) or os.environ.get(binary.upper() + "_BIN")
    if path is None:
        pytest.fail(f"{binary} is not installed; run scripts/test-env (scripts/test does)")
    return path


def test_bench_refuses_an_output_it_cannot_write_before_measuring_anything(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for flag in ("--output", "--chart"):
        # The Kafka script does not exist: had bench started measuring, it would fail on that
        # instead, with another message.
        refused = run("bench", flag, blocker / "result", "--python", sys.executable,
                      "--kafka-script", tmp_path / "no-such-script", check=False, timeout=60)
        assert refused.returncode == 74, refused.stderr
        assert f"{flag} {blocker / 'result'}: cannot be written" in refused.stderr, refused.stderr
        assert "panicked" not in refused.stderr


def test_bench_refuses_bad_flags_with_exit_78_before_starting_anything(tmp_path):
    # Brokers are given (and unreachable) so that nothing is started: each refusal must come
    # from the flag's check, typed as BenchError::InvalidFlag.
    given = ["--kafka", "127.0.0.1:1", "--python", sys.executable, "--output", tmp_path / "r.json",
             "--chart", tmp_path / "r.svg", "--latency-chart", tmp_path / "l.svg"]
    cases = [
        (["--events", "0", "--mqtt", "mqtt://127.0.0.1:1"], "--events"),
        (["--latency-rate=0", "--mqtt", "mqtt://127.0.0.1:1"], "--latency-rate"),
        (["--mqtt", "mqtts://127.0.0.1:1"], "mqtt://"),
        (["--mqtt", "tcp://127.0.0.1:1"], "--mqtt"),
        (["--scaling-processes", "17", "--mqtt", "mqtt://127.0.0.1:1"], "--scaling-processes"),
        (["--mosquitto-nodelay", "--mqtt", "mqtt://127.0.0.1:1"], "set_tcp_nodelay true"),
    ]
    for flags, named in cases:
        refused = run("bench", *flags, *given, check=False, timeout=60)
        assert refused.returncode == 78, (flags, refused.stderr)
        assert named in refused.stderr, (flags, refused.stderr)
        assert "panicked" not in refused.stderr
    assert not any((tmp_path / name).exists() for name in ["r.json", "r.svg", "l.svg"])


def test_a_small_bench_writes_its_result_and_charts_and_jobstream_loses_and_duplicates_nothing(tmp_path):
    # A folder that does not exist yet: bench makes it (before measuring, not after).
    result_path, chart_path = tmp_path / "results" / "result.json", tmp_path / "charts" / "rate.svg"
    latency_path = tmp_path / "charts" / "latency.svg"
    bench = run("bench", "--events", 3000, "--repetitions", 1, "--scaling", "1,2", "--scaling-processes", 2,
                "--latency-events", 300, "--latency-rate", 1000, "--mosquitto-nodelay",
                "--python", sys.executable, "--mosquitto", need("mosquitto"),
                "--kafka-script", ROOT / "scripts" / "kafka",
                "--mosquitto-sub", need("mosquitto_sub"), "--workdir", tmp_path / "work",
                "--output", result_path, "--chart", chart_path, "--latency-chart", latency_path,
                timeout=900)
    result = json.loads(result_path.read_text())
    labels = ["ceiling", "mosquitto-sub", "kafka-ceiling", "jobstream", "python", "pipeline",
              "jobstream ×1 (shared)", "jobstream ×2 (shared)", "jobstream 2 processes (shared)"]
    assert [s["contender"] for s in result["summary"]] == labels
    for label in labels:
        assert label in bench.stdout
    assert {"cpu", "cores", "mosquitto", "kafka"} <= result["machine"].keys()
    assert result["settings"]["qos"] == 1 and result["settings"]["average_payload_bytes"] > 100
    assert result["settings"]["kafka_broker"]["started_by_bench"] is True
    assert result["settings"]["kafka_broker"]["version"].startswith("Apache Kafka 4.")

    assert result["settings"]["mqtt_broker"]["set_tcp_nodelay"] is True
    assert "set_tcp_nodelay true" in (tmp_path / "work" / "mosquitto.conf").read_text()
    assert result["settings"]["warmup_run"] is True and "warm-up run (ceiling, not recorded)" in bench.stderr

    runs = {r["contender"]: r for r in result["runs"]}
    assert set(runs) == set(labels)
    assert len(result["runs"]) == len(labels), "the warm-up run is not recorded"
    for label, r in runs.items():
        assert r["error"] is None, (label, r["error"])
        assert r["events"] >= 2900 and r["events_per_sec"] > 0 and r["peak_rss_mb"] > 0
        assert r["series"][-1][1] <= r["events"]
    bridges = ["jobstream", "jobstream ×1 (shared)", "jobstream ×2 (shared)", "jobstream 2 processes (shared)"]
    for label in bridges:
        r = runs[label]
        assert (r["lost"], r["duplicated"], r["unexpected"], r["left_at_broker"]) == (0, 0, 0, 0), label
        assert r["kafka_records"] == r["events"] + r["latency_events"]
        assert r["verified_by"] == "event ids"
        assert r["exit_code"] == 0
    # Latency is per record: every event of the paced stream has its own append time.
    with_latency = [label for label in labels if runs[label]["latency_p50_ms"] is not None]
    assert with_latency == ["jobstream", "python", "pipeline", *bridges[1:]]
    for label in with_latency:
        r = runs[label]
        assert r["latency_measured"] == r["latency_events"] == runs["jobstream"]["latency_events"] > 250, label
        assert 0 <= r["latency_p50_ms"] <= r["latency_p99_ms"] <= r["latency_p999_ms"] <= r["latency_max_ms"], label
        assert r["latency_max_ms"] < 60_000, (label, "latency is from publish to Kafka's append, not a clock offset")
        quantiles = [q for q, _ in r["latency_quantiles"]]
        assert quantiles[0] == 0 and quantiles[-1] == 1 and 0.999 in quantiles, label
    # The raw drain acknowledged every message it took: the broker holds nothing for it.
    assert runs["ceiling"]["ratio_to_ceiling"] == 1.0 and runs["ceiling"]["left_at_broker"] == 0
    # (mosquitto_sub -C N is not held to this: it exits with some PUBACKs unsent, 151 of 3,000
    # in one run, which the broker then redelivers.)
    assert runs["ceiling"]["lost"] is None, "the raw drain keeps nothing: nothing to check"
    assert runs["jobstream ×2 (shared)"]["connections"] == 2
    assert runs["jobstream 2 processes (shared)"]["processes"] == 2
    assert result["jobstream_vs_python"]["median"] > 0 and result["jobstream_vs_pipeline"]["median"] > 0

    svg = chart_path.read_text()
    assert svg.startswith("<svg") and svg.count("<polyline") == len(labels)
    latency_svg = latency_path.read_text()
    assert latency_svg.startswith("<svg") and latency_svg.count("<polyline") == len(with_latency)
