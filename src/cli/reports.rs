//! `tern reports send` and `tern reports show`: the aggregate reports of the running
//! server, through its control socket.

use super::control;
use crate::admin::ops::Request;
use crate::config::Config;
use crate::reports::{Sent, Shown};
use std::process::ExitCode;

pub fn send(config: &Config) -> ExitCode {
    match control::ask::<Vec<Sent>>(config, &Request::ReportsSend) {
        Ok(sent) => {
            for s in &sent {
                println!("{} report about {} queued as {} to {}", s.kind, s.domain, s.id, s.to.join(", "));
            }
            println!("{} report(s) sent", sent.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn show(config: &Config, json: bool) -> ExitCode {
    match control::ask::<Shown>(config, &Request::ReportsShow) {
        Ok(shown) if json => {
            println!("{}", serde_json::to_string_pretty(&shown).expect("serializes"));
            ExitCode::SUCCESS
        }
        Ok(shown) => {
            if let Some(note) = &shown.note {
                eprintln!("tern: {note}");
            }
            for (kind, domains) in [("tls", &shown.tls), ("dmarc", &shown.dmarc)] {
                for d in domains {
                    println!("{kind} {} {}", d.day, d.domain);
                    for line in &d.lines {
                        println!("  {line}");
                    }
                }
            }
            if shown.tls.is_empty() && shown.dmarc.is_empty() {
                println!("nothing counted");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}
