"""Kafka over TLS and SASL, as MSK and Confluent Cloud run it: one Apache Kafka with a
mutual-TLS listener (`ssl.client.auth=required`), a SASL_SSL listener with SCRAM-SHA-512, and
the StandardAuthorizer with ACLs. Certificates are made here (openssl), SCRAM users and ACLs
are created with confluent-kafka's AdminClient over the broker's PLAINTEXT listener, and what
jobstream wrote is read back with confluent-kafka and DuckDB.

A refusal (bad password, untrusted certificate, missing client certificate, missing ACL) must
end the command at once with exit 77 and a message that says what to check, never a retry loop
until the connect timeout; a broker that is not there ends it with exit 69."""

import json
import subprocess
import time
import uuid

import duckdb
import pytest
from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                   ResourcePatternType, ResourceType, ScramCredentialInfo,
                                   ScramMechanism, UserScramCredentialUpsertion)

from brokers import Kafka, Mosquitto, free_port
from conftest import STARTED, jobstream_bin, wait_for
from test_bridge import Bridge, deliver_and_read_back, generate
from test_parquet_stage import Sink, Topics

EXIT_UNAVAILABLE = 69
EXIT_REFUSED = 77
ALICE = ("alice", "alice-Secret-7f3e")
BOB = ("bob", "bob-Secret-91aa")
CLIENT_PRINCIPAL = "CN=jobstream-bridge"
# Refusals must be reported well within this: the command is given it as its connect timeout,
# and a refusal that waited for it would be indistinguishable from an unreachable broker.
CONNECT_TIMEOUT = 90


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d):
    """A CA, the broker's certificate (for 127.0.0.1), a client certificate, and an unrelated
    CA that signed none of them."""
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out",
                f"{ca}.pem", "-days", "2", "-subj", f"/CN=jobstream test {ca}", cwd=d)
    (d / "broker.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("broker", "/CN=localhost"), ("client", f"/{CLIENT_PRINCIPAL}")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", subject, cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
                cwd=d)
    # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the certificate chain.
    (d / "broker-keystore.pem").write_bytes((d / "broker.key").read_bytes() + (d / "broker.pem").read_bytes())
    return d


def listener_tls(certs, client_auth):
    return {
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(certs / "broker-keystore.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(certs / "ca.pem"),
        "ssl.client.auth": client_auth,
    }


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory):
    certs = make_certificates(tmp_path_factory.mktemp("kafka-certs"))
    broker = Kafka(
        tmp_path_factory.mktemp("secure-kafka"),
        listeners={
            "SSL": listener_tls(certs, "required"),
            "SASL_SSL": {
                **listener_tls(certs, "none"),
                "sasl.enabled.mechanisms": "SCRAM-SHA-512",
                "scram-sha-512.sasl.jaas.config":
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            },
        },
        properties={
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # ANONYMOUS: the PLAINTEXT and controller listeners (the test's own admin client,
            # broker to controller). alice and the mTLS client may do anything; bob only what
            # his ACLs allow.
            "super.users": f"User:ANONYMOUS;User:alice;User:{CLIENT_PRINCIPAL}",
            "allow.everyone.if.no.acl.found": "false",
        }).start()
    admin = AdminClient({"bootstrap.servers": broker.brokers})
    upserts = [UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192),
                                            password.encode())
               for user, password in (ALICE, BOB)]
    for future in admin.alter_user_scram_credentials(upserts).values():
        future.result(timeout=30)
    # bob: everything on topics and groups named bob-*, nothing else (no cluster-wide Create).
    acls = [AclBinding(resource, "bob-", ResourcePatternType.PREFIXED, "User:bob", "*",
                       AclOperation.ALL, AclPermissionType.ALLOW)
            for resource in (ResourceType.TOPIC, ResourceType.GROUP)]
    for future in admin.create_acls(acls).values():
        future.result(timeout=30)
    yield broker, certs
    broker.stop()


def mtls_options(certs, **changes):
    options = {
        "security.protocol": "SSL",
        "ssl.ca.location": str(certs / "ca.pem"),
        "ssl.certificate.location": str(certs / "client.pem"),
        "ssl.key.location": str(certs / "client.key"),
    }
    options.update(changes)
    return {k: v for k, v in options.items() if v is not None}


def scram_options(certs):
    return {"security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
            "ssl.ca.location": str(certs / "ca.pem")}


def credentials(user):
    return {"JOBSTREAM_KAFKA_USERNAME": user[0], "JOBSTREAM_KAFKA_PASSWORD": user[1]}


def bridge_then_parquet(tmp_path, secure_kafka, listener, options, env, topic_prefix=""):
    """MQTT → Kafka with the bridge, then Kafka → Parquet with the Parquet stage, both through
    `listener`; checks every event arrived once in Kafka (read over PLAINTEXT by
    confluent-kafka) and once in Parquet (DuckDB)."""
    broker, _ = secure_kafka
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    try:
        events = generate(500, tmp_path)
        bridge = Bridge(tmp_path, mosquitto, broker, brokers=broker.bootstrap(listener),
                        kafka_options=options, env=env, topic_prefix=topic_prefix).start()
        # Read back over PLAINTEXT (broker.brokers): what the secured bridge wrote.
        deliver_and_read_back(bridge, mosquitto, broker, events)
    finally:
        mosquitto.stop()

    topics = Topics.__new__(Topics)
    topics.suffix = bridge.id
    topics.jobs, topics.executions, topics.dlq = (bridge.topics[k] for k in ("jobs", "executions", "dlq"))
    out = tmp_path / "parquet"
    sink = Sink(tmp_path, broker, topics, out, f"{topic_prefix}parquet", brokers=broker.bootstrap(listener),
                kafka_options=options, env=env).start()
    wait_for(lambda: sink.caught_up(), timeout=120, what="the Parquet stage to read everything")
    sink.stop()
    ids = duckdb.sql(f"""
        SELECT event_id FROM read_parquet('{out}/job_events/**/*.parquet', hive_partitioning = true)
        UNION ALL
        SELECT event_id FROM read_parquet('{out}/job_execution_events/**/*.parquet', hive_partitioning = true)
    """).fetchall()
    assert sorted(i for (i,) in ids) == sorted(json.loads(p)["eventId"] for _, p in events)
    for secret in (ALICE[1], BOB[1]):
        assert secret not in bridge.log.read_text() and secret not in sink.text()


def test_bridge_and_parquet_stage_work_over_mutual_tls(tmp_path, secure_kafka):
    _, certs = secure_kafka
    bridge_then_parquet(tmp_path, secure_kafka, "SSL", mtls_options(certs), env={})


def test_bridge_and_parquet_stage_work_over_sasl_scram_with_credentials_from_the_environment(
        tmp_path, secure_kafka):
    _, certs = secure_kafka
    bridge_then_parquet(tmp_path, secure_kafka, "SASL_SSL", scram_options(certs), env=credentials(ALICE))


def test_a_principal_limited_by_acls_works_on_the_topics_it_is_granted(tmp_path, secure_kafka):
    _, certs = secure_kafka
    bridge_then_parquet(tmp_path, secure_kafka, "SASL_SSL", scram_options(certs), env=credentials(BOB),
                        topic_prefix="bob-")


def attempt(tmp_path, broker_address, options, env, role="bridge", connect_timeout=CONNECT_TIMEOUT):
    """Runs the bridge (with a mosquitto) or the Parquet stage against Kafka and returns
    (exit code, stderr, seconds taken). It must end by itself: a refusal is final."""
    suffix = uuid.uuid4().hex[:8]
    config = tmp_path / f"{role}-{suffix}.toml"
    mosquitto = Mosquitto(tmp_path / f"mosquitto-{suffix}").start() if role == "bridge" else None
    source = (f'[mqtt]\nurl = "{mosquitto.url}"\n' if mosquitto else
              f'[parquet]\ndir = "{tmp_path / suffix}"\ngroup_id = "g-{suffix}"\n')
    config.write_text(source + f"""
[kafka]
brokers = "{broker_address}"
job_topic = "jobs-{suffix}"
execution_topic = "executions-{suffix}"
dlq_topic = "dlq-{suffix}"
connect_timeout_secs = {connect_timeout}

[kafka.options]
""" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in options.items()))
    began = time.monotonic()
    try:
        proc = subprocess.Popen([jobstream_bin(), "run", "--config", str(config)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={"JOBSTREAM_LOG": "info", "PATH": "/usr/bin:/bin", **env})
        STARTED.append(proc)
        _, err = proc.communicate(timeout=connect_timeout + 60)
    finally:
        if mosquitto:
            mosquitto.stop()
    return proc.returncode, err, time.monotonic() - began


REFUSALS = {
    "wrong-password": ("SASL_SSL", lambda c: scram_options(c), {**credentials((ALICE[0], "not-the-password"))},
                       "SASL authentication failed"),
    "untrusted-ca": ("SSL", lambda c: mtls_options(c, **{"ssl.ca.location": str(c / "other-ca.pem")}), {},
                     "not signed by a trusted CA"),
    "no-client-certificate": ("SSL", lambda c: mtls_options(c, **{"ssl.certificate.location": None,
                                                                  "ssl.key.location": None}), {},
                              "requires a client certificate"),
    # The advice differs by role: the bridge first fails creating its topics, the Parquet stage
    # first fails joining its group; either way the message names what to grant.
    "not-granted": ("SASL_SSL", lambda c: scram_options(c), {**credentials(BOB)},
                    {"bridge": "grant this principal CREATE", "parquet": "needs Read on group"}),
}


@pytest.mark.parametrize("role", ["bridge", "parquet"])
@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_client_stops_at_once_with_exit_77_and_says_what_to_check(tmp_path, secure_kafka, case, role):
    broker, certs = secure_kafka
    listener, options, env, message = REFUSALS[case]
    code, err, took = attempt(tmp_path, broker.bootstrap(listener), options(certs), dict(env), role)
    assert code == EXIT_REFUSED, f"exit {code} after {took:.0f} s:\n{err[-3000:]}"
    if isinstance(message, dict):
        message = message[role]
    assert message in err, err[-3000:]
    assert took < CONNECT_TIMEOUT / 2, f"a refusal took {took:.0f} s to report"
    for secret in (ALICE[1], BOB[1], "not-the-password"):
        assert secret not in err


@pytest.mark.parametrize("role", ["bridge", "parquet"])
def test_a_broker_that_is_not_there_ends_with_exit_69_after_the_connect_timeout(tmp_path, role):
    nobody = f"127.0.0.1:{free_port()}"
    code, err, _ = attempt(tmp_path, nobody, {}, {}, role, connect_timeout=3)
    assert code == EXIT_UNAVAILABLE, err[-3000:]
    assert f"no broker at {nobody} answered within 3s" in err, err[-3000:]
