"""The MQTT → Kafka bridge users write first: paho-mqtt on_message → confluent-kafka produce.

A baseline for `jobstream bench`, kept as plain as the first version people write: one
connection, one thread, the message handed to the producer in the callback. By default paho
acknowledges each QoS 1 message as soon as it arrived (before Kafka has it: a crash loses what
the producer still holds); `--ack-after-kafka` acknowledges from the delivery report instead,
the guarantee jobstream gives.

    python python_bridge.py --mqtt-port 1883 --client-id b1 --brokers 127.0.0.1:9092 \
        --job-topic jobs --execution-topic executions --filter '$aws/events/job/+/+' ...

SIGTERM: stop reading, flush the producer, exit 0.
"""

import argparse
import json
import time
import signal
import sys

import paho.mqtt.client as mqtt
from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--filter", action="append", required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--job-topic", required=True)
    parser.add_argument("--execution-topic", required=True)
    parser.add_argument("--kafka-option", action="append", default=[], help="KEY=VALUE")
    parser.add_argument("--ack-after-kafka", action="store_true")
    args = parser.parse_args()

    config = {"bootstrap.servers": args.brokers, "acks": "all", "enable.idempotence": True,
              "compression.type": "lz4", "linger.ms": 5}
    for option in args.kafka_option:
        key, _, value = option.partition("=")
        config[key] = value
    producer = Producer(config)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                         clean_session=False, manual_ack=args.ack_after_kafka)

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe([(f, 1) for f in args.filter])

    def delivered(message):
        def callback(error, _record):
            if error is None and args.ack_after_kafka:
                client.ack(message.mid, message.qos)
        return callback

    def on_message(client, userdata, message):
        topic = args.execution_topic if "/jobExecution/" in message.topic else args.job_topic
        key = message.topic.rsplit("/", 2)[-2]
        # The same Kafka contract as jobstream (DESIGN.md): headers from the payload, so both
        # sides ask the broker for the same work.
        body = json.loads(message.payload)
        headers = [("mqtt_topic", message.topic), ("event_type", body.get("eventType", "")),
                   ("operation", body.get("operation", "")), ("event_id", body.get("eventId", "")),
                   ("received_at", str(int(time.time() * 1000)))]
        while True:
            try:
                producer.produce(topic, message.payload, key=key, headers=headers,
                                 on_delivery=delivered(message) if args.ack_after_kafka else None)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    client.connect(args.mqtt_host, args.mqtt_port)
    client.loop_forever()
    producer.flush(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
