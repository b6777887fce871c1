"""dkimpy's canonical forms of the cases in the JSON file argv[1].

Each case has a base64 `body` and `fields`, a list of base64 [name, value]
pairs split at the first colon. Prints, per case, the base64 canonical bodies
(relaxed, simple) and canonical header fields (relaxed, simple).
"""
import base64, json, sys
from dkim.canonicalization import Relaxed, Simple

def b64(b):
    return base64.b64encode(b).decode()

out = []
with open(sys.argv[1]) as f:
    cases = json.load(f)
for case in cases:
    body = base64.b64decode(case["body"])
    fields = [(base64.b64decode(n), base64.b64decode(v)) for n, v in case["fields"]]
    out.append({
        "relaxed_body": b64(Relaxed.canonicalize_body(body)),
        "simple_body": b64(Simple.canonicalize_body(body)),
        "relaxed_fields": [b64(n + b":" + v) for n, v in Relaxed.canonicalize_headers(fields)],
        "simple_fields": [b64(n + b":" + v) for n, v in Simple.canonicalize_headers(fields)],
    })
json.dump(out, sys.stdout)
