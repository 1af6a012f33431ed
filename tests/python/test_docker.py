"""docker/ checked statically (these machines have no Docker engine): the compose file parses
and hangs together, every file it and the Dockerfile reference exists, the configuration it
mounts is one jobstream loads, and the commands it runs are ones jobstream accepts."""

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, run

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
