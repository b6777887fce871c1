//! SPF cases written from RFC 7208 (tests/spf/rfc7208.toml, which describes
//! its format): each zone is served by the test DNS server, its cases go
//! through `tern dns spf` (batch form), and every answer must be one the case
//! allows. A second test runs the same cases through pyspf, checking that it
//! agrees with the table except where a case records (field `pyspf`) how and
//! why pyspf departs from the RFC.

mod common;

use common::outbound::python_has;
use common::spf::*;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const TABLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/spf/rfc7208.toml");

#[derive(Deserialize)]
struct Table {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    section: String,
    ip: String,
    mail_from: String,
    #[serde(default = "default_helo")]
    helo: String,
    result: OneOrMany,
    explanation: Option<OneOrMany>,
    #[serde(default)]
    explanation_not: Vec<String>,
    #[serde(default)]
    zone: BTreeMap<String, Vec<Record>>,
    pyspf: Option<String>,
    #[allow(dead_code)]
    note: Option<String>,
}

fn default_helo() -> String {
    "helo.example.org".into()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn all(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// "KIND data" (TXT: the rest of the string is the record), or
/// ["TXT", piece, ...] for a record of several strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum Record {
    Line(String),
    Pieces(Vec<String>),
}

impl Record {
    /// The record in the test DNS server's JSON form.
    fn to_zone(&self, case: &str) -> Value {
        match self {
            Record::Pieces(p) => {
                assert!(p.len() > 1 && p[0] == "TXT", "{case}: a list record must be [\"TXT\", piece, ...]");
                json!(["TXT", p[1..]])
            }
            Record::Line(line) => {
                let (kind, data) = line.split_once(' ').unwrap_or((line, ""));
                match kind {
                    "A" | "AAAA" | "PTR" | "CNAME" => json!([kind, data]),
                    "TXT" => json!(["TXT", data]),
                    "MX" => {
                        let (pref, host) =
                            data.split_once(' ').unwrap_or_else(|| panic!("{case}: MX needs pref and host"));
                        json!(["MX", pref.parse::<u16>().unwrap_or_else(|e| panic!("{case}: MX pref: {e}")), host])
                    }
                    "SERVFAIL" | "TIMEOUT" if data.is_empty() => json!([kind]),
                    _ => panic!("{case}: unknown record {line:?}"),
                }
            }
        }
    }
}

impl Case {
    fn zone(&self) -> Value {
        let mut zone = serde_json::Map::new();
        for (name, records) in &self.zone {
            zone.insert(fqdn(name), records.iter().map(|r| r.to_zone(&self.name)).collect());
        }
        Value::Object(zone)
    }

    fn query(&self) -> Query {
        Query { ip: self.ip.clone(), mail_from: self.mail_from.clone(), helo: self.helo.clone() }
    }

    /// What is wrong with `result`/`explanation` for this case, if anything.
    fn judge(&self, result: &str, explanation: Option<&str>) -> Option<String> {
        let allowed = self.result.all();
        if !allowed.contains(&result) {
            let exp = explanation.map(|e| format!(" (explanation {e:?})")).unwrap_or_default();
            return Some(format!("expected {}, got {result}{exp}", allowed.join(" or ")));
        }
        if result != "fail" {
            return None;
        }
        if let Some(want) = &self.explanation {
            let want = want.all();
            if !explanation.is_some_and(|got| want.iter().any(|w| text_matches(w, got))) {
                return Some(format!("fail: expected explanation {}, got {explanation:?}", want.join(" or ")));
            }
        }
        if let Some(got) = explanation
            && self.explanation_not.iter().any(|n| n == got)
        {
            return Some(format!("fail: the explanation {got:?} should have been ignored"));
        }
        None
    }

    fn describe(&self) -> String {
        format!("{} (§{}) ip={} mail_from={:?} helo={:?}", self.name, self.section, self.ip, self.mail_from, self.helo)
    }

    /// The zone, one record a line, for mismatch reports.
    fn zone_text(&self) -> String {
        let mut out = String::new();
        for (name, records) in &self.zone {
            for r in records {
                let text = match r {
                    Record::Line(l) => format!("{l:?}"),
                    Record::Pieces(p) => format!("{p:?}"),
                };
                out.push_str(&format!("\n        {name}: {text}"));
            }
        }
        out
    }
}

/// `want` equals `got`, where "<T>" in `want` stands for a UNIX time within an hour of now.
fn text_matches(want: &str, got: &str) -> bool {
    let Some((before, after)) = want.split_once("<T>") else { return want == got };
    let Some(middle) = got.strip_prefix(before).and_then(|r| r.strip_suffix(after)) else { return false };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    middle.parse::<u64>().is_ok_and(|t| t.abs_diff(now) < 3600)
}

fn load() -> Vec<Case> {
    let text = std::fs::read_to_string(TABLE).expect("read the SPF table");
    let table: Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{TABLE}: {e}"));
    let mut names = std::collections::HashSet::new();
    for c in &table.case {
        assert!(names.insert(c.name.clone()), "case name {} appears twice", c.name);
        assert!(!c.result.all().is_empty(), "{}: no result", c.name);
        for r in c.result.all().into_iter().chain(c.pyspf.as_deref()) {
            assert!(RESULTS.contains(&r), "{}: {r:?} is no result word", c.name);
        }
    }
    table.case
}

#[test]
fn rfc7208_table_through_tern() {
    let cases = load();
    assert!(cases.len() >= 150, "the table should hold at least 150 cases, not {}", cases.len());
    // Cases with the same zone share one run.
    let mut by_zone: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
    for c in &cases {
        by_zone.entry(c.zone().to_string()).or_default().push(c);
    }
    let cli = SpfCli::start(&json!({}), "2s");
    let mut mismatches = Vec::new();
    for group in by_zone.values() {
        cli.set_zone(&group[0].zone());
        let queries: Vec<Query> = group.iter().map(|c| c.query()).collect();
        match cli.check(&queries, Duration::from_secs(120)) {
            Ok(answers) => {
                for (c, a) in group.iter().zip(&answers) {
                    if let Some(problem) = c.judge(&a.result, a.explanation.as_deref()) {
                        let why = a.problem.as_deref().map(|p| format!(" [tern: {p}]")).unwrap_or_default();
                        mismatches.push(format!("{}: {problem}{why}{}", c.describe(), c.zone_text()));
                    }
                }
            }
            Err(e) => {
                let names: Vec<&str> = group.iter().map(|c| c.name.as_str()).collect();
                mismatches.push(format!("{}: no answers: {e}", names.join(", ")));
            }
        }
    }
    for m in &mismatches {
        eprintln!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} of {} table cases failed (listed above)", mismatches.len(), cases.len());
    eprintln!("all {} table cases passed", cases.len());
}

/// pyspf agrees with every expectation of the table, except where a case
/// names pyspf's own result (and its note says why that departs from the RFC).
#[test]
fn rfc7208_table_against_pyspf() {
    assert!(python_has("spf"), "the Python module spf (pyspf) is missing: scripts/test installs it");
    let cases = load();
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("cases.json");
    let list: Vec<Value> = cases
        .iter()
        .map(|c| json!({ "zone": c.zone(), "ip": c.ip, "mail_from": c.mail_from, "helo": c.helo }))
        .collect();
    std::fs::write(&input, serde_json::to_vec(&list).expect("json")).expect("write cases");
    let out = python_script(&support("spf_pyspf.py"), &[path_str(&input)], Duration::from_secs(120));
    let answers: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).expect("pyspf answer")).collect();
    assert_eq!(answers.len(), cases.len(), "one pyspf answer per case:\n{out}");
    let mut problems = Vec::new();
    for (c, a) in cases.iter().zip(&answers) {
        let result = a["result"].as_str().unwrap_or_default();
        let explanation = a["explanation"].as_str();
        match &c.pyspf {
            Some(theirs) if theirs != result => {
                problems.push(format!("{}: the table says pyspf gives {theirs}, it gives {result}", c.describe()))
            }
            Some(_) if c.judge(result, explanation).is_none() => {
                problems.push(format!("{}: the table says pyspf departs from it here, but pyspf agrees", c.describe()))
            }
            Some(_) => {}
            None => {
                if let Some(p) = c.judge(result, explanation) {
                    problems.push(format!("{}: pyspf: {p}{}", c.describe(), c.zone_text()));
                }
            }
        }
    }
    for p in &problems {
        eprintln!("PYSPF {p}");
    }
    assert!(problems.is_empty(), "{} cases disagree with pyspf without saying so (listed above)", problems.len());
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The one-query form: the result on the first line, for fail the explanation
/// on the second; exit status 0, and 2 for bad arguments.
#[test]
fn one_query_form() {
    let zone = json!({
        "example.com.": [["TXT", "v=spf1 ip4:192.0.2.10 -all exp=why.example.com"]],
        "why.example.com.": [["TXT", "%{i} is not %{l}'s server"]],
        "mx.example.net.": [["TXT", "v=spf1 ip6:2001:db8::10 ~all"]],
    });
    let cli = SpfCli::start(&zone, "2s");
    let run = |args: &[&str]| cli.run(args, None, Duration::from_secs(60));

    let out = run(&["--ip", "192.0.2.10", "--mail-from", "alice@example.com", "--helo", "mx.example.net"]);
    out.assert_success("tern dns spf (pass)");
    assert_eq!(out.stdout.lines().next(), Some("pass"), "{}", out.all());

    let out = run(&["--ip", "192.0.2.99", "--mail-from", "alice@example.com"]);
    out.assert_success("tern dns spf (fail)");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"fail"), "{}", out.all());
    assert_eq!(lines.get(1), Some(&"explanation: 192.0.2.99 is not alice's server"), "{}", out.all());

    // No MAIL FROM (or an empty one): the HELO identity.
    for extra in [&[][..], &["--mail-from", ""][..]] {
        let mut args = vec!["--ip", "2001:db8::99", "--helo", "mx.example.net"];
        args.extend_from_slice(extra);
        let out = run(&args);
        out.assert_success("tern dns spf (HELO identity)");
        assert_eq!(out.stdout.lines().next(), Some("softfail"), "{args:?}: {}", out.all());
    }

    for bad in
        [&["--ip", "192.0.2.300", "--mail-from", "alice@example.com"][..], &["--mail-from", "alice@example.com"][..]]
    {
        let out = run(bad);
        assert_eq!(out.code(), Some(2), "{bad:?} should be refused with status 2: {}", out.all());
    }
}
