#!/usr/bin/env python3
"""`jobstream report` on a month of Parquet, side by side with DuckDB on the same files:

  * report              every job: outcomes, durations, reasons, reconciliation (one pass,
                        CSV out; JSON adds about a third for 10k jobs' worth of output)
  * report --since      the last week only: other days' partitions are never opened
  * DuckDB, 5 queries   docs/queries.md's success rate, durations, reasons, reconciliation and
                        open rollouts — the same answers, as a user would get them with SQL

The dataset: --events events in ten captures three days apart (a month of date partitions),
replayed into one Parquet root. Runs are interleaved so machine noise hits all alike; the
output gives median and spread, the ratio of medians, and what the report read (files,
partitions skipped, columns and bytes fetched).

Usage: .venv/bin/python benches/report_vs_duckdb.py [--events 1000000] [--runs 5]
         [--jobstream target/release/jobstream] [--threads 2]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
NOVEMBER_1 = 1_793_491_200  # 2026-11-01T00:00:00Z
SAME_ANSWERS = [
    "Success rate per job",
    "Rollout duration",
    "Most common failure reasons",
    "Jobs whose AWS counters disagree with the events received",
    "Rollouts still open",
]


def documented_queries():
    text = (ROOT / "docs" / "queries.md").read_text()
    queries = {}
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        heading, _, body = section.partition("\n")
        match = re.search(r"```sql\n(.*?)```", body, re.S)
        if match:
            queries[heading.strip()] = match.group(1)
    return queries


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobstream", default=str(ROOT / "target" / "release" / "jobstream"))
    ap.add_argument("--threads", type=int, default=2, help="DuckDB threads")
    args = ap.parse_args()
    queries = documented_queries()

    work = Path(tempfile.mkdtemp(prefix="jobstream-report-bench-"))
    try:
        per_capture = args.events // 10
        for i in range(10):
            capture = work / f"capture-{i}.tsv"
            start = NOVEMBER_1 + i * 3 * 86_400 + 10 * 3600
            subprocess.run([args.jobstream, "generate", "--events", str(per_capture), "--seed", str(20 + i),
                            "--start-epoch-s", str(start), "--output", str(capture)],
                           check=True, stderr=subprocess.DEVNULL)
            subprocess.run([args.jobstream, "replay", "--input", str(capture), "--parquet", str(work / "out"),
                            "--quiet"], check=True, stdout=subprocess.DEVNULL)
            capture.unlink()

        def report(*extra, output="csv"):
            result = subprocess.run([args.jobstream, "report", "--parquet", str(work / "out"), "--format", output,
                                     "--quiet", *extra], check=True, capture_output=True)
            return json.loads(result.stdout) if output == "json" else None

        def duck():
            con = duckdb.connect()
            con.execute(f"SET threads = {args.threads}")
            for name in SAME_ANSWERS:
                con.execute(queries[name]).fetchall()
            con.close()

        os.chdir(work)  # the documented queries read `out/` relative to the working directory
        contenders = {
            "report": lambda: report(),
            "report --since (last week)": lambda: report("--since", "2026-11-22"),
            f"DuckDB, {len(SAME_ANSWERS)} queries": duck,
        }
        times = {name: [] for name in contenders}
        for _ in range(args.runs):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

        full, week = report(output="json"), report("--since", "2026-11-22", output="json")
        print(f"dataset: {full['summary']['job_events'] + full['summary']['execution_events']} events, "
              f"{full['summary']['jobs']} jobs, {full['scan']['bytes_in_files'] / 2**20:.1f} MiB of Parquet")
        base = statistics.median(times["report"])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"  {name:28} median {median:6.2f} s  range {min(samples):.2f}-{max(samples):.2f} s  "
                  f"({median / base:.2f}x report)")
        for label, scan in [("report", full["scan"]), ("report --since", week["scan"])]:
            print(f"  {label}: {scan['files_read']} files read, {scan['partitions_skipped']} partitions skipped, "
                  f"{scan['columns_read']} of {scan['columns_in_files']} column chunks, "
                  f"{scan['bytes_read'] / 2**20:.1f} of {scan['bytes_in_files'] / 2**20:.1f} MiB fetched, "
                  f"{scan['rows_read']} rows")
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
