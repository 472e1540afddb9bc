#!/usr/bin/env bash
# Benchmark: peak RSS of `run` and `bounces send` against a store (relay) whose reply after
# the final dot is a line that never ends (bench/hostile_peer.py streams up to 2 GiB of
# `x`). Every reply read is bounded (src/deliver/reply.rs: 4096 octets a line, 200 lines),
# so the client refuses it as "reply too long" after 4 KB and memory stays flat. Before
# December 2026 (lettre) the same run grew to 6 GB in 16 s, `bounces send` to 4 GB.
#
# Bound: each peak under BOUND_MB (default 100 MB); the script exits 1 if one is over.
#
# Usage: bench/hostile-reply-memory.sh        (needs python3 and GNU time)
#        PROFILE=debug bench/hostile-reply-memory.sh
set -euo pipefail

BOUND_MB=${BOUND_MB:-100}
PROFILE=${PROFILE:-release}
cd "$(dirname "$0")/.."
if [ "$PROFILE" = release ]; then
    cargo build --release --quiet
else
    cargo build --quiet
fi
BIN=$PWD/target/$PROFILE/spoolreplay
WORK=$(mktemp -d)
PEERS=()
cleanup() {
    for pid in "${PEERS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

start_peer() { # $1 mode; sets PORT
    python3 bench/hostile_peer.py "$1" > "$WORK/port.$1" &
    PEERS+=($!)
    for _ in $(seq 100); do
        PORT=$(cat "$WORK/port.$1")
        [ -n "$PORT" ] && return
        sleep 0.05
    done
    echo "the $1 peer did not start" >&2
    exit 1
}

mkdir -p "$WORK/spool"
for i in 1 2 3; do
    printf 'Message-ID: <hostile-%s@example.org>\r\nSubject: %s\r\n\r\nbody\r\n' "$i" "$i" \
        > "$WORK/spool/$i.eml"
    printf '{"sender": "s@example.org", "recipients": ["r%s@example.net"], "arrival": "2023-01-23T10:00:00+01:00"}' \
        "$i" > "$WORK/spool/$i.json"
done

peak_kb() { # runs the command, prints its peak RSS in KB (its exit code is not ours)
    /usr/bin/time -v "$@" > "$WORK/out" 2> "$WORK/time" || true
    grep 'Maximum resident set size' "$WORK/time" | awk '{print $NF}'
}

over=0
report() { # $1 label, $2 KB
    local mb=$(( $2 / 1024 ))
    local verdict=ok
    if [ "$mb" -ge "$BOUND_MB" ]; then verdict="OVER THE BOUND"; over=1; fi
    printf '%-40s %7s KB peak RSS (bound %s MB): %s\n' "$1" "$2" "$BOUND_MB" "$verdict"
}

run_args=(run --incident bench/incident.toml --now 2023-01-23T16:00:00+01:00)

# run: every message's reply after the dot never ends.
"$BIN" --ledger "$WORK/run.db" -q ingest --format eml "$WORK/spool" > /dev/null
start_peer endless
kb=$(peak_kb "$BIN" --ledger "$WORK/run.db" --json "${run_args[@]}" \
    --store "smtp://127.0.0.1:$PORT" --uncertain hold --outbox "$WORK/outbox")
grep -q 'reply too long' "$WORK/out" || { echo "run: no 'reply too long' in its output" >&2; exit 1; }
report "run (3 messages, endless replies)" "$kb"

# bounces send: a store refuses every recipient (3 DSNs owed), the relay's reply never ends.
"$BIN" --ledger "$WORK/dsn.db" -q ingest --format eml "$WORK/spool" > /dev/null
start_peer refuse
"$BIN" --ledger "$WORK/dsn.db" -q "${run_args[@]}" --store "smtp://127.0.0.1:$PORT" > /dev/null || true
start_peer endless
kb=$(peak_kb "$BIN" --ledger "$WORK/dsn.db" --json bounces send --relay "smtp://127.0.0.1:$PORT")
grep -q 'reply too long' "$WORK/out" || { echo "bounces send: no 'reply too long' in its output" >&2; exit 1; }
report "bounces send (3 DSNs, endless replies)" "$kb"

exit $over
