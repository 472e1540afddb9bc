#!/usr/bin/env python3
"""Deterministic synthetic spools for spoolreplay's benchmarks (Python stdlib only).

Usage: gen_spool.py --format postfix|exim|eml|maildir|mbox --count N [--seed S] [--mix MIX] OUTDIR

The same (format, count, seed, mix) always gives byte-identical files, so two runs of the
benchmark measure the same work. Messages arrive inside the "spooled" window of
bench/incident.toml and go to 1-5 recipients spread over 40 domains and 20,000 mailboxes.

Size mix ("realistic", the default): 90% text mail of 2-12 KB, 9.5% with an attachment of
30-300 KB, 0.5% with an attachment of 1-4 MB (mean about 35 KB). "small" is 2-12 KB only,
for the count-scaling (memory flatness) runs where the bytes do not matter.

Formats:
  postfix  a queue root: OUTDIR/deferred/<first hex digit>/<10-hex queue id>, Postfix's
           record format (C, T, A, S, O/R, M, N..., X, E), checked with `postcat`
  eml      OUTDIR/dNNN/mNNNNNNN.eml + .json envelope sidecar, 1000 per folder
  maildir  OUTDIR/new/<unique>, envelope in Return-Path / X-Original-To headers
  exim     OUTDIR/input/<id>-H and <id>-D (flat), the -H file as Exim 4.96 writes it
  mbox     OUTDIR/spool.mbox, one `From ` line per message (Return-Path / X-Original-To
           as for maildir; the generated text has no line starting with `From `)
"""

import argparse
import base64
import json
import os
import random
import sys

ARRIVAL_START = 1674414000  # 2023-01-22T20:00:00+01:00: the start of the window
ARRIVAL_SPAN = 18 * 3600  # arrivals spread over 18 hours of the 20-hour window
DOMAINS = [f"d{n:02d}.example" for n in range(40)]
MAILBOXES = 20000
WORDS = (
    "the store was down for days and the exchanger kept accepting mail which now "
    "has to reach its mailboxes without loss or duplicates; meeting invoice report "
    "quarter budget please find attached review schedule thanks regards tomorrow"
).split()


class Pool:
    """Lines of text and of base64, each also pre-encoded as Postfix N records, so a
    message body is a slice of both and generation costs no per-line Python work."""

    def __init__(self, rng, lines, make_line):
        self.plain = bytearray()
        self.records = bytearray()
        self.plain_at = [0]
        self.records_at = [0]
        for _ in range(lines):
            line = make_line(rng)
            assert len(line) < 128, "one length byte per record"
            self.plain += line + b"\n"
            self.records += b"N" + bytes([len(line)]) + line
            self.plain_at.append(len(self.plain))
            self.records_at.append(len(self.records))
        self.lines = lines

    def span(self, rng, size):
        """(first, last) line numbers of a slice of about `size` bytes."""
        avg = len(self.plain) / self.lines
        count = max(1, min(self.lines - 1, int(size / avg)))
        first = rng.randrange(0, self.lines - count)
        return first, first + count


def text_line(rng):
    words = []
    while True:
        w = rng.choice(WORDS)
        if sum(len(x) + 1 for x in words) + len(w) > 72:
            break
        words.append(w)
    return " ".join(words).encode()


def base64_line(rng):
    return base64.b64encode(rng.randbytes(57))


def message_size(rng, mix):
    """(text bytes, attachment bytes) of one message."""
    text = rng.randint(1500, 11000)
    if mix == "small":
        return text, 0
    roll = rng.random()
    if roll < 0.90:
        return text, 0
    if roll < 0.995:
        return text, rng.randint(30_000, 300_000)
    return text, rng.randint(1_000_000, 4_000_000)


def queue_id(i):
    """10 hex digits, unique for i < 2**40, first digit well spread (like Postfix's)."""
    return f"{(i * 0x9E3779B97F4A7C15 >> 24) % (1 << 40):010X}"


def record(kind, data):
    out = bytearray(kind)
    n = len(data)
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            break
    return bytes(out) + data


class Message:
    def __init__(self, i, rng, mix, pools):
        self.i = i
        self.arrival = ARRIVAL_START + rng.randrange(ARRIVAL_SPAN)
        self.usec = rng.randrange(1_000_000)
        self.sender = f"sender{rng.randrange(5000)}@s{rng.randrange(200)}.example"
        roll = rng.random()
        n = 1 if roll < 0.80 else 2 if roll < 0.95 else rng.randint(3, 5)
        self.recipients = []
        while len(self.recipients) < n:
            r = f"user{rng.randrange(MAILBOXES)}@{rng.choice(DOMAINS)}"
            if r not in self.recipients:
                self.recipients.append(r)
        self.qid = queue_id(i)
        text, attachment = message_size(rng, mix)
        self.text = pools["text"].span(rng, text)
        self.attachment = pools["b64"].span(rng, attachment) if attachment else None

    def header_lines(self, envelope_headers):
        date = format_date(self.arrival)
        lines = []
        if envelope_headers:
            lines.append(f"Return-Path: <{self.sender}>")
            lines += [f"X-Original-To: {r}" for r in self.recipients]
        lines += [
            f"Received: from client{self.i % 997}.example (client [192.0.2.{self.i % 250 + 1}])",
            f"\tby mx1.example.net (Postfix) with ESMTPS id {self.qid}; {date}",
            f"From: Sender <{self.sender}>",
            f"To: {', '.join(self.recipients)}",
            f"Subject: synthetic message {self.i}",
            f"Date: {date}",
            f"Message-ID: <{self.i}.{self.qid}@s.example>",
            "MIME-Version: 1.0",
        ]
        if self.attachment:
            lines += [
                'Content-Type: multipart/mixed; boundary="b1"',
                "",
                "--b1",
                "Content-Type: text/plain; charset=us-ascii",
                "",
            ]
        else:
            lines += ["Content-Type: text/plain; charset=us-ascii", ""]
        return [l.encode() for l in lines]

    def trailer_lines(self, before_attachment):
        if not self.attachment:
            return []
        if before_attachment:
            return [
                b"--b1",
                b"Content-Type: application/octet-stream",
                b"Content-Transfer-Encoding: base64",
                b'Content-Disposition: attachment; filename="a.bin"',
                b"",
            ]
        return [b"--b1--"]

    def plain(self, pools, envelope_headers):
        """The message as a file on disk (LF line ends)."""
        out = bytearray()
        for line in self.header_lines(envelope_headers):
            out += line + b"\n"
        out += slice_of(pools["text"], self.text, plain=True)
        if self.attachment:
            for line in self.trailer_lines(True):
                out += line + b"\n"
            out += slice_of(pools["b64"], self.attachment, plain=True)
            for line in self.trailer_lines(False):
                out += line + b"\n"
        return bytes(out)

    def queue_file(self, pools):
        """The message as a Postfix queue file (what cleanup writes)."""
        env = bytearray()
        env += record(b"T", f"{self.arrival} {self.usec}".encode())
        env += record(b"A", f"create_time={self.arrival}".encode())
        env += record(b"A", b"log_client_name=client.example")
        env += record(b"A", b"rewrite_context=remote")
        env += record(b"S", self.sender.encode())
        for r in self.recipients:
            env += record(b"O", r.encode())
            env += record(b"R", r.encode())
        env += record(b"M", b"")
        content = bytearray()
        for line in self.header_lines(False):
            content += record(b"N", line)
        content += slice_of(pools["text"], self.text, plain=False)
        if self.attachment:
            for line in self.trailer_lines(True):
                content += record(b"N", line)
            content += slice_of(pools["b64"], self.attachment, plain=False)
            for line in self.trailer_lines(False):
                content += record(b"N", line)
        tail = record(b"X", b"") + record(b"E", b"")
        # C: content size, offset of the content, recipients, qmgr flags, content
        # length, SMTPUTF8 flags; fixed width, so its own length is known in advance.
        c_len = len(record(b"C", b"%15d %15d %15d %15d %15d %15d" % (0, 0, 0, 0, 0, 0)))
        data_offset = c_len + len(env)
        # As in the files Postfix writes, both sizes are the content segment's length.
        c = record(
            b"C",
            b"%15d %15d %15d %15d %15d %15d"
            % (len(content), data_offset, len(self.recipients), 0, len(content), 0),
        )
        return c + bytes(env) + bytes(content) + tail

    def exim_id(self):
        """An Exim 4.96 message id: base-62 time, pid and fraction (16 characters)."""
        return f"{base62(self.arrival, 6)}-{base62(self.i, 6)}-{base62(self.usec // 500, 2)}"

    def exim_files(self, pools):
        """(-H, -D) of the message as Exim writes them (LF line ends)."""
        eid = self.exim_id()
        lines = [f"{eid}-H", "Debian-exim 999 995", f"<{self.sender}>", f"{self.arrival} 0",
                 f"-received_time_usec .{self.usec:06d}", "-received_protocol esmtp",
                 "XX", str(len(self.recipients))] + self.recipients + [""]
        head = "".join(l + "\n" for l in lines).encode()
        for line in self.header_lines(False):
            if not line:
                break  # the blank line ends the header; it is not a header line
            text = line + b"\n"
            head += b"%03d  " % len(text) + text
        body = bytearray(f"{eid}-D\n".encode())
        body += self.plain(pools, False).split(b"\n\n", 1)[1]
        return eid, head, bytes(body)

    def sidecar(self):
        arrival = format_rfc3339(self.arrival)
        return json.dumps(
            {"sender": self.sender, "recipients": self.recipients, "arrival": arrival}
        ).encode()


def base62(n, width):
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(width):
        out = digits[n % 62] + out
        n //= 62
    return out


def slice_of(pool, span, plain):
    first, last = span
    if plain:
        return pool.plain[pool.plain_at[first] : pool.plain_at[last]]
    return pool.records[pool.records_at[first] : pool.records_at[last]]


def format_date(t):
    import email.utils

    return email.utils.formatdate(t, localtime=False)


def format_ctime(t):
    import time as _time

    return _time.strftime("%a %b %e %H:%M:%S %Y", _time.gmtime(t))


def format_rfc3339(t):
    import datetime

    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def write(path, data, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--format", required=True,
                   choices=["postfix", "exim", "eml", "maildir", "mbox"])
    p.add_argument("--count", required=True, type=int)
    p.add_argument("--seed", type=int, default=20230122)
    p.add_argument("--mix", choices=["realistic", "small"], default="realistic")
    p.add_argument("out")
    a = p.parse_args()

    pool_rng = random.Random(a.seed)
    pools = {
        "text": Pool(pool_rng, 60_000, text_line),
        "b64": Pool(pool_rng, 60_000, base64_line),
    }
    rng = random.Random(a.seed + 1)
    os.makedirs(a.out, exist_ok=True)
    made_dirs = set()
    total = 0
    mbox = open(os.path.join(a.out, "spool.mbox"), "wb") if a.format == "mbox" else None
    for i in range(a.count):
        m = Message(i, rng, a.mix, pools)
        if a.format == "mbox":
            data = m.plain(pools, True)
            mbox.write(f"From {m.sender} {format_ctime(m.arrival)}\n".encode() + data + b"\n")
            total += len(data)
            continue
        if a.format == "exim":
            eid, head, body = m.exim_files(pools)
            d = os.path.join(a.out, "input")
            if d not in made_dirs:
                os.makedirs(d, exist_ok=True)
                made_dirs.add(d)
            write(os.path.join(d, eid + "-H"), head, 0o640)
            write(os.path.join(d, eid + "-D"), body, 0o640)
            total += len(head) + len(body)
            continue
        if a.format == "postfix":
            d = os.path.join(a.out, "deferred", m.qid[0])
            name, data, mode = m.qid, m.queue_file(pools), 0o700
        elif a.format == "eml":
            d = os.path.join(a.out, f"d{i // 1000:04d}")
            name, data, mode = f"m{i:08d}.eml", m.plain(pools, False), 0o600
        else:
            d = os.path.join(a.out, "new")
            name = f"{m.arrival}.M{m.usec}P{i}.mx1.example.net"
            data, mode = m.plain(pools, True), 0o600
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            made_dirs.add(d)
        write(os.path.join(d, name), data, mode)
        total += len(data)
        if a.format == "eml":
            write(os.path.join(d, name[:-4] + ".json"), m.sidecar())
        if a.format == "maildir":
            os.makedirs(os.path.join(a.out, "cur"), exist_ok=True)
    if mbox:
        mbox.close()
    print(f"{a.count} {a.format} messages, {total} bytes in {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
