"""MQTT straight to Parquet, no Kafka (`jobstream run --mqtt URL --parquet DIR`): a message is
acknowledged once the file holding it is published. Real mosquitto, paho-mqtt publishing,
DuckDB and pyarrow reading."""

import json
import random
import re
import signal
import subprocess
import threading
import uuid

from brokers import free_port
from conftest import STARTED, http_get, jobstream_bin, metric_samples, wait_for
from test_bridge import BAD_LINES, generate, publish
from test_parquet_stage import assert_exactly_once

class Direct:
    """`jobstream run` with --mqtt and --parquet and no Kafka, restartable on one session."""

    def __init__(self, tmp_path, mosquitto, *extra, env=None, out=None):
        """`out`: where the tables go (default `tmp_path/out`; a URL writes to an object store)."""
        self.out = out or tmp_path / "out"
        self.log = tmp_path / "direct.log"
        self.args = [jobstream_bin(), "run", "--mqtt", mosquitto.url, "--parquet", self.out,
                     "--client-id", f"direct-{uuid.uuid4().hex[:6]}", "--stats-every-secs", "1",
                     *extra]
        self.starts = 0
        self.env = {"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin", **(env or {})}

    def start(self):
        self.starts += 1
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=open(self.log, "ab"),
                                     text=True, env=self.env)
        STARTED.append(self.proc)
        wait_for(lambda: self.log.read_text(errors="replace").count("subscribed") >= self.starts,
                 timeout=60, what="the subscription")
        return self

    def counter(self, name):
        found = re.findall(rf"(?:^|\| |\s){name} (\d+)", self.log.read_text(errors="replace"))
        return int(found[-1]) if found else 0

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=120)
        return self.proc.returncode, out

    def dlq(self):
        files = list((self.out / "dlq").glob("*.jsonl"))
        return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_mqtt_straight_to_parquet_writes_each_event_once_and_rejects_to_the_dlq_file(tmp_path, mosquitto):
    lines = generate(3000, tmp_path)
    port = free_port()
    direct = Direct(tmp_path, mosquitto, "--max-file-age-secs", "1",
                    "--metrics-listen", f"127.0.0.1:{port}").start()
    publish(mosquitto.port, lines + BAD_LINES)
    wait_for(lambda: direct.counter("acked") >= len(lines) + len(BAD_LINES), timeout=120,
             what="every message acknowledged")

    # What an operator scrapes says where events went: Parquet rows and files, the DLQ file,
    # and no Kafka at all; /ready asks the output directory, not a Kafka broker.
    status, ready = http_get(port, "/ready")
    assert status == 200 and "parquet ok" in ready and "mqtt ok" in ready and "kafka" not in ready, ready
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    metrics = metric_samples(body)
    jobs = sum(1 for topic, _ in lines if "/job/" in topic)
    published = {table: metrics.get(("jobstream_parquet_rows_published_total", frozenset({("table", table)})))
                 for table in ("job_events", "job_execution_events")}
    assert published == {"job_events": jobs, "job_execution_events": len(lines) - jobs}, published
    assert metrics[("jobstream_dlq_file_records_total", frozenset())] == len(BAD_LINES)
    assert metrics[("jobstream_parquet_files_published_total", frozenset())] >= 2
    assert not [name for name, _ in metrics
                if name.startswith("jobstream_kafka")], body
    code, out = direct.stop()
    assert code == 0, direct.log.read_text()[-3000:]
    assert_exactly_once(direct.out, lines)
    rejects = direct.dlq()
    assert sorted(r["topic"] for r in rejects) == sorted(t for t, _ in BAD_LINES)
    assert {r["error_kind"] for r in rejects} >= {"not_json", "event_type_mismatch"}, rejects
    assert all(r["error"] for r in rejects)
    assert f"rejected {len(BAD_LINES)}" in out, out
    assert re.search(rf"published job {jobs} execution {len(lines) - jobs} in \d+ files", out), out


def test_nothing_is_acknowledged_before_its_file_is_published(tmp_path, mosquitto):
    lines = generate(2000, tmp_path)
    # Files that never roll on their own: only the drain publishes them.
    direct = Direct(tmp_path, mosquitto, "--max-file-age-secs", "3600",
                    "--max-file-rows", "1000000").start()
    publish(mosquitto.port, lines)
    wait_for(lambda: direct.counter("received") >= len(lines), timeout=120, what="every message received")
    wait_for(lambda: direct.log.read_text(errors="replace").count(f"received {len(lines)} ") >= 3,
             timeout=30, what="three stats lines after the last message")
    assert direct.counter("acked") == 0, "no file published, so nothing acknowledged"
    assert not list(direct.out.rglob("*.parquet"))
    code, out = direct.stop()
    assert code == 0, direct.log.read_text()[-3000:]
    assert f"acked {len(lines)}" in out, out
    assert_exactly_once(direct.out, lines)


def test_kill_9_mid_stream_then_restart_loses_nothing_and_writes_nothing_twice(tmp_path, mosquitto):
    lines = generate(30_000, tmp_path)
    direct = Direct(tmp_path, mosquitto, "--max-file-age-secs", "1").start()
    publisher = threading.Thread(target=publish, args=(mosquitto.port, lines))
    publisher.start()
    kill_at = random.randint(len(lines) // 10, len(lines) // 2)
    wait_for(lambda: direct.counter("acked") >= kill_at, timeout=300, what=f"{kill_at} acknowledgements")
    direct.proc.send_signal(signal.SIGKILL)
    direct.proc.wait(timeout=30)
    direct.start()
    publisher.join()
    before = direct.log.read_text(errors="replace").rfind("subscribed")

    def restarted_run_caught_up():
        text = direct.log.read_text(errors="replace")[before:]
        stats = re.findall(r"received (\d+) \|.*\| acked (\d+) \| abandoned (\d+)", text)
        return len(stats) >= 3 and len(set(stats[-3:])) == 1 and stats[-1][0] == stats[-1][1]
    wait_for(restarted_run_caught_up, timeout=300, what="the restarted run to acknowledge all it received")
    code, _ = direct.stop()
    assert code == 0, direct.log.read_text()[-3000:]
    assert_exactly_once(direct.out, lines)
    print(f"direct kill -9 after >={kill_at} acks; duplicates dropped after restart: "
          f"{direct.counter('duplicates')}")


def test_a_crash_between_publishing_a_file_and_acknowledging_it_writes_nothing_twice(tmp_path, mosquitto, crash_points):
    lines = generate(3000, tmp_path)
    direct = Direct(tmp_path, mosquitto, "--max-file-rows", "500",
                    env={"JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING": "1"}).start()
    publish(mosquitto.port, lines)
    direct.proc.wait(timeout=120)
    assert direct.proc.returncode == -signal.SIGABRT, "the fault injection fired"
    published = list(direct.out.rglob("*.parquet"))
    assert published, "the file was published before the abort"
    # The broker still holds every message of that file: none was acknowledged.
    direct.env.pop("JOBSTREAM_TEST_ABORT_AFTER_PUBLISHING")
    direct.args[direct.args.index("--max-file-rows") + 1] = "1000000"
    direct.args += ["--max-file-age-secs", "1"]
    direct.start()
    before = direct.log.read_text(errors="replace").rfind("subscribed")

    def caught_up():
        text = direct.log.read_text(errors="replace")[before:]
        stats = re.findall(r"received (\d+) \|.*\| duplicates (\d+) \| acked (\d+)", text)
        return (len(stats) >= 3 and len(set(stats[-3:])) == 1
                and int(stats[-1][0]) == int(stats[-1][2]) >= len(lines))
    wait_for(caught_up, timeout=300, what="the restart to acknowledge every redelivered message")
    duplicates = direct.counter("duplicates")
    code, _ = direct.stop()
    assert code == 0, direct.log.read_text()[-3000:]
    assert duplicates >= 500, "the redelivered rows of the published file were recognised"
    assert_exactly_once(direct.out, lines)
