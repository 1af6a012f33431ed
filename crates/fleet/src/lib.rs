//! A generator of realistic AWS IoT Jobs event streams.
//!
//! Jobs roll out to many things at once. Each job emits one execution event per thing (mostly
//! `succeeded`, some `failed`, `timed_out`, `rejected`, `removed`), then ends as AWS ends it:
//! `completed` with `jobProcessDetails` counters that match the executions, or
//! `cancellation_in_progress` → remaining executions `canceled` → `canceled`, or
//! `deletion_in_progress` → remaining executions `deleted` → `deleted`. Several jobs run at
//! once, so their events interleave on the wire as they would from a real fleet.
//!
//! Ids are random v4 UUIDs; descriptions and `statusDetails` carry unicode, quotes, backslashes
//! and control characters so that escaping is exercised. The stream is a pure function of the
//! [`FleetConfig`] (seeded RNG): the same config always yields the same bytes.
//!
//! Used by the parser benchmarks, the tests, and `jobstream simulate`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What to generate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// RNG seed; equal configs give equal streams.
    pub seed: u64,
    /// Number of jobs to run to their end.
    pub jobs: usize,
    /// Things targeted by each job (one execution event each).
    pub things_per_job: usize,
    /// Jobs in progress at once (their events interleave).
    pub concurrent_jobs: usize,
    /// Topic prefix, `$aws/events/` as AWS publishes.
    pub topic_prefix: String,
    /// Epoch seconds of the first event.
    pub start_epoch_s: i64,
    /// Add an unknown top-level field to about one event in 40 (AWS adds fields over time;
    /// jobstream must keep them in `extra`).
    pub unknown_fields: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            seed: 7,
            jobs: 10,
            things_per_job: 100,
            concurrent_jobs: 4,
            topic_prefix: "$aws/events/".to_owned(),
            // 2026-11-20T00:00:00Z
            start_epoch_s: 1_795_132_800,
            unknown_fields: false,
        }
    }
}

/// The fleet's clock moves by 1–299 ms before each event: 150 ms on average.
const MEAN_STEP_MS: i64 = 150;

/// At most this many events per job besides its things' (in progress, an ending, and a
/// cancellation or deletion in progress).
pub const JOB_EVENTS_PER_JOB: usize = 3;

impl FleetConfig {
    /// A config that yields about `events` events (jobs of `things_per_job` things).
    pub fn with_events(events: usize) -> Self {
        let base = FleetConfig::default();
        let per_job = base.things_per_job + JOB_EVENTS_PER_JOB;
        FleetConfig {
            jobs: events.div_ceil(per_job).max(1),
            ..base
        }
    }

    /// The `start_epoch_s` whose run ends near `end_epoch_s` rather than after it: the clock
    /// moves about 150 ms an event, so a million events span some 42 hours, and a run started
    /// at now is dated that far into the future, which brokers refuse (Kafka 4 takes records at
    /// most an hour ahead of its clock by default). Counted for the most events the config can
    /// yield, so a run ends no later than `end_epoch_s` give or take the steps' randomness
    /// (about a minute for a million events), and earlier when things skip reporting.
    pub fn start_to_end_by(&self, end_epoch_s: i64) -> i64 {
        let most_events = self
            .jobs
            .saturating_mul(self.things_per_job.max(1) + JOB_EVENTS_PER_JOB);
        let span_ms = i64::try_from(most_events)
            .unwrap_or(i64::MAX)
            .saturating_mul(MEAN_STEP_MS);
        end_epoch_s.saturating_sub(span_ms / 1000)
    }
}

/// One MQTT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Full topic, e.g. `$aws/events/jobExecution/<jobId>/succeeded`.
    pub topic: String,
    /// JSON payload.
    pub payload: Vec<u8>,
}

impl Message {
    /// Writes the message as a capture line, `TOPIC<TAB>PAYLOAD`: the format `replay` reads and
    /// `mosquitto_sub -F '%t\t%p'` writes.
    ///
    /// # Errors
    /// The writer's.
    pub fn write_capture(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        out.write_all(self.topic.as_bytes())?;
        out.write_all(b"\t")?;
        out.write_all(&self.payload)?;
        out.write_all(b"\n")
    }
}

/// Counts of what a stream held, per family and operation (`job/completed`,
/// `jobExecution/succeeded`, …), so a run can be checked against what arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Messages per `family/operation`.
    pub by_kind: BTreeMap<String, u64>,
    /// All messages.
    pub total: u64,
    /// Payload bytes.
    pub bytes: u64,
}

impl Tally {
    /// Counts one message.
    pub fn record(&mut self, family: &str, operation: &str, payload_len: usize) {
        *self
            .by_kind
            .entry(format!("{family}/{operation}"))
            .or_default() += 1;
        self.total += 1;
        self.bytes += payload_len as u64;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    TimedOut,
    Rejected,
    Removed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    Completed,
    Canceled,
    Deleted,
}

#[derive(Debug)]
struct Job {
    id: String,
    description: &'static str,
    continuous: bool,
    things: Vec<String>,
    ending: Ending,
    /// Things that report before the job ends (all of them when it completes).
    reporting: usize,
    next_thing: usize,
    counts: [i64; 5],
    created_ms: i64,
    /// 0: executions, 1: in-progress notice, 2: remaining executions, 3: final event, 4: done.
    phase: u8,
}

/// An iterator of messages for the configured fleet.
#[derive(Debug)]
pub struct Fleet {
    config: FleetConfig,
    rng: SmallRng,
    active: Vec<Job>,
    started: usize,
    clock_ms: i64,
    tally: Tally,
}

const DESCRIPTIONS: &[&str] = &[
    "Firmware 4.2.1 rollout",
    "OTA update — café edition \"canary\" ✓",
    "Überprüfung der Sensoren (東京 / Zürich)",
    "Rotate certificates\nstep 2 of 3",
    "Config push: path C:\\fleet\\agent.conf\tv7",
    "Rollback to 4.1.9 after incident #1234 🚨",
    "Reboot gateways in zone \u{1}B",
];

const FAILURE_REASONS: &[&str] = &[
    "checksum mismatch",
    "download failed: HTTP 503",
    "insufficient storage (12 MB free)",
    "signature invalid: \"ecdsa-p256\"",
    "installer exited with code 137\nstderr: out of memory",
];

const REJECT_REASONS: &[&str] = &["battery low (12%)", "device busy: ☎ call in progress"];

impl Fleet {
    /// A fleet for `config`.
    pub fn new(config: FleetConfig) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        let clock_ms = config.start_epoch_s * 1000;
        Fleet {
            config,
            rng,
            active: Vec::new(),
            started: 0,
            clock_ms,
            tally: Tally::default(),
        }
    }

    /// What has been generated so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// All messages of the fleet, collected.
    pub fn generate(config: FleetConfig) -> Vec<Message> {
        Fleet::new(config).collect()
    }

    fn uuid(&mut self) -> String {
        let bytes: [u8; 16] = self.rng.random();
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            let b = match i {
                6 => (b & 0x0f) | 0x40,
                8 => (b & 0x3f) | 0x80,
                _ => *b,
            };
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    fn start_job(&mut self) -> Job {
        let id = self.uuid();
        let description = DESCRIPTIONS[self.rng.random_range(0..DESCRIPTIONS.len())];
        let things = (0..self.config.things_per_job.max(1))
            .map(|i| {
                let suffix = self.uuid();
                format!("sensor-{i:05}-{}", &suffix[..8])
            })
            .collect::<Vec<_>>();
        let roll: f64 = self.rng.random();
        let ending = if roll < 0.85 {
            Ending::Completed
        } else if roll < 0.95 {
            Ending::Canceled
        } else {
            Ending::Deleted
        };
        let reporting = match ending {
            Ending::Completed => things.len(),
            _ => self.rng.random_range(0..=things.len()),
        };
        self.started += 1;
        Job {
            id,
            description,
            continuous: self.rng.random_bool(0.3),
            things,
            ending,
            reporting,
            next_thing: 0,
            counts: [0; 5],
            created_ms: self.clock_ms - 3_600_000,
            phase: 0,
        }
    }

    fn next_message(&mut self, slot: usize) -> Option<Message> {
        // Events are a few to a few hundred milliseconds apart (MEAN_STEP_MS); `timestamp` is
        // in seconds.
        self.clock_ms += self.rng.random_range(1..2 * MEAN_STEP_MS);
        let now_s = self.clock_ms / 1000;
        let event_id = self.uuid();
        let extra = self.config.unknown_fields && self.rng.random_ratio(1, 40);
        let prefix = self.config.topic_prefix.clone();
        let job = &mut self.active[slot];
        let mut p = String::with_capacity(512);
        let topic;
        match job.phase {
            0 | 2 => {
                let thing = &job.things[job.next_thing];
                let (operation, status, details): (&str, &str, Vec<(&str, String)>) =
                    if job.phase == 2 {
                        match job.ending {
                            Ending::Canceled => ("canceled", "CANCELED", vec![]),
                            _ => ("deleted", "QUEUED", vec![]),
                        }
                    } else {
                        let outcome = pick_outcome(self.rng.random());
                        job.counts[outcome as usize] += 1;
                        match outcome {
                            Outcome::Succeeded => (
                                "succeeded",
                                "SUCCEEDED",
                                vec![
                                    ("firmware", "4.2.1".to_owned()),
                                    ("detail", "updated ✓ in 42 s".to_owned()),
                                ],
                            ),
                            Outcome::Failed => (
                                "failed",
                                "FAILED",
                                vec![
                                    (
                                        "reason",
                                        FAILURE_REASONS
                                            [self.rng.random_range(0..FAILURE_REASONS.len())]
                                        .to_owned(),
                                    ),
                                    ("stage", "install".to_owned()),
                                ],
                            ),
                            Outcome::TimedOut => ("timed_out", "TIMED_OUT", vec![]),
                            Outcome::Rejected => (
                                "rejected",
                                "REJECTED",
                                vec![(
                                    "reason",
                                    REJECT_REASONS[self.rng.random_range(0..REJECT_REASONS.len())]
                                        .to_owned(),
                                )],
                            ),
                            Outcome::Removed => ("removed", "REMOVED", vec![]),
                        }
                    };
                topic = format!("{prefix}jobExecution/{}/{operation}", job.id);
                p.push_str("{\"eventType\":\"JOB_EXECUTION\",\"eventId\":\"");
                p.push_str(&event_id);
                let _ = write!(p, "\",\"timestamp\":{now_s},\"operation\":\"{operation}\",\"jobId\":\"{}\",\"thingArn\":\"arn:aws:iot:us-east-1:123456789012:thing/{thing}\",\"status\":\"{status}\"", job.id);
                if !details.is_empty() || operation == "succeeded" {
                    p.push_str(",\"statusDetails\":{");
                    for (i, (k, v)) in details.iter().enumerate() {
                        if i > 0 {
                            p.push(',');
                        }
                        json_str(&mut p, k);
                        p.push(':');
                        json_str(&mut p, v);
                    }
                    p.push('}');
                }
                job.next_thing += 1;
                let limit = if job.phase == 0 {
                    job.reporting
                } else {
                    job.things.len()
                };
                if job.next_thing >= limit {
                    job.phase = if job.phase == 0 && job.ending != Ending::Completed {
                        1
                    } else {
                        3
                    };
                }
            }
            1 | 3 => {
                let (operation, status) = match (job.phase, job.ending) {
                    (1, Ending::Canceled) => {
                        ("cancellation_in_progress", "CANCELLATION_IN_PROGRESS")
                    }
                    (1, _) => ("deletion_in_progress", "DELETION_IN_PROGRESS"),
                    (_, Ending::Completed) => ("completed", "COMPLETED"),
                    (_, Ending::Canceled) => ("canceled", "CANCELED"),
                    (_, Ending::Deleted) => ("deleted", "DELETED"),
                };
                topic = format!("{prefix}job/{}/{operation}", job.id);
                p.push_str("{\"eventType\":\"JOB\",\"eventId\":\"");
                p.push_str(&event_id);
                let _ = write!(
                    p,
                    "\",\"timestamp\":{now_s},\"operation\":\"{operation}\",\"jobId\":\"{}\",\"status\":\"{status}\",\"targetSelection\":\"{}\",\"targets\":[",
                    job.id,
                    if job.continuous { "CONTINUOUS" } else { "SNAPSHOT" }
                );
                let _ = write!(
                    p,
                    "\"arn:aws:iot:us-east-1:123456789012:thinggroup/{}\"",
                    &job.id[..8]
                );
                for thing in job.things.iter().take(3) {
                    let _ = write!(p, ",\"arn:aws:iot:us-east-1:123456789012:thing/{thing}\"");
                }
                p.push_str("],\"description\":");
                json_str(&mut p, job.description);
                let _ = write!(
                    p,
                    ",\"createdAt\":{},\"lastUpdatedAt\":{}",
                    job.created_ms, self.clock_ms
                );
                if job.ending == Ending::Completed {
                    let [s, f, t, r, m] = job.counts;
                    let _ = write!(
                        p,
                        ",\"completedAt\":{},\"jobProcessDetails\":{{\"numberOfCanceledThings\":0,\"numberOfRejectedThings\":{r},\"numberOfFailedThings\":{f},\"numberOfRemovedThings\":{m},\"numberOfSucceededThings\":{s},\"numberOfTimedOutThings\":{t},\"numberOfQueuedThings\":0,\"numberOfInProgressThings\":0}}",
                        self.clock_ms
                    );
                } else {
                    p.push_str(",\"comment\":");
                    json_str(&mut p, "Stopped by operator: \"bad batch\" — see ticket ✎");
                }
                job.phase = if job.phase == 1 {
                    if job.next_thing < job.things.len() {
                        2
                    } else {
                        3
                    }
                } else {
                    4
                };
            }
            _ => return None,
        }
        if extra {
            p.push_str(",\"jobTemplateArn\":\"arn:aws:iot:us-east-1:123456789012:jobtemplate/ota\",\"x-trace\":{\"hops\":[1,2.5,true,null]}");
        }
        p.push('}');
        let family = if topic.contains("/jobExecution/") {
            "jobExecution"
        } else {
            "job"
        };
        let operation = topic.rsplit('/').next().unwrap_or_default().to_owned();
        self.tally.record(family, &operation, p.len());
        Some(Message {
            topic,
            payload: p.into_bytes(),
        })
    }
}

fn pick_outcome(roll: f64) -> Outcome {
    if roll < 0.88 {
        Outcome::Succeeded
    } else if roll < 0.93 {
        Outcome::Failed
    } else if roll < 0.96 {
        Outcome::TimedOut
    } else if roll < 0.98 {
        Outcome::Rejected
    } else {
        Outcome::Removed
    }
}

impl Iterator for Fleet {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        while self.active.len() < self.config.concurrent_jobs.max(1)
            && self.started < self.config.jobs
        {
            let job = self.start_job();
            self.active.push(job);
        }
        if self.active.is_empty() {
            return None;
        }
        let slot = self.rng.random_range(0..self.active.len());
        let message = self.next_message(slot);
        if self.active[slot].phase == 4 {
            self.active.swap_remove(slot);
        }
        message
    }
}

/// Appends `s` as a JSON string literal.
pub fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_config_gives_same_stream() {
        let a = Fleet::generate(FleetConfig::default());
        let b = Fleet::generate(FleetConfig::default());
        assert_eq!(a, b);
        assert!(a.len() > 1000);
    }

    fn timestamp_s(message: &Message) -> Option<i64> {
        let payload = std::str::from_utf8(&message.payload).ok()?;
        let rest = &payload[payload.find("\"timestamp\":")? + "\"timestamp\":".len()..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }

    #[test]
    fn a_run_started_to_end_by_a_moment_is_dated_up_to_it_not_beyond() {
        let end_s = 1_800_000_000;
        for (jobs, things_per_job) in [(1, 1), (20, 100), (200, 500)] {
            let config = FleetConfig {
                jobs,
                things_per_job,
                ..FleetConfig::default()
            };
            let start_epoch_s = config.start_to_end_by(end_s);
            let messages = Fleet::generate(FleetConfig {
                start_epoch_s,
                ..config
            });
            let stamps: Vec<i64> = messages.iter().filter_map(timestamp_s).collect();
            assert_eq!(stamps.len(), messages.len(), "every event has a timestamp");
            let last = stamps.iter().copied().max().unwrap_or_default();
            let span = end_s - start_epoch_s;
            // The steps' randomness: a few standard deviations of the sum of uniform steps.
            let slack_s = 60 + (messages.len() as f64).sqrt() as i64 / 2;
            assert!(
                last <= end_s + slack_s,
                "{jobs}×{things_per_job}: last event at {last}, {}s after the end",
                last - end_s
            );
            assert!(
                last >= end_s - span / 4 - slack_s,
                "{jobs}×{things_per_job}: the run ends well before the end ({last} vs {end_s})"
            );
        }
    }

    #[test]
    fn every_job_ends_exactly_once() {
        let messages = Fleet::generate(FleetConfig {
            jobs: 50,
            ..FleetConfig::default()
        });
        let endings = messages
            .iter()
            .filter(|m| {
                m.topic.ends_with("/completed")
                    || (m.topic.contains("/job/")
                        && (m.topic.ends_with("/canceled") || m.topic.ends_with("/deleted")))
            })
            .count();
        assert_eq!(endings, 50);
    }
}
