#!/usr/bin/env python3
"""Where an IMAP copy's time goes, against a running Dovecot (bench/imap-vs-lmtp.sh
starts one): the steps spoolreplay's IMAP store takes per mailbox (connect and greeting,
AUTHENTICATE PLAIN as the mailbox through the master user, APPEND with LITERAL+, LOGOUT)
next to one LMTP transaction for one recipient on a kept connection; and, for one
mailbox, K messages in K APPEND commands against one MULTIAPPEND (RFC 3502) command.

Usage: imap_steps.py IMAP_PORT LMTP_PORT [MAILBOXES] [K]
Prints JSON lines: medians in milliseconds. Python stdlib only.
"""

import base64
import json
import socket
import statistics
import sys
import time

MASTER, PASSWORD = "replay", "masterpw"
# About the median size of gen_spool.py's "small" mix.
BODY = (
    b"From: s@remote.test\r\nTo: x@example.test\r\nSubject: steps\r\n\r\n"
    + b"a line of text to make the message the size of a small mail\r\n" * 50
)


class Lines:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def tagged(self, tag):
        untagged = []
        while True:
            line = self.line()
            if line.startswith(tag + " "):
                return line, untagged
            untagged.append(line)


def ms(t0):
    return (time.perf_counter() - t0) * 1000.0


def imap_copy(port, mailbox, date):
    steps = {}
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Lines(s)
    r.line()
    steps["connect_greeting"] = ms(t)
    t = time.perf_counter()
    plain = base64.b64encode(f"{mailbox}\0{MASTER}\0{PASSWORD}".encode()).decode()
    s.sendall(f"a1 AUTHENTICATE PLAIN {plain}\r\n".encode())
    line, _ = r.tagged("a1")
    assert " OK " in line, line
    steps["authenticate"] = ms(t)
    t = time.perf_counter()
    s.sendall(f'a2 APPEND INBOX () "{date}" {{{len(BODY)}+}}\r\n'.encode() + BODY + b"\r\n")
    line, _ = r.tagged("a2")
    assert " OK " in line, line
    steps["append"] = ms(t)
    t = time.perf_counter()
    s.sendall(b"a3 LOGOUT\r\n")
    r.tagged("a3")
    s.close()
    steps["logout"] = ms(t)
    return steps, line


def lmtp_session(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Lines(s)
    r.line()
    s.sendall(b"LHLO bench.test\r\n")
    while not r.line().startswith("250 "):
        pass
    return s, r


def lmtp_copy(s, r, rcpt):
    t = time.perf_counter()
    s.sendall(f"MAIL FROM:<s@remote.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    for _ in range(3):
        r.line()
    s.sendall(BODY + b".\r\n")
    line = r.line()
    assert line.startswith("250"), line
    return ms(t)


def multiappend(port, mailbox, k, date):
    """K copies to one mailbox: K APPENDs, then one MULTIAPPEND; ms each, on one login."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = Lines(s)
    r.line()
    plain = base64.b64encode(f"{mailbox}\0{MASTER}\0{PASSWORD}".encode()).decode()
    s.sendall(f"m1 AUTHENTICATE PLAIN {plain}\r\n".encode())
    line, _ = r.tagged("m1")
    s.sendall(b"m2 CAPABILITY\r\n")
    _, untagged = r.tagged("m2")
    caps = " ".join(untagged).upper().split() + line.upper().replace("]", " ").split()
    offered = "MULTIAPPEND" in caps
    t = time.perf_counter()
    for i in range(k):
        s.sendall(f'n{i} APPEND INBOX () "{date}" {{{len(BODY)}+}}\r\n'.encode() + BODY + b"\r\n")
        line, _ = r.tagged(f"n{i}")
        assert " OK " in line, line
    single = ms(t)
    multi = None
    if offered:
        t = time.perf_counter()
        cmd = b"m3 APPEND INBOX"
        for _ in range(k):
            cmd += f' () "{date}" {{{len(BODY)}+}}\r\n'.encode() + BODY
        s.sendall(cmd + b"\r\n")
        line, _ = r.tagged("m3")
        assert " OK " in line, line
        multi = ms(t)
    s.sendall(b"m4 LOGOUT\r\n")
    r.tagged("m4")
    s.close()
    return offered, single, multi


def main():
    imap_port, lmtp_port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 300
    k = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    date = "23-Jan-2023 10:00:00 +0100"
    per = {}
    for i in range(n):
        steps, _ = imap_copy(imap_port, f"steps{i}@example.test", date)
        for name, v in steps.items():
            per.setdefault(name, []).append(v)
    med = {name: round(statistics.median(v), 3) for name, v in per.items()}
    total = round(sum(med.values()), 3)
    s, r = lmtp_session(lmtp_port)
    lmtp = [lmtp_copy(s, r, f"lsteps{i}@example.test") for i in range(n)]
    s.close()
    print(json.dumps({
        "bench": "imap-steps", "copies": n, "imap_median_ms": med,
        "imap_copy_ms": total, "lmtp_copy_ms": round(statistics.median(lmtp), 3),
        "imap_share_outside_append": round(1 - med["append"] / total, 2),
    }))
    runs = [multiappend(imap_port, f"multi{j}@example.test", k, date) for j in range(5)]
    offered = all(o for o, _, _ in runs)
    single = statistics.median(x for _, x, _ in runs)
    multi = statistics.median(x for _, _, x in runs) if offered else None
    print(json.dumps({
        "bench": "imap-multiappend", "messages_per_mailbox": k,
        "multiappend_offered_after_login": offered,
        "k_appends_ms": round(single, 3),
        "one_multiappend_ms": round(multi, 3) if multi is not None else None,
    }))


if __name__ == "__main__":
    main()
