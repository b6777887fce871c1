#!/usr/bin/env python3
"""Random SPF setups for the differential test (tests/spf_differential.rs).

Usage: spf_random.py SEED COUNT
Prints JSON: {"seed", "pyspf", "zone", "cases": [{"id", "ip", "mail_from",
"helo", "result", "explanation", "names"}], "skipped": {reason: count}}.

Each setup lives under its own names (cN.test, its client address and that
address's reverse name), so all of them share one zone. A setup is a random
record built from every mechanism and modifier, with qualifiers, CIDR lengths,
macros, includes, redirects (loops too) and exp texts, over hosts with random
addresses, MX and PTR records, DNS errors and void answers; some setups get a
syntax error put in on purpose. pyspf (tests/support/spf_pyspf.py, the same
zone in memory) gives the expected result.

pyspf departs from RFC 7208 in a few places (tests/spf/rfc7208.toml notes
each with a case); the generator keeps out of them:
- no %{d0}, %{dr2}-style transformers or delimiters other than those of §7.1,
  no unterminated macros, no "%%" at the end of a string (pyspf's checks are
  laxer or wrong there), delimiters only on l (pyspf rejoins other letters with
  the delimiter instead of a dot, §7.3);
- no expansion longer than 253 characters (pyspf drops one label only, §7.3),
  no names with empty or over-long labels (no match or permerror is allowed
  there, §4.3), no control characters inside a domain-spec (pyspf checks only
  the toplabel);
- unknown modifiers appear once each (pyspf rejects repeats, §4.6.3), modifier
  names in lower case (pyspf takes REDIRECT= for an unknown modifier);
- no include or redirect of the record's own domain (pyspf rejects that when
  parsing, even after a match);
- no CNAME as the domain of mx (pyspf counts the void answer of an alias it
  already knows twice, §4.6.4 counts terms);
- DNS errors never on PTR data or MX hosts (§5.5 says a PTR error is no match,
  pyspf says temperror; pyspf looks up every MX host before matching), PTR
  and MX hosts always have A and AAAA records (whether an address lookup of
  an MX or PTR name is a void lookup is not settled by §4.6.4), at most one
  PTR name when %{p} is used (pyspf picks it once for the whole check), no
  %{p}, %{r}, %{t} in exp texts or exp=, no %{i} or %{c} in exp texts for IPv6
  clients (their spelling is open);
- results that pyspf reaches by counting an unused redirect= (it counts every
  redirect it parses, §4.6.4 counts terms evaluated), or with %{p} near the
  lookup limit (whether %{p} counts is not settled), are skipped.
"""
import ipaddress
import json
import random
import sys

import spf

import spf_pyspf as ref

QUALIFIERS = ["", "", "", "+", "-", "~", "?"]
TIMEOUT_BUDGET = 4  # each TIMEOUT costs Tern its whole [auth_checks] timeout


class Setup:
    def __init__(self, rng, n, budget):
        self.rng = rng
        self.n = n
        self.base = "c%d.test" % n
        self.zone = {}
        self.budget = budget
        self.uses_p = False
        self.has_redirect = False
        self.unknown_names = 0
        v4 = ipaddress.IPv4Address("198.18.0.0") + n
        self.client4 = str(v4)
        self.client6 = "2001:db8:%x::%x" % (n, rng.randrange(1, 0xFFFF))
        r = rng.random()
        if r < 0.55:
            self.family, self.ip = 4, self.client4
        elif r < 0.95:
            self.family, self.ip = 6, self.client6
        else:
            self.family, self.ip = 4, "::ffff:" + self.client4
        self.clean = []  # hosts with A and AAAA and no errors
        self.hosts = []
        self.aliases = set()  # hosts that are CNAMEs (of clean hosts)

    # -- names and records -------------------------------------------------

    def add(self, name, record):
        self.zone.setdefault(name.lower() + ".", []).append(record)

    def touch(self, name):
        self.zone.setdefault(name.lower() + ".", [])

    def addr4(self):
        r = self.rng.random()
        c = ipaddress.IPv4Address(self.client4)
        if r < 0.35:
            return str(c)
        if r < 0.6:
            return str(ipaddress.IPv4Address(int(c) & ~0xFF | self.rng.randrange(256)))
        return "203.0.113.%d" % self.rng.randrange(256)

    def addr6(self):
        r = self.rng.random()
        c = ipaddress.IPv6Address(self.client6)
        if r < 0.35:
            return str(c)
        if r < 0.6:
            return str(ipaddress.IPv6Address(int(c) & ~0xFFFF | self.rng.randrange(1, 0xFFFF)))
        return "2001:db8:ffff::%x" % self.rng.randrange(1, 0xFFFF)

    def clean_host(self, name):
        for _ in range(self.rng.choice([1, 1, 2])):
            self.add(name, ["A", self.addr4()])
        for _ in range(self.rng.choice([1, 1, 2])):
            self.add(name, ["AAAA", self.addr6()])
        self.clean.append(name)
        return name

    def host(self, name):
        """A host of random shape: addresses, void, error or alias."""
        r = self.rng.random()
        if r < 0.08:
            return name  # NXDOMAIN
        if r < 0.12:
            self.add(name, ["SERVFAIL"])
            return name
        if r < 0.13 and self.budget[0] > 0:
            self.budget[0] -= 1
            self.add(name, ["TIMEOUT"])
            return name
        if r < 0.18 and self.clean:
            self.add(name, ["CNAME", self.rng.choice(self.clean) + "."])
            self.aliases.add(name)
            return name
        if r < 0.3:
            self.touch(name)
            if self.rng.random() < 0.5:
                self.add(name, ["A", self.addr4()])
            else:
                self.add(name, ["AAAA", self.addr6()])
            return name
        return self.clean_host(name)

    def build(self):
        rng = self.rng
        self.helo = "mail." + self.base
        self.clean_host(self.helo)
        for k in range(rng.randint(2, 4)):
            self.hosts.append(self.host("h%d.%s" % (k, self.base)))
        for k in range(2):
            self.clean_host("m%d.%s" % (k, self.base))
        # MX sets for the domain and for a name of their own.
        for name in (self.base, "mx." + self.base):
            if rng.random() < 0.8:
                count = 11 if rng.random() < 0.03 else rng.randint(1, 3)
                for k in range(count):
                    target = rng.choice(self.clean) if count < 11 else self.clean_host("mm%d.%s" % (k, self.base))
                    self.add(name, ["MX", rng.randint(0, 50), target + "."])
        if rng.random() < 0.5:
            self.clean_host(self.base)
        self.ptr_names = []
        # Include and redirect targets, then the record itself.
        self.targets = ["i%d.%s" % (k, self.base) for k in range(3)]
        self.exp_names = []
        self.identity = self.base
        if rng.random() < 0.15:
            self.identity = self.helo
            self.mail_from = ""
        else:
            self.mail_from = "%s@%s" % (self.local_part(), self.base)
        for k, t in enumerate(self.targets):
            r = rng.random()
            if r < 0.06:
                continue  # NXDOMAIN
            if r < 0.1:
                self.add(t, ["TXT", "not an spf record"])
            elif r < 0.13:
                self.add(t, ["SERVFAIL"])
            else:
                self.add(t, ["TXT", self.record(t, depth=1 + k)])
        self.add(self.identity, ["TXT", self.record(self.identity, depth=0)])
        if rng.random() < 0.15:
            self.mutate()
        # PTR records of the client: always one (and only one) when %{p} is used.
        if self.uses_p or rng.random() < 0.5:
            self.add_ptr(rng.randint(1, 2))

    def add_ptr(self, count):
        name = ipaddress.ip_address(self.ip if self.family == 6 else self.client4).reverse_pointer
        if self.uses_p:
            count = 1
        for _ in range(count):
            r = self.rng.random()
            if r < 0.3:
                target = self.clean_host("p%d.%s" % (len(self.ptr_names), self.base))
            elif r < 0.5:
                target = self.clean_host("p%d.x%d.test" % (len(self.ptr_names), self.n))
            else:
                target = self.rng.choice(self.clean)
            self.ptr_names.append(target)
            self.add(name, ["PTR", target + "."])

    def local_part(self):
        rng = self.rng
        parts = [rng.choice(["alice", "bob", "x", "mail", "j0e", "info"])]
        for _ in range(rng.choice([0, 0, 1, 2])):
            parts.append(rng.choice("-+._"))
            parts.append(rng.choice(["lee", "tag", "b", "22", "q"]))
        return "".join(parts)

    # -- terms ---------------------------------------------------------------

    def cidr(self, kind):
        rng = self.rng
        r = rng.random()
        four = "/%d" % rng.choice([0, 8, 16, 24, 24, 25, 30, 31, 32])
        six = "//%d" % rng.choice([0, 32, 48, 64, 64, 96, 112, 127, 128])
        if kind in ("ip4",):
            return four if r < 0.6 else ""
        if kind in ("ip6",):
            return "/%d" % rng.choice([0, 32, 48, 64, 112, 128]) if r < 0.6 else ""
        if r < 0.6:
            return ""
        if r < 0.75:
            return four
        if r < 0.88:
            return six
        return four + six

    def target_name(self, domain, kind):
        """A domain-spec for a, mx, ptr, exists, include or redirect."""
        rng = self.rng
        r = rng.random()
        if kind in ("include", "redirect"):
            choices = [t for t in self.targets if t != domain]
            name = rng.choice(choices)
            if rng.random() < 0.15 and domain != self.identity:
                name = self.identity  # a loop back to the start
            if rng.random() < 0.1 and name == "i0." + self.base and domain != self.identity:
                return "i0.%{o}"  # the same name, through a macro
            return name
        if kind == "exists" or r < 0.35:
            macros = [
                "%{i}.ip." + self.base,
                "%{ir}.%{v}.rbl." + self.base,
                "%{l}.u.%{o}",
                "%{l-}.%{l1r+}.lp." + self.base,
                "%{d}",
                "%{o}",
                "%{h}",
                "%{d2}",
                "%{ir}._a.%{d}",
                "x.%{L}.esc." + self.base,
            ]
            if kind != "exists":
                macros.append(rng.choice(self.names_for(kind)))
            macros.append("%{p}.ptr." + self.base)
            m = rng.choice(macros)
            if "%{p}" in m:
                self.uses_p = True
            return m
        name = rng.choice(self.names_for(kind) + ["mx." + self.base])
        if rng.random() < 0.05:
            name += "."
        if rng.random() < 0.05:
            name = name.upper()
        return name

    def names_for(self, kind):
        """Host names for a domain-spec: no alias for mx (pyspf, asking an alias
        for MX once it knows the alias, counts the void answer twice)."""
        names = self.hosts + self.clean
        if kind == "mx":
            names = [n for n in names if n not in self.aliases]
        return names

    def term(self, domain, depth):
        rng = self.rng
        kinds = ["ip4", "ip4", "ip6", "ip6", "a", "a", "a", "mx", "mx", "ptr", "exists", "exists"]
        if depth < 3:
            kinds += ["include", "include"]
        kind = rng.choice(kinds)
        q = rng.choice(QUALIFIERS)
        if kind == "ip4":
            net = ipaddress.IPv4Address(self.addr4() if rng.random() < 0.8 else self.client4)
            return "%sip4:%s%s" % (q, net, self.cidr("ip4"))
        if kind == "ip6":
            net = self.addr6()
            return "%sip6:%s%s" % (q, net, self.cidr("ip6"))
        if kind in ("a", "mx", "ptr"):
            name = self.target_name(domain, kind) if rng.random() < 0.6 else None
            if kind == "mx" and name is not None and rng.random() < 0.5:
                name = "mx." + self.base
            spec = ":" + name if name else ""
            return "%s%s%s%s" % (q, kind, spec, self.cidr(kind) if kind != "ptr" else "")
        if kind == "exists":
            name = self.target_name(domain, "exists")
            return "%sexists:%s" % (q, name)
        return "%sinclude:%s" % (q, self.target_name(domain, "include"))

    def exp_text(self):
        rng = self.rng
        words = ["%{l}", "%{o}", "%{d}", "%{s}", "%{h}", "%{v}", "%{L}", "%{D2}", "%{l1r-}", "%%", "%_", "%-", "not", "sent"]
        if self.family == 4:
            words += ["%{i}", "%{c}", "%{ir}"]
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        if text.endswith("%%"):
            text += "."
        return text

    def exp_target(self):
        rng = self.rng
        name = "e%d.%s" % (len(self.exp_names), self.base)
        self.exp_names.append(name)
        r = rng.random()
        if r < 0.6:
            self.add(name, ["TXT", self.exp_text()])
        elif r < 0.7:
            self.add(name, ["TXT", [self.exp_text(), " ", self.exp_text()]])
        elif r < 0.78:
            self.add(name, ["TXT", "one"])
            self.add(name, ["TXT", "two"])
        elif r < 0.85:
            self.add(name, ["TXT", "bad %x macro"])
        elif r < 0.92:
            self.add(name, ["SERVFAIL"])
        # else NXDOMAIN
        return name

    def record(self, domain, depth):
        rng = self.rng
        terms = [self.term(domain, depth) for _ in range(rng.choice([0, 1, 2, 2, 3, 3, 4, 5, 7, 11]))]
        if rng.random() < 0.7:
            terms.append(rng.choice(["-", "-", "~", "?", "", "+"]) + "all")
        modifiers = []
        if rng.random() < 0.2 or (not terms and rng.random() < 0.6):
            self.has_redirect = True
            modifiers.append("redirect=" + self.target_name(domain, "redirect"))
        if rng.random() < 0.4:
            modifiers.append("exp=" + self.exp_target())
        if rng.random() < 0.1:
            self.unknown_names += 1
            value = rng.choice(["yes", "%{d}", "a:b/c", "", "%%%_%-x", "%{l}.%{o}"])
            modifiers.append("x-mod%d.v_%d=%s" % (self.unknown_names, depth, value))
        for m in modifiers:
            if rng.random() < 0.8:
                terms.append(m)
            else:
                terms.insert(rng.randrange(len(terms) + 1), m)
        sep = "  " if rng.random() < 0.05 else " "
        text = sep.join(["v=spf1"] + terms)
        if rng.random() < 0.05:
            text = "V=SPF1" + text[6:]
        if rng.random() < 0.05:
            text += " "
        return text

    # -- syntax errors ---------------------------------------------------------

    def mutate(self):
        rng = self.rng
        b = self.base
        bad_terms = [
            "ip4:192.0.2.1/33", "ip4:192.0.2.0/024", "a//129", "a/33", "mx/40",
            "ip6:2001:db8::/129", "ip4:192.0.2", "ip4:192.0.2.256", "ip4:192.0.02.1",
            "ip6:2001:db8:::1", "ip6:2001:db8::g", "frob:%s" % b, "prt", "aa",
            "--all", "+-a", "-all:foo", "all/24", "=foo", "1x=y", "exists:%%x.%s" % b,
            "a:%%{z}.%s" % b, "exists:%%{c}.%s" % b, "a:%%.%s" % b, "exp=", "redirect=",
            "a:h0.%s.123" % b, "mx:h0.%s.-bad" % b, "a:%s:8080" % b, "a:h\u00e9.%s" % b,
            "ip4:192.0.2.1/24//64", "exists:h0.%s/24" % b, "include:", "include", "ptr/24",
            "exists", "a:", "ip4:", "ip6", "redirect=%%{t}.%s" % b, "ptr:",
            "a:%{d}.", "exists:%{l}x", "-redirect=i1.%s" % b, "ip4:192.0.2.1/", "a://64",
        ]
        records = self.zone[self.identity.lower() + "."]
        for rec in records:
            if rec[0] == "TXT" and isinstance(rec[1], str) and rec[1].lower().startswith("v=spf1"):
                text = rec[1]
                break
        else:
            return
        terms = text.split(" ")
        r = rng.random()
        if r < 0.75:
            terms.insert(rng.randrange(1, len(terms) + 1), rng.choice(bad_terms))
        elif r < 0.82:
            terms += ["redirect=i1." + b, "redirect=i2." + b]
            self.has_redirect = True
        elif r < 0.87:
            terms += ["exp=" + self.exp_target(), "exp=" + self.exp_target()]
        elif r < 0.95:
            # A control character instead of the space before a last ip4 or all
            # term whose predecessor is no unknown modifier.
            last = terms[-1].lstrip("+-~?")
            if len(terms) > 2 and (last == "all" or last.startswith("ip4:")) and not terms[-2].startswith("x-mod"):
                terms[-2] = terms[-2] + rng.choice(["\t", "\n", "\r"]) + terms.pop()
            else:
                terms.append("ip4:192.0.2.1/33")
        else:
            records.append(["TXT", "v=spf1 -all"])
            return
        rec[1] = " ".join(terms)

    def names(self):
        return sorted(self.zone)


def evaluate(setup):
    ref.install(setup.zone)
    result, explanation, q = ref.evaluate(setup.ip, setup.mail_from, setup.helo)
    return result, explanation, q


def fill_voids(setup, rng):
    """Gives some of the names the record looked up in vain an A record, so
    that macros and exists match now and then."""
    asked = []
    real = spf.DNSLookup

    def spy(name, qtype, strict=True, timeout=None):
        asked.append((name.lower().rstrip("."), qtype))
        return real(name, qtype, strict, timeout)

    spf.DNSLookup = spy
    try:
        evaluate(setup)
    except Exception:
        pass
    finally:
        spf.DNSLookup = real
    for name, qtype in asked:
        key = name + "."
        if qtype == "A" and key not in setup.zone and name.endswith(setup.base) and rng.random() < 0.5:
            if 0 < len(name) <= 200 and all(0 < len(label) < 64 for label in name.split(".")):
                setup.add(name, ["A", "127.0.0.2"])


def main():
    seed = int(sys.argv[1])
    count = int(sys.argv[2])
    rng = random.Random(seed)
    budget = [TIMEOUT_BUDGET]
    zone = {}
    cases = []
    skipped = {}
    for n in range(count):
        setup = Setup(rng, n, budget)
        setup.build()
        fill_voids(setup, rng)
        try:
            result, explanation, q = evaluate(setup)
        except Exception as e:  # pyspf failing on its own: nothing to compare
            skipped["pyspf failed: %s" % type(e).__name__] = skipped.get("pyspf failed: %s" % type(e).__name__, 0) + 1
            continue
        reason = None
        prob = getattr(q, "prob", "") or ""
        if result == "permerror" and "Too many DNS lookups" in prob and setup.has_redirect:
            reason = "lookup limit reached with a redirect= in the setup"
        elif setup.uses_p and q.lookups >= 8:
            reason = "%{p} near the lookup limit"
        if reason:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        for name, records in setup.zone.items():
            assert name not in zone, "name %s used by two setups" % name
            zone[name] = records
        cases.append({
            "id": n,
            "ip": setup.ip,
            "mail_from": setup.mail_from,
            "helo": setup.helo,
            "result": result,
            "explanation": explanation,
            "names": setup.names(),
        })
    json.dump({"seed": seed, "pyspf": spf.__version__, "zone": zone, "cases": cases, "skipped": skipped},
              sys.stdout, ensure_ascii=True)


if __name__ == "__main__":
    main()
