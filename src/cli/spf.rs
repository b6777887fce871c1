//! `tern dns spf`: the SPF verdict the server would reach for a client, for one
//! query or for JSON lines on standard input.

use crate::config::Config;
use crate::dns::Dns;
use crate::policy::auth::results::spf_word;
use crate::policy::auth::spf::{evaluate, identity};
use mail_auth::SpfResult;
use serde::Deserialize;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::process::ExitCode;

#[derive(Deserialize)]
struct Query {
    ip: IpAddr,
    #[serde(default)]
    mail_from: String,
    #[serde(default)]
    helo: String,
}

/// One query (`query`), or every line of standard input when it is `None`.
pub fn spf(config: &Config, query: Option<(IpAddr, String, String)>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tern: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dns = match Dns::new(&config.dns) {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::from(2);
        }
    };
    let check = |q: Query| {
        runtime.block_on(async {
            let (sender, domain) = identity(&q.helo, Some(&q.mail_from));
            let timeout = config.auth_checks.timeout;
            let verdict = evaluate(&dns, timeout, q.ip, &q.helo, &sender, &domain, &config.hostname).await;
            let explanation = (verdict.result == SpfResult::Fail).then(|| {
                verdict.explanation.unwrap_or_else(|| format!("{} is not allowed to send mail for {domain}", q.ip))
            });
            (spf_word(verdict.result), explanation, verdict.problem)
        })
    };
    let Some((ip, mail_from, helo)) = query else {
        let mut out = std::io::stdout().lock();
        for line in std::io::stdin().lock().lines() {
            let line = match line {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => l,
                Err(e) => {
                    eprintln!("tern: cannot read standard input: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let query: Query = match serde_json::from_str(&line) {
                Ok(q) => q,
                Err(e) => {
                    eprintln!("tern: {line:?} is not a query ({{\"ip\", \"mail_from\", \"helo\"}}): {e}");
                    return ExitCode::from(2);
                }
            };
            let (result, explanation, problem) = check(query);
            let answer = serde_json::json!({ "result": result, "explanation": explanation, "problem": problem });
            if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    };
    let (result, explanation, problem) = check(Query { ip, mail_from, helo });
    println!("{result}");
    if let Some(text) = explanation {
        println!("explanation: {text}");
    }
    if let Some(problem) = problem {
        println!("problem: {problem}");
    }
    ExitCode::SUCCESS
}
