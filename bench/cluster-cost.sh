#!/usr/bin/env bash
# Benchmark: the cost of coordination (issue 16) and of --metrics (issue 19 item 4).
# Messages/s of one `run` into smtp-sink alone, with `--cluster` (one local redis-server)
# and with `--metrics`, same spool, no --rate (so the run goes as fast as it can and every
# lease, claim and slot is on the clock), alternated in rounds (ROUNDS, default 3), medians
# and ratios. Each pass uses a fresh ledger (and cluster name). Redis commands per message
# are counted from INFO commandstats. Needs redis-server, redis-cli and Postfix's
# smtp-sink; everything lives in a temp dir.
# Usage: [SPOOLREPLAY_BIN=path] bench/cluster-cost.sh [MESSAGES] [WORKDIR]   (default 5000)
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
n=${1:-5000}
work=${2:-$(mktemp -d -t spoolreplay-bench-cluster.XXXXXX)}
mkdir -p "$work/spool"
now=2023-01-28T06:00:00+01:00
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# SPOOLREPLAY_BIN: a binary already built (skips the release build).
bin=${SPOOLREPLAY_BIN:-$top/target/release/spoolreplay}
if [ -z "${SPOOLREPLAY_BIN:-}" ]; then
    echo "building spoolreplay (release) ..." >&2
    cargo build --release --locked --manifest-path "$top/Cargo.toml"
fi
sr() { "$bin" "$@"; }

cat >"$work/incident.toml" <<'TOML'
name = "bench"
reporting_mta = "mx1.example.net"
restored_at = "2023-01-26T13:00:00+01:00"
queue_lifetime = "30d"
lifetime_from = "arrival"
outside = "hold"

[[window]]
name = "all"
start = "2023-01-01T00:00:00+01:00"
end = "2023-01-26T13:00:00+01:00"
action = "deliver"
TOML
for i in $(seq 1 "$n"); do
    printf 'From: a@remote.test\r\nTo: u%d@example.net\r\nSubject: bench %d\r\nMessage-ID: <bench-%d@remote.test>\r\n\r\nbody %d\r\n' \
        $((i % 100)) "$i" "$i" "$i" >"$work/spool/$i.eml"
    printf '{"sender":"a@remote.test","recipients":["u%d@example.net"],"arrival":"2023-01-23T10:00:00+01:00"}' \
        $((i % 100)) >"$work/spool/$i.json"
done

sink_port=$(free_port)
mkdir -p "$work/sink" && chmod 777 "$work/sink"
# No dumps: the sink should not be what is measured.
/usr/sbin/smtp-sink -u nobody "127.0.0.1:$sink_port" 256 & pids+=($!)
sleep 0.5

redis_port=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
    >"$work/redis/log" 2>&1 & pids+=($!)
sleep 0.5

# One pass: a fresh ledger, one run; prints messages/s up to the run's summary (its
# `Exit N:` line). With --metrics the process then waits up to metrics::LINGER (5 s) for
# a last scrape of the final values; that wait is not delivery and is timed apart
# (NAME.linger: seconds from the summary to the exit, one line per pass; `pass` runs in a
# subshell). Each cluster pass gets its own cluster name (a fresh schedule, claims and
# slots in the same Redis).
rm -f "$work"/*.linger
pass() { # NAME EXTRA-ARGS...
    local name=$1; shift
    rm -f "$work/$name.db" "$work/$name.end"
    sr --ledger "$work/$name.db" --quiet ingest "$work/spool" >/dev/null
    local start end exited
    start=$(date +%s.%N)
    sr --ledger "$work/$name.db" run --incident "$work/incident.toml" --now "$now" \
        --store "smtp://127.0.0.1:$sink_port" --outbox "$work/outbox-$name" "$@" 2>/dev/null |
        while IFS= read -r line; do
            case $line in Exit*) date +%s.%N >"$work/$name.end" ;; esac
        done
    exited=$(date +%s.%N)
    end=$(cat "$work/$name.end")
    python3 -c "print(f'{$exited-$end:.2f}')" >>"$work/$name.linger"
    python3 -c "print(f'{$n/($end-$start):.1f}')"
}

# Reference and candidates alternated in one run (A B C A B C ...), so a change in the
# machine's load hits them alike; the median of the rounds is reported.
rounds=${ROUNDS:-3}
declare -A results
for r in $(seq 1 "$rounds"); do
    results[alone]+="$(pass alone) "
    redis-cli -p "$redis_port" config resetstat >/dev/null
    results[cluster]+="$(pass cluster --cluster "redis://127.0.0.1:$redis_port/bench$r") "
    # Redis commands per message: EVALSHA (claims, leases, heartbeats, slots) and SET EX
    # (confirmations). INFO commandstats also counts the commands the scripts run inside
    # Redis; those are left out. Since confirmations ride in the next claim's pipeline,
    # commands are not round trips: count those with `strace -f -yy -e trace=sendto,write`
    # (writes to the Redis socket; BENCHMARKS.md section 7).
    calls=$(redis-cli -p "$redis_port" info commandstats | python3 -c "
import sys
total = 0
for line in sys.stdin:
    if line.startswith(('cmdstat_evalsha:', 'cmdstat_setex:')):
        total += int(line.split('calls=')[1].split(',')[0])
print(total)")
    results[calls]+="$(python3 -c "print(f'{$calls/$n:.2f}')") "
    results[metrics]+="$(pass metrics --metrics "127.0.0.1:$(free_port)") "
    echo "round $r done" >&2
done
median() { python3 -c "import statistics,sys; print(f'{statistics.median(map(float, sys.argv[1:])):.1f}')" $1; }
for k in alone cluster metrics calls; do  # calls: Redis commands per message
    echo "$k: ${results[$k]}(median $(median "${results[$k]}"))"
done
python3 -c "print(f'cluster/alone: {$(median "${results[cluster]}")/$(median "${results[alone]}"):.3f}')"
python3 -c "print(f'metrics/alone: {$(median "${results[metrics]}")/$(median "${results[alone]}"):.3f}')"
for k in alone cluster metrics; do  # seconds from the summary to the exit
    echo "after the summary, $k: $(tr '\n' ' ' <"$work/$k.linger")s"
done
echo "work dir: $work"
