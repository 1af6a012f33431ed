"""The bridge on MQTT brokers from other code bases (HiveMQ CE, Apache Artemis) beside mosquitto:
delivery, kill -9, a broker restart, shared subscriptions on `$aws/events/…` (which mosquitto
2.0.11 cannot share; on Artemis, since HiveMQ CE stalls shared members, see the README) with
MQTT 3.1.1 and 5, across connections and across two bridge processes, and MQTT over WebSockets
with a SigV4-signed handshake. Kafka is Apache Kafka; what reaches it
is read back with confluent-kafka, and the SigV4 signature is checked with botocore."""

import datetime
import random
import re
import socket
import threading
import uuid
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import run, wait_for
from relay import close_listener, relay_both_ways
from test_bridge import Bridge, generate, publish, read_back_exactly


def test_events_reach_kafka_exactly_once_byte_exact_through_every_broker(tmp_path, mqtt_broker, kafka):
    events = generate(3_000, tmp_path)
    bridge = Bridge(tmp_path, mqtt_broker, kafka).start()
    publish(mqtt_broker.port, events)
    bridge.wait_acked(len(events))
    code, out = bridge.stop()
    assert code == 0, out
    assert read_back_exactly(kafka, bridge, events) == len(events), "no event twice"


def test_kill_9_mid_stream_then_restart_loses_nothing_on_every_broker(tmp_path, mqtt_broker, kafka):
    events = generate(40_000, tmp_path)
    bridge = Bridge(tmp_path, mqtt_broker, kafka).start()
    publisher = threading.Thread(target=publish, args=(mqtt_broker.port, events))
    publisher.start()
    bridge.wait_acked(random.randint(4_000, 25_000), timeout=300)
    bridge.kill()
    bridge.start()
    publisher.join()
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    read_back_exactly(kafka, bridge, events)


def test_hivemq_killed_and_restarted_mid_stream_the_bridge_reconnects_and_gets_the_queue(tmp_path, hivemq, kafka):
    events = generate(20_000, tmp_path)
    bridge = Bridge(tmp_path, hivemq, kafka).start()
    publish(hivemq.port, events[:10_000])
    bridge.wait_acked(2_000)
    hivemq.kill()  # whatever the bridge had not acknowledged stays in hivemq's session store
    hivemq.start()
    publish(hivemq.port, events[10_000:])
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    assert bridge.counter("reconnects") >= 1 or "MQTT connection lost" in bridge.log.read_text(errors="replace")
    read_back_exactly(kafka, bridge, events)


def same_topics(bridge, like):
    """Makes `bridge` produce to `like`'s Kafka topics (two processes of one deployment)."""
    text = bridge.config.read_text()
    for kind, topic in bridge.topics.items():
        text = text.replace(f'"{topic}"', f'"{like.topics[kind]}"')
    bridge.config.write_text(text)
    bridge.topics = dict(like.topics)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
@pytest.mark.parametrize("broker_name", ["artemis", "mosquitto"])
def test_two_bridge_processes_share_a_subscription_and_a_kill_9_of_one_loses_nothing(
        request, tmp_path, kafka, broker_name, version):
    """Two processes × 2 connections in one group; one is killed with SIGKILL mid-stream, the
    other carries on, the killed one is restarted. On Artemis the group is the default
    `$share/jobstream/$aws/events/…`; mosquitto 2.0.11 shares no `$` topics, so there the fleet
    publishes under another prefix."""
    broker = request.getfixturevalue(broker_name)
    events = generate(30_000, tmp_path)
    shared = dict(version=version, connections=2)
    if broker_name == "mosquitto":
        prefix = "fleet/aws/events/"
        events = [(t.replace("$aws/events/", prefix, 1), p) for t, p in events]
        shared.update(pipeline_extra={"topic_prefix": prefix},
                      filters=[f"{prefix}job/+/+", f"{prefix}jobExecution/+/+"])
    first = Bridge(tmp_path, broker, kafka, **shared)
    second = Bridge(tmp_path, broker, kafka, **shared)
    same_topics(second, first)
    first.start()
    second.start()
    wait_for(lambda: all(b.log.read_text(errors="replace").count("subscribed") >= 2 for b in (first, second)),
             timeout=60, what="both processes' connections to subscribe")
    publisher = threading.Thread(target=publish, args=(broker.port, events))
    publisher.start()
    wait_for(lambda: first.counter("acked") >= 2_000 and second.counter("acked") >= 2_000, timeout=300,
             what="both processes to carry events")
    first.kill()
    taken_before = second.counter("received")
    publisher.join()
    # The other process carries on alone while the first is down.
    wait_for(lambda: second.counter("received") > taken_before + 1_000, timeout=120,
             what="the surviving process to go on taking events")
    # The killed one comes back (as a supervisor restarts it) for what its sessions hold:
    # mosquitto keeps queuing a share for an offline member of the group (Artemis hands it to
    # the members still connected).
    first.start()
    first.wait_quiescent()
    second.wait_quiescent()
    for bridge in (first, second):
        code, out = bridge.stop()
        assert code == 0, out
    print(f"{broker_name}, MQTT {version}: second process received {second.counter('received')} events; "
          f"{taken_before} of them before the kill")
    read_back_exactly(kafka, first, events)


def botocore_signature(target, host, key_id, secret, region):
    """The signature botocore (AWS's own Python signer) gives a GET of `target`'s path on `host`
    at the time the query names, for the same credentials."""
    query = parse_qs(urlsplit(target).query)
    when = datetime.datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    request = AWSRequest(method="GET", url=f"http://{host}{urlsplit(target).path}")
    auth = SigV4QueryAuth(Credentials(key_id, secret), "iotdevicegateway", region,
                          expires=int(query["X-Amz-Expires"][0]))
    with mock.patch("botocore.auth.get_current_datetime", return_value=when):
        auth.add_auth(request)
    return parse_qs(urlsplit(request.url).query)["X-Amz-Signature"][0]


class SigV4Gate:
    """A WebSocket front door like AWS IoT Core's: it checks the handshake's SigV4 query
    against botocore's signature for the credentials it knows, answers 403 where it does not
    match, and otherwise hands the handshake, without the query, to the broker's WebSocket
    listener (HiveMQ serves `/mqtt` only, not `/mqtt?…`) and relays the connection."""

    def __init__(self, upstream_port, key_id, secret, region):
        self.upstream_port = upstream_port
        self.credentials = (key_id, secret, region)
        self.accepted, self.refused = [], []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client):
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = client.recv(65536)
            if not chunk:
                client.close()
                return
            head += chunk
        request_line, rest = head.split(b"\r\n", 1)
        method, target, version = request_line.decode().split(" ")
        host = re.search(rb"(?im)^host:\s*(\S+)", rest).group(1).decode()
        query = parse_qs(urlsplit(target).query)
        try:
            valid = query["X-Amz-Signature"][0] == botocore_signature(target, host, *self.credentials)
        except (KeyError, ValueError):
            valid = False
        (self.accepted if valid else self.refused).append(target)
        if not valid:
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        upstream.sendall(f"{method} {urlsplit(target).path} {version}\r\n".encode() + rest)
        relay_both_ways(client, upstream)

    def close(self):
        close_listener(self.listener)


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_mqtt_over_websockets_signed_with_sigv4_passes_a_signature_check_and_delivers(
        tmp_path, hivemq, kafka, version):
    key_id, secret = "AKIDJOBSTREAMTEST", uuid.uuid4().hex
    gate = SigV4Gate(hivemq.ws_port, key_id, secret, "eu-west-1")
    try:
        events = generate(2_000, tmp_path)
        bridge = Bridge(tmp_path, hivemq, kafka, url=f"ws://127.0.0.1:{gate.port}/mqtt", version=version,
                        aws_sigv4=True, aws_region="eu-west-1",
                        env={"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}).start()
        publish(hivemq.port, events)
        bridge.wait_acked(len(events))
        code, out = bridge.stop()
        assert code == 0, out
        assert secret not in bridge.log.read_text(errors="replace"), "the secret is never logged"
        assert read_back_exactly(kafka, bridge, events) == len(events)
        assert gate.accepted and not gate.refused, gate.refused
        for target in gate.accepted:
            credential = parse_qs(urlsplit(target).query)["X-Amz-Credential"][0]
            assert credential.startswith(f"{key_id}/") and credential.endswith(
                "/eu-west-1/iotdevicegateway/aws4_request"), target

        # A wrong secret: the gate refuses the handshake, and the start fails as unreachable.
        result = run("run", "--config", bridge.config, "--connect-timeout-secs", "3", check=False,
                     timeout=120, env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": key_id,
                                       "AWS_SECRET_ACCESS_KEY": "not-the-secret"})
        assert result.returncode == 69, result.stderr
        assert gate.refused, "the gate saw the badly signed handshake"
    finally:
        gate.close()


def test_sigv4_without_credentials_or_region_is_refused_saying_what_to_set(tmp_path, kafka):
    missing = run("run", "--mqtt", "wss://broker.example:443/mqtt", "--kafka", kafka.brokers, "--check",
                  "--config", write_config(tmp_path, "aws_sigv4 = true\naws_region = \"us-east-1\"\n"),
                  check=False, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert missing.returncode == 78, missing.stderr
    assert "AWS_ACCESS_KEY_ID" in missing.stderr, missing.stderr
    no_region = run("run", "--mqtt", "wss://broker.example:443/mqtt", "--kafka", kafka.brokers, "--check",
                    "--config", write_config(tmp_path, "aws_sigv4 = true\n"), check=False,
                    env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"})
    assert no_region.returncode == 78, no_region.stderr
    assert "mqtt.aws_region" in no_region.stderr, no_region.stderr
    not_ws = run("run", "--mqtt", "mqtts://broker.example:8883", "--kafka", kafka.brokers, "--check",
                 "--config", write_config(tmp_path, "aws_sigv4 = true\naws_region = \"us-east-1\"\n"),
                 check=False, env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "B"})
    assert not_ws.returncode == 78 and "wss://" in not_ws.stderr, not_ws.stderr


def write_config(tmp_path, mqtt_lines):
    path = tmp_path / f"sigv4-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("[mqtt]\n" + mqtt_lines)
    return path


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_three_connections_share_aws_events_and_take_each_event_once(tmp_path, artemis, kafka, version):
    """`--connections 3`: `$share/jobstream/$aws/events/job/+/+` and the execution filter, the
    subscription the README gives AWS users, on a broker that shares `$` topics (Artemis)."""
    events = generate(6_000, tmp_path)
    bridge = Bridge(tmp_path, artemis, kafka, version=version, connections=3).start()
    wait_for(lambda: bridge.log.read_text(errors="replace").count("subscribed") >= 3, timeout=60,
             what="the three connections to subscribe")
    assert "$share/jobstream/$aws/events/job/+/+" in bridge.log.read_text(errors="replace")
    publish(artemis.port, events)
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    shares = [int(n) for n in re.findall(r"connection=(\d+)", bridge.log.read_text(errors="replace"))]
    assert set(shares) >= {0, 1, 2}, "each connection of the group was up"
    assert bridge.counter("received") == len(events), "the group received each event once"
    read_back_exactly(kafka, bridge, events)
