"""Reads `TOPIC<TAB>PAYLOAD` lines (what `mosquitto_sub -F '%t\\t%p'` writes) from standard input
and produces each payload to Kafka with confluent-kafka (librdkafka ≥ 2.12).

The producer half of the shell-pipeline baseline of `jobstream bench`:

    mosquitto_sub -c -q 1 -i ID -t '$aws/events/job/+/+' -t '$aws/events/jobExecution/+/+' \
        -F '%t\t%p' | python tsv_producer.py --brokers B --job-topic J --execution-topic E

mosquitto_sub acknowledges each message as it arrives: what sits in the pipe and the producer
when the pipeline dies is lost. Ends at end of input (or SIGTERM) after flushing.
"""

import argparse
import json
import time
import signal
import sys

from confluent_kafka import Producer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--job-topic", required=True)
    parser.add_argument("--execution-topic", required=True)
    parser.add_argument("--kafka-option", action="append", default=[], help="KEY=VALUE")
    args = parser.parse_args()

    config = {"bootstrap.servers": args.brokers, "acks": "all", "enable.idempotence": True,
              "compression.type": "lz4", "linger.ms": 5}
    for option in args.kafka_option:
        key, _, value = option.partition("=")
        config[key] = value
    producer = Producer(config)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    failed = 0

    def delivered(error, _record):
        nonlocal failed
        if error is not None:
            failed += 1

    try:
        for line in sys.stdin.buffer:
            topic, _, payload = line.rstrip(b"\n").partition(b"\t")
            target = args.execution_topic if b"/jobExecution/" in topic else args.job_topic
            key = topic.rsplit(b"/", 2)[-2]
            # The same Kafka contract as jobstream (DESIGN.md): headers from the payload.
            body = json.loads(payload)
            headers = [("mqtt_topic", topic), ("event_type", body.get("eventType", "")),
                       ("operation", body.get("operation", "")), ("event_id", body.get("eventId", "")),
                       ("received_at", str(int(time.time() * 1000)))]
            while True:
                try:
                    producer.produce(target, payload, key=key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
    except (ValueError, OSError):
        pass  # standard input closed by SIGTERM
    left = producer.flush(60)
    if left or failed:
        print(f"tsv_producer: {left} records unflushed, {failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
