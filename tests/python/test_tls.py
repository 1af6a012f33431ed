"""TLS and mutual TLS to mosquitto, with certificates this test makes (openssl), and client
keys in both forms AWS hands out: PKCS#1 (`RSA PRIVATE KEY`) and PKCS#8."""

import json
import socket
import ssl
import subprocess
import threading

import pytest

from brokers import Mosquitto
from conftest import run, wait_for
from relay import close_listener, relay_both_ways
from test_bridge import Bridge, deliver_and_read_back, generate


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=jobstream test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    # Any extension makes a v3 certificate; rustls (like AWS) refuses v1 certificates.
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        extra = ["-extfile", f"{name}.ext"]
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", *extra, cwd=d)
    # OpenSSL 3 writes PKCS#8 ("PRIVATE KEY"); -traditional gives PKCS#1 ("RSA PRIVATE KEY").
    openssl("rsa", "-in", "client.key", "-out", "client-pkcs1.key", "-traditional", cwd=d)
    assert b"BEGIN PRIVATE KEY" in (d / "client.key").read_bytes()
    assert b"BEGIN RSA PRIVATE KEY" in (d / "client-pkcs1.key").read_bytes()
    return d


def start_mosquitto(tmp_path, certs, require_certificate):
    return Mosquitto(tmp_path / "mosq-tls", tls={
        "ca": certs / "ca.pem", "cert": certs / "server.pem", "key": certs / "server.key",
        "require_certificate": require_certificate}).start()


def deliver_through(tmp_path, mosquitto, kafka, **tls):
    events = generate(200, tmp_path)
    bridge = Bridge(tmp_path, mosquitto, kafka, url=f"mqtts://127.0.0.1:{mosquitto.tls_port}",
                    **{k: str(v) for k, v in tls.items()}).start()
    deliver_and_read_back(bridge, mosquitto, kafka, events)


def test_tls_connection_verifies_the_server_with_the_given_ca(tmp_path, certs, kafka):
    mosquitto = start_mosquitto(tmp_path, certs, require_certificate=False)
    try:
        deliver_through(tmp_path, mosquitto, kafka, ca=certs / "ca.pem")
    finally:
        mosquitto.stop()


@pytest.mark.parametrize("key", ["client.key", "client-pkcs1.key"])
def test_mutual_tls_works_with_pkcs8_and_pkcs1_keys(tmp_path, certs, kafka, key):
    mosquitto = start_mosquitto(tmp_path, certs, require_certificate=True)
    try:
        deliver_through(tmp_path, mosquitto, kafka, ca=certs / "ca.pem", cert=certs / "client.pem",
                        key=certs / key)
    finally:
        mosquitto.stop()


def test_mutual_tls_without_a_client_certificate_fails_clearly(tmp_path, certs, kafka):
    mosquitto = start_mosquitto(tmp_path, certs, require_certificate=True)
    try:
        result = run("run", "--mqtt", f"mqtts://127.0.0.1:{mosquitto.tls_port}", "--kafka", kafka.brokers,
                     "--mqtt-ca", certs / "ca.pem", "--connect-timeout-secs", "3", check=False, timeout=60)
        assert result.returncode == 69, result.stderr
        assert f"127.0.0.1:{mosquitto.tls_port}" in result.stderr
        assert "panicked" not in result.stderr
    finally:
        mosquitto.stop()


def test_simulate_against_a_server_its_ca_did_not_sign_exits_78_naming_tls(tmp_path, certs):
    # A CA of its own: the handshake fails on the operator's setting, not on the network, so the
    # exit is the configuration one (78), decided by the error's type (PublishError::Connect
    # with a TLS source), not by its text.
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem",
            "-days", "2", "-subj", "/CN=some other CA", cwd=tmp_path)
    mosquitto = start_mosquitto(tmp_path, certs, require_certificate=False)
    try:
        url = f"mqtts://127.0.0.1:{mosquitto.tls_port}"
        wrong = run("simulate", "--mqtt", url, "--mqtt-ca", tmp_path / "other.pem", "--events", 10,
                    "--connect-timeout-secs", "5", "--quiet", check=False, timeout=60)
        assert wrong.returncode == 78, wrong.stderr
        assert "TLS" in wrong.stderr and f"127.0.0.1:{mosquitto.tls_port}" in wrong.stderr
        assert "panicked" not in wrong.stderr
        right = run("simulate", "--mqtt", url, "--mqtt-ca", certs / "ca.pem", "--events", 10,
                    "--connect-timeout-secs", "5", "--quiet", "--report", "-", timeout=60)
        assert json.loads(right.stdout)["events"] >= 10
    finally:
        mosquitto.stop()


class AlpnGate:
    """A TLS endpoint that behaves like AWS IoT Core's port 443: it takes MQTT only from a
    client that offers ALPN `x-amzn-mqtt-ca` and presents a certificate its CA signed, and relays
    such a connection to mosquitto's plain listener. A client that offers no ALPN protocol gets
    the handshake (AWS would serve it HTTPS) and is then closed before any MQTT answer."""

    PROTOCOL = "x-amzn-mqtt-ca"

    def __init__(self, certs, upstream_port, port=443):
        self.upstream_port = upstream_port
        self.offered = []  # the protocol each client got, None where it offered none
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certs / "server.pem", certs / "server.key")
        context.load_verify_locations(certs / "ca.pem")
        context.verify_mode = ssl.CERT_REQUIRED
        context.set_alpn_protocols([self.PROTOCOL])
        self.context = context
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", port))
        except OSError as error:
            pytest.fail(f"the ALPN gate needs 127.0.0.1:{port} (AWS's port, where the preset offers "
                        f"ALPN by itself): {error}")
        self.listener.listen(16)
        self.port = port
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()
            return
        chosen = client.selected_alpn_protocol()
        self.offered.append(chosen)
        if chosen != self.PROTOCOL:
            client.close()
            return
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        relay_both_ways(client, upstream)

    def close(self):
        self.closed = True
        close_listener(self.listener)


def test_the_aws_preset_on_port_443_offers_alpn_and_delivers_through_an_alpn_gate_with_mutual_tls(
        tmp_path, certs, kafka, mosquitto):
    gate = AlpnGate(certs, mosquitto.port)
    try:
        events = generate(200, tmp_path)
        # The README's AWS preset: port 443, a CA, a device certificate and key, no ALPN flag.
        bridge = Bridge(tmp_path, mosquitto, kafka, url="mqtts://127.0.0.1:443",
                        ca=str(certs / "ca.pem"), cert=str(certs / "client.pem"),
                        key=str(certs / "client-pkcs1.key")).start()
        deliver_and_read_back(bridge, mosquitto, kafka, events)
        assert gate.offered and set(gate.offered) == {AlpnGate.PROTOCOL}, gate.offered
    finally:
        gate.close()


def test_without_alpn_on_port_443_the_bridge_fails_naming_the_missing_protocol(
        tmp_path, certs, kafka, mosquitto):
    gate = AlpnGate(certs, mosquitto.port)
    try:
        result = run("run", "--mqtt", "mqtts://127.0.0.1:443", "--kafka", kafka.brokers,
                     "--mqtt-ca", certs / "ca.pem", "--mqtt-cert", certs / "client.pem",
                     "--mqtt-key", certs / "client.key", "--mqtt-alpn", "none",
                     "--connect-timeout-secs", "4", check=False, timeout=90)
        assert result.returncode == 69, result.stderr
        assert "ALPN x-amzn-mqtt-ca" in result.stderr, result.stderr
        assert "127.0.0.1:443" in result.stderr
        # The handshake itself went through: what was missing was the protocol, not the trust.
        assert gate.offered and set(gate.offered) == {None}, gate.offered
    finally:
        gate.close()
