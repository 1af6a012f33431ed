//! `jobstream report` on a generated fleet whose truth is known: executions dropped on purpose,
//! duplicate copies in a second file, a retried execution, a job whose ending never arrived.
//! An oracle reads the capture lines with serde_json and derives every number on its own.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use jobstream_fleet::{Fleet, FleetConfig};
use serde_json::Value;

use crate::support::jobstream_bin;

const OUTCOMES: [&str; 7] = [
    "succeeded",
    "failed",
    "rejected",
    "timed_out",
    "canceled",
    "removed",
    "deleted",
];
const COUNTERS: [&str; 6] = [
    "numberOfSucceededThings",
    "numberOfFailedThings",
    "numberOfRejectedThings",
    "numberOfTimedOutThings",
    "numberOfCanceledThings",
    "numberOfRemovedThings",
];
/// 2026-11-21T00:00:00Z in ms: the fleet starts 90 s before, so events span two partitions.
const MIDNIGHT_MS: i64 = 1_795_219_200_000;

fn run(args: &[&str]) -> Output {
    Command::new(jobstream_bin())
        .args(args)
        .output()
        .expect("jobstream runs")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf8 path")
}

/// One capture line, parsed.
#[derive(Debug, Clone)]
struct Line {
    topic: String,
    payload: Value,
}

impl Line {
    fn text(&self) -> String {
        format!("{}\t{}\n", self.topic, self.payload)
    }
    fn is_execution(&self) -> bool {
        self.payload["eventType"] == "JOB_EXECUTION"
    }
    fn job(&self) -> &str {
        self.payload["jobId"].as_str().expect("jobId")
    }
    fn operation(&self) -> &str {
        self.payload["operation"].as_str().expect("operation")
    }
}

/// The dataset on disk and what was done to it.
struct Dataset {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// Every line that reached Parquet, duplicates included.
    delivered: Vec<Line>,
    /// Completed jobs whose executions were dropped, and how many.
    dropped: BTreeMap<String, u64>,
    /// A completed job whose `completed` event was dropped.
    unended: String,
    /// The job with a retried (failed, then succeeded) execution.
    retried: String,
}

fn write_capture(path: &Path, lines: &[Line]) {
    let text: String = lines.iter().map(Line::text).collect();
    std::fs::write(path, text).expect("write capture");
}

fn replay(capture: &Path, root: &Path) {
    let output = run(&[
        "replay",
        "--input",
        path_str(capture),
        "--parquet",
        path_str(root),
        "--quiet",
    ]);
    assert!(output.status.success(), "{output:?}");
}

impl Dataset {
    fn build() -> Dataset {
        let dir = tempfile::tempdir().expect("tempdir");
        let fleet = Fleet::generate(FleetConfig {
            seed: 11,
            jobs: 24,
            things_per_job: 40,
            concurrent_jobs: 4,
            start_epoch_s: MIDNIGHT_MS / 1000 - 90,
            ..FleetConfig::default()
        });
        let mut lines: Vec<Line> = fleet
            .iter()
            .map(|m| {
                let payload: String = String::from_utf8(m.payload.clone()).expect("utf8");
                // Things recur across jobs in a real fleet: drop the generator's per-job
                // suffix, so `sensor-00007` is the same device in every job.
                let mut payload: Value = serde_json::from_str(&payload).expect("json");
                if let Some(arn) = payload["thingArn"].as_str() {
                    let trimmed = arn[..arn.len() - 9].to_owned();
                    payload["thingArn"] = Value::String(trimmed);
                }
                Line {
                    topic: m.topic.clone(),
                    payload,
                }
            })
            .collect();

        let completed: Vec<String> = lines
            .iter()
            .filter(|l| !l.is_execution() && l.operation() == "completed")
            .map(|l| l.job().to_owned())
            .collect();
        assert!(completed.len() >= 8, "the seed completes enough jobs");
        let canceled: Option<String> = lines
            .iter()
            .find(|l| !l.is_execution() && l.operation() == "canceled")
            .map(|l| l.job().to_owned());

        // Lost upstream: 1, 2 and 5 executions of three completed jobs (some of each outcome
        // the job has), and one of a canceled job (no counters, so nothing to flag).
        let mut dropped = BTreeMap::new();
        for (job, count) in completed.iter().take(3).zip([1u64, 2, 5]) {
            dropped.insert(job.clone(), count);
        }
        let mut remaining: HashMap<String, u64> = dropped.clone().into_iter().collect();
        if let Some(job) = &canceled {
            remaining.insert(job.clone(), 1);
        }
        // Drop from the end of each job's executions, so failures are as likely as successes.
        let mut keep = vec![true; lines.len()];
        for (i, line) in lines.iter().enumerate().rev() {
            if line.is_execution() {
                if let Some(n) = remaining.get_mut(line.job()).filter(|n| **n > 0) {
                    *n -= 1;
                    keep[i] = false;
                }
            }
        }
        // A completed job whose ending never arrived: an open rollout.
        let unended = completed[3].clone();
        for (i, line) in lines.iter().enumerate() {
            if line.job() == unended && line.operation() == "completed" {
                keep[i] = false;
            }
        }
        let mut iter = keep.iter();
        lines.retain(|_| *iter.next().expect("same length"));

        // A retry: thing failed first, then succeeded. AWS counts it once, as succeeded.
        let retried = completed[4].clone();
        let success = lines
            .iter()
            .find(|l| l.is_execution() && l.job() == retried && l.operation() == "succeeded")
            .expect("a success to retry")
            .clone();
        let mut failed = success.clone();
        failed.topic = success.topic.replace("/succeeded", "/failed");
        failed.payload["operation"] = "failed".into();
        failed.payload["status"] = "FAILED".into();
        failed.payload["eventId"] = "00000000-0000-4000-8000-000000000001".into();
        failed.payload["timestamp"] =
            (success.payload["timestamp"].as_i64().expect("timestamp") - 5).into();
        failed.payload["statusDetails"] = serde_json::json!({"reason": "flaky | link\nretrying"});
        // Delivered last, after the job's `completed` event: AWS does not promise order.
        lines.push(failed);

        let root = dir.path().join("out");
        let first = dir.path().join("capture.tsv");
        write_capture(&first, &lines);
        replay(&first, &root);
        // At-least-once: a second file repeats every 7th event (job events among them).
        let copies: Vec<Line> = lines.iter().step_by(7).cloned().collect();
        let second = dir.path().join("redelivered.tsv");
        write_capture(&second, &copies);
        replay(&second, &root);

        let mut delivered = lines;
        delivered.extend(copies);
        Dataset {
            _dir: dir,
            root,
            delivered,
            dropped,
            unended,
            retried,
        }
    }

    fn report(&self, extra: &[&str]) -> Output {
        let mut args = vec!["report", "--parquet", path_str(&self.root)];
        args.extend_from_slice(extra);
        run(&args)
    }

    fn report_json(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--format", "json"];
        args.extend_from_slice(extra);
        let output = self.report(&args);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).expect("report JSON")
    }
}

/// Compressed bytes, over every file, of the columns a report has no use for.
fn unneeded_column_bytes(root: &Path) -> u64 {
    const UNNEEDED: [&str; 9] = [
        "event_type",
        "status",
        "thing_arn",
        "targets",
        "description",
        "comment",
        "extra",
        "mqtt_topic",
        "received_at",
    ];
    let mut bytes = 0;
    for path in crate::support::parquet_files(root) {
        let file = std::fs::File::open(&path).expect("open");
        let reader = parquet::file::reader::SerializedFileReader::new(file).expect("parquet");
        let metadata = parquet::file::reader::FileReader::metadata(&reader);
        for rg in metadata.row_groups() {
            for column in rg.columns() {
                let root_name = &column.column_path().parts()[0];
                if UNNEEDED.contains(&root_name.as_str()) {
                    bytes += column.compressed_size() as u64;
                }
            }
        }
    }
    bytes
}

fn iso(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let rest = ms.rem_euclid(86_400_000);
    format!(
        "{}T{:02}:{:02}:{:02}.{:03}Z",
        jobstream_sink::time::date_string(days),
        rest / 3_600_000,
        rest / 60_000 % 60,
        rest / 1000 % 60,
        rest % 1000
    )
}

/// What the report must say about each job, derived from the delivered lines alone.
fn oracle(lines: &[Line], since_ms: Option<i64>) -> BTreeMap<String, Value> {
    #[derive(Default)]
    struct Job {
        selection: Option<String>,
        created: Option<i64>,
        ending: Option<(i64, String, i64, Value)>,
        progress: Option<(i64, String)>,
        times: Vec<i64>,
        outcomes: [u64; 7],
        reasons: BTreeMap<String, u64>,
        latest: HashMap<String, (i64, usize)>,
    }
    let mut seen = HashSet::new();
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    for line in lines {
        let p = &line.payload;
        let t = p["timestamp"].as_i64().expect("timestamp") * 1000;
        if since_ms.is_some_and(|s| t < s) {
            continue;
        }
        if !seen.insert(p["eventId"].as_str().expect("eventId").to_owned()) {
            continue;
        }
        let job = jobs.entry(line.job().to_owned()).or_default();
        job.times.push(t);
        let op = line.operation().to_owned();
        if line.is_execution() {
            let o = OUTCOMES.iter().position(|x| *x == op).expect("outcome");
            job.outcomes[o] += 1;
            if (1..=3).contains(&o) {
                if let Some(reason) = p["statusDetails"]["reason"].as_str() {
                    *job.reasons.entry(reason.to_owned()).or_default() += 1;
                }
            }
            let thing = p["thingArn"].as_str().expect("arn").to_owned();
            let latest = job.latest.entry(thing).or_insert((t, o));
            if (t, o) > *latest {
                *latest = (t, o);
            }
        } else {
            if let Some(s) = p["targetSelection"].as_str() {
                job.selection = Some(s.to_owned());
            }
            if let Some(c) = p["createdAt"].as_i64() {
                job.created = Some(c);
            }
            if ["completed", "canceled", "deleted"].contains(&op.as_str()) {
                let ended = p["completedAt"]
                    .as_i64()
                    .or(p["lastUpdatedAt"].as_i64())
                    .unwrap_or(t);
                job.ending = Some((t, op, ended, p["jobProcessDetails"].clone()));
            } else {
                job.progress = Some((t, op));
            }
        }
    }
    jobs.into_iter()
        .map(|(id, job)| {
            let mut things = [0u64; 7];
            for (_, o) in job.latest.values() {
                things[*o] += 1;
            }
            let state = match (&job.ending, &job.progress) {
                (Some((_, op, _, _)), _) => op.clone(),
                (None, Some((_, op))) => op.clone(),
                _ => "in_progress".to_owned(),
            };
            let counters = job
                .ending
                .as_ref()
                .map(|(_, _, _, details)| details.clone())
                .filter(|d| d.is_object());
            let reconciliation = match &counters {
                None => "no_counters".to_owned(),
                Some(_) if since_ms.is_some_and(|s| job.created.is_none_or(|c| c < s)) => {
                    "outside_window".to_owned()
                }
                Some(details) => {
                    let differs = COUNTERS.iter().enumerate().any(|(o, key)| {
                        details[key].as_u64().is_some_and(|aws| aws != things[o])
                    });
                    if differs { "mismatch" } else { "ok" }.to_owned()
                }
            };
            let decided: u64 = job.outcomes[..4].iter().sum();
            let mut reasons: Vec<(String, u64)> = job.reasons.into_iter().collect();
            reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            reasons.truncate(3);
            let ended = job.ending.as_ref().map(|e| e.2);
            let expected = serde_json::json!({
                "target_selection": job.selection,
                "state": state,
                "created_at": job.created.map(iso),
                "ended_at": ended.map(iso),
                "duration_ms": ended.zip(job.created).map(|(e, c)| e - c),
                "first_event_at": job.times.iter().min().copied().map(iso),
                "last_event_at": job.times.iter().max().copied().map(iso),
                "executions": OUTCOMES.iter().zip(job.outcomes).map(|(o, n)| (o.to_string(), Value::from(n))).collect::<serde_json::Map<_, _>>(),
                "things_by_latest_outcome": OUTCOMES.iter().zip(things).map(|(o, n)| (o.to_string(), Value::from(n))).collect::<serde_json::Map<_, _>>(),
                "success_rate": (decided > 0).then(|| job.outcomes[0] as f64 / decided as f64),
                "failure_reasons": reasons.iter().map(|(r, n)| serde_json::json!({"reason": r, "count": n})).collect::<Vec<_>>(),
                "reconciliation": reconciliation,
            });
            (id, expected)
        })
        .collect()
}

/// The report's jobs, reshaped like the oracle's.
fn reported(report: &Value) -> BTreeMap<String, Value> {
    report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|job| {
            let r = &job["reconciliation"];
            let value = serde_json::json!({
                "target_selection": job["target_selection"],
                "state": job["state"],
                "created_at": job["created_at"],
                "ended_at": job["ended_at"],
                "duration_ms": job["duration_ms"],
                "first_event_at": job["first_event_at"],
                "last_event_at": job["last_event_at"],
                "executions": job["executions"],
                "things_by_latest_outcome": r["things_by_latest_outcome"],
                "success_rate": job["success_rate"],
                "failure_reasons": job["failure_reasons"],
                "reconciliation": r["status"],
            });
            (job["job_id"].as_str().expect("job_id").to_owned(), value)
        })
        .collect()
}

fn assert_same(got: &BTreeMap<String, Value>, want: &BTreeMap<String, Value>) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the same jobs"
    );
    for (job, want) in want {
        let (mut got, mut want) = (got[job].clone(), want.clone());
        // serde_json parses floats to within an ulp, not exactly: compare rates apart.
        let (a, b) = (got["success_rate"].take(), want["success_rate"].take());
        match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => assert!((a - b).abs() < 1e-12, "job {job}: rate {a} vs {b}"),
            _ => assert_eq!(a, b, "job {job}: rate"),
        }
        assert_eq!(got, want, "job {job}");
    }
}

#[test]
fn report_gives_exact_counts_durations_and_flags_every_job_that_lost_executions() {
    let data = Dataset::build();
    let report = data.report_json(&[]);
    let want = oracle(&data.delivered, None);
    assert_same(&reported(&report), &want);

    // The flags are exactly the jobs whose executions were dropped, with the loss counted.
    let flagged: BTreeMap<String, u64> = report["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter(|j| j["reconciliation"]["status"] == "mismatch")
        .map(|j| {
            let missing: i64 = j["reconciliation"]["differences"]
                .as_array()
                .expect("differences")
                .iter()
                .map(|d| d["aws"].as_i64().expect("aws") - d["seen"].as_i64().expect("seen"))
                .sum();
            (j["job_id"].as_str().expect("id").to_owned(), missing as u64)
        })
        .collect();
    assert_eq!(flagged, data.dropped);
    let summary = &report["summary"];
    assert_eq!(summary["mismatched_jobs"], data.dropped.len());
    assert_eq!(summary["missing_executions"], 8);

    // The retried thing counts once, as succeeded: the job reconciles although it has one
    // more failed event than AWS's failed counter.
    let retried = &want[&data.retried];
    assert_eq!(retried["reconciliation"], "ok");
    assert_eq!(
        retried["executions"]["failed"].as_u64().expect("n"),
        retried["things_by_latest_outcome"]["failed"]
            .as_u64()
            .expect("n")
            + 1
    );
    assert_eq!(want[&data.unended]["state"], "in_progress");
    assert_eq!(want[&data.unended]["reconciliation"], "no_counters");

    // Every copy of a redelivered event was counted once.
    let unique: HashSet<&str> = data
        .delivered
        .iter()
        .map(|l| l.payload["eventId"].as_str().expect("id"))
        .collect();
    assert_eq!(
        summary["duplicates_ignored"].as_u64(),
        Some((data.delivered.len() - unique.len()) as u64)
    );
    assert!(summary["duplicates_ignored"].as_u64() > Some(100));
    assert_eq!(
        summary["job_events"].as_u64().expect("n")
            + summary["execution_events"].as_u64().expect("n"),
        unique.len() as u64
    );
}

#[test]
fn report_reads_only_the_partitions_and_columns_it_needs() {
    let data = Dataset::build();
    let full = data.report_json(&[]);
    let scan = &full["scan"];
    assert_eq!(scan["partitions_read"], 4, "two dates × two tables: {scan}");
    assert!(scan["columns_read"].as_u64() < scan["columns_in_files"].as_u64());
    let (read, total) = (
        scan["bytes_read"].as_u64().expect("n"),
        scan["bytes_in_files"].as_u64().expect("n"),
    );
    // Projection: the column chunks the report does not need were never fetched.
    let unneeded = unneeded_column_bytes(&data.root);
    assert!(unneeded > total / 10, "{unneeded} of {total}");
    assert!(
        read <= total - unneeded,
        "fetched {read} bytes of {total}, of which {unneeded} are in columns not needed"
    );

    // A file that is not Parquet in the first day: a report on the second day never opens it.
    let first_day = data.root.join("job_execution_events/date=2026-11-20");
    assert!(first_day.is_dir());
    std::fs::write(first_day.join("zz-not-parquet.parquet"), b"garbage").expect("write");
    let since = "2026-11-21";
    let pruned = data.report_json(&["--since", since]);
    assert_eq!(pruned["scan"]["partitions_skipped"], 2);
    assert_eq!(pruned["scan"]["partitions_read"], 2);
    assert_same(
        &reported(&pruned),
        &oracle(&data.delivered, Some(MIDNIGHT_MS)),
    );
    // Jobs created before the window are not judged on the executions the window cut off.
    assert!(reported(&pruned)
        .values()
        .any(|j| j["reconciliation"] == "outside_window"));

    let unpruned = data.report(&[]);
    assert_eq!(unpruned.status.code(), Some(74), "{unpruned:?}");
    let stderr = String::from_utf8_lossy(&unpruned.stderr);
    assert!(stderr.contains("zz-not-parquet.parquet"), "{stderr}");

    // Within a partition, row groups outside the window are skipped by their statistics.
    let late = data.report_json(&["--since", "2026-11-21T23:00:00Z"]);
    assert_eq!(late["jobs"].as_array().map(Vec::len), Some(0));
    assert!(
        late["scan"]["row_groups_skipped"].as_u64() >= Some(2),
        "{}",
        late["scan"]
    );
    assert_eq!(late["scan"]["rows_read"], 0);
}

#[test]
fn report_filters_by_job_and_lists_mismatches_only_when_asked() {
    let data = Dataset::build();
    let want = oracle(&data.delivered, None);
    let (job, _) = data.dropped.iter().next().expect("a dropped job");
    let one = data.report_json(&["--job", job]);
    let got = reported(&one);
    assert_eq!(got.len(), 1);
    assert_eq!(got[job], want[job]);

    let flagged = data.report_json(&["--mismatched-only"]);
    let ids: BTreeSet<String> = reported(&flagged).into_keys().collect();
    assert_eq!(ids, data.dropped.keys().cloned().collect());

    let failing = data.report(&["--fail-on-mismatch", "--quiet"]);
    assert_eq!(failing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&failing.stderr);
    assert!(stderr.contains("3 jobs disagree"), "{stderr}");
    let clean = data.report(&["--fail-on-mismatch", "--job", &data.retried]);
    assert!(clean.status.success(), "{clean:?}");
}

#[test]
fn report_writes_csv_markdown_and_a_table_with_the_same_rows() {
    let data = Dataset::build();
    let want = oracle(&data.delivered, None);
    let mismatched: BTreeSet<&String> = data.dropped.keys().collect();

    let csv = data.report(&["--format", "csv", "--reasons", "10"]);
    assert!(csv.status.success());
    let text = String::from_utf8(csv.stdout).expect("utf8");
    // A reason with a newline stays in one quoted field: count records, not lines.
    let mut records = Vec::new();
    let mut record = String::new();
    for line in text.lines() {
        if !record.is_empty() {
            record.push('\n');
        }
        record.push_str(line);
        if record.matches('"').count().is_multiple_of(2) {
            records.push(std::mem::take(&mut record));
        }
    }
    assert!(records[0].starts_with("job_id,target_selection,state,created_at"));
    assert_eq!(records.len(), want.len() + 1);
    for job in &mismatched {
        let row = records
            .iter()
            .find(|r| r.starts_with(job.as_str()))
            .expect("a row per job");
        assert!(row.contains(",mismatch,"), "{row}");
    }
    assert!(
        text.contains("flaky | link\nretrying ×1"),
        "the reason as sent, inside a quoted field"
    );

    let markdown = data.report(&["--format", "markdown", "--reasons", "10"]);
    assert!(markdown.status.success());
    let text = String::from_utf8(markdown.stdout).expect("utf8");
    let rows: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), want.len() + 2, "header, rule, one per job");
    assert!(text.contains("flaky \\| link\\nretrying"), "pipes escaped");
    assert!(text.contains("* 3 completed jobs disagree with AWS's counters (8 executions"));

    let table = data.report(&[]);
    assert!(table.status.success());
    let text = String::from_utf8(table.stdout).expect("utf8");
    let stderr = String::from_utf8_lossy(&table.stderr);
    assert!(stderr.contains("files in 4 partitions read"), "{stderr}");
    for job in want.keys() {
        let line = text
            .lines()
            .find(|l| l.starts_with(job.as_str()))
            .expect("a line per job");
        assert_eq!(
            line.contains("MISMATCH"),
            mismatched.contains(job),
            "{line}"
        );
    }
    assert!(text.contains("3 completed jobs disagree"), "{text}");
}

#[test]
fn report_refuses_bad_flags_and_missing_data_with_a_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = run(&["report", "--parquet", path_str(dir.path())]);
    assert_eq!(empty.status.code(), Some(66));
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(stderr.contains("job_events"), "{stderr}");

    let bad = run(&["report", "--parquet", ".", "--since", "last tuesday"]);
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("YYYY-MM-DD"), "{stderr}");

    std::fs::create_dir(dir.path().join("job_events")).expect("mkdir");
    let backwards = run(&[
        "report",
        "--parquet",
        path_str(dir.path()),
        "--since",
        "2026-12-01",
        "--until",
        "2026-11-01",
    ]);
    assert_eq!(backwards.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&backwards.stderr);
    assert!(
        stderr.contains("--since must be before --until"),
        "{stderr}"
    );

    // An empty table is a report of nothing, not an error.
    let nothing = run(&[
        "report",
        "--parquet",
        path_str(dir.path()),
        "--format",
        "json",
    ]);
    assert!(nothing.status.success(), "{nothing:?}");
    let report: Value = serde_json::from_slice(&nothing.stdout).expect("json");
    assert_eq!(report["summary"]["jobs"], 0);
}
