"""Real brokers for the tests: mosquitto (Debian), a second MQTT broker from another code base
(HiveMQ CE, built by scripts/test-env) and Apache Kafka (from Maven Central, see scripts/kafka),
each started on a free loopback port with its own data directory, and stopped at the end."""

import os
import shutil
import signal
import socket
import sys
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


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

    def __init__(self, workdir: Path, tls: dict | None = None, max_packet_size: int = 1048576):
        """`max_packet_size`: the largest packet mosquitto takes from a publisher (and so
        forwards); the oversized-message tests raise it."""
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
            f"max_packet_size {max_packet_size}",
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


class EmbeddedBroker:
    """An MQTT broker embedded in a Java launcher of ours under tests/brokers/<name> (built by
    Maven in scripts/test-env), run in the foreground on free loopback ports with its data in
    the test's directory: the same face as `Mosquitto` (port, url, start, stop, kill)."""

    NAME = ""       # the directory under tests/brokers, and the jar's and log's name
    TITLE = ""      # as messages name it
    MAIN = ""       # the launcher's class

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def extra_args(self) -> list:
        """Launcher arguments after PORT and DATA_DIR."""
        return []

    def start(self):
        home = ROOT / "tests" / "brokers" / self.NAME
        jar = home / "target" / f"{self.NAME}-test-broker.jar"
        if not jar.exists():
            pytest.fail(f"{self.TITLE} is not built; run scripts/test-env (scripts/test does)")
        self.proc = subprocess.Popen(
            # C1 only and the serial collector: it starts faster on 2 cores and is plenty here.
            [need("java"), "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-Xmx1g",
             "-cp", f"{jar}:{home / 'target' / 'lib'}/*", self.MAIN,
             str(self.port), str(self.workdir / self.NAME), *map(str, self.extra_args())],
            stdout=open(self.workdir / f"{self.NAME}.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=90, what=self.TITLE)
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class HiveMQ(EmbeddedBroker):
    """HiveMQ Community Edition, embedded (tests/brokers/hivemq): MQTT 3.1.1 and 5, shared
    subscriptions on `$` topics (which mosquitto 2.0.11 cannot share), sessions and their queued
    messages kept on disk in its data directory (a restart, even after kill -9, finds them), and
    a WebSocket listener on `/mqtt`.

    Unlike mosquitto: it sends a client at most its in-flight window (HiveMQ's 50) and then waits
    for acknowledgements; its `#` matches `$` topics; it has no `$SYS` topics."""

    NAME, TITLE, MAIN = "hivemq", "HiveMQ", "jobstream.testbroker.HiveMQBroker"

    def __init__(self, workdir: Path):
        super().__init__(workdir)
        self.ws_port = free_port()

    def extra_args(self) -> list:
        return [self.ws_port]

    def start(self):
        super().start()
        wait_port(self.ws_port, timeout=30, what="HiveMQ (WebSocket)")
        return self


class Kafka:
    """Apache Kafka itself: one KRaft node (broker and controller in one JVM) from the jars
    `scripts/kafka fetch` resolved from Maven Central, started by `scripts/kafka start` with a
    freshly formatted data directory on free loopback ports.

    `listeners` adds listeners beside PLAINTEXT (which stays for the tests' own clients and
    between broker and controller): {"SSL": {...}} or {"SASL_SSL": {...}}, each a dict of
    server.properties lines for that listener (`listener.name.<name>.…` is written for you).
    `properties` adds or overrides any other server.properties line."""

    def __init__(self, workdir: Path, listeners: dict | None = None, properties: dict | None = None,
                 server_properties: dict | None = None, port: int | None = None,
                 cluster_id: str | None = None):
        """`server_properties` replaces the single-node settings of scripts/kafka whole (the
        caller then gives the client `port` too); `cluster_id` is drawn at random unless given."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.controller_port = free_port()
        self.ports = {name: free_port() for name in (listeners or {})}
        self.listeners = listeners or {}
        self.properties = properties or {}
        self.server_properties = server_properties
        if port is not None:
            self.port = port
        self.cluster_id = cluster_id
        self.proc = None
        self.started_in = None

    def overrides(self) -> dict:
        props = {}
        if self.listeners:
            listeners = [f"PLAINTEXT://127.0.0.1:{self.port}", f"CONTROLLER://127.0.0.1:{self.controller_port}"]
            listeners += [f"{name}://127.0.0.1:{port}" for name, port in self.ports.items()]
            props["listeners"] = ",".join(listeners)
            props["advertised.listeners"] = ",".join(
                [f"PLAINTEXT://127.0.0.1:{self.port}"]
                + [f"{name}://127.0.0.1:{port}" for name, port in self.ports.items()])
            props["listener.security.protocol.map"] = ",".join(
                ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"] + [f"{n}:{n}" for n in self.ports])
            for name, settings in self.listeners.items():
                for key, value in settings.items():
                    props[f"listener.name.{name.lower()}.{key}"] = value
        props.update(self.properties)
        return props

    def start(self, timeout: float = 120.0):
        script = ROOT / "scripts" / "kafka"
        overrides = [f"{k}={v}" for k, v in self.overrides().items()]
        given = []
        if self.server_properties is not None:
            path = self.workdir / "given.properties"
            path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties.items()))
            given = ["--properties", str(path)]
        if self.cluster_id is not None:
            given += ["--cluster-id", self.cluster_id]
        began = time.monotonic()
        self.proc = subprocess.Popen(
            [str(script), "start", "--dir", str(self.workdir), "--port", str(self.port),
             "--controller-port", str(self.controller_port), *given, "--", *overrides],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = self.workdir / "kafka.log"
        deadline = began + timeout
        while True:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Kafka Server started" in text:
                break
            code = self.proc.poll()
            if code is not None:
                raise AssertionError(f"Apache Kafka exited with {code} before it started; "
                                     f"{log} ends:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"Apache Kafka did not start within {timeout}s; {log} ends:\n{text[-3000:]}")
            time.sleep(0.05)
        self.started_in = time.monotonic() - began
        return self

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, sig=signal.SIGTERM):
        """Stops the broker (SIGTERM: a controlled shutdown) and waits until its JVM is gone."""
        if self.proc and self.proc.poll() is None:
            # A frozen broker (SIGSTOP in a test) cannot act on SIGTERM until it runs again.
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    @property
    def brokers(self):
        return f"127.0.0.1:{self.port}"

    def bootstrap(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


class Artemis(EmbeddedBroker):
    """Apache Artemis (formerly ActiveMQ Artemis), embedded (tests/brokers/artemis): a third MQTT
    code base, and the one the tests share `$aws/events/…` on. HiveMQ CE shares `$` topics too,
    but its shared-subscription members stall when they subscribe right after connecting (see
    the README); mosquitto 2.0.11 shares no `$` topic at all. Sessions, shared subscriptions and
    queued messages are kept in a journal in its data directory and survive kill -9."""

    NAME, TITLE, MAIN = "artemis", "Artemis", "jobstream.testbroker.ArtemisBroker"


class S3Server:
    """A real S3 API server on loopback: moto's server mode (from PyPI, pinned in
    requirements.txt). It implements what the object-store sink relies on — create-only PUTs
    (`If-None-Match: *` answered 412 when the key exists), ranged GETs, ListObjectsV2 by prefix,
    path-style addressing — and checks that requests are signed, though not against which key.
    Its state is in memory: a restart of the server empties it, a restart of jobstream does not."""

    REGION = "us-east-1"
    KEY, SECRET = "jobstream-test", "jobstream-test-secret"

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        server = Path(sys.executable).parent / "moto_server"
        if not server.exists():
            pytest.fail("moto's server is not installed; run scripts/test-env (scripts/test does)")
        self.proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.workdir / "s3.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60, what="the S3 server")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def env(self) -> dict:
        """What jobstream (object_store) and the clients need to reach this server, as a user
        of an S3-compatible store sets it: endpoint, plain HTTP, region, keys."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": self.REGION,
                "AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET}

    def client(self):
        import boto3
        import botocore.config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.REGION,
                            aws_access_key_id=self.KEY, aws_secret_access_key=self.SECRET,
                            config=botocore.config.Config(s3={"addressing_style": "path"}))

    def filesystem(self):
        from pyarrow import fs
        return fs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http",
                               region=self.REGION, access_key=self.KEY, secret_key=self.SECRET)

    def bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict:
        """{key: (size, etag, last_modified)} of every object under `prefix`."""
        found = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[item["Key"]] = (item["Size"], item["ETag"], item["LastModified"])
        return found

    def download(self, bucket: str, prefix: str, into: Path) -> Path:
        """Copies every object under `prefix` to `into`, keeping the layout (for readers that
        read directories)."""
        client = self.client()
        for key in self.objects(bucket, prefix):
            target = into / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
        return into


class Azurite:
    """Azure Blob Storage's own emulator, Azurite (Microsoft's, from npm; scripts/test-env
    installs it under .azurite/), on loopback, in memory. It honours `If-None-Match: *` on a
    blob PUT, which the object-store sink's create-only publish relies on. jobstream reaches it
    as object_store's users do: `AZURE_STORAGE_USE_EMULATOR=true` with `AZURITE_BLOB_STORAGE_URL`."""

    HOME = ROOT / ".azurite"
    # Azurite's one built-in account and its key, published in Azurite's documentation.
    ACCOUNT = "devstoreaccount1"
    KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        server = self.HOME / "node_modules" / ".bin" / "azurite-blob"
        if not server.exists():
            pytest.fail("Azurite is not installed; run scripts/test-env (scripts/test does)")
        self.proc = subprocess.Popen(
            [str(server), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--inMemoryPersistence",
             "--skipApiVersionCheck"],
            stdout=open(self.workdir / "azurite.log", "ab"), stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60, what="Azurite")
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def env(self) -> dict:
        return {"AZURE_STORAGE_USE_EMULATOR": "true", "AZURITE_BLOB_STORAGE_URL": self.endpoint}

    def container(self, name: str):
        """A new container, as a client of Microsoft's own SDK (azure-storage-blob)."""
        from azure.storage.blob import BlobServiceClient
        service = BlobServiceClient.from_connection_string(
            f"DefaultEndpointsProtocol=http;AccountName={self.ACCOUNT};AccountKey={self.KEY};"
            f"BlobEndpoint={self.endpoint}/{self.ACCOUNT};")
        return service.create_container(name)
