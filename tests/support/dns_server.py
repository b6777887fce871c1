#!/usr/bin/env python3
"""A small authoritative DNS server for Tern's tests (UDP and TCP on 127.0.0.1).

Usage: dns_server.py PORT ZONEFILE
The zone file is JSON: {"name.": [["MX", 10, "mx.name."], ["A", "127.0.0.2"],
["AAAA", "::1"], ["PTR", "host.name."], ["TXT", "v=spf1 -all"], ["TLSA", 3, 1, 1, "hex"],
["SERVFAIL"]], ...}. Names not in the
table answer NXDOMAIN; a name listed with no record of the asked type answers
NOERROR with no records. A TXT value is a string (sent as 255-byte pieces of
one record) or a list of strings (the pieces as given). ["TIMEOUT"] makes every
question about the name go unanswered, except questions of a type that has
records listed before it (those are answered). ["CNAME", "target."] answers any
question with the alias and the target's records (chains of up to 8, so a loop
ends). A UDP answer longer than the client's
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

from dnslib import AAAA, CNAME, MX, PTR, QTYPE, RCODE, RD, RR, TXT, A, DNSLabel, DNSRecord

PORT = int(sys.argv[1])
ZONE = sys.argv[2]
LIFETIME = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0

_zone = {"mtime": None, "data": {}}


def zone():
    mtime = os.stat(ZONE).st_mtime_ns
    if mtime != _zone["mtime"]:
        with open(ZONE) as f:
            # Keyed by the name's bytes (as asked on the wire), ASCII lower-cased.
            _zone["data"] = {k.encode().lower(): v for k, v in json.load(f).items()}
        _zone["mtime"] = mtime
    return _zone["data"]


def udp_limit(data):
    """The largest UDP answer the client takes (RFC 6891 §6.2.5)."""
    request = DNSRecord.parse(data)
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(512, rr.rclass)
    return 512


def rdata_for(rec, qtype):
    kind = rec[0]
    if kind != qtype:
        return None
    if kind == "MX":
        return MX(rec[2], rec[1])
    if kind == "A":
        return A(rec[1])
    if kind == "AAAA":
        return AAAA(rec[1])
    if kind == "PTR":
        return PTR(rec[1])
    if kind == "TLSA":
        return RD(bytes([rec[1], rec[2], rec[3]]) + bytes.fromhex(rec[4]))
    if kind == "TXT":
        value = rec[1]
        if isinstance(value, str):
            raw = value.encode()
            value = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
        else:
            value = [v.encode() for v in value]
        return TXT(value)
    return None


def answer(data):
    request = DNSRecord.parse(data)
    reply = request.reply()
    qtype = QTYPE[request.q.qtype]
    name = request.q.qname
    for _hop in range(8):
        records = zone().get(b".".join(name.label).lower() + b".")
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        alias = None
        found = False
        for rec in records:
            kind = rec[0]
            if kind == "SERVFAIL":
                reply.header.rcode = RCODE.SERVFAIL
                return reply.pack()
            if kind == "TIMEOUT":
                if found:
                    break
                return None
            if kind == "CNAME" and qtype != "CNAME":
                alias = rec[1]
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(alias), ttl=60))
                break
            rdata = rdata_for(rec, qtype)
            if rdata is not None:
                found = True
                reply.add_answer(RR(name, request.q.qtype, rdata=rdata, ttl=60))
        if alias is None:
            break
        name = DNSLabel(alias)
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
