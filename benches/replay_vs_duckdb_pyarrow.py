#!/usr/bin/env python3
"""Capture → Parquet, side by side in one run on the same input:

  * jobstream replay     (validation, typing, two tables, date partitions, zstd, atomic files)
  * DuckDB               COPY (SELECT * FROM read_json('f.jsonl')) TO 'o.parquet' (zstd)
  * pyarrow              pyarrow.json.read_json + pyarrow.parquet.write_table(zstd)

DuckDB and pyarrow get the payloads alone as JSON lines (they do less: no topic, no
validation, one untyped table). Runs are interleaved so machine noise hits all three alike;
the report gives the median and spread of each and the ratios of medians.

Usage: .venv/bin/python benches/replay_vs_duckdb_pyarrow.py [--events 1000000] [--runs 5]
         [--jobstream target/release/jobstream] [--json results.json]
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pyarrow.json as pajson
import pyarrow.parquet as pq


def timed(fn):
    """Wall seconds and CPU seconds (user + system, this process and its children) of fn()."""
    def cpu():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    start, start_cpu = time.perf_counter(), cpu()
    fn()
    return time.perf_counter() - start, cpu() - start_cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobstream", default="target/release/jobstream")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
    try:
        capture = work / "capture.tsv"
        subprocess.run([args.jobstream, "generate", "--events", str(args.events), "--output", str(capture)],
                       check=True, stderr=subprocess.DEVNULL)
        jsonl = work / "f.jsonl"
        with open(capture, "rb") as src, open(jsonl, "wb") as dst:
            for line in src:
                dst.write(line.split(b"\t", 1)[1])
        events = sum(1 for _ in open(capture, "rb"))
        size = capture.stat().st_size
        print(f"input: {events} events, {size / 1e6:.0f} MB capture, {jsonl.stat().st_size / events:.0f} B/payload")

        rss_kib = []

        def jobstream():
            out = work / "js-out"
            shutil.rmtree(out, ignore_errors=True)
            # /usr/bin/time reports the peak RSS of jobstream alone: a child forked straight from
            # this process would inherit this process's high-water mark (pyarrow's tables).
            rss_file = work / "rss"
            subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(rss_file),
                            args.jobstream, "replay", "--input", str(capture), "--parquet", str(out), "--quiet"],
                           check=True, stdout=subprocess.DEVNULL)
            rss_kib.append(int(rss_file.read_text().split()[-1]))

        def duck():
            out = work / "duck.parquet"
            out.unlink(missing_ok=True)
            con = duckdb.connect()
            con.execute(f"COPY (SELECT * FROM read_json('{jsonl}')) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
            con.close()

        def arrow():
            out = work / "arrow.parquet"
            table = pajson.read_json(str(jsonl))
            pq.write_table(table, str(out), compression="zstd")

        contenders = {"jobstream": jobstream, "duckdb": duck, "pyarrow": arrow}
        times = {name: [] for name in contenders}
        cpu_times = {name: [] for name in contenders}
        for run in range(args.runs):
            for name, fn in contenders.items():
                wall, cpu = timed(fn)
                times[name].append(wall)
                cpu_times[name].append(cpu)
            print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {t[-1]:.2f}s" for n, t in times.items()), flush=True)

        results = {}
        print(f"\n{'contender':<10} {'median s':>9} {'min–max s':>13} {'events/s':>10} {'jobstream ×':>12} {'CPU s':>6}")
        js_median = statistics.median(times["jobstream"])
        for name, samples in times.items():
            median = statistics.median(samples)
            results[name] = {
                "median_s": median,
                "min_s": min(samples),
                "max_s": max(samples),
                "events_per_s": events / median,
                "jobstream_speedup": median / js_median,
                "cpu_s_median": statistics.median(cpu_times[name]),
            }
            print(f"{name:<10} {median:>9.2f} {min(samples):>6.2f}–{max(samples):<6.2f} {events / median:>10.0f} "
                  f"{median / js_median:>11.2f}× {statistics.median(cpu_times[name]):>6.2f}")
        print(f"jobstream peak RSS: median {statistics.median(rss_kib) / 1024:.0f} MiB "
              f"({min(rss_kib) / 1024:.0f}–{max(rss_kib) / 1024:.0f})")
        results["jobstream"]["peak_rss_kib"] = rss_kib
        if args.json:
            Path(args.json).write_text(json.dumps({"events": events, "bytes": size, "runs": args.runs,
                                                   "cpus": os.cpu_count(), "results": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
