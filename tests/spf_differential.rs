//! `tern dns spf` against pyspf on random SPF setups: tests/support/spf_random.py
//! makes them (about 1500, each under names of its own, all in one zone) and
//! gives pyspf's result for each; the test serves the zone, runs every case
//! through the batch form and wants the same result (and, where pyspf expands
//! an exp= text, the same explanation). The generator's docstring lists where
//! pyspf departs from RFC 7208 and how it keeps out of those places.
//!
//! The seed is random per run and printed; SPF_DIFF_SEED=N repeats a run,
//! SPF_DIFF_CASES=N changes the number of setups.

mod common;

use common::outbound::python_has;
use common::spf::*;
use serde_json::Value;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Mismatches shown in full.
const SHOWN: usize = 20;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

#[test]
fn tern_agrees_with_pyspf_on_random_setups() {
    assert!(python_has("spf"), "the Python module spf (pyspf) is missing: scripts/test installs it");
    let started = Instant::now();
    let seed = env_u64("SPF_DIFF_SEED").unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64 % 1_000_000_007
    });
    let count = env_u64("SPF_DIFF_CASES").unwrap_or(1500);
    eprintln!("seed {seed} (repeat with SPF_DIFF_SEED={seed}), {count} setups");
    let generated =
        python_script(&support("spf_random.py"), &[&seed.to_string(), &count.to_string()], Duration::from_secs(120));
    let data: Value = serde_json::from_str(&generated).expect("generator output is JSON");
    let zone = &data["zone"];
    let cases = data["cases"].as_array().expect("cases");
    eprintln!(
        "pyspf {}: {} cases, skipped {} (generated in {:.1?})",
        data["pyspf"],
        cases.len(),
        data["skipped"],
        started.elapsed()
    );
    assert!(cases.len() * 10 >= count as usize * 9, "the generator skipped too many setups: {}", data["skipped"]);

    let cli = SpfCli::start(zone, "2s");
    let queries: Vec<Query> = cases
        .iter()
        .map(|c| Query {
            ip: c["ip"].as_str().expect("ip").into(),
            mail_from: c["mail_from"].as_str().expect("mail_from").into(),
            helo: c["helo"].as_str().expect("helo").into(),
        })
        .collect();
    let answers = cli
        .check(&queries, Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("seed {seed}: tern dns spf gave no answers: {e}"));

    let mut mismatches = Vec::new();
    for (case, answer) in cases.iter().zip(&answers) {
        let want = case["result"].as_str().expect("result");
        let want_exp = case["explanation"].as_str();
        let differs = answer.result != want
            || (want == "fail" && want_exp.is_some() && answer.explanation.as_deref() != want_exp);
        if differs {
            mismatches.push((case, answer));
        }
    }
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for (case, answer) in &mismatches {
        *by_kind
            .entry(format!("pyspf {} / tern {}", case["result"].as_str().unwrap_or(""), answer.result))
            .or_default() += 1;
    }
    for (case, answer) in mismatches.iter().take(SHOWN) {
        eprintln!("{}", describe(case, answer, zone));
    }
    eprintln!("{} cases in {:.1?}", cases.len(), started.elapsed());
    assert!(
        mismatches.is_empty(),
        "seed {seed}: {} of {} cases differ from pyspf ({by_kind:?}); the first {} are above; \
         repeat with SPF_DIFF_SEED={seed}",
        mismatches.len(),
        cases.len(),
        mismatches.len().min(SHOWN)
    );
}

/// A mismatch with the setup's records.
fn describe(case: &Value, answer: &Answer, zone: &Value) -> String {
    let mut out = format!(
        "MISMATCH setup {}: ip={} mail_from={:?} helo={:?}\n  pyspf: {} {:?}\n  tern:  {}\n  zone:",
        case["id"],
        case["ip"].as_str().unwrap_or_default(),
        case["mail_from"].as_str().unwrap_or_default(),
        case["helo"].as_str().unwrap_or_default(),
        case["result"].as_str().unwrap_or_default(),
        case["explanation"].as_str(),
        answer.show(),
    );
    for name in case["names"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        for record in zone[name].as_array().into_iter().flatten() {
            out.push_str(&format!("\n    {name} {record}"));
        }
        if zone[name].as_array().is_some_and(|r| r.is_empty()) {
            out.push_str(&format!("\n    {name} (no records)"));
        }
    }
    out
}
