#!/bin/bash
# Builds a real Postfix queue for spoolreplay's tests: installs Postfix (Debian) if missing,
# configures it to accept mail for test domains it cannot deliver, injects a few hundred
# varied messages, stops it, and copies the queue plus ground truth into OUTDIR:
#   OUTDIR/spool/{incoming,active,deferred,hold,maildrop,defer,bounce}/…  the queue files
#   OUTDIR/postqueue.jsonl                                              `postqueue -j`
#   OUTDIR/postcat/<queue id>                                           `postcat -bh -q ID`
#   OUTDIR/incomplete.txt                   queue ids left in incoming/ without the x bit
# Usage (as root): make-postfix-spool.sh OUTDIR [short|long]
# It replaces whatever this machine's Postfix had queued (it is meant for test machines),
# and leaves Postfix stopped. Idempotent: run it again for a fresh queue.
set -euo pipefail

OUT=${1:?usage: make-postfix-spool.sh OUTDIR [short|long]}
IDS=${2:-short}
COUNT=${POSTFIX_SPOOL_COUNT:-240}
HERE=$(cd "$(dirname "$0")" && pwd)
# Debian's own Python: python3-milter is installed for it, not for any other python3 on PATH.
PY=/usr/bin/python3
SPOOL=/var/spool/postfix
LOG=/var/log/postfix-spoolreplay.log
RUN=/run/spoolreplay-postfix
MILTER_PORT=8899
TARPIT_PORT=2526
QUEUES="incoming active deferred hold maildrop defer bounce"

case $IDS in short) LONG=no ;; long) LONG=yes ;; *) echo "ids must be short or long" >&2; exit 64 ;; esac
[ "$(id -u)" = 0 ] || { echo "make-postfix-spool.sh: must run as root" >&2; exit 77; }

say() { echo "make-postfix-spool: [$SECONDS s] $*" >&2; }

install_postfix() {
    if command -v postconf >/dev/null && $PY -c 'import Milter' 2>/dev/null; then
        return
    fi
    say "installing postfix and python3-milter"
    echo "postfix postfix/main_mailer_type select Local only" | debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends postfix python3-milter >/dev/null; then
        apt-get update >/dev/null
        apt-get install -y --no-install-recommends postfix python3-milter >/dev/null
    fi
}

# Stops what an earlier run left: Postfix, and our helpers by their recorded pids.
stop_all() {
    if postfix status >/dev/null 2>&1; then postfix stop >/dev/null 2>&1 || true; fi
    for name in milter tarpit; do
        if [ -f "$RUN/$name.pid" ]; then
            local pid
            pid=$(cat "$RUN/$name.pid")
            kill "$pid" 2>/dev/null || true
            # The milter may sit in a stalled callback: give it a moment, then insist.
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null || true
            rm -f "$RUN/$name.pid"
        fi
    done
    # `postfix stop` returns before master has gone.
    for _ in $(seq 50); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
}

empty_queue() {
    for q in $QUEUES active trace flush corrupt saved; do
        [ -d "$SPOOL/$q" ] && find "$SPOOL/$q" -mindepth 1 -type f -delete
    done
    return 0
}

configure() {
    mkdir -p "$RUN"
    : >"$LOG" && chown postfix "$LOG"
    cat >/etc/postfix/spoolreplay-transport <<EOF
done.example.test   discard:delivered by the test discard transport
slow.example.test   smtp:[127.0.0.1]:$TARPIT_PORT
EOF
    cat >/etc/postfix/spoolreplay-virtual <<EOF
list@example.test   list-a@example.test, list-b@done.example.test, list-c@example.test
info@example.test   bob@example.test
EOF
    cat >/etc/postfix/spoolreplay-header-checks <<EOF
/^X-Test-Hold: yes/ HOLD held by the test header check
EOF
    postmap /etc/postfix/spoolreplay-transport /etc/postfix/spoolreplay-virtual
    postconf -e \
        "myhostname = mx.example.test" \
        "mydestination = localhost" \
        "inet_interfaces = loopback-only" \
        "mynetworks = 127.0.0.0/8" \
        "relayhost = [127.0.0.1]:2" \
        "default_transport = smtp" "relay_transport = relay" \
        "transport_maps = hash:/etc/postfix/spoolreplay-transport" \
        "virtual_alias_maps = hash:/etc/postfix/spoolreplay-virtual" \
        "header_checks = regexp:/etc/postfix/spoolreplay-header-checks" \
        "queue_run_delay = 8h" "minimal_backoff_time = 8h" "maximal_backoff_time = 16h" \
        "delay_warning_time = 4h" \
        "smtputf8_enable = yes" \
        "message_size_limit = 52428800" \
        "enable_long_queue_ids = $LONG" \
        "smtpd_milters = inet:127.0.0.1:$MILTER_PORT" \
        "non_smtpd_milters = inet:127.0.0.1:$MILTER_PORT" \
        "milter_default_action = accept" \
        "milter_content_timeout = 120s" \
        "maillog_file = $LOG" \
        "smtp_connect_timeout = 300s" "smtp_helo_timeout = 300s"
}

start_helpers() {
    $PY "$HERE/postfix/test-milter.py" "inet:$MILTER_PORT@127.0.0.1" 60 >"$RUN/milter.log" 2>&1 &
    echo $! >"$RUN/milter.pid"
    $PY "$HERE/postfix/inject.py" tarpit "$TARPIT_PORT" >"$RUN/tarpit.log" 2>&1 &
    echo $! >"$RUN/tarpit.pid"
    for _ in $(seq 100); do
        if $PY - "$MILTER_PORT" <<'EOF' 2>/dev/null; then return; fi
import socket, sys
socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
EOF
        sleep 0.1
    done
    say "the test milter did not start: see $RUN/milter.log"
    exit 1
}

wait_for_smtp() {
    for _ in $(seq 100); do
        if $PY -c 'import socket; socket.create_connection(("127.0.0.1", 25), timeout=1).close()' 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    say "postfix does not listen on 127.0.0.1:25 (see $LOG)"
    exit 1
}

# Waits until Postfix has tried every message once: nothing left in incoming/ (but the
# stalled one) and nothing in active/ but mail for the tarpit.
wait_settled() {
    for _ in $(seq 600); do
        local busy
        busy=$(postqueue -j 2>/dev/null | $PY -c '
import json, sys
busy = 0
for line in sys.stdin:
    m = json.loads(line)
    slow = all(r["address"].endswith("@slow.example.test") for r in m["recipients"])
    if m["queue_name"] in ("incoming", "maildrop") or (m["queue_name"] == "active" and not slow):
        busy += 1
print(busy)')
        [ "$busy" = 0 ] && [ -z "$(find "$SPOOL/maildrop" -type f)" ] && return
        sleep 0.2
    done
    say "postfix did not settle within two minutes"
    exit 1
}

send_local() {
    # through postdrop and pickup: F records, -t extraction, DSN flags from the command line
    local to=$1; shift
    /usr/sbin/sendmail "$@" <<EOF
From: Local Sender <localuser@mx.example.test>
To: $to
Cc: cc-$RANDOM_TAG@example.test
Bcc: bcc-$RANDOM_TAG@example.test
Subject: local submission $RANDOM_TAG ($*)

Submitted with /usr/sbin/sendmail $*.
.a line starting with a dot
$(printf 'z%.0s' $(seq 3000))
EOF
}

local_batch() {
    local tag=$1
    RANDOM_TAG=$tag-1 send_local "plain-$tag@example.test" -F "Local Full Name" "plain-$tag@example.test"
    RANDOM_TAG=$tag-2 send_local "t-$tag@example.test, t2-$tag@done.example.test" -t
    RANDOM_TAG=$tag-3 send_local "null-$tag@example.test" -f '<>' "null-$tag@example.test"
    RANDOM_TAG=$tag-4 send_local "dsn-$tag@example.test" -N success,failure -R hdrs -V "envid-$tag" \
        -f "dsn-sender-$tag@example.test" "dsn-$tag@example.test"
    RANDOM_TAG=$tag-5 send_local "never-$tag@example.test" -N never "never-$tag@example.test" "list@example.test"
}

hold_some() {
    # postsuper -h on every fifth deferred message (header_checks already held others)
    postqueue -j | $PY -c '
import json, sys
ids = [m["queue_id"] for m in map(json.loads, sys.stdin) if m["queue_name"] == "deferred"]
print("\n".join(sorted(ids)[::5]))' | postsuper -h - 2>/dev/null
}

# Kills the cleanup process that holds the stalled message's queue file open, so the file
# stays in incoming/ without its owner-execute bit, as after a crash.
abandon_stalled() {
    local file=""
    for _ in $(seq 100); do
        file=$(find "$SPOOL/incoming" -type f ! -perm -u+x | head -n1)
        [ -n "$file" ] && break
        sleep 0.1
    done
    if [ -z "$file" ]; then say "no incomplete file appeared in incoming/"; return; fi
    local pid fd
    for pid in $(pgrep -u postfix -x cleanup); do
        for fd in /proc/"$pid"/fd/*; do
            if [ "$(readlink "$fd" 2>/dev/null)" = "$file" ]; then
                kill -9 "$pid" && say "left $(basename "$file") incomplete in incoming/ (killed cleanup $pid)"
                basename "$file" >"$OUT/incomplete.txt"
                return
            fi
        done
    done
    say "no cleanup process holds $file"
}

ground_truth() {
    postqueue -j >"$OUT/postqueue.jsonl" 2>/dev/null
    mkdir -p "$OUT/postcat"
    $PY -c '
import json, sys
for line in open(sys.argv[1]):
    print(json.loads(line)["queue_id"])' "$OUT/postqueue.jsonl" | while read -r id; do
        postcat -bh -q "$id" >"$OUT/postcat/$id" 2>/dev/null
    done
}

copy_spool() {
    mkdir -p "$OUT/spool"
    for q in $QUEUES; do
        [ -d "$SPOOL/$q" ] && cp -a "$SPOOL/$q" "$OUT/spool/"
    done
    return 0
}

main() {
    install_postfix
    mkdir -p "$OUT"
    rm -rf "$OUT/spool" "$OUT/postcat" "$OUT/postqueue.jsonl" "$OUT/incomplete.txt"
    stop_all
    empty_queue
    configure
    [ -x /usr/lib/postfix/configure-instance.sh ] && /usr/lib/postfix/configure-instance.sh - >/dev/null 2>&1 || true
    start_helpers
    postfix start >/dev/null 2>&1
    wait_for_smtp

    $PY "$HERE/postfix/inject.py" smtp "$COUNT"
    say "injected over SMTP"
    local_batch picked
    wait_settled
    say "every message tried once"
    hold_some
    # Last, because the milter serves one connection at a time and this one never ends.
    $PY "$HERE/postfix/inject.py" stall >"$RUN/stall.log" 2>&1 &
    local stall_pid=$!
    abandon_stalled
    kill "$stall_pid" 2>/dev/null || true
    postfix stop >/dev/null 2>&1
    for _ in $(seq 50); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
    # With Postfix down, postdrop leaves these in maildrop/.
    local_batch dropped 2>/dev/null

    ground_truth
    say "ground truth written"
    copy_spool
    stop_all
    say "$(wc -l <"$OUT/postqueue.jsonl") messages ($IDS ids) in $OUT"
}

main
