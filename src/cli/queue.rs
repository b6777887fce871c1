//! `tern queue …`: `list` and `show` read the spool directly (in a cluster, the
//! database: every node's messages), so they work whether or not a server runs; the
//! others ask the running server through its control socket.

use super::control;
use crate::admin::ops::{Affected, Request, Trace};
use crate::admin::view;
use crate::cluster::migrations;
use crate::config::Config;
use crate::queue::{Action, Filter, MessageState, Selection};
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
    if config.cluster.is_some() {
        return scan_cluster(config);
    }
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

/// Every message in the cluster's database, whichever node accepted it.
fn scan_cluster(config: &Config) -> Result<Vec<spool::Stored>, ExitCode> {
    let mut messages = Vec::new();
    let found = &mut messages;
    let code = super::cluster::with_cluster(config, |cluster| async move {
        migrations::check(&cluster).await.map_err(|e| e.to_string())?;
        *found = crate::cluster::queue::all(&cluster).await.map_err(|e| format!("cannot read the queue: {e}"))?;
        Ok(())
    });
    if code == ExitCode::SUCCESS { Ok(messages) } else { Err(code) }
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

/// Which messages `flush`, `hold` and `release` apply to, besides a queue id.
#[derive(clap::Args, Debug, Default)]
pub struct FilterArgs {
    /// Messages with a pending recipient in this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Messages from this sender (`<>` for the null sender, `@domain` for a domain).
    #[arg(long)]
    sender: Option<String>,
    /// Messages in this state: queued, deferred or held.
    #[arg(long)]
    state: Option<String>,
    /// Messages that arrived at least this long ago (like `1h`).
    #[arg(long, value_name = "DURATION")]
    older_than: Option<String>,
}

impl FilterArgs {
    fn filter(self) -> Result<Filter, String> {
        let state = match self.state {
            Some(s) => Some(
                MessageState::parse(&s)
                    .ok_or_else(|| format!("--state: {s:?} is not one of queued, deferred, held"))?,
            ),
            None => None,
        };
        let older_than = match self.older_than {
            Some(d) => Some(humantime::parse_duration(&d).map_err(|e| format!("--older-than: {d:?}: {e}"))?.as_secs()),
            None => None,
        };
        Ok(Filter { state, domain: self.domain, sender: self.sender, older_than })
    }
}

/// `tern queue flush|hold|release [ID | filter]` and `tern queue delete ID [--bounce]`,
/// carried out by the running server.
pub fn manage(config: &Config, action: Action, id: Option<String>, filter: FilterArgs) -> ExitCode {
    let filter = match filter.filter() {
        Ok(f) => f,
        Err(e) => return fail(&e),
    };
    if id.is_none() && filter.is_empty() && action != Action::Flush {
        return fail(&format!(
            "{}: give a queue id or a filter (--domain, --sender, --state, --older-than)",
            action.name()
        ));
    }
    let selection = match &id {
        Some(id) => Selection::Id(id.clone()),
        None => Selection::Filter(filter),
    };
    let done = match action {
        Action::Flush => "scheduled for immediate delivery",
        Action::Hold => "put on hold",
        Action::Release => "released",
        Action::Bounce | Action::Delete => "deleted",
    };
    match control::ask::<Affected>(config, &Request::Manage { selection, action }) {
        Ok(_) if id.is_some() => println!("{} {done}", id.unwrap_or_default()),
        Ok(a) => println!("{} message(s) {done}", a.affected),
        Err(e) => return fail(&e),
    }
    ExitCode::SUCCESS
}

/// `tern queue list --json`: the listing of the API, every message on one page.
pub fn list_json(config: &Config) -> ExitCode {
    let messages = match scan(config) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let page = view::page(messages, &Filter::default(), None, usize::MAX, crate::queue::now());
    println!("{}", serde_json::to_string_pretty(&page).expect("pages serialize"));
    ExitCode::SUCCESS
}

/// `tern queue trace ID`: the message's events, from the running server.
pub fn trace(config: &Config, id: &str) -> ExitCode {
    let trace = match control::ask::<Trace>(config, &Request::Trace { id: id.to_string() }) {
        Ok(t) => t,
        Err(e) => return fail(&e),
    };
    for entry in &trace.events {
        let at = DateTime::from_timestamp_millis(entry.at)
            .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S%.3f").to_string())
            .unwrap_or_default();
        println!("{at}  {}", entry.event);
    }
    ExitCode::SUCCESS
}

fn fail(e: &str) -> ExitCode {
    eprintln!("tern: {e}");
    ExitCode::FAILURE
}
