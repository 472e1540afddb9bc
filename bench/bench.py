#!/usr/bin/env python3
"""spoolreplay's benchmarks (issue 7). Not tests: each stage prints its time and peak RSS
next to a reference measured in the same run on the same machine, and the ratio.

Usage (as root for smtp-sink's -u; from the repository root):
  bench/bench.py [--work DIR] [--counts 10000,100000] [--stages ingest,report,maildir,smtp,lmtp,flush]
                 [--maildir-count 10000] [--replay-count 10000] [--concurrency 4]

Stages:
  ingest   spoolreplay ingest (postfix and eml spools) vs `cat` of the same files, warm cache
  report   spoolreplay report on each ingested ledger (seconds, peak RSS); no reference
  maildir  spoolreplay run into maildir: vs examples/durable_loop.rs (write+fsync+rename+fsync dir)
  smtp     spoolreplay run into Postfix smtp-sink vs smtp-source sending as many messages
  lmtp     the same with smtp-sink -L and smtp-source -L
  flush    Postfix itself draining the same generated queue (a throw-away instance under
           WORK/postfix-flush, `postqueue -f`) into the same smtp-sink, SMTP then LMTP
           (--flush-protocols); concurrency = the destination concurrency limit
Spools are made by bench/gen_spool.py (deterministic) and kept in WORK between runs.
Every command is printed before it runs; results also go to WORK/results.jsonl.
"""

import argparse
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
INCIDENT = os.path.join(HERE, "incident.toml")
NOW = "2023-01-23T16:00:00+01:00"
SENDER = "bench-sender@s.example"


def sh(cmd, **kw):
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(cmd)), file=sys.stderr, flush=True)
    return subprocess.run(cmd, shell=isinstance(cmd, str), check=True, **kw)


def free_port():
    """A loopback port nobody listens on now (the kernel's pick), so two benchmarks, or a
    benchmark and the test suite, never share one."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(cmd, stdout=subprocess.DEVNULL):
    """(wall seconds, peak RSS in MB) of a command, by GNU time."""
    fd, out = tempfile.mkstemp(prefix="spoolreplay-bench-", suffix=".time")
    os.close(fd)
    full = ["/usr/bin/time", "-f", "%e %M", "-o", out] + (
        ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    )
    print("+ " + (cmd if isinstance(cmd, str) else " ".join(cmd)), file=sys.stderr, flush=True)
    started = time.monotonic()
    subprocess.run(full, check=True, stdout=stdout)
    wall = time.monotonic() - started
    with open(out) as f:
        _, rss_kb = f.read().split()[-2:]
    os.unlink(out)
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
        # An mbox spool is the file itself; the others are folders.
        target = os.path.join(spool, "spool.mbox") if fmt == "mbox" else spool
        secs, rss = timed([self.bin, "--ledger", ledger, "-q", "ingest", "--format", fmt, target])
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

    def fresh_ledger_copy(self, fmt, count, name, mix="realistic"):
        src = self.ledger(fmt, count, mix)
        # --run-ledger-dir /dev/shm: the run's ledger on tmpfs, fsync free, to tell the
        # protocol path's cost from the disk's (section 4).
        dst = os.path.join(self.a.run_ledger_dir or self.work, name)
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
        # A cargo example (examples/durable_loop.rs), so CI compiles what this runs.
        sh(["cargo", "build", "--release", "--example", "durable_loop"],
           cwd=os.path.join(HERE, ".."))
        loop = os.path.join(HERE, "..", "target", "release", "examples", "durable_loop")
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

    def wire(self, lmtp, count, conc, mix="realistic"):
        fmt = "postfix"
        ledger = self.fresh_ledger_copy(fmt, count, "ledger-wire.db", mix)
        c = sqlite3.connect(ledger)
        mean = int(c.execute("SELECT avg(size) FROM messages").fetchone()[0])
        rcpts = c.execute("SELECT count(*) FROM recipients").fetchone()[0]
        c.close()
        spool = self.spool(fmt, count, mix)
        timed(f"find {spool} -type f -print0 | xargs -0 cat > /dev/null")  # warm
        port = free_port()
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
        self.report(stage=proto, mix=mix, messages=count, recipients=rcpts, delivered=copies,
                    mean_size=mean, concurrency=conc, seconds=round(secs, 2),
                    rss_mb=round(rss, 1), ref_seconds=round(ref_s, 2),
                    ratio_of_ref=round(ref_s / secs, 2), msgs_per_s=round(count / secs),
                    ref_msgs_per_s=round(count / ref_s))

    # ---- flush: Postfix draining the same queue into the same sink (the reference of 4) ----

    PF_QUEUES = ("incoming", "active", "deferred", "hold", "maildrop", "bounce", "defer",
                 "trace", "corrupt")

    def pf_settings(self, lmtp, port, conc, root):
        """The instance's main.cf (besides the paths). Everything not local, no DNS, one
        destination (the sink), N parallel sessions from the first message on, sessions
        reused, the whole queue allowed into the active queue at once."""
        transport = f"lmtp:inet:127.0.0.1:{port}" if lmtp else f"smtp:[127.0.0.1]:{port}"
        return {
            "compatibility_level": "3.6",
            "queue_directory": os.path.join(root, "spool"),
            "data_directory": os.path.join(root, "data"),
            "maillog_file": os.path.join(root, "maillog"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "flush.bench.test",
            "mydomain": "bench.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "biff": "no",
            # every recipient to the sink: no relayhost lookup, no MX, no DNS
            "relayhost": "",
            "default_transport": transport,
            "relay_transport": transport,
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "lmtp_host_lookup": "native",
            "smtp_tls_security_level": "none",
            "lmtp_tls_security_level": "none",
            # concurrency: N sessions to the one destination, from the start (no slow start)
            "default_destination_concurrency_limit": str(conc),
            "smtp_destination_concurrency_limit": str(conc),
            "lmtp_destination_concurrency_limit": str(conc),
            "initial_destination_concurrency": str(conc),
            "default_process_limit": str(max(100, conc)),
            "default_destination_rate_delay": "0s",
            "default_transport_rate_delay": "0s",
            # the whole queue may be active at once (defaults 20000/20000)
            "qmgr_message_active_limit": "200000",
            "qmgr_message_recipient_limit": "400000",
            # session reuse, as spoolreplay reuses its sessions
            "smtp_connection_cache_on_demand": "yes",
            "smtp_connection_cache_destinations": f"[127.0.0.1]:{port}",
            "smtp_connection_reuse_time_limit": "3600s",
            "smtp_connection_reuse_count_limit": "0",
            "lmtp_connection_cache_on_demand": "yes",
            "lmtp_connection_cache_destinations": f"inet:127.0.0.1:{port}",
            "lmtp_connection_reuse_time_limit": "3600s",
            "lmtp_connection_reuse_count_limit": "0",
            # nothing retried behind our back; lifetimes at Postfix's maximum (the arrival
            # times are from 2023, but a lifetime only matters when a delivery fails)
            "queue_run_delay": "1h",
            "minimal_backoff_time": "1h",
            "maximal_backoff_time": "2h",
            "maximal_queue_lifetime": "100d",
            "bounce_queue_lifetime": "100d",
            "delay_warning_time": "0h",
        }

    # master.cf: the services a flush needs, none listening on the network, no chroot.
    PF_MASTER = """\
qmgr      unix  n       -       n       300     1       qmgr
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

    def pf_stop(self, cfg):
        subprocess.run(["postfix", "-c", cfg, "stop"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        for _ in range(100):
            if subprocess.run(["postfix", "-c", cfg, "status"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode != 0:
                return
            time.sleep(0.1)

    def pf_queue_files(self, spool):
        n = 0
        for q in ("incoming", "active", "deferred", "maildrop"):
            for top, _, files in os.walk(os.path.join(spool, q)):
                n += len(files)
        return n

    def pf_postqueue_count(self, cfg):
        out = subprocess.run(["postqueue", "-c", cfg, "-p"], capture_output=True, text=True,
                             check=True).stdout
        last = out.strip().splitlines()[-1] if out.strip() else ""
        m = re.search(r"in (\d+) Requests?\.", last)
        if m:
            return int(m.group(1))
        if "Mail queue is empty" in last:
            return 0
        raise RuntimeError("cannot read postqueue -p: " + last)

    def flush(self, lmtp, count, conc):
        proto = "lmtp" if lmtp else "smtp"
        spool = self.spool("postfix", count)
        root = os.path.join(self.work, "postfix-flush")
        cfg = os.path.join(root, "etc")
        qdir = os.path.join(root, "spool")
        log = os.path.join(root, "maillog")
        if os.path.exists(os.path.join(qdir, "pid", "master.pid")):
            self.pf_stop(cfg)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(cfg)
        os.makedirs(qdir)
        os.makedirs(os.path.join(root, "data"))
        shutil.chown(os.path.join(root, "data"), "postfix", "postfix")
        port = free_port()
        settings = self.pf_settings(lmtp, port, conc, root)
        with open(os.path.join(cfg, "main.cf"), "w") as f:
            for k, v in settings.items():
                f.write(f"{k} = {v}\n")
        with open(os.path.join(cfg, "master.cf"), "w") as f:
            f.write(self.PF_MASTER)
        open(log, "w").close()
        shutil.chown(log, "postfix")
        # Create the queue tree with Postfix's own owners and modes, then put a copy of the
        # generated queue (deferred/<first hex digit>/<id>, 0700, the same layout as
        # hash_queue_depth = 1) in as the deferred queue, owned by postfix.
        sh(["postfix", "-c", cfg, "set-permissions"], stdout=subprocess.DEVNULL)
        sh(["postfix", "-c", cfg, "check"])
        shutil.rmtree(os.path.join(qdir, "deferred"))
        sh(["cp", "-a", os.path.join(spool, "deferred"), os.path.join(qdir, "deferred")])
        sh(["chown", "-R", "postfix:postfix", os.path.join(qdir, "deferred")])
        sh(["chmod", "700", os.path.join(qdir, "deferred")])
        # A deferred file's mtime is its next retry time: put it a day ahead, so qmgr's
        # start-up scan leaves the queue alone and only `postqueue -f` (which ignores the
        # times) starts the drain.
        later = time.time() + 86400
        for top, _, files in os.walk(os.path.join(qdir, "deferred")):
            for name in files:
                os.utime(os.path.join(top, name), (later, later))
        # Structure check: renames every file to a queue id matching its inode (as after
        # restoring a queue from elsewhere); done now, not inside the timed drain.
        sh(["postsuper", "-c", cfg, "-s"], stderr=subprocess.DEVNULL)
        sh("sync")
        seen = self.pf_postqueue_count(cfg)
        if seen != count:
            raise RuntimeError(f"postqueue -p shows {seen} messages, not {count}")
        c = sqlite3.connect(self.ledger("postfix", count))
        rcpts = c.execute("SELECT count(*) FROM recipients").fetchone()[0]
        mean = int(c.execute("SELECT avg(size) FROM messages").fetchone()[0])
        c.close()
        sink_out = os.path.join(root, "sink.out")
        args = ["smtp-sink", "-c", "-u", "nobody"] + (["-L"] if lmtp else []) + [
            f"127.0.0.1:{port}", "256"]
        print("+ " + " ".join(args), file=sys.stderr, flush=True)
        sink = subprocess.Popen(args, stdout=open(sink_out, "wb"), stderr=subprocess.STDOUT)
        time.sleep(0.5)
        try:
            sh(["postfix", "-c", cfg, "start"], stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # qmgr up; its start-up scan finds nothing due
            logf = open(log, "rb")
            early = logf.read()
            if b"fatal:" in early or b"warning:" in early.split(b"starting the Postfix")[-1]:
                raise RuntimeError(f"Postfix complains at start-up, see {log}")
            if self.pf_queue_files(qdir) != count:
                raise RuntimeError("the queue moved before postqueue -f")
            removed = 0
            polls = 0
            print(f"+ postqueue -c {cfg} -f  (then poll until {count} removed)", file=sys.stderr,
                  flush=True)
            started = time.monotonic()
            subprocess.run(["postqueue", "-c", cfg, "-f"], check=True)
            progress = started
            while True:
                time.sleep(0.05)
                polls += 1
                chunk = logf.read()
                removed += chunk.count(b": removed\n")
                if removed >= count:
                    break
                if b"fatal:" in chunk:
                    raise RuntimeError(f"Postfix: {chunk.decode(errors='replace')}")
                if chunk:
                    progress = time.monotonic()
                elif time.monotonic() - progress > 60:
                    raise RuntimeError(f"no progress for a minute, see {log}")
                if polls % 40 == 0 and self.pf_queue_files(qdir) == 0:
                    break
                if time.monotonic() - started > 7200:
                    raise RuntimeError("Postfix did not drain the queue in 2 hours")
            secs = time.monotonic() - started
            time.sleep(0.5)  # let the last log lines and the sink counters land
        finally:
            self.pf_stop(cfg)
            sink.terminate()
            sink.wait()
        left = self.pf_queue_files(qdir)
        text = open(log, "rb").read().decode(errors="replace")
        sent = text.count("status=sent")
        problems = sum(text.count(f"status={s}") for s in ("deferred", "bounced", "expired"))
        bounces = sum(len(files) for q in ("bounce", "defer")
                      for _, _, files in os.walk(os.path.join(qdir, q)))
        counters = open(sink_out, "rb").read().replace(b"\r", b"\n").decode(
            errors="replace").strip().splitlines()
        sink_last = counters[-1].strip() if counters else ""
        self.report(stage="flush", protocol=proto, messages=count, recipients=rcpts,
                    mean_size=mean, concurrency=conc, seconds=round(secs, 2),
                    msgs_per_s=round(count / secs), rcpts_per_s=round(rcpts / secs),
                    removed_logged=removed, sent_logged=sent, deferred_or_bounced=problems,
                    bounce_logs=bounces, left_in_queue=left, sink=sink_last,
                    postfix={k: v for k, v in settings.items()
                             if not k.endswith("_directory") and k != "maillog_file"})
        if left or problems or sent != rcpts:
            print(f"WARNING: flush incomplete: {left} left, {problems} deferred/bounced, "
                  f"{sent} of {rcpts} recipients sent; see {log}", file=sys.stderr)


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
    p.add_argument("--run-ledger-dir", default=None,
                   help="where the smtp/lmtp/maildir runs keep their ledger copy (default: --work)")
    p.add_argument("--flush-protocols", default="smtp,lmtp",
                   help="which drains the flush stage measures")
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
            b.wire(False, a.replay_count, conc, a.mix)
        if "lmtp" in stages:
            b.wire(True, a.replay_count, conc, a.mix)
        if "flush" in stages:
            for proto in a.flush_protocols.split(","):
                b.flush(proto == "lmtp", a.replay_count, conc)


if __name__ == "__main__":
    main()
