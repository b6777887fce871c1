#!/usr/bin/python3
"""A milter scripted by the message it is given, for tests/milter.rs (pymilter,
Debian's python3-milter: run it with /usr/bin/python3).

Usage: test_milter.py PORT LOG

Each line of the header field `X-Test-Action:` (comma separated) is done at the
end of the message:
  reject-custom   554 5.7.9 custom
  tempfail        451 (the default 4.7.1)
  discard
  quarantine
  add-header      X-Milter-Added: yes
  change-header   Subject: changed by milter
  delete-header   the first X-Delete-Me
  insert-header   X-Milter-Top: first, at index 0
  replace-body    the body becomes "replaced body"
  add-rcpt:ADDR   delrcpt:ADDR   chg-from:ADDR
A sender whose local part starts with "milter-reject" is refused at MAIL (550
5.7.1 sender refused by milter); a recipient whose local part starts with
"milter-reject" is refused at RCPT (550 5.7.1 recipient refused by milter).
Each message is logged to LOG as one JSON line: macros, sender, recipients,
header fields and body length as the milter saw them.
"""

import json
import sys

import Milter

PORT, LOG = sys.argv[1], sys.argv[2]


class TestMilter(Milter.Base):
    def __init__(self):
        self.reset()

    def reset(self):
        self.seen = {"headers": [], "body": 0, "rcpts": []}
        self.actions = []

    def macro(self, name):
        return self.getsymval(name)

    def connect(self, hostname, family, hostaddr):
        self.client = {"hostname": hostname, "addr": str(hostaddr),
                       "client_addr": self.macro("{client_addr}"), "j": self.macro("j"),
                       "daemon_name": self.macro("{daemon_name}"), "if_addr": self.macro("{if_addr}")}
        return Milter.CONTINUE

    def hello(self, name):
        self.helo = name
        return Milter.CONTINUE

    def envfrom(self, sender, *params):
        self.reset()
        self.seen["from"] = sender
        self.seen["params"] = list(params)
        self.seen["auth_authen"] = self.macro("{auth_authen}")
        if sender.strip("<>").startswith("milter-reject"):
            self.setreply("550", "5.7.1", "sender refused by milter")
            return Milter.REJECT
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        if rcpt.strip("<>").startswith("milter-reject"):
            self.setreply("550", "5.7.1", "recipient refused by milter")
            return Milter.REJECT
        self.seen["rcpts"].append(rcpt)
        return Milter.CONTINUE

    def header(self, name, value):
        self.seen["headers"].append([name, value])
        if name.lower() == "x-test-action":
            self.actions += [a.strip() for a in value.split(",") if a.strip()]
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        self.seen["body"] += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.seen["queue_id"] = self.macro("i")
        self.seen["client"] = self.client
        self.seen["helo"] = self.helo
        self.seen["actions"] = self.actions
        with open(LOG, "a") as log:
            log.write(json.dumps(self.seen) + "\n")
        verdict = Milter.ACCEPT
        for action in self.actions:
            name, _, arg = action.partition(":")
            if name == "reject-custom":
                self.setreply("554", "5.7.9", "custom")
                return Milter.REJECT
            if name == "tempfail":
                return Milter.TEMPFAIL
            if name == "discard":
                return Milter.DISCARD
            if name == "quarantine":
                self.quarantine("test quarantine")
            elif name == "add-header":
                self.addheader("X-Milter-Added", "yes")
            elif name == "insert-header":
                self.addheader("X-Milter-Top", "first", 0)
            elif name == "change-header":
                self.chgheader("Subject", 1, "changed by milter")
            elif name == "delete-header":
                self.chgheader("X-Delete-Me", 1, "")
            elif name == "replace-body":
                self.replacebody(b"replaced body\r\n")
            elif name == "add-rcpt":
                self.addrcpt("<%s>" % arg)
            elif name == "del-rcpt":
                self.delrcpt("<%s>" % arg)
            elif name == "chg-from":
                self.chgfrom("<%s>" % arg)
        return verdict

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


def main():
    Milter.factory = TestMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT
                     | Milter.DELRCPT | Milter.QUARANTINE | Milter.CHGFROM)
    sys.stdout.write("listening\n")
    sys.stdout.flush()
    Milter.runmilter("tern-test", "inet:%s@127.0.0.1" % PORT, 30)


if __name__ == "__main__":
    main()
