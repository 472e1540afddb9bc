#!/usr/bin/env bash
# Benchmark: `spoolreplay audit` streams a ledger of N recipients (default 1,000,000) in
# bounded memory. Builds the ledger quickly by SQL (the schema comes from a real `ingest`
# of one message, so it is the current one), then reports the peak RSS of a full export,
# of a filtered export, and of `report --affected`, next to a 10,000-recipient ledger for
# comparison: the peaks should be about the same.
#
# Usage: bench/audit-memory.sh [RECIPIENTS]      (needs sqlite3, bc and GNU time)
#        PROFILE=debug bench/audit-memory.sh     (skip the release build; same memory, slower)
set -euo pipefail

N=${1:-1000000}
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

make_ledger() { # $1 ledger path, $2 recipients (two per message)
    local ledger=$1 recipients=$2
    mkdir -p "$WORK/spool"
    printf 'Subject: x\r\n\r\nx\r\n' > "$WORK/spool/seed.eml"
    printf '{"sender": "s@example.org", "recipients": ["r@example.net"], "arrival": "2023-01-23T10:00:00+01:00"}' \
        > "$WORK/spool/seed.json"
    "$BIN" --ledger "$ledger" -q ingest --format eml "$WORK/spool" >/dev/null
    sqlite3 "$ledger" >/dev/null <<SQL
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < $recipients / 2 + 1)
INSERT INTO messages (id, content_hash, source_format, source_path, source_offset, source_len,
    queue_id, size, sender, sender_from, recipients_from, arrival, arrival_unix, arrival_from, ingested_at)
SELECT i, printf('%064x', i), 'eml', '/spool/' || i || '.eml', 0, 100, 'q' || i, 2000,
    'sender' || (i % 5000) || '@domain' || (i % 300) || '.example', 'sidecar', 'sidecar',
    '2023-01-23T10:00:00+01:00', 1674464400, 'sidecar', '2023-01-27T00:00:00.000Z' FROM n;
INSERT INTO recipients (message_id, address, domain, state, reply, updated_at)
SELECT id, 'user' || (id % 100000) || '@example.net', 'example.net', 'delivered', 'ok', 'x'
    FROM messages WHERE id > 1;
INSERT INTO recipients (message_id, address, domain, state, reply, updated_at)
SELECT id, 'other' || (id % 100000) || '@example.com', 'example.com',
    CASE id % 4 WHEN 0 THEN 'bounced' WHEN 1 THEN 'held' ELSE 'delivered' END, 'ok', 'x'
    FROM messages WHERE id > 1;
INSERT INTO events (recipient_id, at, from_state, to_state, detail)
SELECT id, '2023-01-27T00:00:00.000Z', NULL, 'pending', 'ingested' FROM recipients WHERE message_id > 1;
INSERT INTO events (recipient_id, at, from_state, to_state, detail)
SELECT id, '2023-01-27T01:00:00.000Z', 'pending', 'in_flight', 'handed to the store' FROM recipients
    WHERE message_id > 1 AND state = 'delivered';
INSERT INTO events (recipient_id, at, from_state, to_state, detail)
SELECT id, '2023-01-27T01:00:01.000Z', 'in_flight', 'delivered', '/restored/new/' || id FROM recipients
    WHERE message_id > 1 AND state = 'delivered';
COMMIT;
PRAGMA wal_checkpoint(TRUNCATE);
SQL
}

peak_kb() { # the command's peak RSS in KB; its stdout is counted in lines
    /usr/bin/time -v "$@" 2> "$WORK/time" | wc -l > "$WORK/lines"
    grep 'Maximum resident set size' "$WORK/time" | awk '{print $NF}'
}

measure() { # $1 label, $2 ledger
    local ledger=$2
    local recipients
    recipients=$(sqlite3 "$ledger" 'SELECT count(*) FROM recipients')
    local t0 t1 kb
    t0=$(date +%s.%N)
    kb=$(peak_kb "$BIN" --ledger "$ledger" audit)
    t1=$(date +%s.%N)
    printf '%-8s %9s recipients  audit:            %6s KB peak RSS, %s lines, %.1fs\n' \
        "$1" "$recipients" "$kb" "$(cat "$WORK/lines")" "$(echo "$t1 - $t0" | bc)"
    kb=$(peak_kb "$BIN" --ledger "$ledger" audit --state held)
    printf '%-8s %9s recipients  audit --state held: %5s KB peak RSS, %s lines\n' \
        "$1" "$recipients" "$kb" "$(cat "$WORK/lines")"
    kb=$(peak_kb "$BIN" --ledger "$ledger" report --affected --format csv)
    printf '%-8s %9s recipients  report --affected: %5s KB peak RSS, %s lines\n' \
        "$1" "$recipients" "$kb" "$(cat "$WORK/lines")"
}

echo "building ledgers in $WORK …" >&2
make_ledger "$WORK/small.db" 10000
rm -rf "$WORK/spool"
make_ledger "$WORK/big.db" "$N"
measure small "$WORK/small.db"
measure big "$WORK/big.db"
