//! The openspf RFC 7208 test suite (203 cases, `rfc7208-tests.yml` from the
//! pyspf 2.0.14 source distribution) through `tern dns spf`: each group's zone
//! is served by the test DNS server, its cases go through the batch form, and
//! every answer must be one of the results the suite allows (and carry the
//! suite's explanation, where it names one other than DEFAULT).
//!
//! One difference of form is allowed: `v-macro-ip6` gives the client as
//! `CAFE:BABE::1` and expects `%{ir}` in upper case, as its driver copies the
//! text it was given. Tern's server reads addresses off the socket, not as text, and
//! writes the nibbles in lower case, as the RFC's own example does (§7.4); so
//! explanations for a client written in upper case compare without case.
//!
//! The suite is not part of the repository: `scripts/test` fetches it into
//! target/test-data/; TERN_SPF_SUITE may name another copy of the file.

mod common;

use common::outbound::python_has;
use common::spf::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Cases in rfc7208-tests.yml (release 2014.04).
const SUITE_CASES: usize = 203;

const FETCH_HINT: &str = "fetch it with scripts/test, or by hand:\n  \
    python3 -m pip download --no-deps --no-binary :all: pyspf==2.0.14 -d target/test-data\n  \
    tar -xzf target/test-data/pyspf-2.0.14.tar.gz -C target/test-data\n\
    (or point TERN_SPF_SUITE at a copy of rfc7208-tests.yml)";

fn suite_path() -> PathBuf {
    match std::env::var_os("TERN_SPF_SUITE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-data/pyspf-2.0.14/test/rfc7208-tests.yml"),
    }
}

#[test]
fn rfc7208_test_suite() {
    let path = suite_path();
    assert!(path.is_file(), "the RFC 7208 test suite is missing at {}; {FETCH_HINT}", path.display());
    assert!(python_has("yaml"), "the Python module yaml is missing (Debian: python3-yaml; pip: pyyaml)");
    let converted =
        python_script(&support("spf_suite.py"), &[path.to_str().expect("utf-8 path")], Duration::from_secs(60));
    let suite: Value = serde_json::from_str(&converted).expect("converted suite is JSON");
    let groups = suite["groups"].as_array().expect("groups");

    let cli = SpfCli::start(&json!({}), "2s");
    let mut total = 0;
    let mut mismatches = Vec::new();
    for group in groups {
        let description = group["description"].as_str().unwrap_or_default();
        let cases = group["cases"].as_array().expect("cases");
        total += cases.len();
        cli.set_zone(&group["zone"]);
        let queries: Vec<Query> = cases
            .iter()
            .map(|c| Query {
                ip: c["ip"].as_str().expect("ip").to_string(),
                mail_from: c["mail_from"].as_str().expect("mail_from").to_string(),
                helo: c["helo"].as_str().expect("helo").to_string(),
            })
            .collect();
        let answers = match cli.check(&queries, Duration::from_secs(180)) {
            Ok(a) => a,
            Err(e) => {
                mismatches.push(format!("group {description:?}: no answers: {e}"));
                continue;
            }
        };
        for (case, answer) in cases.iter().zip(&answers) {
            if let Some(problem) = judge(case, answer) {
                mismatches.push(format!(
                    "{} (§{}, group {description:?}): {problem}\n    ip={} mail_from={:?} helo={:?}\n    {}",
                    case["name"].as_str().unwrap_or_default(),
                    case["spec"].as_str().unwrap_or_default(),
                    case["ip"].as_str().unwrap_or_default(),
                    case["mail_from"].as_str().unwrap_or_default(),
                    case["helo"].as_str().unwrap_or_default(),
                    case["description"].as_str().unwrap_or_default(),
                ));
            }
        }
    }
    assert_eq!(total, SUITE_CASES, "{} does not hold the expected cases", path.display());
    for m in &mismatches {
        eprintln!("MISMATCH {m}");
    }
    assert!(mismatches.is_empty(), "{} of {total} suite cases failed (listed above)", mismatches.len());
    eprintln!("all {total} cases of the RFC 7208 test suite passed");
}

/// What is wrong with `answer` for `case`, if anything.
fn judge(case: &Value, answer: &Answer) -> Option<String> {
    let allowed: Vec<&str> = case["result"].as_array().expect("result").iter().filter_map(Value::as_str).collect();
    if !allowed.contains(&answer.result.as_str()) {
        return Some(format!("expected {}, got {}", allowed.join(" or "), answer.show()));
    }
    let host = case["ip"].as_str().unwrap_or_default();
    let same = |want: &str, got: &str| {
        want == got || (host.contains(':') && host != host.to_lowercase() && want.eq_ignore_ascii_case(got))
    };
    match case["explanation"].as_str() {
        Some(want) if want != "DEFAULT" && !answer.explanation.as_deref().is_some_and(|got| same(want, got)) => {
            Some(format!("{}: expected explanation {want:?}, got {:?}", answer.result, answer.explanation))
        }
        _ => None,
    }
}
