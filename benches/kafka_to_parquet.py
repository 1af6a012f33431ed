#!/usr/bin/env python3
"""Kafka → Parquet against a raw librdkafka consumer, side by side in one run, same topics:

  * raw      benches/examples/raw_consume.rs: joins a fresh group, reads every record, keeps
             nothing (the ceiling: what the broker and librdkafka deliver);
  * jobstream `jobstream run --kafka B --parquet DIR --stop-at-end` with a fresh group: parse,
             validate, Arrow, zstd Parquet files per partition, fsync + rename, commits;
  * ×2       two such processes in one fresh group, writing to one directory, started together
             and timed until both have exited (the group splits the partitions between them).

Both are timed from process start to exit (group join included for both), interleaved run by
run so machine noise hits both alike; the report gives median and spread and the ratio of the
medians. The broker is Apache Kafka (one KRaft node, tests/python/brokers.py and
scripts/kafka), started here on a free port.

Usage: .venv/bin/python benches/kafka_to_parquet.py [--events 300000] [--runs 5]
         [--jobstream target/release/jobstream] [--raw target/release/examples/raw_consume]
         [--json FILE]
"""

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from brokers import Kafka  # noqa: E402

TOPICS = ["aws-iot-job-events", "aws-iot-job-execution-events"]


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(command, cpu=None, **kwargs):
    """Wall time of `command`; its CPU seconds (user + system) are appended to `cpu`."""
    start, cpu_start = time.perf_counter(), children_cpu()
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(children_cpu() - cpu_start)
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed, result.stdout


def stage_command(jobstream, brokers, out_dir, group):
    return [jobstream, "run", "--kafka", brokers, "--parquet", str(out_dir), "--group-id", group,
            "--stop-at-end", "--stats-every-secs", "0"]


def published_rows(stdout):
    line = stdout.strip().splitlines()[-1]
    return int(line.rsplit("published ", 1)[1].split(" rows", 1)[0])


def timed_together(commands, cpu):
    """Wall time until every command has exited, started at once; CPU seconds of all."""
    start, cpu_start = time.perf_counter(), children_cpu()
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate() for p in procs]
    elapsed = time.perf_counter() - start
    cpu.append(children_cpu() - cpu_start)
    for p, (_, err) in zip(procs, outputs):
        if p.returncode != 0:
            raise SystemExit(f"{commands[0][0]} failed ({p.returncode}):\n{err[-2000:]}")
    return elapsed, [out for out, _ in outputs]


def summary(name, times, events):
    median = statistics.median(times)
    return (f"{name:<10} median {median:6.2f} s  ({events / median / 1e3:6.1f} k rows/s)  "
            f"spread {min(times):.2f}–{max(times):.2f} s over {len(times)} runs")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobstream", default=str(ROOT / "target/release/jobstream"))
    ap.add_argument("--raw", default=str(ROOT / "target/release/examples/raw_consume"))
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jobstream-k2p-"))
    kafka = Kafka(work / "kafka").start()
    try:
        capture = work / "capture.tsv"
        subprocess.run([args.jobstream, "generate", "--events", str(args.events), "--output", str(capture)],
                       check=True, capture_output=True)
        events = sum(1 for _ in open(capture, "rb"))
        elapsed, _ = timed([args.jobstream, "replay", "--input", str(capture), "--kafka", kafka.brokers,
                            "--quiet"])
        print(f"input: {events} events produced to Apache Kafka in {elapsed:.1f} s "
              f"({capture.stat().st_size / events:.0f} B/line)")

        raw, stage, pair, raw_cpu, stage_cpu, pair_cpu = [], [], [], [], [], []
        for run in range(args.runs):
            t, out = timed([args.raw, kafka.brokers, f"raw-{run}", str(events), *TOPICS], raw_cpu)
            raw.append(t)
            out_dir = work / f"parquet-{run}"
            t, out = timed(stage_command(args.jobstream, kafka.brokers, out_dir, f"stage-{run}"), stage_cpu)
            stage.append(t)
            assert published_rows(out) == events, out
            shutil.rmtree(out_dir)
            out_dir = work / f"parquet-pair-{run}"
            t, outs = timed_together([stage_command(args.jobstream, kafka.brokers, out_dir, f"pair-{run}")] * 2,
                                     pair_cpu)
            pair.append(t)
            # Together they publish every row once: a partition handed over in a rebalance
            # resumes from the files its first owner published.
            assert sum(published_rows(o) for o in outs) == events, outs
            shutil.rmtree(out_dir)
            print(f"run {run + 1}: raw {raw[-1]:.2f} s, jobstream {stage[-1]:.2f} s, ×2 {pair[-1]:.2f} s "
                  f"(rows {[published_rows(o) for o in outs]})", flush=True)

        print(summary("raw", raw, events))
        print(summary("jobstream", stage, events))
        print(summary("×2", pair, events))
        ratio = statistics.median(raw) / statistics.median(stage)
        ratios = sorted(r / s for r, s in zip(raw, stage))
        print(f"jobstream / raw consume rate: {ratio:.2f} (ratio of medians; per run "
              f"{statistics.median(ratios):.2f}, {ratios[0]:.2f}–{ratios[-1]:.2f})  (target ≥ 0.8)")
        print(f"×2 / ×1 rate: {statistics.median(stage) / statistics.median(pair):.2f}")
        # The broker may be what limits both; CPU seconds per row show each client's own cost.
        for name, cpu in (("raw", raw_cpu), ("jobstream", stage_cpu), ("×2", pair_cpu)):
            median = statistics.median(cpu)
            print(f"{name:<10} CPU median {median:6.2f} s  ({events / median / 1e3:6.1f} k rows per CPU-second)"
                  f"  spread {min(cpu):.2f}–{max(cpu):.2f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"events": events, "raw_s": raw, "jobstream_s": stage,
                                                   "pair_s": pair, "raw_cpu_s": raw_cpu,
                                                   "jobstream_cpu_s": stage_cpu, "pair_cpu_s": pair_cpu,
                                                   "ratio": ratio}, indent=2) + "\n")
    finally:
        kafka.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
