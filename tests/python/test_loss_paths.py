"""The loss paths of the bridge, each provoked on real brokers (mosquitto, Apache Kafka): a
delivery Kafka fails, a record Kafka refuses for good, an oversized MQTT message, and Kafka
unavailable long enough that a blocked connection would miss its keep-alives. Each test
failed before the fix it guards (the note on issue 17 says how)."""

import json
import secrets
import signal
import threading
import time
import uuid

from confluent_kafka.admin import AdminClient, NewTopic

from brokers import Mosquitto
from conftest import wait_for
from test_bridge import Bridge, KafkaReader, generate, header, publish, read_back_exactly


def execution_event(size: int) -> tuple[str, bytes]:
    """A valid JOB_EXECUTION event whose payload is exactly `size` bytes (the padding is in a
    statusDetails value)."""
    job = str(uuid.uuid4())
    event = {
        "eventType": "JOB_EXECUTION", "eventId": str(uuid.uuid4()), "timestamp": 1795132800,
        "operation": "succeeded", "jobId": job,
        "thingArn": "arn:aws:iot:us-east-1:123456789012:thing/big-thing", "status": "SUCCEEDED",
        "statusDetails": {"log": ""},
    }
    bare = len(json.dumps(event, separators=(",", ":")))
    # Random hex: compression cannot shrink it below a broker's size limit.
    event["statusDetails"]["log"] = secrets.token_hex(size // 2 + 1)[: size - bare]
    payload = json.dumps(event, separators=(",", ":")).encode()
    assert len(payload) == size
    return f"$aws/events/jobExecution/{job}/succeeded", payload


def event_id(payload: bytes) -> str:
    return json.loads(payload)["eventId"]


def test_a_redelivery_after_kafka_failed_the_delivery_is_produced_not_taken_for_a_duplicate(
        tmp_path, mosquitto, own_kafka):
    events = generate(3000, tmp_path)
    first, rest = events[:500], events[500:]
    # Records Kafka has not confirmed within 3 s fail: the bridge leaves them unacknowledged,
    # reconnects, and the broker redelivers them.
    bridge = Bridge(tmp_path, mosquitto, own_kafka, kafka_options={"message.timeout.ms": "3000"}).start()
    publish(mosquitto.port, first)
    bridge.wait_acked(len(first))
    own_kafka.proc.send_signal(signal.SIGSTOP)
    try:
        publish(mosquitto.port, rest)
        wait_for(lambda: bridge.counter("failures") >= 100, timeout=120,
                 what=f"deliveries to fail while Kafka is stopped (at {bridge.counter('failures')})")
        failed_while_stopped = bridge.counter("failures")
        acked_while_stopped = bridge.counter("acked")
    finally:
        own_kafka.proc.send_signal(signal.SIGCONT)
    assert acked_while_stopped < len(events), "nothing confirmed, nothing acknowledged"
    # Every redelivered copy must reach Kafka: none may be dropped as a "duplicate" of the copy
    # whose delivery failed.
    read_back_exactly(own_kafka, bridge, events, timeout=180)
    bridge.wait_quiescent()
    print(f"Kafka stopped: {failed_while_stopped} deliveries failed, acked {acked_while_stopped}; "
          f"after: received {bridge.counter('received')}, acked {bridge.counter('acked')}, "
          f"duplicates {bridge.counter('duplicates')}, reconnects {bridge.counter('reconnects')}")
    code, out = bridge.stop()
    assert code == 0, out


def test_an_event_kafka_refuses_for_good_goes_to_the_dlq_and_the_stream_goes_on(
        tmp_path, mosquitto, kafka):
    events = generate(300, tmp_path)
    big = execution_event(100_000)
    # The job execution topic takes records up to 20 kB: the 100 kB event can never go there.
    bridge = Bridge(tmp_path, mosquitto, kafka, kafka_options={"batch.size": "8192"})
    admin = AdminClient({"bootstrap.servers": kafka.brokers})
    created = admin.create_topics([NewTopic(bridge.topics["executions"], 3, 1,
                                            config={"max.message.bytes": "20000"})])
    for future in created.values():
        future.result(timeout=60)
    bridge.start()
    publish(mosquitto.port, events[:150] + [big] + events[150:])
    bridge.wait_acked(len(events) + 1, timeout=120)

    read_back_exactly(kafka, bridge, events)
    reader = KafkaReader(kafka.brokers, [bridge.topics["dlq"]])
    dlq = reader.read_until(lambda r: len(r) >= 1, timeout=60)
    reader.read_until(lambda r: True, timeout=1)
    assert len(dlq) == 1, [header(m, "error_kind") for m in dlq]
    assert dlq[0].value() == big[1], "the refused event in the DLQ, byte for byte"
    assert header(dlq[0], "error_kind") == b"kafka_refused"
    assert b"max.message.bytes" in header(dlq[0], "error")
    code, out = bridge.stop()
    assert code == 0, out


def test_oversized_messages_reach_the_dlq_and_the_messages_after_them_flow(tmp_path, kafka):
    broker = Mosquitto(tmp_path / "mosquitto", max_packet_size=4 * 1024 * 1024).start()
    try:
        at_cap = execution_event(128 * 1024)  # AWS IoT Core's largest payload
        over_cap = execution_event(200 * 1024)  # above the parser's cap, within a record
        huge = execution_event(2 * 1024 * 1024)  # above max_packet_bytes (1 MiB)
        after = generate(200, tmp_path)
        bridge = Bridge(tmp_path, broker, kafka).start()
        publish(broker.port, [at_cap, over_cap, huge] + after)
        bridge.wait_acked(3 + len(after), timeout=120)
        read_back_exactly(kafka, bridge, [at_cap] + after)

        reader = KafkaReader(kafka.brokers, [bridge.topics["dlq"]])
        dlq = reader.read_until(lambda r: len(r) >= 2, timeout=60)
        reader.read_until(lambda r: True, timeout=1)
        by_size = {len(m.value()): m for m in dlq}
        assert len(dlq) == 2, sorted(by_size)
        whole = by_size[len(over_cap[1])]
        assert whole.value() == over_cap[1], "a payload a record can carry is kept whole"
        assert header(whole, "error_kind") == b"payload_too_large"
        assert header(whole, "payload_bytes") is None
        cut = by_size[64 * 1024]
        assert cut.value() == huge[1][: 64 * 1024], "the first 64 KiB of the 2 MiB message"
        assert header(cut, "error_kind") == b"payload_too_large"
        assert header(cut, "payload_bytes") == str(len(huge[1])).encode()
        assert header(cut, "payload_truncated") == b"true"
        assert bridge.counter("reconnects") == 0, "no packet dropped the connection"
        code, out = bridge.stop()
        assert code == 0, out
    finally:
        broker.stop()


def test_kafka_unavailable_for_three_keep_alives_with_a_backlog_keeps_the_session_up_and_loses_nothing(
        tmp_path, mosquitto, own_kafka):
    events = generate(3000, tmp_path)
    # Small queues, so that a few dozen messages fill every stage and the connection task has
    # to hold the rest while Kafka cannot take them.
    # message.timeout.ms well inside the read-back deadline: a frozen single-node KRaft broker
    # fences itself on thawing, and librdkafka's idempotent producer has been seen (CI,
    # 2026-12-04) to hold its queue until the records time out instead of resending them. The
    # bridge then leaves them unacknowledged and they come back by redelivery; with the 300 s
    # default that recovery landed just past the deadline. 60 s stays far above the 18 s freeze.
    bridge = Bridge(tmp_path, mosquitto, own_kafka, keep_alive_secs=5,
                    pipeline_extra={"batch_size": 4, "queue_batches": 1, "workers": 1},
                    kafka_options={"queue.buffering.max.messages": "20",
                                   "message.timeout.ms": "60000"}).start()
    publish(mosquitto.port, events[:100])
    bridge.wait_acked(100)
    own_kafka.proc.send_signal(signal.SIGSTOP)
    try:
        publisher = threading.Thread(target=publish, args=(mosquitto.port, events[100:]))
        publisher.start()
        stopped_at = time.monotonic()
        # Three keep-alive intervals and more: mosquitto drops a client silent for 1.5 of them.
        wait_for(lambda: time.monotonic() - stopped_at > 18 or bridge.counter("reconnects") > 0,
                 timeout=60, what="three keep-alive intervals")
        assert bridge.counter("received") > 200, "a backlog built up behind the stopped Kafka"
        assert bridge.counter("reconnects") == 0, "the session stayed up while Kafka was away"
    finally:
        own_kafka.proc.send_signal(signal.SIGCONT)
    publisher.join()
    read_back_exactly(own_kafka, bridge, events, timeout=300)
    bridge.wait_quiescent()
    assert bridge.counter("reconnects") == 0
    code, out = bridge.stop()
    assert code == 0, out
