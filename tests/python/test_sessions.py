"""Persistent sessions across a change of `connections`: connection i keeps its client id
whatever the count (0 is the bare id, then `<id>-<i>`), and a run with fewer connections drains
and ends the sessions the run before left behind, so that nothing the broker queued in them is
stranded. Against a real mosquitto and Apache Kafka.

mosquitto 2.0.11 shares no `$` topics, so the fleet publishes under another prefix here."""

import pytest

from conftest import wait_for
from test_bridge import Bridge, generate, publish, read_back_exactly

PREFIX = "fleet/aws/events/"
FILTERS = [f"{PREFIX}job/+/+", f"{PREFIX}jobExecution/+/+"]


def fleet_events(count, tmp_path):
    return [(t.replace("$aws/events/", PREFIX, 1), p) for t, p in generate(count, tmp_path)]


def sharing_bridge(tmp_path, mosquitto, kafka, connections, version):
    return Bridge(tmp_path, mosquitto, kafka, pipeline_extra={"topic_prefix": PREFIX},
                  version=version, connections=connections, filters=FILTERS)


def reconfigure(bridge, connections_before, connections_after):
    text = bridge.config.read_text()
    assert f"connections = {connections_before}\n" in text
    bridge.config.write_text(text.replace(f"connections = {connections_before}\n",
                                          f"connections = {connections_after}\n"))


def start(bridge, connections):
    """Starts the bridge and waits until its `connections` connections of this run subscribed."""
    subscribed = lambda: bridge.log.read_text(errors="replace").count("subscribed") if bridge.log.exists() else 0
    before = subscribed()
    bridge.start()
    wait_for(lambda: subscribed() >= before + connections, timeout=60,
             what=f"{connections} connection(s) to subscribe")


def broker_log(mosquitto):
    return (mosquitto.workdir / "mosquitto.log").read_text(errors="replace")


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_fewer_connections_after_a_restart_drain_and_end_the_sessions_left_behind(
        tmp_path, mosquitto, kafka, version):
    events = fleet_events(5_000, tmp_path)
    offline, online = events[:3_000], events[3_000:]
    bridge = sharing_bridge(tmp_path, mosquitto, kafka, 3, version)
    start(bridge, 3)
    code, out = bridge.stop()
    assert code == 0, out
    # The three persistent sessions stay in the share group while nobody is connected: the
    # broker queues a share of what is published for each of them.
    publish(mosquitto.port, offline)

    reconfigure(bridge, 3, 1)
    start(bridge, 1)
    client = f"test-{bridge.id}"
    wait_for(lambda: bridge.log.read_text(errors="replace").count("retired the session") >= 2,
             timeout=120, what="the two sessions left behind to be drained and ended")
    log = bridge.log.read_text(errors="replace")
    for retired in (f"{client}-1", f"{client}-2"):
        assert f'client_id="{retired}"' in log or f"client_id={retired}" in log, log[-3000:]
    publish(mosquitto.port, online)
    bridge.wait_acked(len(offline) + len(online), timeout=300)
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    records = read_back_exactly(kafka, bridge, offline + online)
    assert records == len(offline) + len(online), "no event twice"

    # Each left-behind session ended with a clean connect, as mosquitto saw it.
    protocol = "p2" if version == "3.1.1" else "p5"  # mosquitto logs 3.1.1 as p2
    for retired in (f"{client}-1", f"{client}-2"):
        assert f"as {retired} ({protocol}, c1" in broker_log(mosquitto), broker_log(mosquitto)[-3000:]

    # Nothing is queued for them any more: a third run finds no session to retire.
    start(bridge, 1)
    code, out = bridge.stop()
    assert code == 0, out
    third_run = bridge.log.read_text(errors="replace").split("retired the session")[-1]
    assert "draining it" not in third_run, third_run[-3000:]


def test_more_connections_keep_the_first_session_and_take_each_event_once(tmp_path, mosquitto, kafka):
    events = fleet_events(4_000, tmp_path)
    queued, later = events[:2_000], events[2_000:]
    bridge = sharing_bridge(tmp_path, mosquitto, kafka, 1, "3.1.1")
    start(bridge, 1)
    code, out = bridge.stop()
    assert code == 0, out
    publish(mosquitto.port, queued)  # queued in the one session, under the bare client id

    reconfigure(bridge, 1, 2)
    start(bridge, 2)
    publish(mosquitto.port, later)
    bridge.wait_acked(len(queued) + len(later), timeout=300)
    bridge.wait_quiescent()
    code, out = bridge.stop()
    assert code == 0, out
    # Connection 0 found its session (and the queue) under the same id; it dropped the plain
    # subscription it held, so no event came to it both directly and through the group.
    log = bridge.log.read_text(errors="replace")
    assert "connection=0 session_present=true" in log, log[-3000:]
    assert f"received {len(queued) + len(later)} " in out, out
    read_back_exactly(kafka, bridge, queued + later)
