#!/usr/bin/env bash
# Benchmark: the cost of coordination (issue 16).
# Messages/s of one `run` into smtp-sink with and without `--cluster` (one local
# redis-server), same spool, no --rate (so the run goes as fast as it can and every lease
# and claim is on the clock). Each pass uses a fresh ledger and a
# fresh Redis. Needs redis-server and Postfix's smtp-sink; everything lives in a temp dir.
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

pass() { # NAME EXTRA-ARGS...
    local name=$1; shift
    rm -f "$work/$name.db"
    sr --ledger "$work/$name.db" --quiet ingest "$work/spool" >/dev/null
    local start end
    start=$(date +%s.%N)
    sr --ledger "$work/$name.db" --quiet run --incident "$work/incident.toml" --now "$now" \
        --store "smtp://127.0.0.1:$sink_port" --outbox "$work/outbox-$name" "$@"
    end=$(date +%s.%N)
    python3 -c "print(f'$name: $n messages in {$end-$start:.2f} s, {$n/($end-$start):.0f} messages/s')"
}

pass alone
redis_port=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis" \
    >"$work/redis/log" 2>&1 & pids+=($!)
sleep 0.5
pass cluster --cluster "redis://127.0.0.1:$redis_port/bench"
echo "work dir: $work"
