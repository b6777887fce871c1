#!/usr/bin/env python3
"""A small authoritative DNS server for Tern's tests (UDP and TCP on 127.0.0.1).

Usage: dns_server.py PORT ZONEFILE
The zone file is JSON: {"name.": [["MX", 10, "mx.name."], ["A", "127.0.0.2"],
["AAAA", "::1"], ["PTR", "host.name."], ["TXT", "v=spf1 -all"], ["SERVFAIL"]], ...}. Names not in the
table answer NXDOMAIN; a name listed with no record of the asked type answers
NOERROR with no records. A TXT value is a string (sent as 255-byte pieces of
one record) or a list of strings (the pieces as given). ["TIMEOUT"] makes every
question about the name go unanswered. A UDP answer longer than the client's
buffer (EDNS, else 512 bytes) is sent truncated, so the client asks over TCP. The zone file is re-read when it changes. Prints
"ready" once both sockets listen. Stops by itself after --lifetime seconds.
"""
import json
import os
import socket
import socketserver
import sys
import threading
import time

from dnslib import AAAA, MX, PTR, QTYPE, RCODE, RR, TXT, A, DNSRecord

PORT = int(sys.argv[1])
ZONE = sys.argv[2]
LIFETIME = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0

_zone = {"mtime": None, "data": {}}


def zone():
    mtime = os.stat(ZONE).st_mtime
    if mtime != _zone["mtime"]:
        with open(ZONE) as f:
            _zone["data"] = {k.lower(): v for k, v in json.load(f).items()}
        _zone["mtime"] = mtime
    return _zone["data"]


def udp_limit(data):
    """The largest UDP answer the client takes (RFC 6891 §6.2.5)."""
    request = DNSRecord.parse(data)
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, rr.rclass)
    return 512


def answer(data):
    request = DNSRecord.parse(data)
    reply = request.reply()
    qname = str(request.q.qname).lower()
    qtype = QTYPE[request.q.qtype]
    records = zone().get(qname)
    if records is None:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()
    for rec in records:
        kind = rec[0]
        if kind == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        if kind == "TIMEOUT":
            return None
        if kind != qtype:
            continue
        if kind == "MX":
            rdata = MX(rec[2], rec[1])
        elif kind == "A":
            rdata = A(rec[1])
        elif kind == "AAAA":
            rdata = AAAA(rec[1])
        elif kind == "PTR":
            rdata = PTR(rec[1])
        elif kind == "TXT":
            value = rec[1]
            if isinstance(value, str):
                raw = value.encode()
                value = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
            else:
                value = [v.encode() for v in value]
            rdata = TXT(value)
        else:
            continue
        reply.add_answer(RR(request.q.qname, request.q.qtype, rdata=rdata, ttl=60))
    return reply.pack()


class Udp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            out = answer(data)
            if out is None:
                return
            if len(out) > udp_limit(data):
                truncated = DNSRecord.parse(out)
                truncated.rr = []
                truncated.header.tc = 1
                out = truncated.pack()
            sock.sendto(out, self.client_address)
        except Exception as e:  # a malformed query gets no answer
            print("bad query:", e, file=sys.stderr)


class Tcp(socketserver.BaseRequestHandler):
    def handle(self):
        try:
            length = int.from_bytes(self.request.recv(2), "big")
            data = b""
            while len(data) < length:
                chunk = self.request.recv(length - len(data))
                if not chunk:
                    return
                data += chunk
            out = answer(data)
            if out is not None:
                self.request.sendall(len(out).to_bytes(2, "big") + out)
        except Exception as e:
            print("bad query:", e, file=sys.stderr)


class ReuseUdp(socketserver.ThreadingUDPServer):
    allow_reuse_address = True


class ReuseTcp(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


udp = ReuseUdp(("127.0.0.1", PORT), Udp)
tcp = ReuseTcp(("127.0.0.1", PORT), Tcp)
for server in (udp, tcp):
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
time.sleep(LIFETIME)
