#!/usr/bin/env bash
# The whole recovery tour on the bundled sample spool, with the embedded defaults:
# the sample spool in fixtures/, a Maildir store and an outbox in a fresh temp folder.
# Usage: scripts/sample-recovery.sh [WORKDIR]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d -t spoolreplay-sample.XXXXXX)}
mkdir -p "$work"
# The sample's mail is from January 2023; classify as of a fixed time two days after the
# store came back, so some of the queue has expired and the rest is still deliverable.
now=2023-01-28T06:00:00+01:00

# Not --quiet: a first release build takes minutes, and cargo's progress goes to stderr.
echo "building spoolreplay (release) ..." >&2
cargo build --release --locked --manifest-path "$top/Cargo.toml"
sr() { "$top/target/release/spoolreplay" --ledger "$work/spoolreplay.db" "$@"; }

set -x
sr ingest "$top/fixtures/sample-spool"
sr report --incident "$top/fixtures/incident.toml" --now "$now" --rate 500/s
sr run --incident "$top/fixtures/incident.toml" --now "$now" \
    --store "maildir:$work/restored" --outbox "$work/bounces" --rate 500/s --batch-size 100
sr status
sr bounces
set +x
echo
echo "ledger:   $work/spoolreplay.db"
echo "store:    $work/restored ($(find "$work/restored" -type f | wc -l) messages)"
echo "bounces:  $work/bounces ($(find "$work/bounces" -name '*.eml' | wc -l) DSNs, not sent yet)"
echo "send them through your outgoing MTA:"
echo "  $top/target/release/spoolreplay --ledger $work/spoolreplay.db bounces send --relay smtp://HOST:25"
