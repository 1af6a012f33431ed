"""Real brokers for the tests: mosquitto (Debian) and tansu (a Kafka-protocol broker), each
started on a free loopback port with its own data directory, and stopped at the end."""

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, what: str = "port"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not open port {port} within {timeout}s")


def need(binary: str) -> str:
    path = shutil.which(binary) or (binary if Path(binary).exists() else None)
    if path is None:
        pytest.fail(f"{binary} is not installed; run scripts/test-env (scripts/test does)")
    return path


class Mosquitto:
    """A mosquitto with persistence, unlimited in-flight window and queue, like docker/."""

    def __init__(self, workdir: Path, tls: dict | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.tls = tls
        self.proc = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.workdir}/",
            # Saved on shutdown (the restart test needs that); saving a queue of 200k messages
            # every second would stall the broker.
            "autosave_interval 3600",
            # Run as root (the tests' tmp dirs are root's); mosquitto would otherwise switch to
            # its own user and fail to write the persistence file.
            "user root",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_packet_size 1048576",
            # $SYS/broker/store/messages/count every second: the tests wait on it to know
            # every message was acknowledged.
            "sys_interval 1",
        ]
        if tls:
            # A second listener for TLS; the plain one stays for the test's publisher.
            lines += [f"listener {self.tls_port} 127.0.0.1",
                      f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
            if tls.get("require_certificate"):
                lines += ["require_certificate true"]
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def start(self):
        self.proc = subprocess.Popen(
            [need("mosquitto"), "-c", str(self.workdir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL, stderr=open(self.workdir / "mosquitto.log", "ab"))
        wait_port(self.port, what="mosquitto")
        if self.tls_port:
            wait_port(self.tls_port, what="mosquitto (TLS)")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the persistence file
            self.proc.wait(timeout=30)

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"


class Tansu:
    """tansu with SQLite storage (its memory engine loses records on resumed fetches)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    def start(self):
        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [need(os.environ.get("TANSU_BIN", "tansu")), "broker",
             "--listener-url", url, "--advertised-listener-url", url,
             # tansu reads the path after sqlite:// relative to its working directory.
             "--storage-engine", "sqlite://tansu.db"],
            cwd=self.workdir, stdout=open(self.workdir / "tansu.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, what="tansu")
        self._index_headers()
        return self

    def _index_headers(self):
        """tansu 0.6's SQLite schema has no index on record headers, so every fetched record
        scans the whole header table: reads of a few thousand records with headers (every
        jobstream record has five) slow to a crawl and the broker pegs a core. An index on the
        lookup columns makes fetches linear again; it changes nothing tansu returns."""
        db_path = self.workdir / "tansu.db"
        deadline = time.monotonic() + 30
        while True:
            try:
                db = sqlite3.connect(db_path, timeout=30)
                try:
                    db.execute("create index if not exists jobstream_header_lookup"
                               " on header (topition, offset_id)")
                    db.commit()
                    return
                finally:
                    db.close()
            except sqlite3.OperationalError:
                # The schema is created just after the port opens.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # tansu 0.6 may ignore SIGTERM with clients attached
                self.proc.kill()
                self.proc.wait(timeout=10)

    @property
    def brokers(self):
        return f"127.0.0.1:{self.port}"
