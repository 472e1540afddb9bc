#!/usr/bin/env bash
# Benchmark row: `run` into one throw-away Dovecot over IMAP APPEND and over LMTP, same
# spool (bench/gen_spool.py, eml), same --concurrency, each from its own fresh ledger and
# an empty mail folder (Dovecot restarted between runs). Reference (LMTP) and candidate
# (IMAP) alternate in one invocation, ROUNDS times (ABAB…), so load on a shared machine
# hits both alike; prints one JSON line per run, then the medians and the ratio. Then
# bench/imap_steps.py times the steps of one IMAP copy against the same Dovecot (where
# the time goes).
# IMAP opens one connection per mailbox run (AUTHENTICATE as the recipient through a
# master user), LMTP one per worker: the difference is what the row shows.
#
# Usage: bench/imap-vs-lmtp.sh                 (COUNT=2000 CONCURRENCY=4 ROUNDS=3 PROFILE=release)
#        COUNT=200 ROUNDS=1 PROFILE=debug bench/imap-vs-lmtp.sh
#        TUNED=1 bench/imap-vs-lmtp.sh   (Dovecot's login and imap processes reused:
#                                         service_count = 0, a few kept ready)
# Needs dovecot-core, dovecot-lmtpd, dovecot-imapd and python3; run as root (Dovecot
# delivers as uid 5000).
set -euo pipefail

COUNT=${COUNT:-2000}
CONCURRENCY=${CONCURRENCY:-4}
ROUNDS=${ROUNDS:-3}
TUNED=${TUNED:-0}
PROFILE=${PROFILE:-release}
cd "$(dirname "$0")/.."
if [ "$PROFILE" = release ]; then
    cargo build --release --quiet
else
    cargo build --quiet
fi
BIN=$PWD/target/$PROFILE/spoolreplay
WORK=$(mktemp -d)
chmod 755 "$WORK"
cleanup() {
    doveadm -c "$WORK/dovecot.conf" stop 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LMTP_PORT=$(free_port)
IMAP_PORT=$(free_port)
mkdir -p "$WORK/mail" && chown 5000:5000 "$WORK/mail"
echo "replay:{PLAIN}masterpw::::::" > "$WORK/masters"
cat > "$WORK/dovecot.conf" <<CONF
protocols = lmtp imap
base_dir = $WORK/run
state_dir = $WORK/state
log_path = $WORK/dovecot.log
ssl = no
disable_plaintext_auth = no
listen = 127.0.0.1
first_valid_uid = 1
mail_location = maildir:~/Maildir
auth_master_user_separator = *
passdb {
  driver = passwd-file
  master = yes
  args = scheme=PLAIN $WORK/masters
  pass = yes
}
# Every address is a mailbox: the synthetic spool has 20,000 of them.
passdb {
  driver = static
  args = nopassword=y
}
userdb {
  driver = static
  args = uid=5000 gid=5000 home=$WORK/mail/%d/%n
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = $LMTP_PORT
  }
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
CONF
if [ "$TUNED" = 1 ]; then
    # Dovecot's defaults start a new imap-login and a new imap process for every
    # connection (service_count = 1): what a login per mailbox pays for.
    cat >> "$WORK/dovecot.conf" <<CONF
service imap-login {
  service_count = 0
  process_min_avail = $CONCURRENCY
}
service imap {
  service_count = 0
  process_min_avail = $CONCURRENCY
}
CONF
fi
# A fresh, empty store for every run: mailboxes that grow from run to run would make the
# later runs slower whatever their target.
start_store() {
    doveadm -c "$WORK/dovecot.conf" stop 2>/dev/null || true
    for _ in $(seq 100); do
        [ -e "$WORK/run/master.pid" ] || break
        sleep 0.05
    done
    rm -rf "$WORK/mail" && mkdir -p "$WORK/mail" && chown 5000:5000 "$WORK/mail"
    dovecot -c "$WORK/dovecot.conf" </dev/null >"$WORK/dovecot.stderr" 2>&1
    for port in $LMTP_PORT $IMAP_PORT; do
        for _ in $(seq 100); do
            python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null && break
            sleep 0.05
        done
    done
}

python3 bench/gen_spool.py --format eml --count "$COUNT" --mix small "$WORK/spool" >/dev/null
NOW=2023-01-26T14:00:00+01:00
: > "$WORK/rows.jsonl"
for round in $(seq "$ROUNDS"); do
    for target in lmtp imap; do
        start_store
        ledger=$WORK/$target-$round.db
        "$BIN" --ledger "$ledger" --quiet ingest "$WORK/spool"
        store=lmtp://127.0.0.1:$LMTP_PORT
        [ "$target" = imap ] && store=imap://127.0.0.1:$IMAP_PORT
        SPOOLREPLAY_IMAP_USER=replay SPOOLREPLAY_IMAP_PASSWORD=masterpw \
            "$BIN" --ledger "$ledger" --json run --incident bench/incident.toml --store "$store" \
            --now "$NOW" --concurrency "$CONCURRENCY" --max-bounce-share 100 \
            > "$WORK/$target.json" || true
        python3 - "$target" "$round" "$COUNT" "$CONCURRENCY" "$WORK/$target.json" <<'PY' | tee -a "$WORK/rows.jsonl"
import json, sys
target, rnd, count, conc, path = sys.argv[1:]
summary = [e for e in map(json.loads, open(path)) if e.get("type") == "run_summary"][-1]
secs = summary["seconds"]
print(json.dumps({
    "bench": "imap-vs-lmtp", "target": target, "round": int(rnd),
    "spool_messages": int(count), "concurrency": int(conc), "messages": summary["messages"],
    "delivered": summary["delivered"], "seconds": round(secs, 3),
    "messages_per_s": round(summary["messages"] / secs, 1) if secs else None,
    "exit": summary["exit"],
}))
PY
    done
done
python3 - "$WORK/rows.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = {t: statistics.median(r["seconds"] for r in rows if r["target"] == t) for t in ("lmtp", "imap")}
print(json.dumps({
    "bench": "imap-vs-lmtp", "summary": True, "rounds": len(rows) // 2,
    "median_seconds": med, "imap_over_lmtp": round(med["imap"] / med["lmtp"], 2),
}))
PY
start_store
python3 bench/imap_steps.py "$IMAP_PORT" "$LMTP_PORT"
