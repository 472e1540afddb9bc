#!/usr/bin/python3
"""Copies a small, covering set of real queue files from two make-postfix-spool.sh runs
into fixtures/postfix/ (spool/, postqueue.jsonl, postcat/, incomplete.txt, cases.txt).

Usage: pick-fixtures.py SHORT_RUN_DIR LONG_RUN_DIR FIXTURE_DIR
Each case is a name and a queue id; tests/it/postfix.rs looks cases up by name.
"""
import json
import os
import shutil
import subprocess
import sys


def load(run):
    entries = [json.loads(l) for l in open(os.path.join(run, "postqueue.jsonl"))]
    paths = {}
    for root, _, files in os.walk(os.path.join(run, "spool")):
        queue = os.path.relpath(root, os.path.join(run, "spool")).split(os.sep)[0]
        if queue in ("defer", "bounce"):
            continue
        for f in files:
            paths[f] = os.path.join(root, f)
    for e in entries:
        e["path"] = paths[e["queue_id"]]
        e["postcat"] = open(os.path.join(run, "postcat", e["queue_id"]), "rb").read()
        e["records"] = subprocess.run(["postcat", "-o", "-v", e["path"]], capture_output=True,
                                      text=True, errors="replace").stdout
        e["size"] = os.path.getsize(e["path"])
    return sorted(entries, key=lambda e: (e["size"], e["queue_id"]))


def pick(entries, name, test, taken):
    for e in entries:
        if e["queue_id"] not in taken and test(e):
            taken[e["queue_id"]] = (name, e)
            return
    sys.exit(f"pick-fixtures: no message for case {name}")


def main():
    short_run, long_run, out = sys.argv[1:4]
    short, long_ = load(short_run), load(long_run)
    taken = {}
    body = lambda s: (lambda e: s.encode() in e["postcat"])
    q = lambda name: (lambda e: e["queue_name"] == name)
    cases = [
        ("done", lambda e: "done_recipient" in e["records"] and q("deferred")(e)),
        ("null", lambda e: e["sender"] == "MAILER-DAEMON" and q("deferred")(e)),
        ("dsn", lambda e: body("DSN parameters")(e) and "ret_flags=" in e["records"]),
        ("local-dsn", lambda e: e["sender"] == "dsn-sender-picked@example.test"),
        ("longline", lambda e: body("Long lines")(e)),
        ("pointer", lambda e: body("X-Milter-Added")(e) and q("deferred")(e)),
        ("cancelled", lambda e: "canceled_recipient" in e["records"]),
        ("replacebody", body("This body was replaced")),
        ("chgheader", body("subject replaced by the test milter")),
        ("utf8", body("SMTPUTF8")),
        ("quoted", lambda e: e["sender"].startswith('"')),
        ("alias", lambda e: body("To an alias")(e) and "bob@" in json.dumps(e["recipients"])),
        ("8bit", body("8-bit body")),
        ("hold", q("hold")),
        ("active", q("active")),
        ("maildrop", lambda e: q("maildrop")(e) and e["sender"] == "root"),
        ("maildrop-null", lambda e: q("maildrop")(e) and e["sender"] == "MAILER-DAEMON"),
        ("picked-t", body("local submission picked-2")),
    ]
    for name, test in cases:
        pick(short, name, test, taken)
    pick(long_, "long-id", lambda e: "done_recipient" in e["records"], taken)
    pick(long_, "long-id-pointer", lambda e: body("X-Milter-Added")(e), taken)

    shutil.rmtree(os.path.join(out, "spool"), ignore_errors=True)
    shutil.rmtree(os.path.join(out, "postcat"), ignore_errors=True)
    os.makedirs(os.path.join(out, "postcat"))
    lines, case_lines = [], []
    for qid, (name, e) in sorted(taken.items(), key=lambda kv: kv[1][0]):
        run = short_run if e in short else long_run
        rel = os.path.relpath(e["path"], run)
        dest = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(e["path"], dest)
        shutil.copy2(os.path.join(run, "postcat", qid), os.path.join(out, "postcat", qid))
        entry = {k: v for k, v in e.items() if k not in ("path", "postcat", "records", "size")}
        lines.append(json.dumps(entry))
        case_lines.append(f"{name} {qid}")
        if name == "done":  # a defer/ log, which the reader must skip
            log = os.path.join(run, rel.replace("spool/deferred", "spool/defer"))
            os.makedirs(os.path.dirname(log.replace(run, out)), exist_ok=True)
            shutil.copy2(log, log.replace(run, out))
    # the file cleanup never finished
    incomplete = open(os.path.join(short_run, "incomplete.txt")).read().split()
    for qid in incomplete:
        os.makedirs(os.path.join(out, "spool/incoming"), exist_ok=True)
        shutil.copy2(os.path.join(short_run, "spool/incoming", qid),
                     os.path.join(out, "spool/incoming", qid))
    open(os.path.join(out, "incomplete.txt"), "w").write("".join(i + "\n" for i in incomplete))
    open(os.path.join(out, "postqueue.jsonl"), "w").write("\n".join(lines) + "\n")
    open(os.path.join(out, "cases.txt"), "w").write("\n".join(case_lines) + "\n")
    print(f"pick-fixtures: {len(taken)} queue files into {out}")


if __name__ == "__main__":
    main()
