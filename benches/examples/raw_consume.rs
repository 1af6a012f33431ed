//! The baseline of the Kafka → Parquet benchmark: a raw librdkafka consumer (the same rdkafka
//! build jobstream links) that joins a fresh group, reads the topics to the given count and
//! throws every record away. `benches/kafka_to_parquet.py` runs it beside `jobstream run
//! --stop-at-end` on the same topics.
//!
//! Usage: raw_consume BROKERS GROUP COUNT TOPIC...

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [brokers, group, count, topics @ ..] = args.as_slice() else {
        return Err("usage: raw_consume BROKERS GROUP COUNT TOPIC...".into());
    };
    let count: u64 = count.parse()?;
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // The same fetch-ahead setting as jobstream's consumers (crates/sink/src/kafka/config.rs),
        // so that neither stalls for librdkafka's default 1 s backoff.
        .set("fetch.queue.backoff.ms", "50")
        .create()?;
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut first = None;
    while records < count {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("only {records} of {count} records after 600 s").into());
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                first.get_or_insert_with(Instant::now);
                records += 1;
                bytes += message.payload_len() as u64;
            }
            Some(Err(e)) => eprintln!("raw_consume: {e}"),
            None => {}
        }
    }
    let total = started.elapsed().as_secs_f64();
    let reading = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!("records {records} bytes {bytes} total_s {total:.3} reading_s {reading:.3}");
    Ok(())
}
