//! `tern status`: what the running server says of itself.

use super::control;
use crate::admin::ops::{Request, Status};
use crate::config::Config;
use chrono::{DateTime, Local};
use std::process::ExitCode;

fn time(secs: u64) -> String {
    DateTime::from_timestamp(secs as i64, 0)
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| secs.to_string())
}

pub fn status(config: &Config) -> ExitCode {
    let s: Status = match control::ask(config, &Request::Status) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let up = humantime::format_duration(std::time::Duration::from_secs(s.uptime_seconds));
    println!("tern {}, pid {}, up {up} (since {})", s.version, s.pid, time(s.started_at));
    match (&s.config_file, s.config_loaded_at) {
        (Some(path), Some(at)) => println!("config:     {} (read {})", path.display(), time(at)),
        _ => println!("config:     embedded default"),
    }
    println!("data_dir:   {}", s.data_dir.display());
    let listeners: Vec<String> = s.listeners.iter().map(|l| format!("{} ({})", l.addr, l.mode)).collect();
    println!("listening:  {}", listeners.join(", "));
    println!("admin API:  {}", s.admin.map_or("off".to_string(), |a| format!("http://{a}")));
    let q = &s.queue;
    let oldest = q.oldest_arrival.map_or(String::new(), |t| format!("; oldest from {}", time(t.max(0) as u64)));
    println!(
        "queue:      {} queued, {} deferred, {} held ({} being delivered){oldest}",
        q.queued, q.deferred, q.held, q.in_flight
    );
    for c in &s.certificates {
        let state = if c.in_use { "in use" } else { "standing by" };
        println!(
            "cert:       {} ({}, {state}), expires {}",
            c.names.join(", "),
            c.source,
            time(c.not_after.max(0) as u64)
        );
    }
    if let Some(a) = &s.acme {
        let last = match (&a.last_result, a.last_attempt) {
            (Some(r), Some(t)) => format!("last order {r} at {}", time(t)),
            _ => "no order yet".to_string(),
        };
        let error = a.last_error.as_ref().map_or(String::new(), |e| format!(" ({e})"));
        let next = a.next_renewal.map_or(String::new(), |t| format!("; next order {}", time(t)));
        println!("acme:       {} via {}: {last}{error}{next}", a.directory, a.challenge);
    }
    ExitCode::SUCCESS
}
