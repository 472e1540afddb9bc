#!/usr/bin/env python3
"""A hostile SMTP server for bench/hostile-reply-memory.sh (not a test peer: the test
suite has its own in tests/it/support/smtp_peer.rs). Listens on 127.0.0.1:0, prints its
port on stdout, and serves connections one after another until killed.

  endless   answers everything well, then after the final dot streams `x` without a line
            end until the client hangs up (at most LIMIT bytes, default 2 GiB)
  refuse    answers 550 5.1.1 to every RCPT (a ledger then owes DSNs)
"""
import socket
import sys

MODE = sys.argv[1]
LIMIT = int(sys.argv[2]) if len(sys.argv) > 2 else 2 << 30


def serve(conn):
    f = conn.makefile("rb")
    conn.sendall(b"220 hostile.example.test ESMTP\r\n")
    while True:
        line = f.readline()
        if not line:
            return
        verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
        if verb == b"EHLO":
            conn.sendall(b"250-hostile.example.test\r\n250-8BITMIME\r\n250 DSN\r\n")
        elif verb == b"RCPT" and MODE == "refuse":
            conn.sendall(b"550 5.1.1 no such user\r\n")
        elif verb == b"DATA":
            conn.sendall(b"354 go\r\n")
            while f.readline() not in (b".\r\n", b".\n", b""):
                pass
            chunk = b"x" * 65536
            sent = 0
            while sent < LIMIT:
                conn.sendall(chunk)
                sent += len(chunk)
            return
        elif verb == b"QUIT":
            conn.sendall(b"221 bye\r\n")
            return
        else:
            conn.sendall(b"250 2.0.0 ok\r\n")


def main():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print(listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            serve(conn)
        except OSError:
            pass  # the client hung up: what we wanted
        finally:
            conn.close()


if __name__ == "__main__":
    main()
