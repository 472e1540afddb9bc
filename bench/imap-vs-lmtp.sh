#!/usr/bin/env bash
# Benchmark row: `run` into one throw-away Dovecot over IMAP APPEND and over LMTP, same
# spool (bench/gen_spool.py, eml), same --concurrency, each from its own fresh ledger.
# Prints one JSON line per target: messages, recipients delivered, seconds, messages/s.
# IMAP opens one connection per mailbox run (AUTHENTICATE as the recipient through a
# master user), LMTP one per worker: the difference is what the row shows.
#
# Usage: bench/imap-vs-lmtp.sh                 (COUNT=2000 CONCURRENCY=4 PROFILE=release)
#        COUNT=200 PROFILE=debug bench/imap-vs-lmtp.sh
# Needs dovecot-core, dovecot-lmtpd, dovecot-imapd and python3; run as root (Dovecot
# delivers as uid 5000).
set -euo pipefail

COUNT=${COUNT:-2000}
CONCURRENCY=${CONCURRENCY:-4}
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
dovecot -c "$WORK/dovecot.conf" </dev/null >"$WORK/dovecot.stderr" 2>&1
for _ in $(seq 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1', $IMAP_PORT), 1)" 2>/dev/null && break
    sleep 0.05
done

python3 bench/gen_spool.py --format eml --count "$COUNT" --mix small "$WORK/spool" >/dev/null
NOW=2023-01-26T14:00:00+01:00
for target in lmtp imap; do
    ledger=$WORK/$target.db
    "$BIN" --ledger "$ledger" --quiet ingest "$WORK/spool"
    store=lmtp://127.0.0.1:$LMTP_PORT
    [ "$target" = imap ] && store=imap://127.0.0.1:$IMAP_PORT
    SPOOLREPLAY_IMAP_USER=replay SPOOLREPLAY_IMAP_PASSWORD=masterpw \
        "$BIN" --ledger "$ledger" --json run --incident bench/incident.toml --store "$store" \
        --now "$NOW" --concurrency "$CONCURRENCY" --max-bounce-share 100 \
        > "$WORK/$target.json" || true
    python3 - "$target" "$COUNT" "$CONCURRENCY" "$WORK/$target.json" <<'PY'
import json, sys
target, count, conc, path = sys.argv[1:]
summary = [e for e in map(json.loads, open(path)) if e.get("type") == "run_summary"][-1]
secs = summary["seconds"]
print(json.dumps({
    "bench": "imap-vs-lmtp", "target": target, "spool_messages": int(count),
    "concurrency": int(conc), "messages": summary["messages"],
    "delivered": summary["delivered"], "seconds": round(secs, 3),
    "messages_per_s": round(summary["messages"] / secs, 1) if secs else None,
    "exit": summary["exit"],
}))
PY
done
