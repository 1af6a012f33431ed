"""The scripts that install and start the real components the other tests stand on."""

import base64
import uuid

from confluent_kafka.admin import AdminClient

from brokers import Kafka


def test_apache_kafka_formats_and_starts_with_a_cluster_id_that_starts_with_a_dash(tmp_path):
    # One random base64url id in 64 starts with "-": kafka-storage read it as a flag and CI went red.
    cluster_id = "-" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]
    broker = Kafka(tmp_path / "kafka", cluster_id=cluster_id).start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.brokers})
        described = admin.describe_cluster(request_timeout=30).result(timeout=60)
        assert described.cluster_id == cluster_id
    finally:
        broker.stop()
