//! `tern queue …`: reads the spool directly, so it works whether or not a server runs.

use crate::config::Config;
use crate::spool::{self, RcptState};
use chrono::{DateTime, Local};
use std::process::ExitCode;

fn time(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

fn describe(state: &RcptState) -> String {
    match state {
        RcptState::Queued => "queued".into(),
        RcptState::Deferred { attempts, next_attempt, detail, .. } => {
            format!("deferred (attempts: {attempts}, next try {}): {detail}", time(*next_attempt))
        }
        RcptState::Delivered { at, detail } => format!("delivered {}: {detail}", time(*at)),
        RcptState::Bounced { at, detail } => format!("bounced {}: {detail}", time(*at)),
    }
}

pub(super) fn scan(config: &Config) -> Result<Vec<spool::Stored>, ExitCode> {
    // An empty queue is a claim about a server's spool: without its data directory
    // there is none (most likely the wrong configuration).
    if !config.data_dir.is_dir() {
        eprintln!(
            "tern: data directory {} does not exist: no server has run with this configuration",
            config.data_dir.display()
        );
        return Err(ExitCode::FAILURE);
    }
    spool::scan(&config.spool_dir()).map_err(|e| {
        eprintln!("tern: cannot read spool {}: {e}", config.spool_dir().display());
        ExitCode::FAILURE
    })
}

pub fn list(config: &Config) -> ExitCode {
    let messages = match scan(config) {
        Ok(m) => m,
        Err(code) => return code,
    };
    if messages.is_empty() {
        println!("queue is empty");
        return ExitCode::SUCCESS;
    }
    for m in &messages {
        let e = &m.envelope;
        let sender = if e.sender.is_empty() { "<>" } else { &e.sender };
        println!("{}  {:>9} bytes  {}  from {sender}", e.id, e.size, time(e.arrival));
        for r in &e.recipients {
            let via = if r.original != r.address { format!(" (for {})", r.original) } else { String::new() };
            println!("    {}{via}: {}", r.address, describe(&r.state));
        }
    }
    println!("{} message(s) in queue", messages.len());
    ExitCode::SUCCESS
}

pub fn show(config: &Config, id: &str) -> ExitCode {
    let messages = match scan(config) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let Some(m) = messages.iter().find(|m| m.envelope.id.eq_ignore_ascii_case(id)) else {
        eprintln!("tern: {id} is not in the queue");
        return ExitCode::FAILURE;
    };
    let e = &m.envelope;
    println!("id:       {}", e.id);
    println!("arrived:  {}", time(e.arrival));
    println!("from:     <{}>", e.sender);
    let eight_bit = if e.eight_bit { ", 8BITMIME" } else { "" };
    let utf8 = if e.smtputf8 { ", SMTPUTF8" } else { "" };
    println!("size:     {} bytes{eight_bit}{utf8}", e.size);
    if let Some(envid) = &e.envid {
        println!("envid:    {envid}");
    }
    if let Some(ret) = &e.ret {
        println!("ret:      {ret}");
    }
    for r in &e.recipients {
        println!("to:       {} ({})", r.address, if r.local { "local" } else { "remote" });
        if r.original != r.address {
            println!("    for:      {}", r.original);
        }
        if let Some(notify) = &r.notify {
            println!("    notify:   {notify}");
        }
        println!("    state:    {}", describe(&r.state));
    }
    ExitCode::SUCCESS
}

/// Sends one request to the running server's control socket and prints the answer.
pub fn control(config: &Config, request: &str) -> ExitCode {
    use std::io::{BufRead, BufReader, Write};
    let path = config.data_dir.join(crate::server::control::SOCKET_NAME);
    let answer = std::os::unix::net::UnixStream::connect(&path).and_then(|mut s| {
        s.write_all(format!("{}\n", request.trim()).as_bytes())?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line)
    });
    let line = match answer {
        Ok(line) => line,
        Err(e) => {
            eprintln!("tern: {}", unreachable(config, &path, &e));
            return ExitCode::FAILURE;
        }
    };
    match line.trim().strip_prefix("ok ") {
        Some(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            let text = line.trim();
            eprintln!("tern: {}", text.strip_prefix("error ").unwrap_or(text));
            ExitCode::FAILURE
        }
    }
}

/// Why the control socket could not be reached: no socket, or one that nobody listens
/// on (left by a server that was killed), means no server runs.
fn unreachable(config: &Config, path: &std::path::Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind::{ConnectionRefused, NotFound};
    match e.kind() {
        NotFound | ConnectionRefused => format!(
            "no tern server is running for data directory {} (nothing listens on {}); start it with `tern serve`",
            config.data_dir.display(),
            path.display()
        ),
        _ => format!("cannot reach the running server at {}: {e}", path.display()),
    }
}
