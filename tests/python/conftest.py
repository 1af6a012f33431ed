"""Shared fixtures: the jobstream binary, captures, and an independent oracle.

The oracle reads capture lines with Python's own json module and derives the rows the
Parquet contract promises (DESIGN.md), so these tests do not trust jobstream's parser.
"""

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from brokers import Artemis, Azurite, HiveMQ, Kafka, Mosquitto, S3Server

ROOT = Path(__file__).resolve().parents[2]
SECONDS_BELOW = 100_000_000_000

COUNTERS = {
    "numberOfCanceledThings": "number_of_canceled_things",
    "numberOfFailedThings": "number_of_failed_things",
    "numberOfInProgressThings": "number_of_in_progress_things",
    "numberOfQueuedThings": "number_of_queued_things",
    "numberOfRejectedThings": "number_of_rejected_things",
    "numberOfRemovedThings": "number_of_removed_things",
    "numberOfSucceededThings": "number_of_succeeded_things",
    "numberOfTimedOutThings": "number_of_timed_out_things",
}
JOB_KEYS = {
    "eventType", "eventId", "timestamp", "operation", "jobId", "status", "targetSelection",
    "targets", "description", "comment", "createdAt", "lastUpdatedAt", "completedAt",
    "jobProcessDetails",
}
EXECUTION_KEYS = {
    "eventType", "eventId", "timestamp", "operation", "jobId", "status", "thingArn",
    "statusDetails",
}


def jobstream_bin() -> str:
    path = os.environ.get("JOBSTREAM_BIN") or str(ROOT / "target" / "debug" / "jobstream")
    if not Path(path).exists():
        pytest.fail(f"jobstream binary not found at {path}; run scripts/test (it builds it)")
    return path


@pytest.fixture
def crash_points():
    """The crash tests need a binary built with the `fault-injection` feature (scripts/test builds
    one; a release build has no crash points): fail at once with what to do, instead of waiting
    for an abort that cannot come."""
    version = subprocess.run([jobstream_bin(), "--version"], capture_output=True, text=True).stdout
    if "fault injection" not in version:
        pytest.fail(f"{jobstream_bin()} has no crash points ({version.strip()!r}): build it with "
                    "`cargo build --features jobstream/fault-injection`, as scripts/test does")


def run(*args, check=True, **kwargs):
    result = subprocess.run([jobstream_bin(), *map(str, args)], capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"jobstream {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def wait_for(condition, timeout=60.0, interval=0.02, what="condition"):
    """Polls `condition` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(port, path):
    """(status, body) of a GET on jobstream's metrics endpoint; (None, reason) while it is not
    listening."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:
        return None, str(e.reason)


def metric_samples(body):
    """{(sample name, frozenset(labels)): value} of a /metrics body, parsed by the Prometheus
    project's own client (prometheus-client), not by anything of ours."""
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def ms(value):
    if value is None:
        return None
    return value * 1000 if value < SECONDS_BELOW else value


# The status each operation produces, as AWS documents it (the spec file); `deleted` executions
# may carry any status. Anything else is kept and flagged.
JOB_STATUS = {
    "completed": "COMPLETED", "canceled": "CANCELED", "deleted": "DELETED",
    "cancellation_in_progress": "CANCELLATION_IN_PROGRESS",
    "deletion_in_progress": "DELETION_IN_PROGRESS",
}
EXECUTION_STATUSES = {"QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "CANCELED",
                      "REMOVED", "TIMED_OUT", "DELETED"}
ANOMALY_ORDER = ["status_not_expected_for_operation", "status_unknown",
                 "status_details_value_not_string", "target_not_string", "field_not_string"]


def item_text(value):
    """A list element's or map value's text: a string as given, anything else (null too) as
    compact JSON text."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def as_text(value):
    """An optional string field's value: absent or null stays null."""
    return None if value is None else item_text(value)


def expected_anomalies(payload: dict) -> list:
    job = payload["eventType"] == "JOB"
    operation, status = payload["operation"], payload["status"]
    found = set()
    if job:
        if status not in JOB_STATUS.values():
            found.add("status_unknown")
        elif JOB_STATUS[operation] != status:
            found.add("status_not_expected_for_operation")
        if any(not isinstance(t, str) for t in payload.get("targets") or []):
            found.add("target_not_string")
        if any(payload.get(k) is not None and not isinstance(payload[k], str)
               for k in ("targetSelection", "description", "comment")):
            found.add("field_not_string")
    else:
        if status not in EXECUTION_STATUSES:
            found.add("status_unknown")
        elif operation != "deleted" and operation.upper() != status:
            found.add("status_not_expected_for_operation")
        if any(not isinstance(v, str) for v in (payload.get("statusDetails") or {}).values()):
            found.add("status_details_value_not_string")
    return [a for a in ANOMALY_ORDER if a in found]


def expected_row(topic: str, payload: dict) -> dict:
    """The row the Parquet contract promises for one accepted event (without received_at)."""
    job = payload["eventType"] == "JOB"
    known = JOB_KEYS if job else EXECUTION_KEYS
    extra = {k: v for k, v in payload.items() if k not in known}
    details = payload.get("jobProcessDetails") or {}
    if job:
        unknown_details = {k: v for k, v in details.items() if k not in COUNTERS}
        if unknown_details:
            extra["jobProcessDetails"] = unknown_details
    row = {
        "event_id": payload["eventId"],
        "event_type": payload["eventType"],
        "operation": payload["operation"],
        "job_id": payload["jobId"],
        "status": payload["status"],
        "event_time": ms(payload["timestamp"]),
        "anomalies": expected_anomalies(payload),
        "extra": extra or None,
        "mqtt_topic": topic,
    }
    if job:
        targets = payload.get("targets")
        row.update(
            target_selection=as_text(payload.get("targetSelection")),
            targets=None if targets is None else [item_text(t) for t in targets],
            description=as_text(payload.get("description")),
            comment=as_text(payload.get("comment")),
            created_at=ms(payload.get("createdAt")),
            last_updated_at=ms(payload.get("lastUpdatedAt")),
            completed_at=ms(payload.get("completedAt")),
        )
        for key, column in COUNTERS.items():
            row[column] = details.get(key)
    else:
        arn = payload["thingArn"]
        status_details = payload.get("statusDetails")
        row.update(
            thing_arn=arn,
            thing_name=arn.rsplit("/", 1)[-1],
            status_details=None if status_details is None
            else {k: item_text(v) for k, v in status_details.items()},
        )
    return row


def read_capture(path: Path):
    """(topic, payload dict or None) per line; None when Python's json rejects the payload."""
    out = []
    with open(path, "rb") as f:
        for raw in f.read().split(b"\n")[:-1]:
            topic, _, payload = raw.partition(b"\t")
            try:
                out.append((topic.decode(), json.loads(payload)))
            except (UnicodeDecodeError, json.JSONDecodeError):
                out.append((topic.decode(errors="replace"), None))
    return out


@pytest.fixture
def capture(tmp_path):
    """A generated capture of ~20k events spanning two dates, with unknown fields."""
    path = tmp_path / "capture.tsv"
    # 23:30 UTC: the fleet's events cross midnight, so there are two date partitions.
    run("generate", "--events", 20_000, "--unknown-fields", "--start-epoch-s", 1_795_217_400,
        "--output", path)
    return path


@pytest.fixture
def mosquitto(tmp_path):
    """A mosquitto of the test's own, on a free port (brokers.Mosquitto)."""
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


@pytest.fixture
def hivemq(tmp_path):
    """The second MQTT broker, HiveMQ CE, of the test's own (brokers.HiveMQ)."""
    broker = HiveMQ(tmp_path / "hivemq").start()
    yield broker
    broker.stop()


@pytest.fixture
def artemis(tmp_path):
    """The third MQTT broker, Apache Artemis, of the test's own (brokers.Artemis): where the tests
    share `$aws/events/…`."""
    broker = Artemis(tmp_path / "artemis").start()
    yield broker
    broker.stop()


@pytest.fixture(params=["mosquitto", "hivemq", "artemis"])
def mqtt_broker(request, tmp_path):
    """Each MQTT broker in turn, for the tests that must hold on all of them."""
    kind = {"mosquitto": Mosquitto, "hivemq": HiveMQ, "artemis": Artemis}[request.param]
    broker = kind(tmp_path / request.param).start()
    yield broker
    broker.stop()


@pytest.fixture
def s3(tmp_path):
    """An S3 API server of the test's own (brokers.S3Server), with a bucket `jobstream`."""
    server = S3Server(tmp_path / "s3").start()
    server.bucket("jobstream")
    yield server
    server.stop()


@pytest.fixture
def azurite(tmp_path):
    """Azure Blob Storage's emulator of the test's own (brokers.Azurite)."""
    server = Azurite(tmp_path / "azurite").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kafka(tmp_path_factory):
    """One Apache Kafka for the whole run (brokers.Kafka): tests that share it use topics and
    groups of their own. A test that stops or freezes Kafka takes `own_kafka` instead."""
    broker = Kafka(tmp_path_factory.mktemp("kafka")).start()
    print(f"Apache Kafka ready in {broker.started_in:.1f} s, RSS {broker.rss_mb():.0f} MB")
    yield broker
    broker.stop()


@pytest.fixture
def own_kafka(tmp_path):
    """An Apache Kafka of the test's own, for tests that stop, freeze or fill it."""
    broker = Kafka(tmp_path / "kafka").start()
    yield broker
    broker.stop()


# Processes a test started and must not outlive it, even when it fails midway.
STARTED = []


@pytest.fixture(autouse=True)
def no_process_outlives_its_test():
    yield
    for proc in STARTED:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    STARTED.clear()
