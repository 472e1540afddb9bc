#!/usr/bin/env python3
"""Median share of the reference per (stage, concurrency, binary) from the RESULT lines of
bench/abab-wire.sh or bench/abab-maildir.sh: abab-summary.py LOG"""
import json,sys,statistics,collections
rows=[json.loads(l.split("RESULT ",1)[1]) for l in open(sys.argv[1]) if l.startswith("RESULT")]
g=collections.defaultdict(list)
for r in rows:
    if r["stage"] not in ("smtp","lmtp","maildir"): continue
    lab=r["binary"].rsplit("-r",1)[0]
    g[(r["stage"],r.get("concurrency"),lab)].append(r)
for k in sorted(g):
    rs=g[k]
    ratio=[r["ratio_of_ref"] for r in rs]
    ours=[r.get("msgs_per_s") or r.get("copies_per_s") for r in rs]
    ref=[r.get("ref_msgs_per_s") or r.get("ref_copies_per_s") for r in rs]
    print(k, "n=%d"%len(rs), "ratio median %.2f"%statistics.median(ratio), "all", ratio, "ours", ours, "ref", ref)
