#!/usr/bin/env python3
"""Converts the openspf RFC 7208 test suite (rfc7208-tests.yml, as shipped in
the pyspf source distribution) into JSON for tests/spf_suite.rs.

Usage: spf_suite.py SUITE.yml
Prints {"groups": [{"description", "zone", "cases": [...]}, ...]} where each
zone is in the format of tests/support/dns_server.py and each case is
{"name", "spec", "description", "ip", "mail_from", "helo", "result": [...],
"explanation": str or null}.

The zone data is read the way suite drivers read it (pyspf's testspf.py):
- records of type SPF are served as TXT when the name has no TXT record of
  its own (RFC 7208 has no SPF type; the suite writes most records that way);
- "TXT: NONE" marks a name as having no TXT record (and stops that copying);
- a TXT value is one string, or a list of strings (the pieces of one record;
  an empty list is sent as one empty string);
- TIMEOUT leaves questions unanswered, except those of a type whose records
  are listed before it.
"""
import json
import sys

import yaml


def records(entries):
    out = []
    generated = []
    copy_spf = True
    for entry in entries:
        if entry == "TIMEOUT":
            out.append(["TIMEOUT"])
            continue
        ((kind, value),) = entry.items()
        if kind in ("TXT", "SPF") and isinstance(value, str):
            value = [value]
        if kind == "TXT":
            copy_spf = False
        if value == ["NONE"]:
            continue
        if kind == "SPF":
            if copy_spf:
                generated.append(txt(value))
        elif kind == "TXT":
            out.append(txt(value))
        elif kind == "MX":
            out.append(["MX", value[0], value[1]])
        elif kind in ("A", "AAAA", "PTR", "CNAME"):
            out.append([kind, value])
        else:
            raise SystemExit("unknown record type %r" % kind)
    # Copies come last, as in testspf.py: after a TIMEOUT they are not answered.
    if copy_spf:
        out.extend(generated)
    return out


def txt(pieces):
    # One piece is sent as the server splits it; several exactly as given. A
    # record of no strings at all (null-text) cannot be sent as such (RFC 1035
    # §3.3.14: one or more); its closest legal form is one empty string.
    if not pieces:
        return ["TXT", [""]]
    return ["TXT", pieces[0]] if len(pieces) == 1 else ["TXT", list(pieces)]


def fqdn(name):
    return name if name.endswith(".") else name + "."


def main():
    groups = []
    with open(sys.argv[1], "rb") as f:
        for doc in yaml.safe_load_all(f):
            zone = {fqdn(name): records(entries) for name, entries in doc["zonedata"].items()}
            cases = []
            for name, case in doc["tests"].items():
                result = case["result"]
                cases.append({
                    "name": name,
                    "spec": str(case["spec"]),
                    "description": " ".join(str(case.get("description", "")).split()),
                    "ip": case["host"],
                    "mail_from": case["mailfrom"],
                    "helo": case["helo"],
                    "result": result if isinstance(result, list) else [result],
                    "explanation": case.get("explanation"),
                })
            groups.append({"description": doc["description"], "zone": zone, "cases": cases})
    json.dump({"groups": groups}, sys.stdout, ensure_ascii=True)


if __name__ == "__main__":
    main()
