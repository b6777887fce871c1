//! `tern dns spf` (RFC 7208 check_host as the server runs it at MAIL FROM)
//! against the test DNS server: the drivers of the SPF conformance tests
//! (tests/spf_suite.rs, tests/spf_table.rs, tests/spf_differential.rs).
#![allow(dead_code)]

use super::outbound::DnsServer;
use super::*;
use serde_json::{Value, json};

/// The result words of RFC 7208 §2.6.
pub const RESULTS: [&str; 7] = ["pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"];

/// One SPF question: the client address, MAIL FROM (empty for `<>`) and HELO name.
#[derive(Debug, Clone)]
pub struct Query {
    pub ip: String,
    pub mail_from: String,
    pub helo: String,
}

/// One answer of the batch form: the result word, for `fail` the explanation,
/// and what went wrong (a permerror's or temperror's cause), if Tern says.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub result: String,
    pub explanation: Option<String>,
    pub problem: Option<String>,
}

impl Answer {
    /// The result with the explanation or problem, for mismatch reports.
    pub fn show(&self) -> String {
        let mut out = self.result.clone();
        if let Some(e) = &self.explanation {
            out.push_str(&format!(" (explanation {e:?})"));
        }
        if let Some(p) = &self.problem {
            out.push_str(&format!(" (problem {p:?})"));
        }
        out
    }
}

/// A test DNS server and a config for `tern dns spf` that asks it.
pub struct SpfCli {
    pub dns: DnsServer,
    dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl SpfCli {
    /// Starts the DNS server with `zone`; `timeout` is `[auth_checks] timeout`
    /// (short, so that unanswered questions end in temperror quickly).
    pub fn start(zone: &Value, timeout: &str) -> SpfCli {
        let dns = DnsServer::start(zone);
        let dir = tempfile::Builder::new().prefix("tern-spf-").tempdir().expect("tempdir");
        let config = dir.path().join("tern.toml");
        fs::write(
            &config,
            format!(
                "hostname = \"{HOSTNAME}\"\ndata_dir = \"{}\"\n\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n\n\
                 [auth_checks]\ntimeout = \"{timeout}\"\n",
                dir.path().join("data").display(),
                dns.port
            ),
        )
        .expect("write config");
        SpfCli { dns, dir, config }
    }

    pub fn set_zone(&self, zone: &Value) {
        self.dns.set_zone(zone);
    }

    /// `tern --config FILE dns spf ARGS`, bounded by `timeout`.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>, timeout: Duration) -> Out {
        let mut cmd = Command::new(TERN_BIN);
        cmd.arg("--config").arg(&self.config).args(["dns", "spf"]).args(args).current_dir(self.dir.path());
        run_with_input(cmd, stdin, timeout)
    }

    /// The answers to `queries` from one run of the batch form (`--stdin`), in
    /// order; Err describes a run that did not give one valid answer per query.
    pub fn check(&self, queries: &[Query], timeout: Duration) -> Result<Vec<Answer>, String> {
        let mut input = String::new();
        for q in queries {
            input.push_str(&json!({ "ip": q.ip, "mail_from": q.mail_from, "helo": q.helo }).to_string());
            input.push('\n');
        }
        let out = self.run(&["--stdin"], Some(input.as_bytes()), timeout);
        let context = || {
            format!(
                "status {:?}, timed out: {}\n--- stderr (end) ---\n{}",
                out.status,
                out.timed_out,
                tail(&out.stderr, 4000)
            )
        };
        if !out.success() {
            return Err(format!("`tern dns spf --stdin` failed: {}", context()));
        }
        let lines: Vec<&str> = out.stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.len() != queries.len() {
            return Err(format!("{} queries but {} answer lines: {}", queries.len(), lines.len(), context()));
        }
        lines.iter().map(|l| parse_answer(l)).collect()
    }
}

/// One JSON answer line of the batch form.
pub fn parse_answer(line: &str) -> Result<Answer, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("answer {line:?} is not JSON: {e}"))?;
    let result = v["result"].as_str().ok_or_else(|| format!("answer without a result: {line}"))?.to_string();
    if !RESULTS.contains(&result.as_str()) {
        return Err(format!("unknown result word {result:?} in {line}"));
    }
    let explanation = match (&v["explanation"], result.as_str()) {
        (Value::String(s), "fail") => Some(s.clone()),
        (Value::Null, "fail") => return Err(format!("fail without an explanation: {line}")),
        (Value::Null, _) => None,
        _ => return Err(format!("explanation given with {result} (only fail has one): {line}")),
    };
    let problem = v["problem"].as_str().map(str::to_string);
    Ok(Answer { result, explanation, problem })
}

/// The last `max` bytes of `s` (on a character boundary).
pub fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A zone name as the test DNS server keys it: a final dot added.
pub fn fqdn(name: &str) -> String {
    if name.ends_with('.') { name.to_string() } else { format!("{name}.") }
}

/// `python3 SCRIPT ARGS` with stdout returned; panics with the output on failure.
#[track_caller]
pub fn python_script(script: &Path, args: &[&str], timeout: Duration) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(script).args(args).env("PYTHONIOENCODING", "utf-8");
    let out = run(cmd, timeout);
    out.assert_success(&format!("python3 {}", script.display()));
    out.stdout
}

/// Where tests/support lives.
pub fn support(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support").join(file)
}
