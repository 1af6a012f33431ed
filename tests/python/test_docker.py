"""docker/ checked (these machines have no Docker engine): the compose file parses and hangs
together, every file it and the Dockerfile reference exists, the configuration it mounts is one
jobstream loads, the commands it runs are ones jobstream accepts, and its Kafka service's
settings, given to the same Apache Kafka the tests run, carry the bridge and the Parquet stage."""

import json
import re
import shlex
import shutil
import signal
import subprocess
import time
import tomllib
import uuid

import pytest
import yaml

from brokers import Kafka, free_port
from conftest import ROOT, STARTED, jobstream_bin, run, wait_for

DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def bind_mounts(service):
    """(host path, container path) of each bind mount (`./x:/y[:ro]`), host path resolved."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def jobstream_services(compose):
    return {name: s for name, s in compose["services"].items() if s.get("image") == "jobstream:local"}


def test_compose_parses_with_mosquitto_kafka_in_kraft_mode_and_jobstream(compose):
    services = compose["services"]
    assert {"mosquitto", "kafka", "jobstream"} <= services.keys()
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "KRaft, no ZooKeeper"
    assert "ZOOKEEPER" not in " ".join(env), "no ZooKeeper setting"
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    named = set(compose.get("volumes", {}))
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith((".", "/")) or source in named, f"{name}: volume {source} is not declared"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_no_dollar_sign_is_left_for_compose_to_interpolate():
    # Compose replaces $VAR and ${VAR}; MQTT topics start with "$aws", so a stray "$" would
    # silently become an empty string. Every literal "$" must be written "$$".
    text = re.sub(r"(?m)#.*$", "", COMPOSE.read_text())
    assert not re.findall(r"(?<!\$)\$(?!\$)", text.replace("$$", ""))


def test_every_file_the_compose_file_and_dockerfile_reference_exists(compose):
    for name, service in compose["services"].items():
        for host, _ in bind_mounts(service):
            assert host.exists(), f"{name} mounts missing {host}"
        build = service.get("build")
        if build:
            context = (COMPOSE.parent / build["context"]).resolve()
            dockerfile = context / build["dockerfile"]
            assert dockerfile.is_file(), dockerfile
            assert context == ROOT, "the build context is the workspace root"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = re.findall(r"(?m)^FROM\s+\S+(?:\s+AS\s+(\S+))?", dockerfile)
    assert len(stages) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert re.search(r"(?m)^FROM\s+rust:", dockerfile) and re.search(r"(?m)^FROM\s+debian:\S+-slim", dockerfile)
    for line in re.findall(r"(?m)^COPY\s+(?!--from)(.+)$", dockerfile):
        *sources, _ = shlex.split(line)
        for source in sources:
            assert source == "." or (ROOT / source).exists(), f"COPY {source}: missing"
    assert "cargo build --release --locked -p jobstream" in dockerfile
    # The binary links the system OpenSSL (librdkafka's TLS and SASL): the build stage needs
    # its headers and the runtime stage the library the binary was linked against.
    linked = subprocess.run(["ldd", jobstream_bin()], capture_output=True, text=True).stdout
    assert "libssl.so.3" in linked, "librdkafka is built with TLS"
    assert "libssl-dev" in dockerfile and re.search(r"install .*\blibssl3\b", dockerfile)
    assert (ROOT / "Cargo.lock").is_file(), "--locked needs the lock file"
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert "target/" in ignore and ".git/" in ignore, "the context leaves out build output"


def test_the_mounted_config_is_one_jobstream_loads_and_matches_the_other_services(compose):
    service = compose["services"]["jobstream"]
    command = service["command"]
    config_in_container = command[command.index("--config") + 1]
    mounted = dict((target, host) for host, target in bind_mounts(service))
    assert config_in_container in mounted, f"{config_in_container} is not mounted"
    host_config = mounted[config_in_container]

    # The service's own command, with the container path swapped for the file it mounts.
    host_command = [str(host_config) if a == config_in_container else a for a in command]
    check = run(*host_command, "--check")
    assert "configuration OK" in check.stdout, check.stdout
    assert "metrics     http://0.0.0.0:" in check.stdout, check.stdout

    config = tomllib.loads(host_config.read_text())
    # MQTT: the service name and the port mosquitto.conf listens on.
    mqtt = re.fullmatch(r"mqtt://([^:/]+):(\d+)", config["mqtt"]["url"])
    assert mqtt and mqtt.group(1) == "mosquitto"
    mosquitto_conf = next(h for h, t in bind_mounts(compose["services"]["mosquitto"]) if t.endswith("mosquitto.conf"))
    assert re.search(rf"(?m)^listener {mqtt.group(2)}\b", mosquitto_conf.read_text())
    # Kafka: the advertised listener the containers use.
    advertised = compose["services"]["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert any(l.split("://")[1] == config["kafka"]["brokers"] for l in advertised.split(","))
    # Metrics: published, and the healthcheck asks /ready on that port.
    port = config["metrics"]["listen"].rsplit(":", 1)[1]
    assert config["metrics"]["listen"].startswith("0.0.0.0:"), "reachable from outside the container"
    assert any(str(p).split(":")[-1] == port for p in service["ports"])
    assert f"/dev/tcp/127.0.0.1/{port}" in " ".join(service["healthcheck"]["test"])
    assert "GET /ready" in " ".join(service["healthcheck"]["test"])
    # The drain deadline fits inside the stop grace period.
    grace = int(service["stop_grace_period"].rstrip("s"))
    assert config["pipeline"]["drain_timeout_secs"] < grace


def test_every_jobstream_command_in_compose_uses_flags_jobstream_has(compose):
    for name, service in jobstream_services(compose).items():
        command = service["command"]
        help_text = run(command[0], "--help").stdout
        for flag in [a for a in command if a.startswith("--")]:
            assert re.search(rf"(?m)^\s+(-\w, )?{re.escape(flag)}\b", help_text), f"{name}: {flag} unknown"


def test_compose_config_renders_when_the_compose_plugin_is_installed():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("no docker compose plugin on this machine; the checks above stand in for it")
    result = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def image_properties(environment):
    """server.properties from KAFKA_* variables, converted as the apache/kafka image does:
    drop the prefix, lower-case, `___` → `-`, `__` → `_`, `_` → `.`."""
    props = {}
    for name, value in environment.items():
        if not name.startswith("KAFKA_"):
            continue
        key = name.removeprefix("KAFKA_").lower()
        key = key.replace("___", "\0").replace("__", "\1").replace("_", ".")
        props[key.replace("\0", "-").replace("\1", "_")] = str(value)
    return props


def test_the_kafka_image_tag_is_the_broker_the_tests_run(compose):
    pom = (ROOT / "scripts" / "kafka-broker" / "pom.xml").read_text()
    tested = re.search(r"<kafka.version>(.+)</kafka.version>", pom).group(1)
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{tested}"


def test_compose_kafka_settings_carry_the_bridge_and_the_parquet_stage(compose, tmp_path, mosquitto):
    """Apache Kafka started with exactly the compose service's settings (container host names
    and ports swapped for free loopback ones, the data directory for the test's), then the
    documented config's bridge and Parquet stage through it, as the jobstream service runs."""
    props = image_properties(compose["services"]["kafka"]["environment"])
    ports = {}

    def local(listeners):
        out = []
        for listener in listeners.split(","):
            name, address = listener.split("://")
            ports.setdefault(name, free_port())
            out.append(f"{name}://127.0.0.1:{ports[name]}")
        return ",".join(out)

    props["listeners"] = local(props["listeners"])
    props["advertised.listeners"] = local(props["advertised.listeners"])
    voter_id = props["controller.quorum.voters"].split("@")[0]
    props["controller.quorum.voters"] = f"{voter_id}@127.0.0.1:{ports[props['controller.listener.names']]}"
    props["log.dirs"] = str(tmp_path / "kafka-data")
    kafka = Kafka(tmp_path / "kafka", server_properties=props,
                  port=ports[props["inter.broker.listener.name"]]).start()
    try:
        # docker/jobstream.toml as the jobstream service mounts it, pointed at this test's brokers.
        config = tomllib.loads((DOCKER / "jobstream.toml").read_text())
        assert config["kafka"]["brokers"] == "kafka:9092", "the service reaches Kafka by its INTERNAL listener"
        suffix = uuid.uuid4().hex[:6]
        out = tmp_path / "parquet"
        lines = (DOCKER / "jobstream.toml").read_text()
        lines = (lines.replace('"mqtt://mosquitto:1883"', json.dumps(mosquitto.url))
                 .replace('"kafka:9092"', json.dumps(kafka.brokers))
                 .replace('"/var/lib/jobstream/parquet"', json.dumps(str(out)))
                 .replace('"0.0.0.0:9464"', json.dumps(f"127.0.0.1:{free_port()}")))
        for topic in ("aws-iot-job-events", "aws-iot-job-execution-events", "aws-iot-jobs-dlq"):
            lines = lines.replace(f'"{topic}"', f'"{topic}-{suffix}"')
        lines = re.sub(r'(?m)^client_id = .*$', f'client_id = "compose-{suffix}"', lines)
        path = tmp_path / "jobstream.toml"
        path.write_text(lines)
        log = tmp_path / "jobstream.log"
        proc = subprocess.Popen([jobstream_bin(), "run", "--config", path, "--stats-every-secs", "1"],
                                stdout=subprocess.PIPE, stderr=open(log, "ab"), text=True,
                                env={"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin"})
        STARTED.append(proc)
        wait_for(lambda: "subscribed" in log.read_text(errors="replace"), timeout=90, what="the bridge to subscribe")
        from test_bridge import publish
        from test_parquet_stage import assert_exactly_once, generate
        # Events of today: this broker keeps the image's 7-day retention, by record time.
        events = generate(2000, tmp_path, "--start-epoch-s", int(time.time()) - 3600)
        publish(mosquitto.port, events)

        def stage_read():
            reads = re.findall(r"parquet: read (\d+)", log.read_text(errors="replace"))
            return reads and int(reads[-1]) >= len(events)
        wait_for(stage_read, timeout=300, what="the Parquet stage to read every event")
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert f"acked {len(events)}" in stdout, stdout
        assert_exactly_once(out, events)
    finally:
        kafka.stop()
