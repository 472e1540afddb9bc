#!/usr/bin/env bash
# Benchmark: ingest time against recipients per message (issue 13.8). One `.eml` with a
# sidecar of N recipients (default 25,000, 50,000 and 100,000), plus a second copy of the
# same bytes (so every recipient is also checked as a duplicate). Prints seconds per size
# and seconds per 10,000 recipients: linear ingest keeps the second column flat (it was
# quadratic: 1.7 s, 7.9 s, 33.6 s in release before the fix).
#
# Usage: bench/many-recipients.sh [N ...]        (needs python3 and GNU date)
#        PROFILE=debug bench/many-recipients.sh  (skip the release build; slower)
set -euo pipefail

PROFILE=${PROFILE:-release}
cd "$(dirname "$0")/.."
if [ "$PROFILE" = release ]; then
    cargo build --release --quiet
else
    cargo build --quiet
fi
BIN=$PWD/target/$PROFILE/spoolreplay
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ $# -gt 0 ] || set -- 25000 50000 100000

printf '%10s %10s %14s\n' recipients seconds 's/10k rcpt'
for n in "$@"; do
    spool=$WORK/spool-$n
    mkdir -p "$spool"
    python3 - "$spool" "$n" <<'PY'
import json, sys
spool, n = sys.argv[1], int(sys.argv[2])
body = b"From: a@example.org\r\nSubject: many\r\n\r\nbody\r\n"
sidecar = {"sender": "a@example.org", "arrival": "2023-01-23T10:00:00+01:00",
           "recipients": [f"user{i}@example.net" for i in range(n)]}
for name in ("one", "copy"):
    open(f"{spool}/{name}.eml", "wb").write(body)
    json.dump(sidecar, open(f"{spool}/{name}.json", "w"))
PY
    start=$(date +%s.%N)
    "$BIN" --ledger "$WORK/ledger-$n.db" -q ingest "$spool" >/dev/null
    end=$(date +%s.%N)
    python3 -c "t = $end - $start; print(f'{$n:10d} {t:10.2f} {t / ($n * 2 / 10000):14.3f}')"
done
