#!/usr/bin/python3
"""A tiny milter for make-postfix-spool.sh: it changes the messages that ask for it, so
that Postfix writes pointer (`p`) records into their queue files.

The test header `X-Test-Milter:` names the actions, comma-separated:
  addheader   add a header (pointer after the headers)
  chgheader   replace the Subject (pointer over the old header record)
  addrcpt     add a recipient (pointer after the last recipient)
  delrcpt     remove the recipient cancel@example.test (a `/` record)
  replacebody replace the body (pointer over the body)
  stall       sleep, so the queue file stays in incoming/ without its owner-execute bit
"""
import sys
import time

import Milter


class TestMilter(Milter.Base):
    def __init__(self):
        self.actions = set()

    def envfrom(self, mailfrom, *params):
        self.actions = set()
        return Milter.CONTINUE

    def header(self, name, value):
        if name.lower() == "x-test-milter":
            self.actions |= {a.strip() for a in value.split(",")}
        return Milter.CONTINUE

    def eom(self):
        if "addheader" in self.actions:
            self.addheader("X-Milter-Added", "yes, by the test milter")
        if "chgheader" in self.actions:
            self.chgheader("Subject", 1, "subject replaced by the test milter")
        if "addrcpt" in self.actions:
            self.addrcpt("<milter-added@example.test>")
        if "delrcpt" in self.actions:
            self.delrcpt("<cancel@example.test>")
        if "replacebody" in self.actions:
            self.replacebody(b"This body was replaced by the test milter.\r\n" * 3)
        if "stall" in self.actions:
            time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 60)
        return Milter.ACCEPT


def main():
    socket = sys.argv[1]  # e.g. unix:/path/milter.sock (make-postfix-spool.sh gives one)
    Milter.factory = TestMilter
    Milter.set_flags(
        Milter.ADDHDRS + Milter.CHGHDRS + Milter.ADDRCPT + Milter.DELRCPT + Milter.CHGBODY
    )
    Milter.runmilter("spoolreplay-test", socket, 240)


if __name__ == "__main__":
    main()
