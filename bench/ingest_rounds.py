#!/usr/bin/env python3
"""Ingest of one spool by several binaries next to `cat` of the same files, alternated.

Usage: ingest_rounds.py --spool DIR --format FMT --bin LABEL=PATH [--bin ...] [--rounds 3]
                        [--work DIR]

One warming `cat` first, then each round runs the `cat` reference and every binary (a
fresh ledger each time) in turn, so a disturbance from other work on the machine hits all
of them alike. Prints one JSON row per command and, at the end, the median of each with
its ratio to the median `cat`. Wall seconds, peak RSS and CPU (user + system) seconds
come from GNU time, as in bench.py.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd):
    fd, out = tempfile.mkstemp(prefix="ingest-rounds-", suffix=".time")
    os.close(fd)
    full = ["/usr/bin/time", "-f", "%e %M %U %S", "-o", out] + (
        ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    )
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(cmd)), file=sys.stderr, flush=True)
    started = time.monotonic()
    subprocess.run(full, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - started
    with open(out) as f:
        _, rss_kb, user, system = f.read().split()[-4:]
    os.unlink(out)
    return wall, int(rss_kb) / 1024, float(user) + float(system)


def remove_ledger(path):
    for suffix in ["", "-wal", "-shm", ".lock"]:
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spool", required=True)
    p.add_argument("--format", required=True)
    p.add_argument("--bin", action="append", required=True, help="LABEL=PATH")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--work", default=tempfile.gettempdir())
    p.add_argument("--results", help="append the JSON rows to this file")
    a = p.parse_args()
    bins = [b.split("=", 1) for b in a.bin]
    cat = f"find {a.spool} -type f -print0 | xargs -0 cat > /dev/null"
    timed(cat)  # warm the cache (as far as the machine's other work lets it stay warm)
    runs = {"cat": []}
    for label, _ in bins:
        runs[label] = []
    results = open(a.results, "a") if a.results else None
    for r in range(a.rounds):
        steps = [("cat", None)] + bins
        for label, path in steps:
            if path is None:
                secs, rss, cpu = timed(cat)
                ledger_bytes = None
            else:
                ledger = os.path.join(a.work, f"rounds-{label}.db")
                remove_ledger(ledger)
                secs, rss, cpu = timed([path, "--ledger", ledger, "-q", "ingest", "--format",
                                   a.format, a.spool])
                ledger_bytes = os.path.getsize(ledger)
                remove_ledger(ledger)
            runs[label].append((secs, rss, cpu))
            row = {"stage": "ingest-rounds", "spool": a.spool, "format": a.format,
                   "round": r + 1, "label": label, "seconds": round(secs, 2),
                   "rss_mb": round(rss, 1), "cpu_seconds": round(cpu, 2),
                   "ledger_bytes": ledger_bytes,
                   "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
            print("RESULT " + json.dumps(row), flush=True)
            if results:
                results.write(json.dumps(row) + "\n")
                results.flush()
    cat_median = statistics.median(s for s, _, _ in runs["cat"])
    for label, rows in runs.items():
        median = statistics.median(s for s, _, _ in rows)
        cpu = statistics.median(c for _, _, c in rows)
        peak = max(m for _, m, _ in rows)
        print(f"{label:>12}: median {median:7.2f} s  ratio {median / cat_median:5.2f}x  "
              f"CPU {cpu:7.2f} s  peak RSS {peak:6.1f} MB  "
              f"runs {[round(s, 2) for s, _, _ in rows]}", flush=True)


if __name__ == "__main__":
    main()
