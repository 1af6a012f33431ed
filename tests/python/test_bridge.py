"""MQTT → Kafka on real brokers: mosquitto, Apache Kafka, and clients no one here wrote
(paho-mqtt publishes, confluent-kafka on librdkafka ≥ 2.12 reads)."""

import collections
import json
import random
import re
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from conftest import STARTED, jobstream_bin, run, wait_for

BAD_LINES = [
    ("$aws/events/job/j-bad/completed", b'{"eventType":"JOB"'),
    ("$aws/events/jobExecution/j-bad/failed", b'{"eventType":"JOB","eventId":"x","timestamp":1,"operation":"failed","jobId":"j-bad","status":"FAILED"}'),
    ("$aws/events/job/j-bad/completed", b"\xff\xfe"),
]


def generate(count, tmp_path, name="capture.tsv"):
    path = tmp_path / name
    run("generate", "--events", count, "--output", path)
    lines = []
    for raw in path.read_bytes().split(b"\n")[:-1]:
        topic, _, payload = raw.partition(b"\t")
        lines.append((topic.decode(), payload))
    return lines


class Bridge:
    def __init__(self, tmp_path, mosquitto, kafka, pipeline_extra=None, brokers=None,
                 kafka_options=None, env=None, topic_prefix="", **mqtt_extra):
        """`brokers` and `kafka_options` reach Kafka through another listener (TLS, SASL);
        `env` adds to the bridge's environment (credentials)."""
        self.id = uuid.uuid4().hex[:8]
        self.topics = {k: f"{topic_prefix}{k}-{self.id}" for k in ("jobs", "executions", "dlq")}
        self.env = {"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin", **(env or {})}
        options = "".join(f'{json.dumps(k)} = {json.dumps(v)}\n' for k, v in (kafka_options or {}).items())
        self.log = tmp_path / f"bridge-{self.id}.log"
        self.config = tmp_path / f"bridge-{self.id}.toml"
        url = mqtt_extra.pop("url", None) or mosquitto.url
        extra = "".join(f'{k} = {json.dumps(v)}\n' for k, v in mqtt_extra.items())
        self.config.write_text(f"""
[mqtt]
url = "{url}"
client_id = "test-{self.id}"
connect_timeout_secs = 20
{extra}
[kafka]
brokers = "{brokers or kafka.brokers}"
job_topic = "{self.topics['jobs']}"
execution_topic = "{self.topics['executions']}"
dlq_topic = "{self.topics['dlq']}"
partitions = 3

[kafka.options]
{options}
[pipeline]
drain_timeout_secs = 60
{"".join(f'{k} = {json.dumps(v)}' + chr(10) for k, v in (pipeline_extra or {}).items())}""")
        self.proc = None
        self.starts = 0

    def start(self, until="subscribed"):
        """Starts the bridge and waits for its log to say `until` once more: "connected" when
        a backlog queued ahead of the SUBACK would hold "subscribed" back."""
        self.starts += 1
        self.proc = subprocess.Popen(
            [jobstream_bin(), "run", "--config", self.config, "--stats-every-secs", "1"],
            stdout=subprocess.PIPE, stderr=open(self.log, "ab"), text=True, env=self.env)
        # A test that fails midway must not leave its bridge running into the next ones.
        STARTED.append(self.proc)
        wait_for(lambda: self.log.read_text(errors="replace").count(until) >= self.starts,
                 timeout=60, what="the bridge to subscribe")
        return self

    def stats_lines(self):
        """The once-a-second stats lines, from `received` on (the log prefix — time, level —
        differs from line to line)."""
        text = self.log.read_text(errors="replace")
        return [line[line.index("received "):] for line in text.splitlines()
                if re.search(r"(?:^|\s)received \d+ \|", line)]

    def counter(self, name):
        """The latest value of a counter from the bridge's once-a-second stats line."""
        value = 0
        for line in self.stats_lines():
            found = re.search(rf"(?:^| ){name} (\d+)", line)
            if found:
                value = int(found.group(1))
        return value

    def wait_acked(self, count, timeout=300):
        wait_for(lambda: self.counter("acked") >= count, timeout=timeout,
                 what=f"{count} acknowledgements (at {self.counter('acked')})")

    def wait_quiescent(self, timeout=600):
        """Waits until everything received was acknowledged and nothing new arrived for three
        stats lines (three seconds). If anything were still queued at the broker, the Kafka
        check that follows fails: this wait cannot make a test pass that should not."""
        def settled():
            last = self.stats_lines()[-3:]
            # Messages of a session that ended before Kafka confirmed them are not acknowledged
            # in it ("abandoned"): the broker redelivers them, and they are received again.
            accounted = (self.counter("acked") + self.counter("abandoned")
                         + self.counter("failures"))
            return len(last) == 3 and len(set(last)) == 1 and self.counter("received") == accounted
        wait_for(settled, timeout=timeout, what="the bridge to acknowledge everything it received")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=90)
        return self.proc.returncode, out

    def rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


class KafkaReader:
    """Reads topics from the beginning with confluent-kafka (librdkafka ≥ 2.12)."""

    def __init__(self, brokers, topics):
        self.consumer = Consumer({
            "bootstrap.servers": brokers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 50,
        })
        assignment = []
        for topic in topics:
            partitions = wait_for(lambda: self._partitions(topic), timeout=60,
                                  what=f"topic {topic}")
            assignment += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        self.consumer.assign(assignment)
        self.records = []

    def _partitions(self, topic):
        """The topic's partitions, or None while it is missing or the broker does not answer
        (a broker just restarted can refuse a metadata request once)."""
        try:
            # All topics, not this one by name: naming a missing topic may have a broker create it.
            found = self.consumer.list_topics(timeout=10).topics.get(topic)
        except KafkaException:
            return None
        if found is None or found.error is not None or not found.partitions:
            return None
        return list(found.partitions)

    def read_until(self, done, timeout=120.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.records):
                return self.records
            for message in self.consumer.consume(num_messages=5000, timeout=0.2):
                if message.error():
                    continue
                self.records.append(message)
        raise AssertionError(f"timed out with {len(self.records)} records read")


def publish(url_port, messages, client_id=None):
    """Publishes with QoS 1 through paho, at most 1000 unacknowledged at a time (paho slows to a
    crawl with hundreds of thousands queued), and waits until the broker took every one."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", url_port)
    client.loop_start()
    window = collections.deque()
    for topic, payload in messages:
        window.append(client.publish(topic, payload, qos=1))
        if len(window) >= 1000:
            window.popleft().wait_for_publish(timeout=120)
    for info in window:
        info.wait_for_publish(timeout=120)
    client.loop_stop()
    client.disconnect()


def header(message, key):
    for k, v in message.headers() or []:
        if k == key:
            return v
    return None


def test_published_events_reach_kafka_exactly_once_byte_exact_with_key_headers_and_timestamp(tmp_path, mosquitto, kafka):
    events = generate(3000, tmp_path)
    bridge = Bridge(tmp_path, mosquitto, kafka).start()
    publish(mosquitto.port, events + BAD_LINES)
    # Reading while the bridge produces: the consumer sees records as Kafka takes them.
    reader = KafkaReader(kafka.brokers, bridge.topics.values())
    records = reader.read_until(lambda r: len(r) >= len(events) + len(BAD_LINES))
    code, out = bridge.stop()
    assert code == 0, out
    # Give late duplicates (there must be none) a chance to show up before counting.
    reader.read_until(lambda r: True, timeout=1)

    valid = [m for m in reader.records if m.topic() != bridge.topics["dlq"]]
    by_id = {}
    for message in valid:
        event_id = header(message, "event_id").decode()
        assert event_id not in by_id, f"duplicate {event_id}"
        by_id[event_id] = message
    expected = {json.loads(p)["eventId"]: (t, p) for t, p in events}
    assert by_id.keys() == expected.keys()
    for event_id, (topic, payload) in expected.items():
        message = by_id[event_id]
        body = json.loads(payload)
        assert message.value() == payload, "value is the MQTT payload byte for byte"
        assert message.key() == body["jobId"].encode()
        assert message.timestamp()[1] == body["timestamp"] * 1000
        assert message.topic() == bridge.topics["jobs" if body["eventType"] == "JOB" else "executions"]
        assert header(message, "mqtt_topic") == topic.encode()
        assert header(message, "event_type") == body["eventType"].encode()
        assert header(message, "operation") == body["operation"].encode()
        received = int(header(message, "received_at"))
        assert abs(received - time.time() * 1000) < 600_000

    dlq = [m for m in reader.records if m.topic() == bridge.topics["dlq"]]
    assert sorted(m.value() for m in dlq) == sorted(p for _, p in BAD_LINES)
    kinds = sorted(header(m, "error_kind").decode() for m in dlq)
    assert kinds == ["event_type_mismatch", "not_json", "not_json"]
    assert all(header(m, "error") and header(m, "mqtt_topic") for m in dlq)
    assert f"acked {len(events) + len(BAD_LINES)}" in out


# The 200k.
KILL_TEST_EVENTS = 200_000


def test_kill_9_mid_stream_then_restart_loses_nothing(tmp_path, mosquitto, kafka):
    events = generate(KILL_TEST_EVENTS, tmp_path)
    bridge = Bridge(tmp_path, mosquitto, kafka).start()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, events))
    publisher.start()
    # A random moment between a tenth and two thirds of the stream.
    kill_at = random.randint(KILL_TEST_EVENTS // 10, 2 * KILL_TEST_EVENTS // 3)
    bridge.wait_acked(kill_at, timeout=600)
    bridge.kill()
    assert bridge.proc.returncode == -signal.SIGKILL
    bridge.start()
    publisher.join()
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out

    reader = KafkaReader(kafka.brokers, [bridge.topics["jobs"], bridge.topics["executions"]])
    wanted = {json.loads(p)["eventId"]: p for _, p in events}
    seen = {}

    def complete(records):
        for m in records[len(progress):]:
            seen.setdefault(header(m, "event_id").decode(), m.value())
        progress[:] = records
        return seen.keys() >= wanted.keys()

    progress = []
    reader.read_until(complete, timeout=600)
    assert seen == wanted, "every event in Kafka, byte for byte"
    redelivered = len(reader.records) - len(wanted)
    print(f"kill -9 after >={kill_at} acks: {len(reader.records)} records for {len(wanted)} events "
          f"({redelivered} redelivered after the crash)")


def test_mqtt5_session_outlives_a_kill_9_and_the_broker_redelivers_the_rest(tmp_path, mosquitto, kafka):
    # MQTT 5 ends a session at disconnect unless the client sets a session expiry: without it,
    # everything published while the bridge is down would be gone.
    events = generate(20_000, tmp_path)
    bridge = Bridge(tmp_path, mosquitto, kafka, version="5").start()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, events))
    publisher.start()
    bridge.wait_acked(3_000)
    bridge.kill()
    publisher.join()  # all of it reaches mosquitto while the bridge is down
    bridge.start()
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    log = bridge.log.read_text(errors="replace")
    assert "session_present=false epoch=1" in log and "session_present=true epoch=1" in log, \
        "the first run made the session, the restart found it"
    # mosquitto's own account: protocol 5, clean start off, for both connections.
    broker_log = (mosquitto.workdir / "mosquitto.log").read_text(errors="replace")
    assert broker_log.count(f"as test-{bridge.id} (p5, c0") == 2, broker_log[-2000:]
    read_back_exactly(kafka, bridge, events)


def test_mqtt5_shared_subscription_over_two_connections_takes_each_event_once(tmp_path, mosquitto, kafka):
    # mosquitto 2.0.11 shares no `$` topics: the fleet publishes under another prefix.
    events = [(t.replace("$aws/events/", "fleet/aws/events/", 1), p) for t, p in generate(5_000, tmp_path)]
    bridge = Bridge(tmp_path, mosquitto, kafka, pipeline_extra={"topic_prefix": "fleet/aws/events/"},
                    version="5", connections=2,
                    filters=["fleet/aws/events/job/+/+", "fleet/aws/events/jobExecution/+/+"])
    bridge.start()
    wait_for(lambda: bridge.log.read_text(errors="replace").count("subscribed") >= 2, timeout=60,
             what="both connections to subscribe")
    publish(mosquitto.port, events)
    bridge.wait_acked(len(events), timeout=300)
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    assert f"received {len(events)} " in out, "each message went to one connection of the group"
    broker_log = (mosquitto.workdir / "mosquitto.log").read_text(errors="replace")
    assert broker_log.count(f"as test-{bridge.id} (p5, c0") == 1
    assert broker_log.count(f"as test-{bridge.id}-1 (p5, c0") == 1
    records = read_back_exactly(kafka, bridge, events)
    assert records == len(events), "no duplicates"


def test_invalid_url_missing_cert_and_unreachable_broker_fail_clearly(tmp_path):
    bad_url = run("run", "--mqtt", "http://127.0.0.1:1", "--kafka", "127.0.0.1:9", check=False)
    assert bad_url.returncode == 78 and "mqtt://" in bad_url.stderr
    missing = run("run", "--mqtt", "mqtts://127.0.0.1:8883", "--kafka", "127.0.0.1:9",
                  "--mqtt-ca", tmp_path / "nope.pem", check=False)
    assert missing.returncode == 78 and "nope.pem" in missing.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('[mqtt]\nurl = "mqtt://127.0.0.1:1"\nclient_idd = "x"\n')
    bad_key = run("run", "--config", typo, "--kafka", "127.0.0.1:9", check=False)
    assert bad_key.returncode == 78 and "client_idd" in bad_key.stderr
    bad_version = run("run", "--mqtt", "mqtt://127.0.0.1:1", "--kafka", "127.0.0.1:9",
                      "--mqtt-version", "6", check=False)
    assert bad_version.returncode == 78 and "3.1.1 or 5" in bad_version.stderr, bad_version.stderr
    assert "panicked" not in bad_url.stderr + missing.stderr + bad_key.stderr + bad_version.stderr


def test_replay_with_kafka_produces_events_and_rejects_to_their_topics(tmp_path, own_kafka):
    capture = tmp_path / "capture.tsv"
    events = generate(500, tmp_path)
    with open(capture, "wb") as f:
        for topic, payload in events + BAD_LINES:
            f.write(topic.encode() + b"\t" + payload + b"\n")
    result = run("replay", "--input", capture, "--kafka", own_kafka.brokers, "--quiet")
    assert f"kafka records {len(events) + len(BAD_LINES):>12}".replace(" ", "") in result.stdout.replace(" ", "")
    topics = ["aws-iot-job-events", "aws-iot-job-execution-events", "aws-iot-jobs-dlq"]
    reader = KafkaReader(own_kafka.brokers, topics)
    records = reader.read_until(lambda r: len(r) >= len(events) + len(BAD_LINES))
    values = sorted(m.value() for m in records if m.topic() != "aws-iot-jobs-dlq")
    assert values == sorted(p for _, p in events)
    dlq = [m for m in records if m.topic() == "aws-iot-jobs-dlq"]
    assert sorted(m.value() for m in dlq) == sorted(p for _, p in BAD_LINES)
    for m in records:
        if m.topic() != "aws-iot-jobs-dlq":
            assert header(m, "received_at") is None, "a capture has no receive time"
            assert m.key() == json.loads(m.value())["jobId"].encode()


def deliver_and_read_back(bridge, mosquitto, kafka, events):
    """Publishes `events` to `mosquitto`, waits until `bridge` acknowledged every one, reads the
    two event topics back from `kafka` and stops the bridge: exit 0, each payload once,
    byte-exact."""
    publish(mosquitto.port, events)
    bridge.wait_acked(len(events))
    reader = KafkaReader(kafka.brokers, [bridge.topics["jobs"], bridge.topics["executions"]])
    records = reader.read_until(lambda r: len(r) >= len(events))
    code, out = bridge.stop()
    assert code == 0, out
    assert sorted(m.value() for m in records) == sorted(p for _, p in events)


def read_back_exactly(kafka, bridge, events, timeout=600):
    """Reads the two event topics until every event is there; returns the record count."""
    reader = KafkaReader(kafka.brokers, [bridge.topics["jobs"], bridge.topics["executions"]])
    wanted = {json.loads(p)["eventId"]: p for _, p in events}
    seen = {}
    progress = []

    def complete(records):
        for m in records[len(progress):]:
            seen.setdefault(header(m, "event_id").decode(), m.value())
        progress[:] = records
        return seen.keys() >= wanted.keys()

    reader.read_until(complete, timeout=timeout)
    reader.read_until(lambda r: True, timeout=1)
    assert seen == wanted, "every event in Kafka, byte for byte"
    return len(reader.records)


def test_kafka_down_for_30_seconds_stalls_acks_then_loses_nothing(tmp_path, mosquitto, own_kafka):
    events = generate(20_000, tmp_path)
    bridge = Bridge(tmp_path, mosquitto, own_kafka).start()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, events))
    publisher.start()
    bridge.wait_acked(5_000)
    own_kafka.proc.send_signal(signal.SIGSTOP)
    try:
        # Whatever was in flight when Kafka froze may still be confirmed for a moment; after
        # that, not one acknowledgement goes out while Kafka cannot confirm.
        time.sleep(5)
        frozen_at = bridge.counter("acked")
        time.sleep(25)
        assert bridge.counter("acked") == frozen_at, "nothing is acknowledged while Kafka is down"
        # The backlog waits at the MQTT broker, not in jobstream: every queue is bounded.
        rss = bridge.rss_mb()
        assert rss < 200, f"RSS {rss:.0f} MB while Kafka was down"
        print(f"Kafka frozen: acked stayed at {frozen_at}, RSS {rss:.0f} MB")
        assert frozen_at < len(events)
    finally:
        own_kafka.proc.send_signal(signal.SIGCONT)
    publisher.join()
    bridge.wait_acked(len(events), timeout=600)
    code, out = bridge.stop()
    assert code == 0, out
    assert "delivery failures 0" in out, out
    records = read_back_exactly(own_kafka, bridge, events)
    assert records == len(events), "the idempotent producer retried without duplicates"


def test_mosquitto_restart_mid_stream_the_bridge_reconnects_and_gets_the_queue(tmp_path, mosquitto, kafka):
    events = generate(20_000, tmp_path)
    first, rest = events[:10_000], events[10_000:]
    bridge = Bridge(tmp_path, mosquitto, kafka).start()
    publish(mosquitto.port, first)
    bridge.wait_acked(2_000)
    mosquitto.stop()  # SIGTERM: mosquitto saves its persistence file
    mosquitto.start()
    # The bridge reconnects with backoff; its persistent session is waiting with the messages
    # queued for it, and the new ones published while it reconnects.
    publish(mosquitto.port, rest)
    wait_for(lambda: bridge.counter("reconnects") >= 1, timeout=120, what="a reconnect")
    bridge.wait_acked(len(events) - 1_000, timeout=600)
    bridge.wait_quiescent()
    print(f"mosquitto restart: received {bridge.counter('received')}, acked {bridge.counter('acked')}, "
          f"abandoned {bridge.counter('abandoned')}, reconnects {bridge.counter('reconnects')}")
    code, out = bridge.stop()
    assert code == 0, out
    read_back_exactly(kafka, bridge, events)
