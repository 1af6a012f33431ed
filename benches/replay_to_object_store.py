#!/usr/bin/env python3
"""`jobstream replay` of one capture to local disk and to an S3 API server, side by side in one
run, interleaved run by run so machine noise hits both alike:

  * disk   `replay --parquet DIR` (encode, fsync, rename);
  * s3     `replay --parquet s3://bench/runN` (encode into the staging directory, one create-only
           PUT per file) against moto's server mode on loopback (tests/python/brokers.py), the
           S3 API server the tests use.

moto is a Python server that keeps objects in memory: the s3 column measures jobstream's upload
path plus what moto takes to receive a PUT, not what Amazon S3 would take (there, the network and
S3's per-request latency decide, and files of 64 MiB amortise the latter). The report gives the
median and spread of each and the ratio of the medians.

Usage: .venv/bin/python benches/replay_to_object_store.py [--events 1000000] [--runs 5]
         [--jobstream target/release/jobstream]
"""

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from brokers import S3Server  # noqa: E402


def timed(command, env=None):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobstream", default=str(ROOT / "target" / "release" / "jobstream"))
    ap.add_argument("--json", help="write the results here as JSON")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="jobstream-bench-store-"))
    try:
        capture = work / "capture.tsv"
        subprocess.run([args.jobstream, "generate", "--events", str(args.events), "--output", str(capture)],
                       check=True)
        events = sum(1 for _ in open(capture, "rb"))
        s3 = S3Server(work / "s3").start()
        s3.bucket("bench")
        env = {"PATH": "/usr/bin:/bin", **s3.env()}
        times = {"disk": [], "s3": []}
        for run in range(args.runs):
            out = work / f"disk{run}"
            times["disk"].append(timed([args.jobstream, "replay", "--input", str(capture), "--parquet", str(out),
                                        "--quiet"]))
            shutil.rmtree(out)
            times["s3"].append(timed([args.jobstream, "replay", "--input", str(capture), "--parquet",
                                      f"s3://bench/run{run}", "--quiet"], env=env))
            # moto keeps objects in memory: empty it so that later runs do not pay for earlier ones.
            client = s3.client()
            for key in s3.objects("bench", f"run{run}"):
                client.delete_object(Bucket="bench", Key=key)
        s3.stop()
        result = {"events": events, "runs": args.runs}
        for name, values in times.items():
            median = statistics.median(values)
            result[name] = {"median_s": median, "min_s": min(values), "max_s": max(values),
                            "median_events_per_s": events / median}
            print(f"{name:<5} median {median:6.2f} s ({events / median / 1e3:7.1f} k events/s)  "
                  f"spread {min(values):.2f}–{max(values):.2f} s over {len(values)} runs")
        result["s3_over_disk_time"] = result["s3"]["median_s"] / result["disk"]["median_s"]
        print(f"s3 / disk time (medians): {result['s3_over_disk_time']:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
