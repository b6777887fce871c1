#!/usr/bin/env python3
"""pyspf (the reference SPF implementation of the SPF tests) evaluating against
an in-memory zone in the format of tests/support/dns_server.py, answered the
way that server answers: NXDOMAIN for absent names, SERVFAIL and TIMEOUT as
errors (TIMEOUT after records of the asked type answers them), CNAME chains
of up to 8 (an alias whose target has no data of the asked type is no data),
TXT strings of more than 255 bytes split into pieces.

As a module: install(zone), then evaluate(ip, mail_from, helo).
As a program: spf_pyspf.py CASES.json, where CASES.json is a list of
{"zone", "ip", "mail_from", "helo"}; prints one JSON line per case,
{"result", "explanation"} (explanation for fail with an exp= text, else null).
"""
import json
import sys

import spf

# The checking host's name (%{r}), as in the test configs.
RECEIVER = "tern.test"
# What pyspf answers when no exp= text applies.
DEFAULT_EXPLANATION = "\x00default explanation\x00"

_zone = {}


def install(zone):
    """Serves `zone` (names with or without the final dot) to pyspf."""
    _zone.clear()
    for name, records in zone.items():
        _zone[name.rstrip(".").lower()] = records


def _value(rec):
    kind = rec[0]
    if kind == "MX":
        return (rec[1], rec[2].rstrip("."))
    if kind in ("PTR", "CNAME"):
        return rec[1].rstrip(".")
    if kind == "TXT":
        value = rec[1]
        if isinstance(value, str):
            raw = value.encode()
            return tuple(raw[i:i + 255] for i in range(0, len(raw), 255)) or (b"",)
        return tuple(v.encode() for v in value)
    return rec[1]


def _lookup(name, qtype, strict=True, timeout=None):
    out = []
    for _hop in range(8):
        records = _zone.get(name.rstrip(".").lower())
        if records is None:
            return out
        alias = None
        found = False
        for rec in records:
            kind = rec[0]
            if kind == "SERVFAIL":
                raise spf.TempError("SERVFAIL for %s" % name)
            if kind == "TIMEOUT":
                if found:
                    break
                raise spf.TempError("timeout for %s" % name)
            if kind == "CNAME" and qtype != "CNAME":
                alias = _value(rec)
                out.append(((name.lower(), "CNAME"), alias))
                break
            if kind == qtype:
                found = True
                out.append(((name.lower(), qtype), _value(rec)))
        if alias is None:
            break
        name = alias
    # A resolver answers an alias without data of the asked type as no data
    # (pyspf following the alias itself would count two void lookups).
    if all(key[1] == "CNAME" for key, _value in out):
        return []
    return out


spf.DNSLookup = _lookup


def evaluate(ip, mail_from, helo):
    """(result, explanation or None, the pyspf query) for one check_host()."""
    q = spf.query(i=ip, s=mail_from, h=helo, receiver=RECEIVER, strict=True)
    q.set_default_explanation(DEFAULT_EXPLANATION)
    result, _code, explanation = q.check()
    if result != "fail" or explanation == DEFAULT_EXPLANATION:
        explanation = None
    return result, explanation, q


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        install(case["zone"])
        try:
            result, explanation, _q = evaluate(case["ip"], case["mail_from"], case["helo"])
        except Exception as e:  # pyspf's own failures are reported, not hidden
            result, explanation = "crash: %r" % e, None
        print(json.dumps({"result": result, "explanation": explanation}))


if __name__ == "__main__":
    main()
