#!/usr/bin/python3
"""Injects a deterministic, varied set of messages into Postfix over SMTP (127.0.0.1:PORT),
for make-postfix-spool.sh. Usage: inject.py smtp PORT COUNT | inject.py stall PORT |
inject.py tarpit PORTFILE (listens on a port the kernel picks and writes it to PORTFILE)

Domains (see make-postfix-spool.sh): example.test goes to a relay that refuses (deferred),
done.example.test to discard: (done `D` records), slow.example.test to a tarpit (stays in
active/), list@ and info@example.test are virtual aliases (`O` records).
"""
import os
import random
import smtplib
import socket
import sys
import time

CRLF = b"\r\n"


def headers(i, sender_hdr, to_hdr, subject, extra=()):
    lines = [
        f"From: {sender_hdr}",
        f"To: {to_hdr}",
        f"Subject: {subject} #{i}",
        f"Message-ID: <inject-{i}@injector.example.test>",
        "Date: Mon, 23 Jan 2023 10:00:00 +0100",
        "MIME-Version: 1.0",
    ]
    lines.extend(extra)
    return lines


def text_message(i, sender_hdr, to_hdr, subject, body_lines, extra=(), charset="us-ascii",
                 cte="7bit"):
    lines = headers(i, sender_hdr, to_hdr, subject, extra)
    lines += [f"Content-Type: text/plain; charset={charset}", f"Content-Transfer-Encoding: {cte}", ""]
    out = CRLF.join(l.encode("utf-8") if isinstance(l, str) else l for l in lines + body_lines)
    return out + CRLF


def attachment_message(i, size):
    rnd = random.Random(i)
    lines = headers(i, "big@remote.test", "big@example.test", "Large attachment")
    lines += ['Content-Type: multipart/mixed; boundary="b1"', "", "--b1",
              "Content-Type: text/plain", "", "see attachment", "--b1",
              "Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64", ""]
    import base64
    data = base64.encodebytes(rnd.randbytes(size)).decode().splitlines()
    lines += data + ["--b1--"]
    return CRLF.join(l.encode() for l in lines) + CRLF


def send(s, sender, rcpts, msg, mail_opts=(), rcpt_opts=None):
    """rcpts: list of addresses; rcpt_opts: list (per recipient) of option lists."""
    code, resp = s.mail(sender, list(mail_opts))
    if code != 250:
        raise RuntimeError(f"MAIL FROM {sender}: {code} {resp}")
    accepted = 0
    for n, r in enumerate(rcpts):
        opts = rcpt_opts[n] if rcpt_opts else []
        code, resp = s.rcpt(r, opts)
        if code in (250, 251):
            accepted += 1
        else:
            raise RuntimeError(f"RCPT TO {r}: {code} {resp}")
    code, resp = s.data(msg)
    if code != 250:
        raise RuntimeError(f"DATA: {code} {resp}")
    s.command_encoding = "ascii"


def body(i, rnd, n=None):
    n = n if n is not None else rnd.randint(1, 30)
    words = ["replay", "spool", "queue", "mail", "store", "outage", "deferred", "postfix"]
    out = []
    for k in range(n):
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(0, 14)))
        if k % 7 == 3:
            line = "." + line  # dot-stuffing on the wire
        out.append(line)
    return out


def smtp_batch(port, count):
    rnd = random.Random(20230123)
    s = smtplib.SMTP("127.0.0.1", port, local_hostname="injector.example.test", timeout=60)
    s.ehlo()
    kinds = ["plain", "multi", "null", "dsn", "8bit", "utf8", "quoted", "longline", "alias",
             "milter", "dup", "slow"]
    sent = 0
    for i in range(count):
        kind = kinds[i % len(kinds)]
        rnd_b = body(i, rnd)
        if kind == "plain":
            msg = text_message(i, f"user{i}@remote.test", f"rcpt{i}@example.test", "Plain", rnd_b)
            send(s, f"user{i}@remote.test", [f"rcpt{i}@example.test"], msg)
        elif kind == "multi":
            rcpts = [f"a{i}@example.test", f"b{i}@done.example.test", f"c{i}@example.test",
                     f"d{i}@done.example.test"][: rnd.randint(2, 4)]
            msg = text_message(i, f"multi{i}@remote.test", ", ".join(rcpts), "Partially delivered", rnd_b)
            send(s, f"multi{i}@remote.test", rcpts, msg)
        elif kind == "null":
            msg = text_message(i, "MAILER-DAEMON@remote.test", f"bounced{i}@example.test",
                               "Undelivered Mail Returned to Sender", rnd_b,
                               extra=["Auto-Submitted: auto-replied"])
            send(s, "", [f"bounced{i}@example.test", f"gone{i}@done.example.test"], msg)
        elif kind == "dsn":
            ret = rnd.choice(["RET=HDRS", "RET=FULL"])
            envid = f"ENVID=env+2B{i}+3Dx"  # xtext: env+{i}=x
            rcpts = [f"dsn{i}@example.test", f"dsn{i}b@example.test", f"dsn{i}c@done.example.test"]
            notifies = ["NOTIFY=SUCCESS,FAILURE", "NOTIFY=NEVER", "NOTIFY=DELAY,FAILURE"]
            opts = [[notifies[k], f"ORCPT=rfc822;orig-{i}-{k}+2Bx@example.test"] if k != 1
                    else [notifies[k]] for k in range(3)]
            msg = text_message(i, f"dsn{i}@remote.test", rcpts[0], "DSN parameters", rnd_b)
            send(s, f"dsn{i}@remote.test", rcpts, msg, mail_opts=[ret, envid], rcpt_opts=opts)
        elif kind == "8bit":
            lines = ["Grüße aus Köln", "naïve café — über", "\xa0plain"] + rnd_b
            raw = [l.encode("utf-8") for l in lines]
            if i % 2:
                raw.append("Latin-1: caf\xe9".encode("latin-1"))
            msg = text_message(i, f"eight{i}@remote.test", f"eight{i}@example.test", "8-bit body",
                               raw, charset="utf-8", cte="8bit")
            send(s, f"eight{i}@remote.test", [f"eight{i}@example.test"], msg,
                 mail_opts=["BODY=8BITMIME"])
        elif kind == "utf8":
            sender = f"ñandú{i}@remote.test"
            rcpt = f"józef{i}@example.test"
            msg = text_message(i, sender, rcpt, "Grüße SMTPUTF8", ["Zażółć gęślą jaźń"] + rnd_b,
                               charset="utf-8", cte="8bit")
            send(s, sender, [rcpt, f"plain{i}@example.test"], msg,
                 mail_opts=["SMTPUTF8", "BODY=8BITMIME"])
        elif kind == "quoted":
            sender = '"john doe"@remote.test' if i % 2 else '"a.b..c"@remote.test'
            msg = text_message(i, sender, f"q{i}@example.test", "Quoted local part", rnd_b)
            send(s, sender, [f"q{i}@example.test", f'"quoted rcpt {i}"@example.test'], msg)
        elif kind == "longline":
            long1 = "x" * rnd.randint(2049, 7000)
            long2 = "".join(rnd.choice("abcdefgh ") for _ in range(4096))  # exactly 2 L chunks
            msg = text_message(i, f"long{i}@remote.test", f"long{i}@example.test", "Long lines",
                               [long1, "short", long2, "y" * 2048] + rnd_b)
            send(s, f"long{i}@remote.test", [f"long{i}@example.test"], msg)
        elif kind == "alias":
            rcpt = "list@example.test" if (i // len(kinds)) % 2 else "info@example.test"
            msg = text_message(i, f"alias{i}@remote.test", rcpt, "To an alias", rnd_b)
            send(s, f"alias{i}@remote.test", [rcpt, f"direct{i}@example.test"], msg)
        elif kind == "milter":
            actions = ["addheader", "chgheader", "addrcpt", "delrcpt", "replacebody",
                       "addheader,chgheader,addrcpt,replacebody"][(i // len(kinds)) % 6]
            rcpts = [f"m{i}@example.test", "cancel@example.test"]
            msg = text_message(i, f"milter{i}@remote.test", rcpts[0], "Milter changes", rnd_b,
                               extra=[f"X-Test-Milter: {actions}"])
            send(s, f"milter{i}@remote.test", rcpts, msg)
        elif kind == "dup":
            msg = text_message(i, f"dup{i}@remote.test", f"dup{i}@example.test", "Duplicate rcpt", rnd_b)
            send(s, f"dup{i}@remote.test", [f"dup{i}@example.test", f"DUP{i}@example.test"], msg)
        elif kind == "slow":
            if i < 100:
                msg = text_message(i, f"slow{i}@remote.test", f"slow{i}@slow.example.test",
                                   "Stuck in active", rnd_b)
                send(s, f"slow{i}@remote.test", [f"slow{i}@slow.example.test"], msg)
            else:
                msg = text_message(i, f"hold{i}@remote.test", f"hold{i}@example.test",
                                   "To be held", rnd_b, extra=["X-Test-Hold: yes"])
                send(s, f"hold{i}@remote.test", [f"hold{i}@example.test"], msg)
        sent += 1
    msg = attachment_message(count, 3 * 1024 * 1024)
    send(s, "big@remote.test", ["big@example.test", "big@done.example.test"], msg)
    sent += 1
    s.quit()
    print(f"inject: {sent} messages over SMTP")


def stall(port):
    """One message the milter sits on: its queue file stays incomplete in incoming/."""
    try:
        s = smtplib.SMTP("127.0.0.1", port, local_hostname="injector.example.test", timeout=120)
        s.ehlo()
        msg = text_message(9999, "stall@remote.test", "stall@example.test", "Stalled",
                           ["never finished"], extra=["X-Test-Milter: stall"])
        send(s, "stall@remote.test", ["stall@example.test"], msg)
    except Exception as e:  # the script kills the cleanup process under it
        print(f"inject stall: ended as planned ({type(e).__name__})")


def tarpit(port_file):
    """Accepts connections and never answers, so Postfix's smtp client waits."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(50)
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(srv.getsockname()[1]))
    os.rename(tmp, port_file)
    held = []
    deadline = time.time() + 600
    srv.settimeout(5)
    while time.time() < deadline:
        try:
            conn, _ = srv.accept()
            held.append(conn)
        except socket.timeout:
            pass


if __name__ == "__main__":
    if sys.argv[1] == "smtp":
        smtp_batch(int(sys.argv[2]), int(sys.argv[3]))
    elif sys.argv[1] == "stall":
        stall(int(sys.argv[2]))
    elif sys.argv[1] == "tarpit":
        tarpit(sys.argv[2])
