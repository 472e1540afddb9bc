#!/usr/bin/env python3
"""spoolreplay's benchmarks (issue 7). Not tests: each stage prints its time and peak RSS
next to a reference measured in the same run on the same machine, and the ratio.

Usage (as root for smtp-sink's -u; from the repository root):
  bench/bench.py [--work DIR] [--counts 10000,100000] [--stages ingest,report,maildir,smtp,lmtp]
                 [--maildir-count 10000] [--replay-count 10000] [--concurrency 4]

Stages:
  ingest   spoolreplay ingest (postfix and eml spools) vs `cat` of the same files, warm cache
  report   spoolreplay report on each ingested ledger (seconds, peak RSS); no reference
  maildir  spoolreplay run into maildir: vs bench/durable_loop.rs (write+fsync+rename+fsync dir)
  smtp     spoolreplay run into Postfix smtp-sink vs smtp-source sending as many messages
  lmtp     the same with smtp-sink -L and smtp-source -L
Spools are made by bench/gen_spool.py (deterministic) and kept in WORK between runs.
Every command is printed before it runs; results also go to WORK/results.jsonl.
"""

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
INCIDENT = os.path.join(HERE, "incident.toml")
NOW = "2023-01-23T16:00:00+01:00"
SENDER = "bench-sender@s.example"


def sh(cmd, **kw):
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def timed(cmd, stdout=subprocess.DEVNULL):
    """(wall seconds, peak RSS in MB) of a command, by GNU time."""
    out = "/tmp/spoolreplay-bench.time"
    full = ["/usr/bin/time", "-f", "%e %M", "-o", out] + (
        ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    )
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(cmd)), file=sys.stderr, flush=True)
    started = time.monotonic()
    subprocess.run(full, check=True, stdout=stdout)
    wall = time.monotonic() - started
    with open(out) as f:
        _, rss_kb = f.read().split()[-2:]
    return wall, int(rss_kb) / 1024


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.bin = a.bin
        os.makedirs(self.work, exist_ok=True)
        self.results = open(os.path.join(self.work, "results.jsonl"), "a")

    def report(self, **row):
        row["binary"] = self.a.label
        row["at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.results.write(json.dumps(row) + "\n")
        self.results.flush()
        print("RESULT " + json.dumps(row), flush=True)

    def spool(self, fmt, count, mix="realistic"):
        path = os.path.join(self.work, f"spool-{fmt}-{count}-{mix}")
        done = path + ".done"
        if not os.path.exists(done):
            shutil.rmtree(path, ignore_errors=True)
            sh([sys.executable, os.path.join(HERE, "gen_spool.py"), "--format", fmt,
                "--count", str(count), "--mix", mix, path])
            open(done, "w").close()
        return path

    def ledger(self, fmt, count, mix="realistic"):
        """A ledger holding the spool, made once (by the ingest stage or here)."""
        path = os.path.join(self.work, f"ledger-{fmt}-{count}-{mix}.db")
        if not os.path.exists(path + ".done"):
            self.ingest(fmt, count, mix)
        return path

    def ingest(self, fmt, count, mix="realistic"):
        spool = self.spool(fmt, count, mix)
        ledger = os.path.join(self.work, f"ledger-{fmt}-{count}-{mix}.db")
        cat = f"find {spool} -type f -print0 | xargs -0 cat > /dev/null"
        timed(cat)  # warm the cache
        cat_s = min(timed(cat)[0], timed(cat)[0])
        for suffix in ["", "-wal", "-shm", ".lock", ".done"]:
            if os.path.exists(ledger + suffix):
                os.remove(ledger + suffix)
        secs, rss = timed([self.bin, "--ledger", ledger, "-q", "ingest", "--format", fmt, spool])
        open(ledger + ".done", "w").close()
        size = int(subprocess.run(["du", "-sb", spool], capture_output=True, text=True,
                                  check=True).stdout.split()[0])
        self.report(stage="ingest", format=fmt, mix=mix, messages=count, spool_bytes=size,
                    seconds=round(secs, 2), rss_mb=round(rss, 1), cat_seconds=round(cat_s, 2),
                    ratio=round(secs / cat_s, 2), msgs_per_s=round(count / secs),
                    ledger_bytes=os.path.getsize(ledger))

    def report_stage(self, fmt, count, mix="realistic"):
        ledger = self.ledger(fmt, count, mix)
        secs, rss = timed([self.bin, "--ledger", ledger, "report", "--incident", INCIDENT,
                           "--now", NOW, "--rate", "500/s"])
        self.report(stage="report", format=fmt, mix=mix, messages=count,
                    seconds=round(secs, 2), rss_mb=round(rss, 1),
                    ledger_bytes=os.path.getsize(ledger))

    def fresh_ledger_copy(self, fmt, count, name):
        src = self.ledger(fmt, count)
        dst = os.path.join(self.work, name)
        for suffix in ["", "-wal", "-shm", ".lock"]:
            if os.path.exists(dst + suffix):
                os.remove(dst + suffix)
        shutil.copyfile(src, dst)
        return dst

    def run_args(self, ledger, store, conc):
        return [self.bin, "--ledger", ledger, "-q", "run", "--incident", INCIDENT, "--now", NOW,
                "--store", store, "--outbox", os.path.join(self.work, "outbox"),
                "--concurrency", str(conc), "--batch-size", "100"]

    def copies(self, ledger):
        c = sqlite3.connect(ledger)
        return c.execute("SELECT count(*) FROM recipients WHERE state = 'delivered'").fetchone()[0]

    def maildir(self, count, conc):
        loop = os.path.join(self.work, "durable_loop")
        if not os.path.exists(loop):
            sh(["rustc", "-O", "--edition", "2021", os.path.join(HERE, "durable_loop.rs"),
                "-o", loop])
        ledger = self.fresh_ledger_copy("eml", count, "ledger-maildir.db")
        manifest = os.path.join(self.work, "manifest.tsv")
        c = sqlite3.connect(ledger)
        with open(manifest, "w") as f:
            for path, sender, rcpt in c.execute(
                "SELECT m.source_path, m.sender, r.address FROM recipients r "
                "JOIN messages m ON m.id = r.message_id WHERE r.state = 'pending' "
                "ORDER BY m.id, r.id"):
                f.write(f"{path}\t{sender}\t{rcpt}\n")
        c.close()
        spool = self.spool("eml", count)
        timed(f"find {spool} -type f -print0 | xargs -0 cat > /dev/null")  # warm
        ref_store = os.path.join(self.work, "store-ref")
        our_store = os.path.join(self.work, "store-ours")
        for d in (ref_store, our_store):
            shutil.rmtree(d, ignore_errors=True)
        sh("sync")
        ref_s, _ = timed([loop, manifest, ref_store, str(conc)])
        sh("sync")
        secs, rss = timed(self.run_args(ledger, f"maildir:{our_store}", conc))
        copies = self.copies(ledger)
        self.report(stage="maildir", messages=count, copies=copies, concurrency=conc,
                    seconds=round(secs, 2), rss_mb=round(rss, 1),
                    ref_seconds=round(ref_s, 2), ratio_of_ref=round(ref_s / secs, 2),
                    copies_per_s=round(copies / secs), ref_copies_per_s=round(copies / ref_s))
        for d in (ref_store, our_store):
            shutil.rmtree(d, ignore_errors=True)

    def sink(self, lmtp, port):
        args = ["smtp-sink", "-u", "nobody"] + (["-L"] if lmtp else []) + [f"127.0.0.1:{port}",
                                                                           "256"]
        print("+ " + " ".join(args), file=sys.stderr, flush=True)
        p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return p

    def wire(self, lmtp, count, conc):
        fmt = "postfix"
        ledger = self.fresh_ledger_copy(fmt, count, "ledger-wire.db")
        c = sqlite3.connect(ledger)
        mean = int(c.execute("SELECT avg(size) FROM messages").fetchone()[0])
        rcpts = c.execute("SELECT count(*) FROM recipients").fetchone()[0]
        c.close()
        spool = self.spool(fmt, count)
        timed(f"find {spool} -type f -print0 | xargs -0 cat > /dev/null")  # warm
        port = 2525 + (1 if lmtp else 0)
        sink = self.sink(lmtp, port)
        try:
            proto = "lmtp" if lmtp else "smtp"
            # The ceiling: Postfix's own load generator, same count, mean size, sessions.
            src = ["smtp-source", "-s", str(conc), "-m", str(count), "-l", str(mean), "-d",
                   "-f", SENDER, "-t", "rcpt@d00.example"] + (["-L"] if lmtp else []) + [
                f"127.0.0.1:{port}"]
            ref_s, _ = timed(src)
            secs, rss = timed(self.run_args(ledger, f"{proto}://127.0.0.1:{port}", conc))
        finally:
            sink.terminate()
            sink.wait()
        copies = self.copies(ledger)
        self.report(stage=proto, messages=count, recipients=rcpts, delivered=copies,
                    mean_size=mean, concurrency=conc, seconds=round(secs, 2),
                    rss_mb=round(rss, 1), ref_seconds=round(ref_s, 2),
                    ratio_of_ref=round(ref_s / secs, 2), msgs_per_s=round(count / secs),
                    ref_msgs_per_s=round(count / ref_s))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/var/tmp/spoolreplay-bench")
    p.add_argument("--bin", default=os.path.join(REPO, "target/release/spoolreplay"))
    p.add_argument("--label", default="main", help="names the binary in the results")
    p.add_argument("--counts", default="10000,100000")
    p.add_argument("--mix", default="realistic", choices=["realistic", "small"])
    p.add_argument("--formats", default="postfix,eml")
    p.add_argument("--stages", default="ingest,report,maildir,smtp,lmtp")
    p.add_argument("--maildir-count", type=int, default=10000)
    p.add_argument("--replay-count", type=int, default=10000)
    p.add_argument("--concurrency", default="1,4")
    a = p.parse_args()
    if not os.path.exists(a.bin):
        sh(["cargo", "build", "--release", "--locked"], cwd=REPO)
    b = Bench(a)
    stages = a.stages.split(",")
    counts = [int(c) for c in a.counts.split(",")]
    concs = [int(c) for c in a.concurrency.split(",")]
    for count in counts:
        for fmt in a.formats.split(","):
            if "ingest" in stages:
                b.ingest(fmt, count, a.mix)
            if "report" in stages:
                b.report_stage(fmt, count, a.mix)
    for conc in concs:
        if "maildir" in stages:
            b.maildir(a.maildir_count, conc)
        if "smtp" in stages:
            b.wire(False, a.replay_count, conc)
        if "lmtp" in stages:
            b.wire(True, a.replay_count, conc)


if __name__ == "__main__":
    main()
