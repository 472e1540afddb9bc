#!/usr/bin/python3
"""Injects the test messages of the real spools over SMTP on loopback: the one injector of
fixtures/exim/make-exim-spool.sh (Exim 4.96) and tests/peers/make-postfix-spool.sh
(a private Postfix instance).

usage: inject.py exim HOST PORT flat|split
       inject.py postfix PORT COUNT    a deterministic, varied batch into Postfix
       inject.py stall PORT            one message the Postfix test milter sits on
       inject.py tarpit PORTFILE       listens on a port the kernel picks, written to
                                       PORTFILE, and never answers

The SMTP dialogue is written by hand (not smtplib) so that BDAT, DSN and SMTPUTF8
parameters go out exactly as listed here. Every Exim message carries an `X-Case:` header
naming it, so the script and the tests can find its queue id.

Postfix domains (see make-postfix-spool.sh): example.test goes to a relay that refuses
(deferred), done.example.test to discard: (done `D` records), slow.example.test to a tarpit
(stays in active/), list@ and info@example.test are virtual aliases (`O` records).
"""

import base64
import os
import random
import socket
import sys
import time

CRLF = b"\r\n"
HELO = "injector.example.test"
DATE = "Mon, 23 Jan 2023 10:00:00 +0100"
DONE = "done.example.test"


class Client:
    def __init__(self, host, port, timeout=10):
        self.sock = socket.create_connection((host, port), timeout)
        self.buf = b""
        self.expect(220)
        self.cmd(f"EHLO {HELO}", 250)

    def line(self):
        while CRLF not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(CRLF, 1)
        return line

    def expect(self, *codes):
        while True:
            line = self.line()
            if line[3:4] != b"-":
                break
        if int(line[:3]) not in codes:
            raise RuntimeError(f"expected {codes}, got {line!r}")
        return line

    def cmd(self, text, *codes):
        data = text.encode("utf-8") if isinstance(text, str) else text
        self.sock.sendall(data + CRLF)
        return self.expect(*codes)

    def send(self, sender, rcpts, body, mail_params="", bdat=None):
        """rcpts: addresses, or (address, parameters) pairs; parameters start with a space."""
        self.cmd(f"MAIL FROM:<{sender}>{mail_params}", 250)
        for rcpt in rcpts:
            addr, params = (rcpt, "") if isinstance(rcpt, str) else rcpt
            self.cmd(f"RCPT TO:<{addr}>{params}", 250, 251)
        if bdat is None:
            self.cmd("DATA", 354)
            stuffed = CRLF.join(
                b"." + line if line.startswith(b".") else line
                for line in body.split(CRLF)
            )
            self.sock.sendall(stuffed + b".\r\n")
            self.expect(250)
        else:
            chunks = [body[i : i + bdat] for i in range(0, len(body), bdat)]
            for n, chunk in enumerate(chunks):
                last = " LAST" if n == len(chunks) - 1 else ""
                self.sock.sendall(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
                self.expect(250)

    def quit(self):
        self.cmd("QUIT", 221)
        self.sock.close()


def crlf(lines):
    """Lines (text or bytes) as they go on the wire: each ended by CRLF."""
    return b"".join((l.encode("utf-8") if isinstance(l, str) else l) + CRLF for l in lines)


def params(options):
    """SMTP parameters as `send` takes them: `["RET=HDRS", "ENVID=x"]` -> " RET=HDRS ENVID=x"."""
    return "".join(" " + o for o in options)


# ---------------------------------------------------------------------------------------
# Exim (make-exim-spool.sh)

def msg(case, headers, body, frm="sender@remote.test", to="rcpt@example.test"):
    """A message with CRLF line ends, as it goes on the wire."""
    lines = [
        f"From: {frm}",
        f"To: {to}",
        f"Subject: {case}",
        f"X-Case: {case}",
        f"Message-ID: <{case}@{HELO}>",
        f"Date: {DATE}",
    ] + headers
    if isinstance(body, str):
        body = body.encode("utf-8")
    return crlf(lines + [""]) + body


def flat(c):
    for n in range(1, 6):
        c.send(
            "sender@remote.test",
            [f"rcpt{n}@example.test"],
            msg(f"plain-{n}", [], f"Plain message number {n}.\r\n"),
        )
    c.send(
        "MixedCase@Remote.Test",
        ["carol@example.test", "erin@example.test", f"bob@{DONE}", f"alice@{DONE}"],
        msg("partial", [], "Two of four recipients are delivered by the queue run.\r\n",
            frm="MixedCase@Remote.Test"),
    )
    c.send(
        "many@remote.test",
        [f"r{n:02}@{DONE if n % 3 == 0 else 'example.test'}" for n in range(30)],
        msg("many-recipients", [], "Thirty recipients, ten delivered.\r\n"),
    )
    c.send("", ["postmaster@example.test"],
           msg("null-sender", ["Auto-Submitted: auto-replied"],
               "A bounce from elsewhere.\r\n", frm="MAILER-DAEMON@remote.test"))
    c.send('"john doe"@remote.test', ["frank@example.test"],
           msg("quoted-sender", [], "Quoted local part.\r\n", frm='"john doe"@remote.test'))
    c.send(
        "dsn@remote.test",
        [
            ("gina@example.test", " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Bgina@example.test"),
            ("hal@example.test", " NOTIFY=NEVER"),
            ("ida@example.test", " NOTIFY=DELAY,FAILURE ORCPT=rfc822;ida@example.test"),
            ("jo@example.test", ""),
            (f"kim@{DONE}", " NOTIFY=FAILURE"),
        ],
        msg("dsn-hdrs", [], "DSN parameters, RET=HDRS.\r\n"),
        mail_params=" RET=HDRS ENVID=QQ+2B1+3Dx",
    )
    c.send("dsn2@remote.test", [("lee@example.test", " NOTIFY=NEVER")],
           msg("dsn-full-never", [], "RET=FULL, NOTIFY=NEVER.\r\n"),
           mail_params=" RET=FULL ENVID=plain-envid")
    c.send("dsn3@remote.test", [("max@example.test", " NOTIFY=SUCCESS,DELAY,FAILURE")],
           msg("dsn-all", [], "All notify flags, no ENVID.\r\n"))
    c.send(
        "eight@remote.test",
        ["nina@example.test"],
        msg("8bit", ["MIME-Version: 1.0", "Content-Type: text/plain; charset=utf-8",
                     "Content-Transfer-Encoding: 8bit"],
            "Grüße aus Köln, naïve café.\r\n"),
        mail_params=" BODY=8BITMIME",
    )
    c.send(
        "latin@remote.test",
        ["otto@example.test"],
        msg("8bit-latin1", ["Content-Type: text/plain; charset=iso-8859-1"], b"caf\xe9 na\xefve\r\n"),
        mail_params=" BODY=8BITMIME",
    )
    c.send(
        "jörg@remote.test",
        ["pål@example.test", f"åsa@{DONE}"],
        msg("smtputf8", ["Content-Type: text/plain; charset=utf-8"],
            "Ünïcödé everywhere.\r\n", frm="Jörg <jörg@remote.test>", to="pål@example.test"),
        mail_params=" SMTPUTF8 BODY=8BITMIME",
    )
    long_to = ",\r\n ".join(f"person{n:03}@example.test" for n in range(60))
    c.send("long@remote.test", ["quinn@example.test"],
           msg("long-header", [f"Cc: {long_to}"], "A header over 1000 bytes.\r\n"))
    c.send("dots@remote.test", ["ruth@example.test"],
           msg("dots", [], ".a line starting with a dot\r\n..two dots\r\n.\r\nend\r\n"))
    c.send("empty@remote.test", ["sam@example.test"], msg("empty-body", [], ""))
    c.send("alias@remote.test", ["info@example.test"],
           msg("alias", [], "To an alias: one child delivered, the alias stays.\r\n"))
    c.send("odd@remote.test", ['"a b"@example.test', "x#y@example.test", "Upper@Example.Test"],
           msg("odd-recipients", [], "Recipients with a space, a hash, upper case.\r\n"))
    big = "".join(f"line {n:05} of a large body {'x' * 60}\r\n" for n in range(1500))
    c.send("big@remote.test", ["tina@example.test", f"ulf@{DONE}"], msg("big", [], big))
    c.send("acl@remote.test", ["vera@example.test"],
           msg("acl-vars", ["X-Acl-Note: noted by the data ACL"], "ACL variables saved.\r\n"))
    c.send("cr@remote.test", ["walt@example.test"],
           msg("bare-cr", [], "a bare \r in a line\r\nand a tab\there\r\n"))
    c.send("all-done@remote.test", [f"gone@{DONE}"],
           msg("all-done", [], "Fully delivered: leaves the queue.\r\n"))
    for n in range(1, 4):
        c.send(f"batch{n}@remote.test", [f"b{n}@example.test", f"c{n}@{DONE}"],
               msg(f"batch-{n}", [], f"Batch message {n}.\r\n" * n))


def split(c):
    for n in range(1, 4):
        c.send(f"bdat{n}@remote.test", [f"s{n}@example.test"],
               msg(f"split-bdat-{n}", [], f"Sent with BDAT, chunk size {7 * n}.\r\n.dot\r\n"),
               bdat=7 * n)
    c.send("bdat@remote.test", ["t1@example.test", f"t2@{DONE}"],
           msg("split-bdat-partial", [], "BDAT, one recipient delivered.\r\n"), bdat=4096)
    c.send("data@remote.test", [("u1@example.test", " NOTIFY=FAILURE ORCPT=rfc822;u1@example.test")],
           msg("split-data", [], "Sent with DATA into a wireformat spool.\r\n"),
           mail_params=" RET=HDRS ENVID=split+2Benv")
    c.send("frozen@remote.test", ["v1@example.test"],
           msg("split-frozen", [], "Frozen in the split spool.\r\n"), bdat=100)
    c.send("utf@remote.test", ["wörld@example.test"],
           msg("split-utf8", [], "SMTPUTF8 over BDAT.\r\n"), mail_params=" SMTPUTF8", bdat=50)
    c.send("", ["x1@example.test"], msg("split-null", [], "Null sender over BDAT.\r\n"), bdat=33)


def exim(host, port, which):
    c = Client(host, int(port))
    {"flat": flat, "split": split}[which](c)
    c.quit()


# ---------------------------------------------------------------------------------------
# Postfix (make-postfix-spool.sh)


def headers(i, sender_hdr, to_hdr, subject, extra=()):
    lines = [
        f"From: {sender_hdr}",
        f"To: {to_hdr}",
        f"Subject: {subject} #{i}",
        f"Message-ID: <inject-{i}@{HELO}>",
        f"Date: {DATE}",
        "MIME-Version: 1.0",
    ]
    lines.extend(extra)
    return lines


def text_message(i, sender_hdr, to_hdr, subject, body_lines, extra=(), charset="us-ascii",
                 cte="7bit"):
    lines = headers(i, sender_hdr, to_hdr, subject, extra)
    lines += [f"Content-Type: text/plain; charset={charset}", f"Content-Transfer-Encoding: {cte}", ""]
    return crlf(lines + body_lines)


def attachment_message(i, size):
    rnd = random.Random(i)
    lines = headers(i, "big@remote.test", "big@example.test", "Large attachment")
    lines += ['Content-Type: multipart/mixed; boundary="b1"', "", "--b1",
              "Content-Type: text/plain", "", "see attachment", "--b1",
              "Content-Type: application/octet-stream", "Content-Transfer-Encoding: base64", ""]
    data = base64.encodebytes(rnd.randbytes(size)).decode().splitlines()
    return crlf(lines + data + ["--b1--"])


def send(c, sender, rcpts, msg, mail_opts=(), rcpt_opts=None):
    """rcpt_opts: per recipient, a list of its options."""
    with_params = [(r, params(rcpt_opts[n] if rcpt_opts else [])) for n, r in enumerate(rcpts)]
    c.send(sender, with_params, msg, mail_params=params(mail_opts))


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


def postfix(port, count):
    rnd = random.Random(20230123)
    s = Client("127.0.0.1", port, timeout=60)
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
        s = Client("127.0.0.1", port, timeout=120)
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


def main():
    commands = {
        "exim": (exim, 3),
        "postfix": (lambda port, count: postfix(int(port), int(count)), 2),
        "stall": (lambda port: stall(int(port)), 1),
        "tarpit": (tarpit, 1),
    }
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(__doc__)
    run, arity = commands[sys.argv[1]]
    if len(sys.argv) != 2 + arity:
        sys.exit(__doc__)
    run(*sys.argv[2:])


if __name__ == "__main__":
    main()
