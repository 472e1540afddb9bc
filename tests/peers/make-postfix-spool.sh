#!/bin/bash
# Builds a real Postfix queue for spoolreplay's tests: installs Postfix (Debian) if missing,
# runs a private Postfix instance configured to accept mail for test domains it cannot
# deliver, injects a few hundred varied messages, stops it, and copies the queue plus
# ground truth into OUTDIR:
#   OUTDIR/spool/{incoming,active,deferred,hold,maildrop,defer,bounce}/…  the queue files
#   OUTDIR/postqueue.jsonl                                              `postqueue -j`
#   OUTDIR/postcat/<queue id>                                           `postcat -bh -q ID`
#   OUTDIR/incomplete.txt                   queue ids left in incoming/ without the x bit
#   OUTDIR/instance/                        the instance: etc/, queue/, data/, run/, postfix.log
# Usage (as root): make-postfix-spool.sh OUTDIR [short|long]
#
# The instance is the machine's business only in that it uses its Postfix binaries: its
# config_directory, queue_directory and data_directory live under OUTDIR/instance, smtpd
# listens on 127.0.0.1:<a free port>, the test milter on a unix socket in run/, the tarpit
# on a port the kernel picked. Nothing under /etc/postfix, /var/spool/postfix, /run or
# /var/log is touched, so two runs at once (and the machine's own Postfix) cannot collide.
# Every process it starts (Postfix's master and its children, the milter, the tarpit, the
# stalled injector) is stopped when it exits, however it exits.
set -euo pipefail

OUT=${1:?usage: make-postfix-spool.sh OUTDIR [short|long]}
IDS=${2:-short}
COUNT=${POSTFIX_SPOOL_COUNT:-240}
HERE=$(cd "$(dirname "$0")" && pwd)
# Debian's own Python: python3-milter is installed for it, not for any other python3 on PATH.
PY=/usr/bin/python3
QUEUES="incoming active deferred hold maildrop defer bounce"

case $IDS in short) LONG=no ;; long) LONG=yes ;; *) echo "ids must be short or long" >&2; exit 64 ;; esac
[ "$(id -u)" = 0 ] || { echo "make-postfix-spool.sh: must run as root" >&2; exit 77; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$OUT/instance
CONF=$W/etc
SPOOL=$W/queue
RUN=$W/run
LOG=$W/postfix.log
# Every Postfix command of this script talks to this instance only.
export MAIL_CONFIG=$CONF

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

# A port nobody listens on now (the kernel's pick; released for Postfix to bind).
free_port() {
    $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Stops this instance's Postfix and our helpers by their recorded pids. Runs on every
# exit (the EXIT trap), so a failure half-way leaves nothing running.
stop_all() {
    if [ -f "$CONF/main.cf" ] && postfix status >/dev/null 2>&1; then
        postfix stop >/dev/null 2>&1 || true
        # `postfix stop` returns before master has gone.
        for _ in $(seq 50); do postfix status >/dev/null 2>&1 || break; sleep 0.1; done
    fi
    # Still there (stop refused, a stuck daemon): master's pid file names it.
    if [ -f "$SPOOL/pid/master.pid" ]; then
        local master
        master=$(tr -dc 0-9 <"$SPOOL/pid/master.pid")
        [ -n "$master" ] && kill -9 "$master" 2>/dev/null || true
    fi
    for name in milter tarpit stall; do
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
    # Postfix daemons whose master is gone (kill -9 above) run from this queue directory.
    local pid
    for pid in $(pgrep -u postfix 2>/dev/null || true); do
        [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$SPOOL" ] && kill -9 "$pid" 2>/dev/null || true
    done
    return 0
}
trap stop_all EXIT
# Signals end the script through its EXIT trap; so does a broken pipe (the test that
# reads our output is gone), after which stop_all writes nothing anywhere.
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 141' PIPE

prepare() {
    rm -rf "$W"
    mkdir -p "$CONF" "$SPOOL" "$W/data" "$RUN"
    # Postfix's daemons run as `postfix`: they must reach the instance through OUTDIR (a
    # 0700 temp dir).
    chmod 755 "$OUT" "$W"
    : >"$LOG"
}

configure() {
    SMTP_PORT=$(free_port)
    cat >"$CONF/spoolreplay-transport" <<EOF
done.example.test   discard:delivered by the test discard transport
slow.example.test   smtp:[127.0.0.1]:$TARPIT_PORT
EOF
    cat >"$CONF/spoolreplay-virtual" <<EOF
list@example.test   list-a@example.test, list-b@done.example.test, list-c@example.test
info@example.test   bob@example.test
EOF
    cat >"$CONF/spoolreplay-header-checks" <<EOF
/^X-Test-Hold: yes/ HOLD held by the test header check
EOF
    # No chroot (it would need copies of /etc files inside the queue) and only the
    # services the test uses; smtpd on the instance's own port.
    cat >"$CONF/master.cf" <<EOF
127.0.0.1:$SMTP_PORT inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
    cat >"$CONF/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $SPOOL
data_directory = $W/data
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-spoolreplay-test
maillog_file = $LOG
maillog_file_prefixes = $W
myhostname = mx.example.test
mydestination = localhost
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
relayhost = [127.0.0.1]:2
default_transport = smtp
relay_transport = relay
transport_maps = hash:$CONF/spoolreplay-transport
virtual_alias_maps = hash:$CONF/spoolreplay-virtual
header_checks = regexp:$CONF/spoolreplay-header-checks
queue_run_delay = 8h
minimal_backoff_time = 8h
maximal_backoff_time = 16h
delay_warning_time = 4h
smtputf8_enable = yes
message_size_limit = 52428800
enable_long_queue_ids = $LONG
smtpd_milters = unix:$RUN/milter.sock
non_smtpd_milters = unix:$RUN/milter.sock
milter_default_action = accept
milter_content_timeout = 120s
smtp_connect_timeout = 300s
smtp_helo_timeout = 300s
EOF
    postmap "$CONF/spoolreplay-transport" "$CONF/spoolreplay-virtual"
    # Creates the queue's subdirectories with Postfix's owners and modes.
    postfix set-permissions >/dev/null 2>&1 || postfix check >/dev/null
}

start_helpers() {
    # The milter listens on a unix socket of this instance: no port to collide on.
    (umask 000 && exec $PY "$HERE/postfix/test-milter.py" "unix:$RUN/milter.sock" 60) \
        >"$RUN/milter.log" 2>&1 &
    echo $! >"$RUN/milter.pid"
    # The tarpit binds port 0 and writes the port the kernel gave it.
    $PY "$HERE/inject.py" tarpit "$RUN/tarpit.port" >"$RUN/tarpit.log" 2>&1 &
    echo $! >"$RUN/tarpit.pid"
    for _ in $(seq 100); do
        if [ -S "$RUN/milter.sock" ] && [ -s "$RUN/tarpit.port" ]; then
            TARPIT_PORT=$(cat "$RUN/tarpit.port")
            return
        fi
        sleep 0.1
    done
    say "the test milter or the tarpit did not start: see $RUN/milter.log, $RUN/tarpit.log"
    exit 1
}

# Until smtpd greets as this instance: the port was free when picked, but only the
# greeting proves that it is ours and not a process that took the port meanwhile.
wait_for_smtp() {
    for _ in $(seq 100); do
        if $PY - "$SMTP_PORT" <<'EOF' 2>/dev/null; then return; fi
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    assert s.makefile("rb").readline().startswith(b"220 mx.example.test")
EOF
        sleep 0.1
    done
    say "this instance's postfix does not greet on 127.0.0.1:$SMTP_PORT (see $LOG)"
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
# stays in incoming/ without its owner-execute bit, as after a crash. Only this instance's
# cleanup can hold a file of this queue.
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
    rm -rf "$OUT/spool" "$OUT/postcat" "$OUT/postqueue.jsonl" "$OUT/incomplete.txt"
    stop_all
    prepare
    start_helpers
    configure
    postfix start >/dev/null 2>&1 || { say "postfix start failed (see $LOG)"; exit 1; }
    wait_for_smtp

    $PY "$HERE/inject.py" postfix "$SMTP_PORT" "$COUNT"
    say "injected over SMTP"
    local_batch picked
    wait_settled
    say "every message tried once"
    hold_some
    # Last, because the milter serves one connection at a time and this one never ends.
    $PY "$HERE/inject.py" stall "$SMTP_PORT" >"$RUN/stall.log" 2>&1 &
    echo $! >"$RUN/stall.pid"
    abandon_stalled
    kill "$(cat "$RUN/stall.pid")" 2>/dev/null || true
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
